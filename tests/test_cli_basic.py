"""The CLI's light path: --version/--help/--cite answer without importing torch; exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from memlens.cli import COMMANDS, main


def _run(*code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["--cite"]])
def test_light_commands_do_not_import_torch(args):
    res = _run(
        "import sys",
        "from memlens.cli import main",
        f"rc = main({args!r})",
        "heavy = [m for m in ('torch', 'pandas', 'matplotlib', 'sklearn') if m in sys.modules]",
        "print('HEAVY', heavy, 'RC', rc)",
    )
    assert res.returncode == 0, res.stderr
    assert "HEAVY [] RC 0" in res.stdout


def test_command_modules_import_light():
    """Every command module imports without pulling torch (heavy imports live inside the functions)."""
    mods = [spec.split(":")[0] for spec, _ in COMMANDS.values()]
    res = _run(
        "import importlib, sys",
        f"mods = {mods!r}",
        "loaded = []",
        "for m in mods:",
        "    try:",
        "        importlib.import_module(m); loaded.append(m)",
        "    except ModuleNotFoundError as e:",
        "        if e.name != m: raise",
        "print('LOADED', len(loaded), 'TORCH', 'torch' in sys.modules)",
    )
    assert res.returncode == 0, res.stderr
    assert "TORCH False" in res.stdout


def test_version_output(capsys):
    from memlens import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"memlens {__version__}"


def test_cite_is_bibtex(capsys):
    assert main(["--cite"]) == 0
    out = capsys.readouterr().out
    assert out.count("@article{") == 1 and "2410.15235" in out and "@software{memlens" in out


def test_unknown_command_is_usage_error(capsys):
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err


def test_console_script_exit_code():
    res = subprocess.run([sys.executable, "-m", "memlens.cli", "nope"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


def test_memlens_flags_after_the_command(tmp_path, capsys):
    """`memlens stats ... -q` works like `memlens -q stats ...` (users type the flags at the end)."""
    from memlens.cli import _globals_first, main

    assert _globals_first(["stats", "t.csv", "-q", "--x", "a", "--", "-q"]) == ["-q", "stats", "t.csv", "--x", "a",
                                                                               "--", "-q"]
    table = tmp_path / "t.csv"
    table.write_text("a,b\n1,2\n2,1\n3,4\n4,3\n5,6\n")
    assert main(["stats", str(table), "--x", "a", "--y", "b", "--n-boot", "0", "-q", "--debug"]) == 0
    assert "a  pooled" in capsys.readouterr().out


def test_eof_and_file_system_errors_are_one_line_not_interrupted_or_internal(tmp_path, capsys, monkeypatch):
    """An EOFError inside a command is not a Ctrl-C (click turns both into Abort); disk problems name the path."""
    import errno

    import click

    from memlens import cli

    @click.command("boom")
    @click.argument("kind")
    def boom(kind: str) -> None:
        if kind == "eof":
            raise EOFError("No data left in file")
        if kind == "full":
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "x.csv"))
        if kind == "ctrl-c":
            raise KeyboardInterrupt
        raise OSError(errno.ECONNRESET, "Connection reset")  # not a file-system error: stays internal

    lookup = cli.app.get_command
    monkeypatch.setattr(cli.app, "get_command", lambda ctx, name: boom if name == "boom" else lookup(ctx, name))
    assert main(["boom", "eof"]) == 1
    err = capsys.readouterr().err.strip()  # (click writes an empty line before it turns the EOFError into Abort)
    assert err.startswith("error: a file ended unexpectedly") and "interrupted" not in err and "\n" not in err
    assert main(["boom", "full"]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'run' / 'x.csv'}: cannot be written or read (No space left on device)\n"
    assert main(["boom", "ctrl-c"]) == 130 and capsys.readouterr().err.strip() == "interrupted"
    assert main(["boom", "other"]) == 1 and "internal error (ConnectionResetError" in capsys.readouterr().err
    with pytest.raises(EOFError):
        main(["--debug", "boom", "eof"])


@pytest.mark.parametrize("args", [
    ["stats", "t.csv", "--x", "a", "--y", "b", "--confidence", "nan"],
    ["analyze", "RUN", "--confidence", "nan"],
    ["score", "--run", "RUN", "--gpus-per-worker", "inf"],
    ["train", "DATA", "--out", "RUN", "--lr", "nan"],
    ["train", "DATA", "--out", "RUN", "--experience-fraction", "nan"],
    ["score", "--run", "RUN", "--index-memory-mb", "nan"],
    ["explain", "RUN", "--smoothgrad-sigma", "nan"],
])
def test_non_finite_numbers_are_usage_errors(args, capsys):
    """nan passes every bound check of click.FloatRange; memlens refuses it before any work (exit 2)."""
    assert main(args) == 2
    assert "is not a finite number" in capsys.readouterr().err


def test_run_on_missing_data_creates_no_run_folder(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nonexist.csv"), "--out", str(tmp_path / "rx")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nonexist.csv'}: no such file or folder"
    assert not (tmp_path / "rx").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["train", "DATA", "--out", "RUN", "--backbone", "vgg17"], "unknown backbone 'vgg17'; choose one of small, vgg16"),
    (["train", "DATA", "--out", "RUN", "--device", "gpu"], "'gpu': use auto, cpu, cuda or cuda:N"),
    (["predict", "x.jpg", "--run", "RUN", "--device", "cuda0"], "'cuda0': use auto, cpu, cuda or cuda:N"),
    (["run", "DATA", "--out", "RUN", "--set", "train.nope=1"], "train.nope: unknown option"),
])
def test_typos_in_options_are_usage_errors(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_submodules_are_attributes_of_the_package():
    """memlens.explain.overlay_figure works in a fresh interpreter, without importing memlens.explain first."""
    code = ("import memlens; f = memlens.explain.overlay_figure; g = memlens.stats.fdr_bh\n"
            "try:\n    memlens.nonexistent\nexcept AttributeError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "module 'memlens' has no attribute 'nonexistent'"
