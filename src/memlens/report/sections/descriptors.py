"""Section ``descriptors``: interpretable image statistics vs the human and the predicted score."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import figures as F
from ..analysis import report_correlation
from ..context import ReportContext
from ..formatting import clean_value, esc, finite_float, fmt_ci, fmt_p, fmt_r, nested_get
from ..markup import figure_html, html_table, missing_note, note

#: what each descriptor of :data:`memlens.descriptors.DESCRIPTOR_COLUMNS` measures (docs/explain.md)
_DESCRIPTOR_MEANING = {
    "lab_l_mean": "mean lightness (CIELAB L*)", "lab_l_sd": "lightness contrast (SD of L*)",
    "lab_a_mean": "mean green–red (a*)", "lab_a_sd": "spread of green–red (SD of a*)",
    "lab_b_mean": "mean blue–yellow (b*)", "lab_b_sd": "spread of blue–yellow (SD of b*)",
    "hsv_s_mean": "mean saturation (HSV)", "hsv_v_mean": "mean brightness (HSV value)",
    "colourfulness": "colourfulness (Hasler & Süsstrunk)", "colour_entropy": "colour histogram entropy (bits)",
    "grey_entropy": "grey-level entropy (bits)", "glcm_contrast": "texture contrast (GLCM)",
    "glcm_energy": "texture uniformity (GLCM energy)", "glcm_homogeneity": "texture homogeneity (GLCM)",
    "edge_density": "clutter: share of edge pixels (Canny)",
    "ig_center_share": "share of the IG attribution in the image centre (explained images only: picked from the "
                       "most and least memorable, which inflates ρ)",
}
_TARGETS = (("score", "human score"), ("predicted_score", "predicted score"))


def section_descriptors(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``descriptors``, the visual descriptors: its HTML body and its numbers for results.json."""
    dc = ctx.run.csv("descriptor_correlations.csv")
    desc = ctx.run.csv("descriptors.csv")
    source = "descriptor_correlations.csv"
    # rows: descriptor -> target -> numbers
    table: dict[str, dict[str, dict[str, Any]]] = {}
    parts_rows: list[dict[str, Any]] = []  # within- and between-category rows (explain writes them with categories)
    file_fdr = False
    if dc is not None and not dc.empty:
        name_col = next((c for c in ("descriptor", "x", "name", "feature") if c in dc.columns), dc.columns[0])
        rcol = next((c for c in ("r", "rho", "spearman") if c in dc.columns), None)
        file_fdr = "p_fdr" in dc.columns
        n_file_rows = len(dc)
        if "scope" in dc.columns:
            scoped = dc["scope"].fillna("pooled").astype(str)
            parts_rows = dc[scoped != "pooled"].to_dict("records")
            dc = dc[scoped == "pooled"]
        for rec in dc.to_dict("records"):
            target = str(rec.get("target")) if "target" in dc.columns and rec.get("target") is not None else "score"
            table.setdefault(str(rec.get(name_col)), {})[target] = {
                "n": clean_value(rec.get("n")), "r": finite_float(rec.get(rcol)) if rcol else None, "ci_low": finite_float(rec.get("ci_low")),
                "ci_high": finite_float(rec.get("ci_high")), "p_value": finite_float(rec.get("p_value")),
                **({"p_fdr": finite_float(rec.get("p_fdr"))} if file_fdr else {})}
    elif desc is not None and "image_id" in desc.columns:
        source = "descriptors.csv (correlations computed by the report)"
        merged = desc.copy()
        merged["image_id"] = merged["image_id"].astype(str)
        targets = {}
        for t, _ in _TARGETS:
            if t in merged.columns:
                targets[t] = pd.to_numeric(merged[t], errors="coerce")
        if "score" not in targets and ctx.run.has_scores():
            m = dict(zip(ctx.per_image["image_id"].astype(str), ctx.per_image["score"], strict=True))
            targets["score"] = merged["image_id"].map(m).astype(float)
        skip = {"image_id", "score", "predicted_score"}
        for c in desc.columns:
            if c in skip or not pd.api.types.is_numeric_dtype(desc[c]):
                continue
            for t, y in targets.items():
                if y.notna().sum() >= 3:
                    st = report_correlation(merged[c], y)
                    table.setdefault(c, {})[t] = {k: st[k] for k in ("n", "r", "ci_low", "ci_high", "p_value")}
    if not table:
        return missing_note("Visual descriptors", ["descriptor_correlations.csv", "descriptors.csv"], "memlens explain"), {}
    targets = [t for t, _ in _TARGETS if any(t in v for v in table.values())]
    targets += sorted({t for v in table.values() for t in v} - set(targets))
    labels = dict(_TARGETS)
    rows = [{"descriptor": d, "meaning": _DESCRIPTOR_MEANING.get(d), **{t: v.get(t) for t in targets}}
            for d, v in table.items()]
    res: dict[str, Any] = {"source": source, "targets": targets, "rows": rows}
    if desc is not None:
        res["n_images"] = int(len(desc))
    pred_source = nested_get(ctx.run.json("attributions/explain.json"), "predicted_score_source")
    res["predicted_score_source"] = pred_source
    parts = ['<p class="lead">Simple, interpretable image statistics and their Spearman correlation with the human and '
             f"the predicted memorability (source: <code>{esc(source)}</code>). A descriptor that tracks the predicted "
             "but not the human score may be a cue the model relies on more than people do; the two correlations "
             "are not tested against each other here, and a correlation does not show that the model uses the "
             "cue.</p>"]
    if pred_source:
        parts.append(note(f"Predicted scores: {esc(pred_source)}."))
    first = targets[0]

    def key(r: dict) -> float:
        v = (r.get(first) or {}).get("r")
        return -abs(v) if v is not None else 0.0

    order = sorted(rows, key=key)

    def col(t: str, k: str) -> list[float]:
        return [((r.get(t) or {}).get(k) if (r.get(t) or {}).get(k) is not None else np.nan) for r in order]

    series = [(f"with the {labels.get(t, t)}", col(t, "r"), col(t, "ci_low"), col(t, "ci_high")) for t in targets]
    parts.append(figure_html(F.correlation_forest([r["descriptor"] for r in order], [], series=series,
                                                  title="Descriptors vs memorability (Spearman ρ, 95% CI)"),
                             "correlations of visual descriptors with memorability"))
    # every descriptor x target correlation is one test of one family: Benjamini-Hochberg over all of them
    from ...stats import fdr_bh

    keys = [(r["descriptor"], t) for r in order for t in targets if (r.get(t) or {}).get("p_value") is not None]
    if not file_fdr:  # explain's file adjusts over all its rows (pooled, within, between); older files do not
        q = fdr_bh(np.array([(table[d][t]["p_value"]) for d, t in keys], dtype=float)) if keys else []
        for (d, t), qv in zip(keys, q, strict=True):
            table[d][t]["p_fdr"] = finite_float(qv)
    headers, numeric = ["descriptor", "what it measures"], [False, False]
    for t in targets:
        headers += [f"ρ with {labels.get(t, t)}", "95% CI", "p", "p (FDR)", "n"]
        numeric += [True, True, True, True, True]
    body = []
    for r in order:
        cells: list[Any] = [r["descriptor"], r["meaning"] or "–"]
        for t in targets:
            v = r.get(t) or {}
            cells += [fmt_r(v.get("r")), fmt_ci(v.get("ci_low"), v.get("ci_high")), fmt_p(v.get("p_value")),
                      fmt_p(v.get("p_fdr")), v.get("n")]
        body.append(cells)
    parts.append(html_table(headers, body, numeric))
    if keys and file_fdr:
        parts.append(note(f"p (FDR): adjusted over all {n_file_rows} correlations of "
                          "<code>descriptor_correlations.csv</code> (pooled, within and between categories; "
                          "Benjamini-Hochberg)."))
    elif keys:
        parts.append(note(f"p (FDR): adjusted over the {len(keys)} correlations of this table (Benjamini-Hochberg)."))
    if parts_rows:
        parts.extend(_category_parts(parts_rows, table, res, labels))
    return "".join(parts), res


def _category_parts(rows: list[dict[str, Any]], pooled: dict[str, dict[str, dict[str, Any]]], res: dict[str, Any],
                    labels: dict[str, str]) -> list[str]:
    """Each descriptor's rho pooled, within and between categories, for each target, side by side."""
    by: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for rec in rows:
        by.setdefault((str(rec["descriptor"]), str(rec["target"])), {})[str(rec["scope"])] = {
            "n": clean_value(rec.get("n")), "r": finite_float(rec.get("r")), "ci_low": finite_float(rec.get("ci_low")),
            "ci_high": finite_float(rec.get("ci_high")), "p_value": finite_float(rec.get("p_value")),
            "p_fdr": finite_float(rec.get("p_fdr")), "n_groups": _count(rec.get("n_groups"))}
    res["category_parts"] = [{"descriptor": d, "target": t, **v} for (d, t), v in by.items()]
    out = ["<h3>Within and between categories</h3>"]
    for target in dict.fromkeys(t for _, t in by):
        body = []
        for (d, t), v in by.items():
            if t != target:
                continue
            p, w, b = (pooled.get(d, {}).get(t) or {}), v.get("within") or {}, v.get("between") or {}
            body.append([d, fmt_r(p.get("r")), fmt_r(w.get("r")), fmt_ci(w.get("ci_low"), w.get("ci_high")),
                         fmt_p(w.get("p_fdr")), fmt_r(b.get("r")), fmt_ci(b.get("ci_low"), b.get("ci_high"))])
        out.append(html_table([f"descriptor (with the {labels.get(target, target)})", "pooled ρ", "within ρ",
                               "95% CI", "p (FDR)", "between ρ", "95% CI"], body,
                              [False, True, True, True, True, True, True]))
    n_groups = next((v.get("between", {}).get("n_groups") for v in by.values() if v.get("between")), None)
    out.append(note("within: inside categories (category means removed); between: the category means"
                    + (f" ({n_groups} points)" if n_groups else "") + ". A descriptor related to memorability only "
                    "between categories tells the categories apart rather than the images inside them."))
    return out


def _count(v: Any) -> int | None:
    """A count read from a CSV column that also holds NaN (so it came back as a float)."""
    v = clean_value(v)
    return int(v) if isinstance(v, (int, float)) else None
