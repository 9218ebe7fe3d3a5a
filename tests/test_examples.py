"""Every public function and class of ``memlens.__all__`` has an example in its docstring, and every example
runs (doctest), with ``data`` (a demo set), ``run`` (a run of it; a copy, so examples may write to it) and
``images`` (a few of its files) defined as the examples say; docs/notebook.md runs cell by cell."""

from __future__ import annotations

import doctest
import inspect
import re
import shlex
import shutil

import pytest

import memlens
from _fake_run import real_run as _real_run

#: public names whose docstring lives in files being edited elsewhere; their example is still owed
EXAMPLE_PENDING: dict[str, str] = {}  # public names whose example is still to write (none)
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public() -> list[str]:
    out = []
    for name in memlens.__all__:
        obj = getattr(memlens, name, None)
        if name == "__version__" or (inspect.isclass(obj) and issubclass(obj, BaseException)):
            continue  # the version string and the error classes
        out.append(name)
    return out


@pytest.fixture(scope="module")
def globs(tmp_path_factory):
    real = _real_run(tmp_path_factory)
    run = tmp_path_factory.mktemp("examples") / "run"
    shutil.copytree(real.run, run)
    images = [str(p) for p in sorted(real.data.rglob("demo_*.jpg"))[:4]]
    return {"data": str(real.data), "run": str(run), "images": images}


def test_every_public_function_has_an_example():
    missing = [n for n in _public() if ">>>" not in (inspect.getdoc(getattr(memlens, n)) or "")]
    assert sorted(missing) == sorted(EXAMPLE_PENDING), f"public names without an example: {missing}"


def _run_doctests(obj, globs, name):
    finder = doctest.DocTestFinder(recurse=False)
    tests = [t for t in finder.find(obj, name, globs=dict(globs)) if t.examples]
    assert tests, f"{name}: no example"
    runner = doctest.DocTestRunner(optionflags=_FLAGS)
    for t in tests:
        runner.run(t)
    res = runner.summarize(verbose=False)
    assert res.failed == 0, f"{name}: {res.failed} of {res.attempted} example lines failed (see the output above)"


@pytest.mark.parametrize("name", [n for n in _public() if n not in EXAMPLE_PENDING])
def test_public_examples_run(name, globs):
    _run_doctests(getattr(memlens, name), globs, name)


@pytest.mark.parametrize("target", ["memlens.baselines", "memlens.baselines.registry.get_baseline",
                                    "memlens.baselines.fitted.RidgeLite0",
                                    "memlens.baselines.compare.compare_baselines"])
def test_baselines_examples_run(target, globs):
    import importlib

    module, _, attr = target.rpartition(".")
    try:
        obj = importlib.import_module(target)
    except ModuleNotFoundError:
        obj = getattr(importlib.import_module(module), attr)
    _run_doctests(obj, globs, target)


def _notebook_cells(text: str) -> list[str]:
    """The ```python blocks of a Markdown page, except those right after a ``<!-- not run in CI ... -->`` line."""
    cells = []
    for m in re.finditer(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)```", text, re.S):
        if m.group("before").strip().startswith("<!-- not run in CI"):
            continue
        cells.append(m.group("code"))
    return cells


def test_notebook_doc_runs(tmp_path, monkeypatch):
    """docs/notebook.md as Jupyter would run it: ``!memlens ...`` lines are shell commands with ``{var}``
    filled from the notebook's variables (here: memlens's CLI in this process)."""
    from pathlib import Path

    from memlens.cli import main

    page = Path(__file__).resolve().parents[1] / "docs" / "notebook.md"
    cells = _notebook_cells(page.read_text(encoding="utf-8"))
    assert len(cells) >= 6
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__notebook__"}
    for k, cell in enumerate(cells):
        lines = []
        for line in cell.splitlines():
            if line.startswith("!"):
                cmd = line[1:].format(**ns)
                lines.append(f"assert __shell__({shlex.split(cmd)!r}) == 0, {cmd!r}")
            else:
                lines.append(line)
        ns["__shell__"] = lambda argv: main(argv[1:]) if argv[0] == "memlens" else pytest.fail(argv[0])
        exec(compile("\n".join(lines), f"notebook.md cell {k + 1}", "exec"), ns)  # noqa: S102
    assert {"pred", "measures", "res"} <= set(ns)
    assert list(ns["res"].table.model) == ["memlens", "ridge-lite0", "paper-mlp"]
