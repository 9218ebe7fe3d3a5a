"""Section ``methods``: how the numbers were made, provenance (versions, device, seeds, timings),
the commands run and the resolved configuration."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..._version import __version__
from ..analysis import BOOT_SEED, N_BOOT
from ..context import ReportContext
from ..formatting import esc, flatten, isnum, nested_get
from ..markup import html_table, kv_table, missing_note

_COMMAND_OF = {"predictor": "fit-predictor"}  # pipeline.json stage name -> CLI command


def _shell_quote(arg: Any) -> str:
    import shlex

    return shlex.quote(str(arg))


def _arg_value(args: Any, flag: str) -> str | None:
    """The value after ``flag`` in a stage's argument list (``pipeline.json``)."""
    if isinstance(args, list):
        for i, a in enumerate(args[:-1]):
            if a == flag:
                return str(args[i + 1])
    return None


def _as_seed(v: Any) -> Any:
    """A seed as an int when it is one (command-line values arrive as text)."""
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return v


def _seed_rows(seeds: Mapping[str, Any], ctx: ReportContext) -> list[tuple[str, Any]]:
    """The seeds for display, with what each one drew."""
    what = {"train": "initial weights, experience split, presentation order",
            "analyze": f"bootstrap, {ctx.corr.meta.get('n_boot')} resamples",
            "fit-predictor": "folds and models", "explain": "SmoothGrad noise, sanity-check weights",
            "report": f"bootstrap of the report's own intervals, {N_BOOT} resamples"}
    return [(k, f"{v} ({what[k]})" if k in what else v) for k, v in seeds.items()]


def _stage_seeds(ctx: ReportContext) -> dict[str, Any]:
    """The seed of every stage that has one (an int), from the files the stages wrote (pipeline.json as a
    fallback)."""
    run = ctx.run
    pipeline = nested_get(run.json("pipeline.json"), "stages") or {}
    seeds: dict[str, Any] = {}
    train = nested_get(run.json("manifest.json"), "seeds", "seed")
    if train is None:
        train = nested_get(run.json("config.json"), "seed")
    if train is None:
        train = _arg_value(nested_get(pipeline, "train", "args"), "--seed")
    seeds["train"] = train
    if ctx.corr.meta.get("seed") is not None or ctx.corr.meta.get("n_boot") is not None:
        seeds["analyze"] = ctx.corr.meta.get("seed")
    pred = _arg_value(nested_get(pipeline, "predictor", "args"), "--seed")
    if pred is None and run.path("predictor_cv.csv") is not None and nested_get(pipeline, "predictor"):
        pred = 0  # fit-predictor's default
    seeds["fit-predictor"] = pred
    ex = nested_get(run.json("attributions/explain.json"), "integrated_gradients", "seed")
    if ex is None:
        ex = nested_get(run.json("attributions/sanity.json"), "seed")
    seeds["explain"] = ex
    seeds["report"] = BOOT_SEED
    return {k: _as_seed(v) for k, v in seeds.items() if v is not None}


def section_methods(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``methods``, methods and provenance: its HTML body and its numbers for results.json."""
    run = ctx.run
    res: dict[str, Any] = {}
    parts = ['<p class="lead">How the numbers were made: correlations are Spearman rank correlations with paired '
             "bootstrap 95% intervals (images resampled with their scores; <code>memlens.stats.correlate</code>). "
             "Human split-half consistency is the mean Spearman correlation between the hit rates of two random "
             "halves of the participants. It is the noise ceiling every ratio in this report divides by (as in "
             "memorability papers); its Spearman-Brown value is the estimated reliability of the full group's "
             "score. Every <code>recon_*</code> measure is a distance (higher = worse reconstruction).</p>"]
    ds = run.json("dataset.json")
    if isinstance(ds, Mapping):
        res["dataset"] = ds
        parts.append("<h3>Data</h3>" + kv_table(flatten(ds)))
    else:
        parts.append(missing_note("Data description", ["dataset.json"], "memlens train"))
    man = run.json("manifest.json")
    seeds = _stage_seeds(ctx)
    res["seeds"] = seeds
    pipeline = run.json("pipeline.json")
    stage_times = [(name, st.get("seconds")) for name, st in (nested_get(pipeline, "stages") or {}).items()
                   if isinstance(st, Mapping) and isnum(st.get("seconds"))]
    if stage_times:
        res["stage_seconds"] = dict(stage_times)
    if isinstance(man, Mapping):
        res["manifest"] = man
        special = {}
        for key in ("versions", "timings", "seeds", "device"):
            if isinstance(man.get(key), Mapping):
                special[key] = man[key]
        blocks = []
        if "versions" in special:
            blocks.append("<div><h3>Software versions</h3>" + kv_table(flatten(special["versions"])) + "</div>")
        if "device" in special:
            blocks.append("<div><h3>Device</h3>" + kv_table(flatten(special["device"])) + "</div>")
        elif man.get("device") is not None:
            blocks.append("<div><h3>Device</h3>" + kv_table([("device", man["device"])]) + "</div>")
        if seeds:
            blocks.append("<div><h3>Seeds</h3>" + kv_table(_seed_rows(seeds, ctx)) + "</div>")
        if stage_times or "timings" in special:
            t = [(f"pipeline: {k}", f"{float(v):.2f}") for k, v in stage_times]
            t += [(f"train: {k}", f"{float(v):.2f}" if isnum(v) else v) for k, v in flatten(special.get("timings", {}))]
            blocks.append("<div><h3>Timings</h3>" + html_table(["step", "seconds"], t, [False, True]) + "</div>")
        if blocks:
            parts.append(f'<div class="kvgrid">{"".join(blocks)}</div>')
        rest = {k: v for k, v in man.items() if k not in special and k not in ("device",)}
        if rest:
            parts.append("<details><summary>Full training manifest (<code>manifest.json</code>)</summary>"
                         + kv_table(flatten(rest)) + "</details>")
    else:
        parts.append(missing_note("Provenance (versions, device, seeds, timings)", ["manifest.json"], "memlens train"))
        if seeds:
            parts.append("<h3>Seeds</h3>" + kv_table(_seed_rows(seeds, ctx)))
    commands = [f"memlens {_COMMAND_OF.get(name, name)} " + " ".join(_shell_quote(a) for a in st.get("args") or [])
                for name, st in (nested_get(pipeline, "stages") or {}).items() if isinstance(st, Mapping)]
    if commands:
        res["commands"] = commands
        parts.append("<h3>Commands run</h3><pre>" + esc("\n".join(commands)) + "</pre>")
    cfg = run.json("config.json")
    if cfg is not None:
        res["config"] = cfg
        parts.append("<h3>Configuration</h3><pre>" + esc(json.dumps(cfg, indent=2, sort_keys=True, default=str)) + "</pre>")
    else:
        parts.append(missing_note("Resolved configuration", ["config.json"], "memlens train"))
    parts.append("<h3>This report</h3>" + kv_table([("memlens", __version__), ("run directory", str(run.dir)),
                                                    ("correlations computed by the report",
                                                     f"{N_BOOT} bootstrap resamples, seed {BOOT_SEED} (only where "
                                                     "correlations.csv has no row)")]))
    return "".join(parts), res
