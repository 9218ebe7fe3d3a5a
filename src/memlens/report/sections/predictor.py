"""Section ``predictor``: cross-validated accuracy of the memorability predictor against the noise
ceiling, and its out-of-fold predictions (also read by the galleries)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .. import figures as F
from ..analysis import report_correlation
from ..context import ReportContext
from ..formatting import esc, finite_float, fmt, fmt_ci, fmt_p
from ..markup import figure_html, html_table, kv_table, missing_note, note
from ..run_files import RunFiles

_PRED_METRICS = ("spearman", "pearson", "mse", "auc")
_PRED_LABELS = {"spearman": "Spearman ρ", "pearson": "Pearson r", "mse": "MSE", "auc": "AUC", "rho": "ρ",
                "r": "r"}


def oof_predictions(run: RunFiles) -> tuple[pd.DataFrame | None, str | None]:
    """Out-of-fold predictions of ``predictor_oof.csv``: ``image_id``, ``score``, ``predicted_<model>``."""
    oof = run.csv("predictor_oof.csv")
    if oof is None or "image_id" not in oof.columns:
        return None, None
    cols = [c for c in oof.columns if c.startswith("predicted_")]
    if not cols:
        return None, None
    oof = oof.copy()
    oof["image_id"] = oof["image_id"].astype(str)
    return oof, "predictor_oof.csv"


MODEL_NAMES = {"svr": "support-vector regression", "mlp": "MLP", "ridge": "ridge regression"}


def saved_model_name(run: RunFiles) -> str:
    """The model kept in predictor.pt (:func:`memlens.predict.saved_model` of predictor_cv.csv)."""
    from ...predict import saved_model

    return saved_model(run.csv("predictor_cv.csv"))


def section_predictor(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``predictor``, the predictor: its HTML body and its numbers for results.json."""
    cv = ctx.run.csv("predictor_cv.csv")
    if cv is None or cv.empty:
        return missing_note("Predictor cross-validation", ["predictor_cv.csv"], "memlens fit-predictor"), {}
    model_col = "model" if "model" in cv.columns else None
    folds, mean_rows = cv, cv.iloc[0:0]
    if "fold" in cv.columns:  # fit-predictor appends one fold="mean" row per model
        is_mean = cv["fold"].astype(str).str.strip().str.lower() == "mean"
        folds, mean_rows = cv[~is_mean], cv[is_mean]
    metrics = [m for m in _PRED_METRICS if m in cv.columns] or [m for m in ("rho", "r") if m in cv.columns]
    metric = next((m for m in ("spearman", "rho", "r", "pearson") if m in metrics), None)
    groups = list(folds.groupby(model_col, sort=False)) if model_col else [("model", folds)]
    res: dict[str, Any] = {"metric": metric, "models": {}}
    for key in ("inputs", "split"):
        if key in cv.columns and cv[key].notna().any():
            res[key] = str(cv[key].dropna().iloc[0])
    per_fold: dict[str, list[float]] = {}
    rows = []
    for name, g in groups:
        entry: dict[str, Any] = {"n_folds": int(len(g))}
        if "n_test" in g.columns:
            entry["n_test_total"] = int(pd.to_numeric(g["n_test"], errors="coerce").sum())
        for c in metrics:
            v = pd.to_numeric(g[c], errors="coerce").dropna()
            entry[f"{c}_mean"] = finite_float(v.mean()) if len(v) else None
            entry[f"{c}_sd"] = finite_float(v.std(ddof=1)) if len(v) > 1 else None
        if metric:
            per_fold[str(name)] = [float(v) for v in pd.to_numeric(g[metric], errors="coerce")]
            entry[f"{metric}_folds"] = per_fold[str(name)]
        res["models"][str(name)] = entry
        rows.append([str(name), entry["n_folds"]] + [
            f"{fmt(entry[f'{c}_mean'], 3)} ± {fmt(entry[f'{c}_sd'], 3)}" if entry[f"{c}_sd"] is not None
            else fmt(entry[f"{c}_mean"], 3) for c in metrics])
    # the noise ceiling of the predicted images: fit-predictor's mean rows, else the report's own. As in the
    # correlation table, the ceiling divided by is the human split-half consistency; the Spearman-Brown value
    # (the reliability of the full-group score; column "noise_ceiling" in older predictor_cv.csv files) beside it
    consistency = reliability = None
    ceiling_source = None
    sb_col = next((c for c in ("spearman_brown", "noise_ceiling") if c in mean_rows.columns), None)
    if len(mean_rows) and sb_col and "human_consistency" in mean_rows.columns:
        hc = pd.to_numeric(mean_rows["human_consistency"], errors="coerce").dropna()
        sb = pd.to_numeric(mean_rows[sb_col], errors="coerce").dropna()
        if len(hc) and len(sb):
            consistency, reliability, ceiling_source = float(hc.iloc[0]), float(sb.iloc[0]), "predictor_cv.csv"
    if consistency is None and ctx.ceiling:
        consistency, reliability = ctx.ceiling["split_half_spearman"], ctx.ceiling["spearman_brown"]
        ceiling_source = ctx.ceiling["source"]
    res["consistency"], res["spearman_brown"], res["ceiling_source"] = consistency, reliability, ceiling_source
    if consistency is not None and not (math.isfinite(consistency) and consistency > 0):
        consistency = None  # no usable ceiling (NaN, or halves that do not agree at all)
    res["ceiling"] = consistency
    if consistency and metric:
        for entry in res["models"].values():
            m = entry.get(f"{metric}_mean")
            entry[f"{metric}_over_ceiling"] = m / consistency if m is not None else None
    # out-of-fold predictions of every image, pooled
    oof, oof_source = oof_predictions(ctx.run)
    oof_rows = []
    if oof is not None and "score" in oof.columns:
        res["oof"] = {}
        for c in [c for c in oof.columns if c.startswith("predicted_")]:
            st = report_correlation(oof[c], oof["score"])
            res["oof"][c[len("predicted_"):]] = st
            oof_rows.append((c[len("predicted_"):], st["n"], st["r"], fmt_ci(st["ci_low"], st["ci_high"]),
                             fmt_p(st["p_value"])))
    inputs = {"features": "pretrained ImageNet features (EfficientNet-Lite0)", "latents": "the autoencoder's latent code",
              "both": "the autoencoder's latent code and pretrained ImageNet features",
              "lite01": "pretrained multi-stage features of EfficientNet-Lite0 and Lite1 (feature set lite01)",
              }.get(res.get("inputs", ""), res.get("inputs"))
    main = saved_model_name(ctx.run)
    res["saved_model"] = main
    lead = (f"Held-out accuracy of the memorability predictor ({esc(MODEL_NAMES.get(main, main))}, the model "
            "saved for memlens predict" + (f", on {esc(inputs)}" if inputs else "") +
            ") next to the other models and a ridge-regression baseline, against the human noise ceiling"
            + (f"; {esc(res['split'])} cross-validation" if res.get("split") else "") +
            ". Bars: mean over folds ± SD; dots: single folds.")
    parts = [f'<p class="lead">{lead}</p>']
    n_pred = next((e["n_test_total"] for e in res["models"].values() if e.get("n_test_total")), None)
    roles = ctx.per_image["role"].astype(str).value_counts() if ctx.per_image is not None and "role" in \
        ctx.per_image.columns else None
    if n_pred:
        n_exp = int(roles.get("experience", 0)) if roles is not None else 0
        parts.append(note(esc(f"Images predicted: {n_pred}, each by a model that did not see it in training, "
                              "drawn from every scored image" + (f", the {n_exp} visual-experience images included "
                                                                 "(the single-exposure analyses leave them out)"
                                                                 if n_exp else "") + ".")))
    figs = []
    if metric:
        figs.append(figure_html(F.predictor_bars(per_fold, metric=metric, consistency=consistency,
                                                 reliability=reliability),
                                "cross-validated prediction accuracy per model"))
        best = res["models"].get(main, {}).get(f"{metric}_mean")
        if best is None:
            best = max((e.get(f"{metric}_mean") for e in res["models"].values()
                        if e.get(f"{metric}_mean") is not None), default=None)
        if best is not None:
            ctx.headline["predictor"] = best
            short = {"features": "pretrained features", "lite01": "pretrained features", "latents": "latent codes",
                     "both": "latent codes + pretrained features"}.get(res.get("inputs", ""))
            ctx.headline["predictor_label"] = f"{main.upper() if main in ('svr', 'mlp') else main}" + (
                f" on {short}" if short else "")
    col = f"predicted_{main}"
    if oof is not None and col in oof.columns and "score" in oof.columns and res["oof"][main]["r"] is not None:
        st = res["oof"][main]
        label = MODEL_NAMES.get(main, main)
        figs.append(figure_html(
            F.measure_scatter(pd.to_numeric(oof[col], errors="coerce"), pd.to_numeric(oof["score"], errors="coerce"),
                              xlabel=f"predicted memorability ({label}, out-of-fold)", r=st["r"], ci=(st["ci_low"], st["ci_high"]),
                              n=st["n"], title="Out-of-fold prediction vs human score"),
            "out-of-fold predicted memorability against the human score",
            "Every image predicted by the model that did not see it in training."))
    if figs:
        parts.append(f'<div class="figrow">{"".join(figs)}</div>')
    parts.append(html_table(["model", "folds", *[_PRED_LABELS.get(c, c) for c in metrics]], rows,
                            [False, True, *[True] * len(metrics)]))
    parts.append(note("Mean ± SD over the held-out folds. MSE: mean squared error of the predicted score (lower = "
                      "better); AUC: how well the prediction tells the images above the median score from those "
                      "below it (0.5 = chance)."))
    if oof_rows:
        parts.append(f"<h3>All out-of-fold predictions pooled (<code>{esc(oof_source)}</code>)</h3>")
        parts.append(html_table(["model", "n", "ρ", "95% CI", "p"], oof_rows, [False, True, True, True, True]))
    if consistency and metric:
        n_pred = next((e["n_test_total"] for e in res["models"].values() if e.get("n_test_total")), None)
        of = f" of the {n_pred} predicted images" if n_pred and ceiling_source == "predictor_cv.csv" else ""
        kv = [(f"human split-half consistency{of} (the noise ceiling)", consistency),
              ("reliability of the full-group score (Spearman-Brown)", reliability)]
        kv += [(f"{name}: {metric} / human consistency", e.get(f"{metric}_over_ceiling"))
               for name, e in res["models"].items()]
        parts.append(kv_table(kv))
        parts.append(note("A model that predicts one half of the observers as well as the other half does reaches "
                          "1. The full-group score is more reliable than a half, so the ratio can exceed 1; the "
                          "largest correlation expected with it is about the square root of the Spearman-Brown "
                          "value."))
    else:
        parts.append(note("No noise ceiling: the data set has no split-half scores.", True))
    return "".join(parts), res
