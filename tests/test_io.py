"""Atomic outputs: complete or absent, with the usual permissions, and clear errors where they cannot go."""

from __future__ import annotations

import os
import stat

import pytest

from memlens._io import atomic_path, atomic_write_text
from memlens.errors import RunDirError


def test_outputs_get_the_umask_permissions_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        import memlens._io as io_mod

        io_mod._UMASK = 0o022
        path = atomic_write_text(tmp_path / "report.html", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by colleagues on a shared server
        io_mod._UMASK = 0o077
        path = atomic_write_text(tmp_path / "private.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
        io_mod._UMASK = old


def test_failure_leaves_neither_file_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError, match="stage failed"), atomic_path(tmp_path / "a.csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("stage failed")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destinations_are_one_line_errors(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunDirError, match="afile is a file, not a directory"):
        atomic_write_text(tmp_path / "afile" / "x.html", "x")
    with pytest.raises(RunDirError, match="is a directory, not a file"):
        atomic_write_text(tmp_path, "x")
    with pytest.raises(RunDirError, match="cannot be written"):
        atomic_write_text("/proc/memlens-test.html", "x")


def test_software_versions_name_the_packages_behind_the_numbers():
    from importlib import metadata

    import numpy
    import sklearn

    from memlens import __version__
    from memlens._io import software_versions

    v = software_versions()
    assert v["memlens"] == __version__ and v["numpy"] == numpy.__version__
    assert v["scikit-learn"] == sklearn.__version__  # the predictors' library, imported by name "sklearn"
    assert v["scipy"] == metadata.version("scipy")
    assert "memlens_git" not in v or len(v["memlens_git"].removesuffix("-dirty")) == 40


@pytest.mark.parametrize("command", [["fit-predictor", "{run}", "--cv", "3"], ["analyze", "{run}"]])
def test_an_empty_per_image_table_is_a_one_line_error(tmp_path, capsys, command):
    """(explain reads the table through the same read_run_table, after loading its predictor)"""
    from memlens.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "per_image.csv").write_text("")
    assert main([c.format(run=run) for c in command]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {run / 'per_image.csv'}: not a readable CSV table (No columns to parse from file); "
                   f"make it again with: memlens score DATA --run {run}"]


def test_reserve_disk_turns_a_full_disk_into_a_named_error(tmp_path, monkeypatch):
    """A memory map on a full disk dies with SIGBUS; allocating first gives ENOSPC with the final file's name."""
    import errno

    import numpy as np

    from memlens._io import reserve_disk

    path = tmp_path / ".latents.tmp.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1000, 250))
    reserve_disk(path)  # room enough: the blocks are allocated
    assert os.stat(path).st_blocks * 512 >= 1_000_000

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as err:
        reserve_disk(path, tmp_path / "latents.npy")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "latents.npy")
    assert "not enough disk space for 1.0 MB" in str(err.value)

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    reserve_disk(path)  # a file system that cannot preallocate: written as before
