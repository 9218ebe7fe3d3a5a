"""The body shared by the per-image measure sections (reconstruction, distinctiveness): scatter,
binned means, the pooled/within/between parts and the exposure test, per-category panels, partial correlations
and every measure of the family."""

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
    drawn); leaves ``(primary, rho, scope)`` in ``ctx.headline[sec]``: the within-category ρ when the run has
    categories, else the pooled one."""
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
    has_categories = "category" in df.columns and df["category"].nunique() >= 2
    parts.extend(_parts_table(ctx, primary, df, res, has_categories))
    # per category
    if has_categories:
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
    if has_categories:
        within = _correlation_for(ctx, primary, df, "within")
        if within.get("r") is not None:
            res["measures"][primary]["within"] = within
        between = ctx.corr.find(primary, "between")
        if between is not None:
            k = clean_value(between.get("n_groups"))
            res["measures"][primary]["between"] = {**correlation_numbers(between),
                                                   "n_groups": int(k) if isinstance(k, (int, float)) else k}
    partial, scope_rows = [], []
    for row in ctx.corr.find_all(primary, "partial"):
        numbers = correlation_numbers(row)
        numbers["control"] = clean_value(row.get("control"))
        partial.append(numbers)
        scope_rows.append((numbers["control"] or "–", numbers["n"], numbers["r"],
                           fmt_ci(numbers["ci_low"], numbers["ci_high"]), fmt_p(numbers["p_value"])))
    if partial:
        res["measures"][primary]["partial"] = partial
        parts.append("<h3>Partial correlations</h3>")
        parts.append(html_table(["controlling for", "n", "partial ρ", "95% CI", "p"], scope_rows,
                                [False, True, True, True, True]))
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
        ceil = ctx.ceiling.get("ceiling") if ctx.ceiling else None
        parts.append(figure_html(F.correlation_forest(labels, rs, los, his, ceiling=ceil,
                                                      ceiling_label="noise ceiling √(Spearman-Brown)",
                                                      title="Pooled Spearman ρ with memorability (95% CI)"),
                                 f"pooled correlations of every {sec} measure"))
    parts.append(html_table(["measure", "meaning", "n", "ρ", "95% CI", "p", "source"], table_rows,
                            [False, False, True, True, True, True, False]))
    within = res["measures"][primary].get("within") or {}
    if has_categories and within.get("r") is not None:
        # with categories, the pooled rho mixes the category means with the effect inside categories: the
        # within-category rho is the headline (issue #23; the pooled and between parts stand beside it)
        ctx.headline[sec] = (primary, within["r"], "within category")
    elif pooled.get("r") is not None:
        ctx.headline[sec] = (primary, pooled["r"], "pooled")
    res["headline_scope"] = ctx.headline[sec][2] if sec in ctx.headline else None
    exposure = ctx.corr.find_all(primary, "difference")
    if exposure:
        res["measures"][primary]["exposure_test"] = {
            "minus": clean_value(exposure[0].get("minus")), **correlation_numbers(exposure[0])}
    return "".join(parts), res


def _parts_table(ctx: ReportContext, primary: str, df: pd.DataFrame, res: dict[str, Any],
                 has_categories: bool) -> list[str]:
    """The lead table: pooled, within- and between-category rho side by side, and the exposure test."""
    rows = []
    pooled = res["measures"][primary]["pooled"]
    within = _correlation_for(ctx, primary, df, "within") if has_categories else {}
    between = ctx.corr.find(primary, "between") if has_categories else None
    if has_categories and within.get("r") is not None:
        rows.append(("within category (category means removed): the headline", within["n"], within["r"],
                     fmt_ci(within["ci_low"], within["ci_high"]), fmt_p(within["p_value"])))
    if pooled.get("r") is not None:
        rows.append(("pooled (all images; mixes the category means with the within-category effect)"
                     if has_categories else "pooled", pooled["n"], pooled["r"],
                     fmt_ci(pooled.get("ci_low"), pooled.get("ci_high")), fmt_p(pooled.get("p_value"))))
    if between is not None:
        b = correlation_numbers(between)
        k = clean_value(between.get("n_groups"))
        k = int(k) if isinstance(k, (int, float)) else k  # the CSV stores the count as a float beside NaNs
        rows.append((f"between categories ({k} category means)", b["n"], b["r"],
                     fmt_ci(b["ci_low"], b["ci_high"]), fmt_p(b["p_value"])))
    before = f"{primary}_before"
    after_given_before = next((r for r in ctx.corr.find_all(primary, "partial")
                               if clean_value(r.get("control")) == before), None)
    diff = next((r for r in ctx.corr.find_all(primary, "difference")
                 if clean_value(r.get("minus")) == before), None)
    ref = ctx.corr.find(before, "pooled")
    if ref is not None:
        c = correlation_numbers(ref)
        rows.append(("before the exposure (the pretrained model: the image's difficulty)", c["n"], c["r"],
                     fmt_ci(c["ci_low"], c["ci_high"]), fmt_p(c["p_value"])))
    if after_given_before is not None:
        c = correlation_numbers(after_given_before)
        rows.append(("after the exposure, given the error before it (partial ρ: what the exposure adds)",
                     c["n"], c["r"], fmt_ci(c["ci_low"], c["ci_high"]), fmt_p(c["p_value"])))
    if diff is not None:
        c = correlation_numbers(diff)
        rows.append(("after − before (paired difference of the two ρ, shared resamples; p: bootstrap)", c["n"],
                     c["r"], fmt_ci(c["ci_low"], c["ci_high"]), fmt_p(c["p_value"])))
    if len(rows) < 2:
        return []
    out = [html_table(["part", "n", "ρ", "95% CI", "p"], rows, [False, True, True, True, True])]
    notes = []
    if has_categories:
        notes.append("With categories, the pooled ρ mixes two effects: the between-category part (do categories "
                     "with a higher mean error have a higher mean score?) and the within-category part (inside a "
                     "category, are the images the model reconstructs worse remembered better?). The within-category "
                     "ρ is the headline; the between-category ρ has as many points as categories.")
    if after_given_before is not None:
        notes.append("The exposure test: after one exposure at a small learning rate the error is mostly the "
                     "pretrained model's error. The partial ρ asks whether the error after the exposure predicts "
                     "memorability beyond the error before it; the difference row compares the two correlations.")
    out.extend(note(t) for t in notes)
    return out
