"""``memlens run``: check -> train -> score -> analyze -> fit-predictor -> explain -> [baselines] -> report, in one
command (the baselines stage is off unless ``--baselines MODELS`` or the config's ``baselines.models`` asks).

Besides its own options it accepts the options of every stage (generated from the stage commands; one flag
sets that option in every stage that has it, e.g. ``--seed``), ``--config FILE`` (YAML/JSON, one section per
stage) and ``--set STAGE.OPTION=VALUE``. Precedence: stage defaults < config file < --set < flags.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click

from ._pipeline import STAGE_LIST, STAGE_NAMES

_RESERVED = {"data", "run", "run_dir", "out", "out_dir", "fmt", "resume", "overwrite", "help"}


def _compatible(a: click.Option, b: click.Option) -> bool:
    return (a.multiple == b.multiple and a.is_flag == b.is_flag
            and type(a.type) is type(b.type)
            and getattr(a.type, "choices", None) == getattr(b.type, "choices", None))


#: data-selection options that train must load the data with exactly as check validated it: one flag of check's
#: (``--check-split``) sets both, so train's own is not a flag of ``memlens run``
_DATA_SELECTION = {"split"}


#: stage options that are not generated flags: ``--baselines`` / ``--baseline-weights`` set them (below)
_STAGE_ONLY = {("baselines", "models"), ("baselines", "weights")}

#: help of a shared flag whose stages describe it differently (each stage's text)
_HELP: dict[str, str] = {}


def _shared_options() -> dict[str, tuple[click.Option, list[str], str]]:
    """Run flag name -> (definition, stages it applies to, the stage's option name), from the stage commands.

    An option that several stages define alike becomes one flag for all of them (``--seed``); one that
    stages define differently (check's ``--split NAME`` vs fit-predictor's ``--split paper|kfold``) gets a
    stage-prefixed flag per stage (``--check-split``, ``--predictor-split``).
    """
    from ..cli import COMMANDS

    by_name: dict[str, list[tuple[str, click.Option]]] = {}
    for stage in STAGE_LIST:
        module_name, attr = COMMANDS[stage.command][0].split(":")
        try:
            cmd = getattr(importlib.import_module(module_name), attr)
        except ModuleNotFoundError:  # pragma: no cover - a stage missing from this build
            continue
        for p in cmd.params:
            if not isinstance(p, click.Option) or not p.name or p.name in _RESERVED or p.count:
                continue
            if stage.name == "train" and p.name in _DATA_SELECTION:
                continue
            if (stage.name, p.name) in _STAGE_ONLY:
                continue
            by_name.setdefault(p.name, []).append((stage.name, p))
    found: dict[str, tuple[click.Option, list[str], str]] = {}
    for name, defs in by_name.items():
        if all(_compatible(defs[0][1], p) for _, p in defs[1:]):
            found[name] = (defs[0][1], [stage for stage, _ in defs], name)
            helps = {stage: (p.help or "").strip() for stage, p in defs}
            if len(set(helps.values())) > 1:  # one flag, several meanings: say each stage's
                _HELP[name] = " ".join(f"[{stage}] {h}" for stage, h in helps.items() if h)
        else:
            for stage, p in defs:
                found[f"{stage}_{name}"] = (p, [stage], name)
    for name in _DATA_SELECTION:  # check's flag sets train's option too
        for key in (name, f"check_{name}"):
            if key in found and found[key][1] == ["check"]:
                found[key] = (found[key][0], ["check", "train"], name)
    return found


SHARED = _shared_options()


def _add_shared(f):
    for name, (p, stages, _) in sorted(SHARED.items(), reverse=True):
        long = "--" + name.replace("_", "-")
        help_ = _HELP.get(name) or f"[{', '.join(stages)}] {p.help or ''}".strip()
        if p.is_flag and name.startswith("no_"):  # --no-groups: no "--no-no-groups" off switch
            f = click.option(long, name, is_flag=True, default=None, help=help_)(f)
        elif p.is_flag:
            f = click.option(f"{long}/--no-{name.replace('_', '-')}", name, default=None, help=help_)(f)
        else:
            f = click.option(long, name, type=p.type, multiple=p.multiple, default=None,
                             metavar=p.metavar, help=help_)(f)
    return f


def _parse_sets(values: tuple[str, ...]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in values:
        key, sep, value = item.partition("=")
        stage, dot, option = key.partition(".")
        if not sep or not dot or stage not in STAGE_NAMES or not option:
            raise click.BadParameter(f"{item!r}: expected STAGE.OPTION=VALUE with STAGE one of "
                                     f"{', '.join(STAGE_NAMES)}", param_hint="--set")
        out.setdefault(stage, {})[option.replace("-", "_")] = value
    return out


def build_stage_options(config_file: Path | None, sets: tuple[str, ...], flags: dict[str, Any],
                        base: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Merge base < config file < --set < flags into ``{stage: {option: value}}`` (validated)."""
    from ..config import PipelineConfig, load_config
    from ..errors import ConfigError

    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (base or {}).items()}
    layers = []
    if config_file is not None:
        layers.append(load_config(config_file).to_dict())
    try:
        layers.append(PipelineConfig(_parse_sets(sets)).to_dict())
    except ConfigError as exc:  # an unknown option or a bad value given on the command line: a usage error
        raise click.BadParameter("; ".join(exc.lines()), param_hint="--set") from None
    for layer in layers:
        for stage, opts in layer.items():
            merged.setdefault(stage, {}).update(opts)
    for name, value in flags.items():
        if value is None or (isinstance(value, tuple) and not value):
            continue
        _, stages, option = SHARED[name]
        for stage in stages:
            merged.setdefault(stage, {})[option] = value
    check, train = merged.get("check", {}), merged.setdefault("train", {})
    for key in _DATA_SELECTION:
        if check.get(key) and not train.get(key):
            train[key] = check[key]
        elif check.get(key) and _as_list(check[key]) != _as_list(train[key]):
            raise click.UsageError(f"check.{key} ({check[key]}) and train.{key} ({train[key]}) differ: train must "
                                   "load the data that check validated")
    return merged


def _as_list(v: Any) -> list[str]:
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [x.strip() for x in str(v).split(",") if x.strip()]


def summarize(run_dir: Path, record: dict[str, Any]) -> None:
    """Print the final summary: stage times, headline numbers, the report's path."""
    import json

    click.echo("")
    click.echo("stage          status        seconds")
    for name in STAGE_NAMES:
        r = record.get(name, {})
        sec = r.get("seconds")
        click.echo(f"{name:<14} {r.get('status', '-'):<13} {'' if sec is None else f'{sec:7.1f}'}")
    click.echo(f"total {record.get('total_seconds', 0):.1f} s")
    results = run_dir / "results.json"
    if results.exists():
        try:
            headline = json.loads(results.read_text()).get("headline", {})
        except ValueError:
            headline = {}
        for key, value in headline.items():
            click.echo(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    report = run_dir / "report.html"
    if report.exists():
        click.echo(f"report: {report.resolve()}")


@click.command("run", context_settings={"max_content_width": 110})
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (created; completed stages are resumed).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML/JSON config: one section per stage (check, train, score, analyze, predictor, explain, "
              "report) with the stage's options; or a built-in config by name: bagheri2026 (the paper's setting).")
@click.option("--set", "sets", multiple=True, metavar="STAGE.OPTION=VALUE",
              help="Set one stage option, e.g. --set train.pretrain_epochs=5 (repeatable).")
@click.option("--force", is_flag=True, help="Rerun every stage even when its outputs are up to date.")
@click.option("--skip", multiple=True, type=click.Choice(STAGE_NAMES), help="Leave out a stage (repeatable).")
@click.option("--baselines", "baseline_models", default=None, metavar="MODELS",
              help="[baselines] Turn the baselines stage on: compare the predictor with these models "
                   "(resmem,vitmem,ridge-lite0,paper-mlp or all-installed; memlens baselines --models) [default: off].")
@click.option("--baseline-weights", multiple=True, metavar="NAME=PATH",
              help="[baselines] A pretrained baseline's weights file (memlens baselines --weights; repeatable).")
@_add_shared
@click.pass_context
def run(ctx: click.Context, data: Path, out: Path, config_file: Path | None, sets: tuple[str, ...], force: bool,
        skip: tuple[str, ...], baseline_models: str | None, baseline_weights: tuple[str, ...], **flags: Any) -> None:
    """Run the whole pipeline on DATA into the run directory OUT."""
    from ..errors import DataError
    from ._pipeline import run_pipeline

    options = build_stage_options(config_file, sets, flags)
    if baseline_models is not None:
        options.setdefault("baselines", {})["models"] = baseline_models
    if baseline_weights:
        options.setdefault("baselines", {})["weights"] = list(baseline_weights)
    if not data.exists() and not (out / "pipeline.json").is_file():  # nothing to run, and no run to update
        raise DataError(f"{data}: no such file or folder")
    record = run_pipeline(data, out, options, force=force, skip=skip, obj=ctx.find_root().obj)
    summarize(out, record)
