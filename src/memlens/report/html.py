"""The self-contained HTML report of a run directory.

:func:`build_report` reads whatever the stages wrote into a run directory (DESIGN.md §4), draws the
figures (:mod:`memlens.report.figures`) and writes ONE HTML file: every plot and image is an inline
``data:`` URI, the styles are inline, there is no script, and a Content-Security-Policy forbids any
network request. ``results.json`` beside it holds every number the report shows (full precision).

Every section renders on its own: when its input files are missing it says which stage computes them.
Every string that comes from the data (file names, categories, table values, config) is HTML-escaped.

This module assembles the page: the sections are built by :mod:`memlens.report.sections` (one module
each), the page shell is :mod:`memlens.report.page`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .._io import atomic_write_json, atomic_write_text
from .._version import __version__
from ..errors import RunDirError
from .analysis import BOOT_SEED as BOOT_SEED
from .analysis import N_BOOT as N_BOOT
from .analysis import REPORT_SOURCE as REPORT_SOURCE
from .analysis import CorrelationRows, ceiling_entry, noise_ceiling
from .context import ReportContext
from .formatting import esc as esc
from .formatting import fmt as fmt
from .formatting import fmt_ci as fmt_ci
from .formatting import fmt_p as fmt_p
from .formatting import fmt_r as fmt_r
from .formatting import nested_get
from .page import SECTION_IDS, render_page
from .run_files import RunFiles, find_data_root, is_simulated
from .sections.baselines import section_baselines
from .sections.correlations import MAX_TABLE_ROWS as MAX_TABLE_ROWS
from .sections.correlations import section_correlations
from .sections.descriptors import section_descriptors
from .sections.distinctiveness import section_distinctiveness
from .sections.explanations import MAX_OVERLAYS as MAX_OVERLAYS
from .sections.explanations import section_explanations
from .sections.galleries import GALLERY_SIZE as GALLERY_SIZE
from .sections.galleries import THUMB_PX as THUMB_PX
from .sections.galleries import section_galleries
from .sections.measure import MAX_CATEGORY_PANELS as MAX_CATEGORY_PANELS
from .sections.methods import section_methods
from .sections.predictor import section_predictor
from .sections.reconstruction import section_reconstruction
from .sections.summary import section_summary
from .sections.training import section_training

__all__ = ["build_report", "collect_report", "SECTION_IDS"]
# also importable from here, as before the split (``name as name`` above): esc, fmt, fmt_r, fmt_p, fmt_ci,
# N_BOOT, BOOT_SEED, REPORT_SOURCE, GALLERY_SIZE, THUMB_PX, MAX_OVERLAYS, MAX_TABLE_ROWS, MAX_CATEGORY_PANELS

log = logging.getLogger(__name__)


_BUILDERS: dict[str, Callable[[ReportContext], tuple[str, dict]]] = {
    "summary": section_summary, "training": section_training, "reconstruction": section_reconstruction,
    "distinctiveness": section_distinctiveness, "correlations": section_correlations,
    "predictor": section_predictor, "baselines": section_baselines, "galleries": section_galleries,
    "explanations": section_explanations, "descriptors": section_descriptors, "methods": section_methods,
}
# the summary shows headline numbers computed by later sections: build it last
_BUILD_ORDER = ("training", "reconstruction", "distinctiveness", "correlations", "predictor", "baselines",
                "galleries", "explanations", "descriptors", "methods", "summary")


def _headline(ctx: ReportContext, results: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers ``memlens run`` prints at the end (rounded; full precision is in the sections)."""
    out: dict[str, Any] = {}
    n = nested_get(results, "summary", "n_images")
    if n is not None:
        out["images"] = n
    if ctx.ceiling:
        c = ctx.ceiling.get("ceiling")
        out["noise ceiling (sqrt of the Spearman-Brown split-half reliability)"] = \
            round(c, 3) if c is not None else None
    for key in ("reconstruction", "distinctiveness"):
        if key in ctx.headline:
            col, r, scope = ctx.headline[key]
            out[f"rho({col}, score)" + (f" {scope}" if scope != "pooled" else "")] = round(r, 3)
    if "predictor" in ctx.headline:
        how = ctx.headline.get("predictor_how")
        key = f"predictor rho ({how})" if how else "predictor rho (cross-validated)"
        out[key] = round(ctx.headline["predictor"], 3)
        if "predictor_within" in ctx.headline:
            out["predictor rho within category (same images)"] = round(ctx.headline["predictor_within"], 3)
    return out


# ----------------------------------------------------------------------------------------------- public


def collect_report(run_dir: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Render the report of ``run_dir`` in memory.

    Parameters
    ----------
    run_dir : path
        A run directory (DESIGN.md §4). Missing files make their sections say so.

    Returns
    -------
    html_text, results : str, dict
        The complete HTML document and every number it shows.

    Raises
    ------
    RunDirError
        When ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory (expected the folder written by `memlens run`/`train`)")
    known = ("per_image.csv", "manifest.json", "config.json", "dataset.json", "pipeline.json", "correlations.csv",
             "predictor_cv.csv", "training_curve.csv", "exposure.csv", "attributions")
    if not any((run_dir / name).exists() for name in known):
        raise RunDirError(f"{run_dir}: not a memlens run directory (none of {', '.join(known[:4])}, ... in it); "
                          "give the folder written by `memlens run`/`train`")
    run = RunFiles(run_dir)
    per_image = run.per_image()
    ids = list(per_image["image_id"].astype(str)) if per_image is not None else None
    corr = CorrelationRows(run)
    ctx = ReportContext(run=run, corr=corr, per_image=per_image, ceiling=noise_ceiling(run, ids, corr),
                        data_root=find_data_root(run))
    if ctx.ceiling is None and ctx.corr and "split_half" in ctx.corr.df.columns:
        # analyze's split_half column: the (uncorrected) split-half correlation of the pooled rows
        pooled = ctx.corr.df[ctx.corr.scope == "pooled"]
        c = pd.to_numeric(pooled["split_half"], errors="coerce").dropna()
        if len(c):
            ctx.ceiling = ceiling_entry({"spearman_mean": float(c.iloc[0])}, f"{ctx.corr.source} (split_half column)")
    simulated = is_simulated(run)
    bodies: dict[str, str] = {}
    results: dict[str, Any] = {}
    for sec in _BUILD_ORDER:
        body, res = _BUILDERS[sec](ctx)
        bodies[sec], results[sec] = body, res
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    results = {"meta": {"memlens_version": __version__, "generated_at": now.isoformat(), "run_dir": str(run_dir),
                        "simulated": simulated, "sections": list(SECTION_IDS), "problems": list(run.problems)},
               "headline": _headline(ctx, results),
               **{sec: results[sec] for sec in SECTION_IDS}}
    page = render_page(run_dir, bodies, simulated, run.problems, now)
    return page, results


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the self-contained HTML report of a run and ``results.json`` beside it (both atomically).

    Parameters
    ----------
    run_dir : path
        The run directory.
    out : path, optional
        The HTML file to write; default ``run_dir/report.html``. ``results.json`` goes in the same folder.

    Returns
    -------
    Path
        The HTML file written.
    """
    from .._io import check_output_path

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    check_output_path(out)
    page, results = collect_report(run_dir)
    results["meta"]["html"] = out.name
    atomic_write_json(out.parent / "results.json", results)
    atomic_write_text(out, page)
    log.info("report written to %s", out)
    return out
