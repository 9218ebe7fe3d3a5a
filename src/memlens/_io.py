"""Atomic file writing: outputs are written to a temporary file in the same folder and renamed.

A crash or a bad input never leaves a half-written output, and an existing output is replaced only once
the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "file_sha256",
           "check_output_path"]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    ``suffix`` defaults to the final suffix of ``path`` so that libraries choosing a format by extension
    (numpy, pandas, matplotlib) behave as for the real name.
    """
    from .errors import RunDirError

    path = Path(path)
    check_output_path(path)
    sfx = path.suffix if suffix is None else suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{sfx}", dir=path.parent)
    except OSError as exc:
        raise RunDirError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file for its owner only; an output gets the usual permissions (the umask's)
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def check_output_path(path: str | os.PathLike, *, directory: bool = False) -> Path:
    """Raise :class:`~memlens.errors.RunDirError` (one line) unless ``path`` can be written: a file path must
    not be an existing directory, a directory path not an existing file, and the nearest existing folder
    above it must be a folder, not a file."""
    from .errors import RunDirError

    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise RunDirError(f"{path}: exists and is not a directory")
        if not directory and path.is_dir():
            raise RunDirError(f"{path}: is a directory, not a file")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise RunDirError(f"{path}: cannot be written, {folder} is a file, not a directory")
            break
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (numpy scalars/arrays and paths converted; NaN written as null)."""
    text = json.dumps(_sanitize(obj), indent=indent, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _sanitize(obj: Any) -> Any:
    """Replace float NaN/inf by None so that the JSON is standard."""
    import math

    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    try:
        import numpy as np

        if isinstance(obj, np.floating):
            return None if not np.isfinite(obj) else float(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.ndarray):
            return _sanitize(obj.tolist())
    except ImportError:  # pragma: no cover
        pass
    return obj


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


#: distributions whose versions a run records when installed (scikit-learn: the predictors; captum: the maps)
_RECORDED = ("torch", "numpy", "scipy", "pandas", "scikit-learn", "captum", "Pillow", "matplotlib", "lpips",
             "faiss-cpu", "ray")


def software_versions() -> dict[str, str]:
    """Versions of memlens, Python, the platform and every installed package that shapes a result.

    Read from the installed distributions' metadata (nothing is imported). For a memlens installed from a git
    checkout (``pip install -e .``), ``memlens_git`` is the commit, with ``-dirty`` when files were changed.
    """
    import platform
    import subprocess
    from importlib import metadata

    from ._version import __version__

    out = {"memlens": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for dist in _RECORDED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    src = Path(__file__).resolve().parent
    if (src.parent.parent / ".git").exists():  # src/memlens -> the checkout
        try:
            sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=5, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5, check=True).stdout.strip()
            out["memlens_git"] = sha + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def read_run_table(path: str | os.PathLike, made_by: str = "memlens score DATA --run RUN") -> Any:
    """A run's CSV table (e.g. ``per_image.csv``) as a DataFrame, or a :class:`RunDirError` in one line.

    Missing: names the command that makes it (``made_by``). Empty, truncated or not a CSV table: says so,
    instead of pandas' exception.
    """
    import pandas as pd

    from .errors import RunDirError

    path = Path(path)
    if not path.is_file():
        if path.name == "per_image.csv" and any((path.parent / "per_image").glob("part-*.parquet")):
            raise RunDirError(f"{path}: missing; the run was scored with --no-merge and holds its numbers in "
                              f"{path.parent / 'per_image'}/part-*.parquet: rerun memlens score with --merge "
                              "(the parts are reused, nothing is scored again)")
        raise RunDirError(f"{path}: missing (make it with: {made_by})")
    try:
        return pd.read_csv(path)
    except Exception as exc:  # EmptyDataError, ParserError, UnicodeDecodeError, ...
        raise RunDirError(f"{path}: not a readable CSV table ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                          f"make it again with: {made_by}") from None


def reserve_disk(path: str | os.PathLike, name: str | os.PathLike | None = None) -> None:
    """Allocate the blocks of a freshly created (sparse) file, e.g. a memory-mapped ``.npy``.

    Writing through a memory map into a file the disk cannot hold kills the process with SIGBUS, with no
    message. Allocating first turns a full disk into an ``OSError(ENOSPC)`` naming ``name`` (default: the
    file), which the CLI reports in one line. File systems without ``posix_fallocate`` are left as they are.
    """
    import errno

    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - not on Linux
        return
    path = Path(path)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise OSError(exc.errno, f"not enough disk space for {size / 1e6:.1f} MB", str(name or path)) from None
        # EOPNOTSUPP, EINVAL: a file system that cannot preallocate; write as before
    finally:
        os.close(fd)
