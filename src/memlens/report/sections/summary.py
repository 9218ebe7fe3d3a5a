"""Section ``summary`` (Data set): image counts, the score distribution, the noise ceiling, categories."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .. import figures as F
from ..context import ReportContext
from ..formatting import esc, fmt, fmt_r, isnum
from ..markup import figure_html, html_table, kv_table, missing_note, note, stat_tiles
from ..run_files import is_simulated


def section_summary(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``summary``, the data set summary (built last: it shows the headline numbers of the other sections): its HTML body and its numbers for results.json."""
    df = ctx.per_image
    res: dict[str, Any] = {}
    parts: list[str] = []
    if df is None:
        ds = ctx.run.json("dataset.json")
        if isinstance(ds, Mapping) and isnum(ds.get("n_images")):
            res["n_images"] = int(ds["n_images"])
            parts.append(stat_tiles([("images (dataset.json)", fmt(res["n_images"]))]))
        parts.append(missing_note("Per-image table", ["per_image.csv"], "memlens score"))
        return "".join(parts), res
    res["n_images"] = int(len(df))
    tiles = [("images", fmt(res["n_images"]))]
    if "role" in df.columns:  # the analyses are about the exposed images; say so beside the total
        roles = df["role"].astype(str).value_counts()
        res["roles"] = {str(k): int(v) for k, v in roles.items()}
        if roles.get("exposed", 0) != len(df):
            tiles.append(("exposed once", fmt(int(roles.get("exposed", 0)))))
            if roles.get("experience", 0):
                tiles.append(("visual experience (not analysed)", fmt(int(roles["experience"]))))
    scores = df["score"].to_numpy(dtype=float) if "score" in df.columns else np.empty(0)
    finite = scores[np.isfinite(scores)]
    if finite.size:
        res["score"] = {"n": int(finite.size), "mean": float(finite.mean()),
                        "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
                        "median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max())}
        tiles.append(("mean score (SD)", f"{finite.mean():.3f} ({fmt(res['score']['sd'], 3)})"))
    if ctx.ceiling:
        res["noise_ceiling"] = ctx.ceiling
        n_ceil = ctx.ceiling.get("n_images")
        on = f", {fmt(n_ceil)} images" if n_ceil is not None else ""
        tiles.append((f"noise ceiling √(Spearman-Brown){on}", fmt_r(ctx.ceiling.get("ceiling"))))
        tiles.append(("human split-half ρ", fmt_r(ctx.ceiling["split_half_spearman"])))
    for key in ("reconstruction", "distinctiveness"):
        if key in ctx.headline:
            col, r, scope = ctx.headline[key]
            tiles.append((f"ρ of {col} with the score" + (f" ({scope})" if scope != "pooled" else ""), fmt_r(r)))
    if "predictor" in ctx.headline:
        which = ctx.headline.get("predictor_label")
        how = ctx.headline.get("predictor_how", "cross-validated")
        tiles.append((f"predictor ρ ({which + ', ' if which else ''}{how})", fmt_r(ctx.headline["predictor"])))
    parts.append(stat_tiles(tiles))
    if finite.size:
        parts.append('<div class="figrow">')
        who = "Simulated" if is_simulated(ctx.run) else "Human"
        of = f"all {finite.size} images with a score" + (" (exposed and visual experience)"
                                                        if res.get("roles", {}).get("experience") else "")
        label = F.SCORE_LABEL.replace("human", "simulated") if who == "Simulated" else F.SCORE_LABEL
        parts.append(figure_html(F.score_histogram(finite, label=label), "histogram of memorability scores",
                                 f"{who} memorability scores of {of}; dashed line: mean."))
        parts.append("<div>")
        sc = res["score"]
        parts.append(kv_table([("images with a score", sc["n"])] + [
            (label, f"{sc[k]:.4f}" if sc[k] is not None else "–")
            for label, k in (("mean", "mean"), ("SD", "sd"), ("median", "median"), ("min", "min"), ("max", "max"))]))
        if ctx.ceiling:
            c = ctx.ceiling
            rows = [("split-half splits", c["n_splits"]), ("images in the halves", c["n_images"]),
                    ("mean Spearman ρ between halves", c["split_half_spearman"]),
                    ("reliability of the full-group score (Spearman-Brown)", c["spearman_brown"]),
                    ("noise ceiling: √ reliability, the highest ρ a model can reach with the score", c.get("ceiling"))]
            if c.get("score") not in (None, "unspecified"):
                agree = c.get("score_agreement")
                rows.append(("the halves are of the score", f"{c['score']}" + (
                    f" (their mean vs the analysed score: Spearman {agree:.3f})" if agree is not None else "")))
            parts.append(kv_table(rows))
        parts.append("</div></div>")
    else:
        parts.append(note("No human scores in <code>per_image.csv</code>: the correlations and the predictor "
                          "need a data set with a score column.", missing=True))
    if not ctx.ceiling:
        parts.append(note("Noise ceiling: not available — the data set has no split-half scores "
                          "(<code>split_halves.npz</code> is absent from the run directory).", missing=True))
    if "category" in df.columns:
        cats = df["category"].where(df["category"].astype(str).str.strip() != "")  # blank = no category
        counts = cats.dropna().astype(str).value_counts()
        res["categories"] = {str(k): int(v) for k, v in counts.items()}
        res["n_without_category"] = int(cats.isna().sum())
        rows = []
        for cat, n in list(counts.items())[:40]:
            sub = df.loc[df["category"].astype(str) == cat, "score"] if "score" in df.columns else pd.Series(dtype=float)
            rows.append((cat, int(n), float(sub.mean()) if sub.notna().any() else None))
        res["category_mean_score"] = {str(r[0]): r[2] for r in rows}
        parts.append("<h3>Categories</h3>")
        parts.append(html_table(["category", "images", "mean score"], rows, [False, True, True]))
        if len(counts) > 40:
            parts.append(note(f"{len(counts) - 40} more categories are listed in results.json."))
        if res["n_without_category"]:
            parts.append(note(f"{res['n_without_category']} images have no category: they are in the pooled "
                              "analyses, not in the per-category and within-category ones."))
    ds = ctx.run.json("dataset.json")
    if isinstance(ds, Mapping):
        res["dataset"] = {k: ds.get(k) for k in ("source", "layout", "notes") if k in ds}
        src = " · ".join(f"{k}: {ds[k]}" for k in ("layout", "source") if k in ds)
        notes = [str(n) for n in ds.get("notes") or [] if n]
        if notes:
            parts.insert(0, note("; ".join(esc(n) for n in notes) + "."))
        if src:
            parts.insert(0, f'<p class="lead">{esc(src)}</p>')
    return "".join(parts), res
