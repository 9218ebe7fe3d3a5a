"""Section ``baselines``: memlens's predictor beside other memorability models (ResMem, ViTMem, ridge on Lite0
features, the paper's MLP) on the same images, from ``memlens baselines`` (``baselines.csv``,
``baselines_diff.csv``, ``baselines.json``, ``baseline_<name>.csv``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import figures as F
from ..analysis import report_correlation
from ..context import ReportContext
from ..formatting import clean_value, esc, finite_float, fmt_ci, fmt_p, fmt_r
from ..markup import figure_html, html_table, note

#: panels in one row of the scatter figure
_PANELS_PER_ROW = 3


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("true", "1", "yes")


def _predictions(ctx: ReportContext, names: list[str], column: str | None) -> pd.DataFrame | None:
    """image_id, memlens's out-of-fold prediction and each baseline's (``baseline_<name>.csv``)."""
    oof = ctx.run.csv("predictor_oof.csv")
    if oof is None or "image_id" not in oof.columns:
        return None
    col = column if column in oof.columns else next((c for c in oof.columns if c.startswith("predicted_")), None)
    if col is None:
        return None
    out = pd.DataFrame({"image_id": oof["image_id"].astype(str), "memlens": pd.to_numeric(oof[col], errors="coerce")})
    for name in names:
        b = ctx.run.csv(f"baseline_{name}.csv")
        if b is None or not {"image_id", "predicted_score"} <= set(b.columns):
            continue
        m = dict(zip(b["image_id"].astype(str), pd.to_numeric(b["predicted_score"], errors="coerce"), strict=True))
        out[name] = out["image_id"].map(m).astype(float)
    return out


def section_baselines(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``baselines``: its HTML body and its numbers for results.json."""
    table = ctx.run.csv("baselines.csv")
    if table is None or table.empty or "model" not in table.columns:
        return note("Comparison with other memorability models: not run — run <code>memlens baselines RUN</code> "
                    "(or <code>memlens run ... --baselines resmem,vitmem</code>) to put ResMem, ViTMem and simple "
                    "baselines beside this run's predictor (looked for <code>baselines.csv</code> in the run "
                    "directory).", missing=True), {"status": "not run", "looked_for": ["baselines.csv"],
                                                   "command": "memlens baselines RUN"}
    diff = ctx.run.csv("baselines_diff.csv")
    info = ctx.run.json("baselines.json") or {}
    diffs = {} if diff is None or "model" not in diff.columns else {str(r["model"]): r for r in diff.to_dict("records")}
    rows = []
    for rec in table.to_dict("records"):
        name = str(rec["model"])
        d = diffs.get(name) or {}
        rows.append({"model": name, "inputs": clean_value(rec.get("inputs")),
                     "spearman": finite_float(rec.get("spearman")), "ci_low": finite_float(rec.get("ci_low")),
                     "ci_high": finite_float(rec.get("ci_high")), "n": clean_value(rec.get("n")),
                     "trained_on": clean_value(rec.get("trained_on")), "overlap": _truthy(rec.get("overlap")),
                     "license": clean_value(rec.get("license")),
                     "difference": finite_float(d.get("difference")), "difference_ci_low": finite_float(d.get("ci_low")),
                     "difference_ci_high": finite_float(d.get("ci_high")), "p_boot": finite_float(d.get("p_boot"))})
    evaluated = clean_value(table["evaluated_on"].iloc[0]) if "evaluated_on" in table.columns else None
    res: dict[str, Any] = {"status": "run", "rows": rows, "evaluated_on": evaluated, "n_boot": info.get("n_boot"),
                           "seed": info.get("seed"), "overlap": info.get("overlap") or {},
                           "skipped": info.get("skipped") or {}, "direction": "difference = memlens minus the model"}
    parts = ['<p class="lead">The run\'s predictor and other memorability models on the <b>same images</b>: '
             f"{esc(evaluated or 'the images of the predictor’s honest estimate')}, each predicted by a model that "
             "did not see it (pretrained models were never fitted here; ridge-lite0 and paper-mlp were fitted on the "
             "predictor's own outer folds). Spearman ρ with the human scores, paired bootstrap 95% CIs on the same "
             "resampled images for every model; the last columns give memlens's predictor <b>minus</b> each model, "
             "on shared resamples.</p>"]
    flagged = [r for r in rows if r["overlap"]]
    if flagged:
        why = res["overlap"]
        items = "; ".join(f"{esc(r['model'])}: {esc(why.get(r['model'], 'trained on ' + str(r['trained_on'])))}"
                          for r in flagged)
        parts.append(note(f"<b>Training data overlap.</b> {items}. Such a model may have been trained on these very "
                          "images, so its figure here is optimistic and not a fair comparison."))
    body = []
    for r in rows:
        diff_txt = "–" if r["model"] == "memlens" else fmt_r(r["difference"])
        diff_ci = "–" if r["model"] == "memlens" else fmt_ci(r["difference_ci_low"], r["difference_ci_high"])
        body.append([r["model"] + (" ⚠" if r["overlap"] else ""), r["inputs"] or "–", fmt_r(r["spearman"]),
                     fmt_ci(r["ci_low"], r["ci_high"]), r["n"], r["trained_on"] or "–",
                     "yes" if r["overlap"] else "no", diff_txt, diff_ci,
                     "–" if r["model"] == "memlens" else fmt_p(r["p_boot"])])
    parts.append(html_table(["model", "inputs", "ρ", "95% CI", "n", "trained on", "overlap",
                             "memlens − model", "95% CI", "p (bootstrap)"], body,
                            [False, False, True, True, True, False, False, True, True, True]))
    labels = [r["model"] for r in rows]
    parts.append(figure_html(F.correlation_forest(labels, [r["spearman"] if r["spearman"] is not None else np.nan
                                                          for r in rows],
                                                  [r["ci_low"] if r["ci_low"] is not None else np.nan for r in rows],
                                                  [r["ci_high"] if r["ci_high"] is not None else np.nan for r in rows],
                                                  title="Memorability models on the same images (Spearman ρ, 95% CI)"),
                             "Spearman correlation of each model with the human scores"))
    names = [r["model"] for r in rows if r["model"] != "memlens"]
    preds = _predictions(ctx, names, (info.get("predictor") or {}).get("column"))
    shown = [n for n in names if preds is not None and n in preds.columns]
    scatter: dict[str, Any] = {}
    if shown:
        ncols = min(len(shown), _PANELS_PER_ROW)
        nrows = int(np.ceil(len(shown) / ncols))
        fig, axes = F.new_figure(4.6 * ncols, 3.9 * nrows, nrows=nrows, ncols=ncols)
        flat = list(np.ravel(axes))
        for ax, name in zip(flat, shown, strict=False):
            both = preds[["memlens", name]].dropna()
            st = report_correlation(both["memlens"], both[name])
            scatter[name] = {k: st[k] for k in ("n", "r", "ci_low", "ci_high")}
            F.measure_scatter(both["memlens"], both[name], xlabel="memlens predicted score (out-of-fold)",
                              ylabel=f"{name} predicted score", r=st["r"], ci=(st["ci_low"], st["ci_high"]),
                              n=st["n"], title=f"{name} vs memlens", ax=ax)
        for ax in flat[len(shown):]:
            ax.set_visible(False)
        parts.append(figure_html(fig, "each baseline's predictions against memlens's predictions",
                                 "One point per image: memlens's out-of-fold prediction against the baseline's. "
                                 "ρ here is the agreement of the two models, not their accuracy."))
    res["agreement_with_memlens"] = scatter
    if res["skipped"]:
        parts.append(note("Not run: " + "; ".join(f"{esc(k)} ({esc(v)})" for k, v in res["skipped"].items())))
    lic = [r for r in rows if r["model"] != "memlens" and r["license"] and "non-commercial" in str(r["license"]).lower()]
    if lic:
        parts.append(note("Licences: " + "; ".join(f"{esc(r['model'])}: {esc(r['license'])}" for r in lic)
                          + ". See docs/baselines.md."))
    return "".join(parts), res
