"""The pipeline behind ``memlens run`` and ``memlens demo``: stage commands run in order on one run directory.

Each stage is its ordinary CLI command, called with the argument list that its options translate to, so a
config file, ``--set stage.key=value`` and the flags of ``memlens run`` all go through the very same
parsing and validation as when the stage is run by hand. A stage whose outputs exist and whose arguments are
unchanged since it last completed (``RUN/pipeline.json``), on unchanged data, is skipped; once a stage reruns,
every later stage reruns too. ``check`` writes nothing: it reruns only when the data or its arguments changed,
and never forces the stages after it. The data's fingerprint (a table's bytes, and the file names, sizes and
modification times of its folder or of the data folder, and of an experience corpus) is recorded; changed data
reruns everything. A run with nothing to do rewrites nothing, not even ``pipeline.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str  # config section
    command: str  # CLI command
    outputs: tuple[str, ...]  # files in RUN that mark the stage complete ("" = always rerun)
    positional: Callable[[str, str], list[str]]  # (data, run) -> leading arguments


STAGE_LIST: tuple[Stage, ...] = (
    Stage("check", "check", (), lambda d, r: [d]),
    Stage("train", "train", ("autoencoder.pt",), lambda d, r: [d, "--out", r]),
    # score reloads the data exactly as train recorded it (RUN/dataset.json: layout and column options)
    Stage("score", "score", ("per_image.csv", "latents.npy"), lambda d, r: ["--run", r]),
    Stage("analyze", "analyze", ("correlations.json",), lambda d, r: [r]),
    Stage("predictor", "fit-predictor", ("predictor.pt", "predictor_cv.csv"), lambda d, r: [r]),
    Stage("explain", "explain", ("descriptors.csv",), lambda d, r: [r]),
    Stage("report", "report", ("report.html",), lambda d, r: [r]),
)
STAGE_NAMES = tuple(s.name for s in STAGE_LIST)


def data_fingerprint(data: str | os.PathLike, exclude: Path | None = None,
                     extra: tuple[str | os.PathLike, ...] = ()) -> str:
    """A cheap identity of the data: the sha256 of a table file's bytes and of the (relative path, size,
    modification time) entries of the folder it lies in -- or of the data folder -- so that a replaced image
    counts as changed data. ``exclude``: a folder to leave out (the run itself, when it lies inside);
    ``extra``: more files or folders that belong to the data (an experience corpus)."""
    import hashlib

    h = hashlib.sha256()
    skip = exclude.resolve() if exclude is not None else None

    def walk(folder: Path) -> None:
        entries = []
        for here_s, dirs, files in os.walk(folder):
            here = Path(here_s)
            if skip is not None:
                dirs[:] = [d for d in dirs if (here / d).resolve() != skip]
            for name in files:
                try:
                    st = (here / name).stat()
                except OSError:
                    continue
                entries.append(f"{(here / name).relative_to(folder).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}")
        for e in sorted(entries):
            h.update(e.encode("utf-8", "surrogateescape") + b"\n")

    for item in (data, *extra):
        src = Path(item)
        h.update(b"\0" + str(src.name).encode("utf-8", "surrogateescape") + b"\0")
        if src.is_file():
            with open(src, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            walk(src.parent)
        elif src.is_dir():
            walk(src)
        else:
            h.update(b"missing")
    return h.hexdigest()


def _command(name: str) -> click.Command:
    from ..cli import app

    cmd = app.get_command(click.Context(app), name)
    if cmd is None:  # pragma: no cover
        raise click.UsageError(f"command {name!r} is not available")
    return cmd


def options_to_args(cmd: click.Command, options: Mapping[str, Any]) -> list[str]:
    """Translate ``{option_name: value}`` into the command-line arguments of ``cmd``."""
    params = {p.name: p for p in cmd.params if isinstance(p, click.Option)}
    args: list[str] = []
    for key, value in options.items():
        p = params.get(key.replace("-", "_"))
        if p is None:
            known = ", ".join(sorted(n for n in params if n))
            raise click.UsageError(f"{cmd.name}: unknown option {key!r} (known: {known})")
        if value is None:
            continue
        flag = max(p.opts, key=len)
        if p.is_flag and not p.count:
            if p.secondary_opts:
                args.append(flag if value else max(p.secondary_opts, key=len))
            elif value:
                args.append(flag)
        elif p.multiple:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                args += [flag, str(v)]
        elif isinstance(value, (list, tuple)):
            args += [flag, ",".join(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args


def _load_state(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "pipeline.json").read_text())
    except (OSError, ValueError):
        return {}


def _save_state(run: Path, state: dict[str, Any]) -> None:
    from .._io import atomic_write_json

    atomic_write_json(run / "pipeline.json", state)


def run_pipeline(data: str | os.PathLike, run: str | os.PathLike, stage_options: Mapping[str, Mapping[str, Any]],
                 *, force: bool = False, skip: tuple[str, ...] = (), obj: dict | None = None,
                 echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Run every stage on ``data`` into ``run``; returns the per-stage record (status, seconds, args)."""
    from .._io import check_output_path
    from ..train import later_outputs

    run = check_output_path(Path(run), directory=True)
    prior = _load_state(run)
    owned = bool(prior.get("stages", {}).get("train"))  # this pipeline trained here before
    experience = stage_options.get("train", {}).get("experience")
    fingerprint = data_fingerprint(data, exclude=run, extra=(experience,) if experience else ())
    state = {} if force else prior
    if state and "fingerprint" not in state:  # written before fingerprints were recorded: adopt this one
        log.info("%s: no data fingerprint recorded; taking the current data as the run's", run / "pipeline.json")
    elif state and state.get("fingerprint") != fingerprint:
        echo("the data changed since the last run in this directory: every stage reruns")
        state = {}
    # the recorded arguments name DATA and RUN absolutely: the same run from another folder is the same run
    data_arg, run_arg = str(Path(data).resolve()), str(run.resolve())
    stages_state: dict[str, Any] = dict(state.get("stages", {}))
    rerun_rest = force
    rerun_stage: str | None = "everything (--force)" if force else None
    record: dict[str, Any] = {}
    t_all = time.perf_counter()
    running: str | None = None  # the stage in progress, recorded as failed or interrupted if it raises

    def save() -> None:
        nonlocal prior
        new = {"data": data_arg, "fingerprint": fingerprint, "stages": stages_state}
        if new != prior:  # a run with nothing to do rewrites nothing
            _save_state(run, new)
            prior = json.loads(json.dumps(new))
    # every stage's arguments parse before any stage runs: a typo in a late stage fails now, not after training
    for stage in STAGE_LIST:
        if stage.name not in skip:
            cmd = _command(stage.command)
            args = stage.positional(data_arg, run_arg) + options_to_args(cmd, stage_options.get(stage.name, {}))
            cmd.make_context(f"memlens {stage.command}", list(args))
    try:
        for stage in STAGE_LIST:
            if stage.name in skip:
                record[stage.name] = {"status": "skipped (--skip)"}
                if rerun_stage is not None and any((run / f).exists() for f in stage.outputs):
                    echo(f"[{stage.name}] skipped (--skip); its files in {run} are from an earlier run, "
                         f"older than this run's {rerun_stage}")
                continue
            cmd = _command(stage.command)
            args = stage.positional(data_arg, run_arg) + options_to_args(cmd, stage_options.get(stage.name, {}))
            prev = stages_state.get(stage.name, {})
            complete = (all((run / f).exists() for f in stage.outputs)
                        and prev.get("args") == args and prev.get("status") == "done")
            if complete and not (rerun_rest and stage.outputs):
                echo(f"[{stage.name}] up to date, skipped")
                record[stage.name] = {"status": "up to date", "seconds": prev.get("seconds")}
                continue
            run_args = list(args)
            if stage.outputs:  # a stage that writes: everything after it reruns, or is out of date if skipped
                rerun_rest = True
                rerun_stage = rerun_stage or stage.name
                for later in STAGE_LIST[STAGE_LIST.index(stage) + 1:]:
                    stages_state.pop(later.name, None)
            if stage.name == "train":
                resumable = (not force and prev.get("args") == args
                             and prev.get("status") in ("running", "interrupted", "failed")
                             and (any((run / "checkpoints" / f).exists()
                                      for f in ("experience.pt", "exposure.pt", "pretrain.pt"))
                                  or (run / "autoencoder_before.pt").exists()))  # experience done
                if resumable:
                    run_args.append("--resume")  # an interrupted training with the same settings continues
                elif earlier := later_outputs(run):
                    if not (owned or force):
                        raise click.UsageError(
                            f"{run} holds results of an earlier run that memlens run did not make "
                            f"({', '.join(earlier[:5])}); use another --out, or --force to replace them")
                    run_args.append("--overwrite")  # the earlier run's later outputs would be out of date
            echo(f"[{stage.name}] memlens {stage.command} {' '.join(run_args)}")
            stages_state[stage.name] = {"status": "running", "args": args}
            running = stage.name
            run.mkdir(parents=True, exist_ok=True)
            save()
            t0 = time.perf_counter()
            rv = cmd.main(args=run_args, prog_name=f"memlens {stage.command}", standalone_mode=False,
                          obj={**(obj or {}), "pipeline": True})
            if isinstance(rv, int) and rv != 0:
                raise click.exceptions.Exit(rv)
            seconds = round(time.perf_counter() - t0, 2)
            stages_state[stage.name] = {"status": "done", "args": args, "seconds": seconds}
            running = None
            record[stage.name] = {"status": "done", "seconds": seconds}
            save()
    except BaseException as exc:
        if running is not None and run.is_dir():  # never leave "running" behind
            stopped = isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort))
            stages_state[running] = {**stages_state[running], "status": "interrupted" if stopped else "failed"}
            with contextlib.suppress(OSError):
                save()
        raise
    save()  # stages skipped after a rerun lost their "done"
    record["total_seconds"] = round(time.perf_counter() - t_all, 2)
    return record
