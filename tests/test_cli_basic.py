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
