"""The pipeline behind ``memlens run`` and ``memlens demo``: stage commands run in order on one run directory.

Each stage is its ordinary CLI command, called with the argument list that its options translate to, so a
config file, ``--set stage.key=value`` and the flags of ``memlens run`` all go through the very same
parsing and validation as when the stage is run by hand. A stage whose outputs exist and whose arguments are
unchanged since it last completed (``RUN/pipeline.json``), on unchanged data, is skipped; once a stage reruns,
every later stage reruns too. ``check`` writes nothing: it reruns only when the data or its arguments changed,
and never forces the stages after it. The data's fingerprint (:func:`data_fingerprint`: the table's content
and every listed image's size and modification time, and an experience corpus's) is recorded; changed data
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
    # off by default: runs when its options name the models (memlens run --baselines resmem,vitmem)
    Stage("baselines", "baselines", ("baselines.csv",), lambda d, r: [r]),
    Stage("report", "report", ("report.html",), lambda d, r: [r]),
)
STAGE_NAMES = tuple(s.name for s in STAGE_LIST)
#: stages that run only when their config section sets this option (else their status is "off")
OPT_IN: dict[str, str] = {"baselines": "models"}


def stage_enabled(name: str, stage_options: Mapping[str, Mapping[str, Any]]) -> bool:
    """False for an opt-in stage (:data:`OPT_IN`) whose options do not set its switch."""
    key = OPT_IN.get(name)
    return key is None or bool((stage_options.get(name) or {}).get(key))


def data_fingerprint(data: str | os.PathLike, options: Mapping[str, Any] | None = None,
                     experience: str | os.PathLike | None = None) -> str:
    """A cheap identity of what a run is made from: the data set's table content (image ids, scores,
    categories and the other columns, as :func:`memlens.data.load_dataset` reads it with check's
    ``options``), the path, size and modification time of every image it lists and of its split-half file,
    and the same of an experience corpus. A replaced image or an edited table is changed data; files the data
    set does not use are not. Data that cannot be loaded is fingerprinted by its bytes (check reports it)."""
    import hashlib

    h = hashlib.sha256()

    def add_files(paths: list[Path]) -> None:
        for f in sorted(paths):
            try:
                st = f.stat()
            except OSError:
                h.update(f"{f}\tmissing\n".encode("utf-8", "surrogateescape"))
                continue
            h.update(f"{f}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))

    def add_dataset(source: str | os.PathLike, opts: Mapping[str, Any]) -> None:
        from ..data import load_dataset
        from ..data.layouts import HALVES_FILE
        from ..data.layouts.parquet import is_locator
        from ..data.local_files import parquet_stamps
        from ..errors import DataError
        from ..train import table_sha256

        kw = {k: opts[k] for k in ("image_col", "score_col", "category_col", "score_variant") if opts.get(k)}
        if opts.get("split"):
            split = opts["split"]
            kw["splits"] = [split] if isinstance(split, str) else list(split)
        try:
            ds = load_dataset(source, opts.get("layout") or "auto", **kw)
        except Exception:  # noqa: BLE001 - bad data: the check stage reports it; fingerprint the bytes
            src = Path(source)
            add_files([src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()] if src.is_dir() else [])
            return
        h.update(table_sha256(ds.table).encode())
        files = [Path(p).resolve() for p in ds.paths if not is_locator(str(p))]
        add_files(files + [Path(ds.root).resolve() / HALVES_FILE])
        try:  # images in Parquet cells: the files that hold them
            h.update("".join(f"{line}\n" for line in parquet_stamps(ds)).encode("utf-8", "surrogateescape"))
        except DataError as exc:
            h.update(f"unreadable: {exc}\n".encode("utf-8", "surrogateescape"))

    add_dataset(data, options or {})
    if experience:
        add_dataset(experience, {})
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
        if p.is_flag and isinstance(value, str):  # --set stage.flag=false arrives as text
            try:
                value = click.BOOL.convert(value, None, None)
            except click.BadParameter:
                raise click.UsageError(f"{cmd.name}: {key}={value!r}: expected true or false") from None
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
    from ..train import has_resumable_state, later_outputs

    run = check_output_path(Path(run), directory=True)
    prior = _load_state(run)
    owned = bool(prior.get("stages", {}).get("train"))  # this pipeline trained here before
    fingerprint = data_fingerprint(data, stage_options.get("check", {}), stage_options.get("train", {}).get("experience"))
    state = {} if force else prior
    if state and "fingerprint" not in state:  # written before fingerprints were recorded: adopt this one
        log.info("%s: no data fingerprint recorded; taking the current data as the run's", run / "pipeline.json")
    elif state and state.get("fingerprint") != fingerprint:
        echo("the data changed since the last run in this directory: every stage reruns")
        state = {}
    # the recorded arguments name DATA and RUN absolutely
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
        if stage.name not in skip and stage_enabled(stage.name, stage_options):
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
            if not stage_enabled(stage.name, stage_options):
                record[stage.name] = {"status": "off"}
                stages_state.pop(stage.name, None)
                if rerun_stage is not None and any((run / f).exists() for f in stage.outputs):
                    echo(f"[{stage.name}] off (memlens run --{stage.name} ...); its files in {run} are from an "
                         f"earlier run, older than this run's {rerun_stage}")
                continue
            cmd = _command(stage.command)
            positional = stage.positional(data_arg, run_arg)
            args = positional + options_to_args(cmd, stage_options.get(stage.name, {}))
            prev = stages_state.get(stage.name, {})
            # the options decide; DATA is the fingerprint's business and RUN is this directory, however either
            # was spelled (relative paths, another working folder, records of older versions)
            same_args = prev.get("args", [None] * len(positional))[len(positional):] == args[len(positional):]
            complete = (all((run / f).exists() for f in stage.outputs)
                        and same_args and prev.get("status") == "done")
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
                resumable = (not force and same_args
                             and prev.get("status") in ("running", "interrupted", "failed")
                             and has_resumable_state(run))
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
            stopped = isinstance(exc, KeyboardInterrupt) or (  # click's Abort also wraps an EOFError: a failure
                isinstance(exc, click.exceptions.Abort) and not isinstance(exc.__cause__ or exc.__context__, EOFError))
            stages_state[running] = {**stages_state[running], "status": "interrupted" if stopped else "failed"}
            with contextlib.suppress(OSError):
                save()
        raise
    save()  # stages skipped after a rerun lost their "done"
    record["total_seconds"] = round(time.perf_counter() - t_all, 2)
    return record
