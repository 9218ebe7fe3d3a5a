"""The body shared by the per-image measure sections (reconstruction, distinctiveness): scatter,
binned means, per-category panels, within/partial correlations and every measure of the family."""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import pandas as pd

from .. import figures as F
from ..analysis import correlation_numbers, report_correlation
from ..context import ReportContext
from ..formatting import clean_value, fmt_ci, fmt_p
from ..markup import figure_html, html_table, note

MAX_CATEGORY_PANELS = 12

_METRIC_NAMES = {
    "mse": "MSE", "l1": "L1", "mae": "L1", "dssim": "1 − SSIM", "ms-dssim": "1 − MS-SSIM", "ms_dssim": "1 − MS-SSIM",
    "lpips": "LPIPS", "perceptual": "perceptual distance", "exposure": "loss at the single exposure",
}


def _measure_label(col: str) -> str:
    if col.startswith("recon_"):
        name = col[len("recon_"):]
        before = name.endswith("_before")
        if before:
            name = name[: -len("_before")]
        pretty = _METRIC_NAMES.get(name, name)
        when = " before exposure" if before else ""
        if name == "exposure":
            return "reconstruction error at the single exposure (training loss, higher = worse)"
        return f"reconstruction error{when} ({pretty}, higher = worse)"
    if col == "distinctiveness":
        return "latent distinctiveness (distance to nearest neighbours, higher = more distinct)"
    if col.startswith("distinctiveness_"):
        return f"distinctiveness ({col[len('distinctiveness_'):]}, higher = more distinct)"
    return col


def _correlation_for(ctx: ReportContext, col: str, df: pd.DataFrame, scope: str = "pooled", group: str | None = None) -> dict[str, Any]:
    row = ctx.corr.find(col, scope, group)
    if row is not None:
        return correlation_numbers(row)
    if scope in ("pooled", "group"):
        return report_correlation(df[col], df["score"])
    if scope == "within" and "category" in df.columns:
        return report_correlation(df[col], df["score"], groups=df["category"].astype(str).to_numpy(dtype=object))
    return {}


def measure_section(ctx: ReportContext, sec: str, cols: list[str], primary: str, intro: str, command: str) -> tuple[str, dict]:
    """The body of a measure section ``sec`` (``cols``: its family of per_image.csv columns, ``primary`` the one
    drawn); leaves the primary measure's pooled ρ in ``ctx.headline[sec]``."""
    df = ctx.per_image
    res: dict[str, Any] = {"primary": primary, "measures": {}}
    parts = [f'<p class="lead">{intro}</p>']
    label = textwrap.fill(_measure_label(primary), 58)  # axis labels: at most ~58 characters a line
    x = pd.to_numeric(df[primary], errors="coerce")
    y = df["score"]
    pooled = _correlation_for(ctx, primary, df)
    res["measures"][primary] = {"pooled": pooled}
    figs = ['<div class="figrow">']
    figs.append(figure_html(
        F.measure_scatter(x, y, xlabel=label, r=pooled.get("r"), ci=(pooled.get("ci_low"), pooled.get("ci_high")),
                          n=pooled.get("n"), title=f"{primary} vs memorability"),
        f"scatter of {primary} against memorability",
        "One dot per image; red line: LOWESS fit (windows of equal image count). Title: Spearman ρ [95% CI]."))
    bins = F.binned_means(x, y, int(np.clip(int(np.isfinite(x.to_numpy(dtype=float)).sum()) // 10, 3, 10)))
    res["measures"][primary]["binned_means"] = bins
    figs.append(figure_html(F.binned_means_plot(bins, xlabel=label), f"binned means of memorability by {primary}",
                            "Images sorted by the measure and cut into equal-count bins; mean score ± 95% CI."))
    figs.append("</div>")
    parts.extend(figs)
    # per category
    if "category" in df.columns and df["category"].nunique() >= 2:
        counts = df["category"].astype(str).value_counts()
        cats = list(counts.index[:MAX_CATEGORY_PANELS])
        panels, per_cat = [], {}
        for cat in cats:
            sub = df[df["category"].astype(str) == cat]
            c = _correlation_for(ctx, primary, sub, "group", cat)
            per_cat[cat] = c
            panels.append({"name": cat, "x": pd.to_numeric(sub[primary], errors="coerce"), "y": sub["score"],
                           "r": c.get("r"), "ci_low": c.get("ci_low"), "ci_high": c.get("ci_high")})
        res["measures"][primary]["by_category"] = per_cat
        parts.append("<h3>Per category</h3>")
        parts.append(figure_html(F.category_scatter(panels, xlabel=label), f"{primary} vs memorability per category",
                                 "Each panel: the images of one category, Spearman ρ [95% CI] within it; red line: "
                                 f"LOWESS fit (categories with at least {F.MIN_PANEL_FIT} images)."))
        if len(counts) > len(cats):
            parts.append(note(f"Only the {len(cats)} largest of {len(counts)} categories are drawn."))
        scope_rows = []
        within = _correlation_for(ctx, primary, df, "within")
        if within.get("r") is not None:
            res["measures"][primary]["within"] = within
            scope_rows.append(("within category (category means removed)", "–", within["n"], within["r"],
                               fmt_ci(within["ci_low"], within["ci_high"]), fmt_p(within["p_value"])))
        partial = []
        for row in ctx.corr.find_all(primary, "partial"):
            numbers = correlation_numbers(row)
            numbers["control"] = clean_value(row.get("control"))
            partial.append(numbers)
            scope_rows.append(("partial", numbers["control"] or "–", numbers["n"], numbers["r"],
                               fmt_ci(numbers["ci_low"], numbers["ci_high"]), fmt_p(numbers["p_value"])))
        if partial:
            res["measures"][primary]["partial"] = partial
        if scope_rows:
            parts.append("<h3>Within category and partial correlations</h3>")
            parts.append(html_table(["scope", "controlling for", "n", "ρ", "95% CI", "p"], scope_rows,
                                    [False, False, True, True, True, True]))
    # all measures of this family
    table_rows, labels, rs, los, his = [], [], [], [], []
    for col in cols:
        c = res["measures"].get(col, {}).get("pooled") or _correlation_for(ctx, col, df)
        res["measures"].setdefault(col, {})["pooled"] = c
        labels.append(col)
        rs.append(c.get("r") if c.get("r") is not None else np.nan)
        los.append(c.get("ci_low") if c.get("ci_low") is not None else np.nan)
        his.append(c.get("ci_high") if c.get("ci_high") is not None else np.nan)
        table_rows.append((col, _measure_label(col), c.get("n"), c.get("r"), fmt_ci(c.get("ci_low"), c.get("ci_high")),
                           fmt_p(c.get("p_value")), c.get("source") or "–"))
    if len(cols) > 1:
        parts.append("<h3>All measures</h3>")
        ceil = ctx.ceiling["split_half_spearman"] if ctx.ceiling else None
        parts.append(figure_html(F.correlation_forest(labels, rs, los, his, ceiling=ceil,
                                                      ceiling_label="human split-half ρ",
                                                      title="Pooled Spearman ρ with memorability (95% CI)"),
                                 f"pooled correlations of every {sec} measure"))
    parts.append(html_table(["measure", "meaning", "n", "ρ", "95% CI", "p", "source"], table_rows,
                            [False, False, True, True, True, True, False]))
    if pooled.get("r") is not None:
        ctx.headline[sec] = (primary, pooled["r"])
    return "".join(parts), res
