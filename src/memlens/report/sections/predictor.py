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

#: how the report explains the ceiling it divides by
CEILING_NOTE = ("The noise ceiling is the square root of the full-group score's Spearman-Brown reliability: the "
                "highest correlation any model can reach with that score when the human scores' noise is the only "
                "limit (the correction for attenuation, Spearman 1904; as a ceiling: Lage-Castellanos et al. 2019). "
                "A ratio near 1 means the model predicts the score as well as its reliability allows.")


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
    honest = _honest_estimate(cv)
    inner = cv.iloc[0:0]
    if honest is not None:  # fit-predictor >= 0.x: selection figures (inner-cv) apart from the honest ones
        est_col = cv["estimate"].astype(str)
        inner = cv[est_col == "inner-cv"]
        cv = cv[est_col == honest["kind"]]
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
    # correlation table, the ceiling divided by is the square root of the Spearman-Brown value (the reliability
    # of the full-group score; column "noise_ceiling" in older predictor_cv.csv files)
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
    ceiling = math.sqrt(reliability) if consistency and reliability and reliability > 0 else None
    res["ceiling"] = ceiling
    if ceiling and metric:
        for entry in res["models"].values():
            m = entry.get(f"{metric}_mean")
            entry[f"{metric}_over_ceiling"] = m / ceiling if m is not None else None
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
    if honest is not None:
        return _honest_section(ctx, res, honest, inner, mean_rows, metrics, per_fold, consistency, reliability,
                               ceiling_source, inputs, main)
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
                                                 ceiling=ceiling),
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
    if ceiling and metric:
        n_pred = next((e["n_test_total"] for e in res["models"].values() if e.get("n_test_total")), None)
        of = f" of the {n_pred} predicted images" if n_pred and ceiling_source == "predictor_cv.csv" else ""
        kv = [(f"human split-half consistency{of}", consistency),
              ("reliability of the full-group score (Spearman-Brown)", reliability),
              ("noise ceiling (√ reliability)", ceiling)]
        kv += [(f"{name}: {metric} / noise ceiling", e.get(f"{metric}_over_ceiling"))
               for name, e in res["models"].items()]
        parts.append(kv_table(kv))
        parts.append(note(CEILING_NOTE))
    else:
        parts.append(note("No noise ceiling: the data set has no split-half scores.", True))
    return "".join(parts), res


_KIND_TEXT = {
    "holdout": "images set aside, seeded and stratified, before any choice was made; predicted once by the "
               "models fitted on the other images",
    "outer-cv": "nested cross-validation: each image predicted by a model whose choice and fit never saw it",
}


def _honest_estimate(cv: pd.DataFrame) -> dict[str, Any] | None:
    """The reported (honest) estimate of a predictor_cv.csv with an ``estimate`` column: the kind, the model
    whose figure it is, and its pooled Spearman with CI; None for older files."""
    if "estimate" not in cv.columns or "fold" not in cv.columns:
        return None
    kinds = [k for k in ("holdout", "outer-cv") if (cv["estimate"].astype(str) == k).any()]
    if not kinds:
        return None
    kind = kinds[0]
    mean = cv[(cv["estimate"].astype(str) == kind) & (cv["fold"].astype(str) == "mean")]
    if "reported" in mean.columns:
        rep = mean[mean["reported"].astype(str).str.lower().isin(["true", "1"])]
        mean = rep if len(rep) else mean
    if mean.empty:
        return None
    row = mean.iloc[0]

    def num(c: str) -> float | None:
        return finite_float(pd.to_numeric(row.get(c), errors="coerce")) if c in row.index else None

    return {"kind": kind, "model": str(row["model"]), "spearman": num("spearman_pooled"),
            "ci_low": num("ci_low"), "ci_high": num("ci_high"), "n": num("n_test")}


def _gains(rows: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """predictor_cv.csv's paired gains of the reported model over each other model (mean rows of the honest
    estimate; files written before these columns have none)."""
    if "reported_minus" not in rows.columns or "model" not in rows.columns:
        return {}
    out = {}
    for _, r in rows.iterrows():
        d = finite_float(r["reported_minus"])
        if d is not None:
            out[str(r["model"])] = {"diff": d, "ci_low": finite_float(r.get("reported_minus_ci_low")),
                                    "ci_high": finite_float(r.get("reported_minus_ci_high")),
                                    "p": finite_float(r.get("reported_minus_p"))}
    return out


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _pooled_ci(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """model -> {"r", "ci_low", "ci_high"} from the mean rows' pooled Spearman and CI (predictor_cv.csv)."""
    out: dict[str, dict[str, float]] = {}
    if not {"spearman_pooled", "ci_low", "ci_high", "model", "fold"} <= set(rows.columns):
        return out
    for _, r in rows[rows["fold"].astype(str) == "mean"].iterrows():
        vals = {k: finite_float(pd.to_numeric(r[c], errors="coerce"))
                for k, c in (("r", "spearman_pooled"), ("ci_low", "ci_low"), ("ci_high", "ci_high"))}
        if all(v is not None for v in vals.values()):
            out[str(r["model"])] = vals
    return out


def _honest_section(ctx: ReportContext, res: dict[str, Any], honest: dict[str, Any], inner: pd.DataFrame,
                    mean_rows: pd.DataFrame, metrics: list[str], per_fold: dict[str, list[float]],
                    consistency: float | None, reliability: float | None, ceiling_source: str | None,
                    inputs: str | None, main: str) -> tuple[str, dict]:
    """The section for a predictor_cv.csv that separates the selection figures from the honest estimate."""
    kind, shown = honest["kind"], honest["model"]
    res["estimate"] = honest
    ceiling = res.get("ceiling")
    inner_means: dict[str, float] = {}
    if len(inner) and "spearman" in inner.columns:
        f = inner[inner["fold"].astype(str) != "mean"]
        inner_means = {str(m): float(pd.to_numeric(g["spearman"], errors="coerce").mean())
                       for m, g in f.groupby("model", sort=False)}
    res["inner"] = inner_means
    label = MODEL_NAMES.get(main, main)
    what = f"{label}" + (", chosen by cross-validation inside the selection images" if shown == "selected"
                         or main in inner_means else "")
    n = int(honest["n"]) if honest.get("n") else None
    parts = [f'<p class="lead">How well the saved predictor ({esc(what)}'
             + (f"; inputs: {esc(inputs)}" if inputs else "") + ") predicts memorability for images it has not "
             "seen, measured only on images that took no part in any choice of features, model or settings.</p>"]
    kv = [("estimate for new images (Spearman ρ)", f"{fmt(honest['spearman'], 3)} "
           f"{fmt_ci(honest['ci_low'], honest['ci_high'])}"),
          ("images it is measured on", f"{n if n else 'n/a'}: {_KIND_TEXT[kind]}")]
    if shown == "selected":
        kv.append(("what it measures", "the whole procedure: choosing among the models inside each outer "
                                       "fold, then fitting the chosen one"))
    if inner_means.get(main) is not None:
        kv.append((f"selection figure of {main} (inner cross-validation; the choice was made on it, so it is "
                   "optimistic)", fmt(inner_means[main], 3)))
    parts.append(kv_table(kv))
    if honest["spearman"] is not None:
        ctx.headline["predictor"] = honest["spearman"]
        ctx.headline["predictor_label"] = main.upper() if main in ("svr", "mlp") else main
        ctx.headline["predictor_how"] = ("on held-out images no choice saw" if kind == "holdout"
                                         else "nested cross-validation, unseen images")
    oof, oof_source = oof_predictions(ctx.run)
    figs = []
    if per_fold and kind == "outer-cv":
        figs.append(figure_html(F.predictor_bars(per_fold, metric=res["metric"] or "spearman",
                                                 consistency=consistency, ceiling=ceiling),
                                "outer-fold prediction accuracy per model"))
    col = f"predicted_{shown}"
    oof_rows = []
    if oof is not None and "score" in oof.columns:
        sub = oof[oof["part"].astype(str) == kind] if "part" in oof.columns else oof
        res["oof"] = {}
        pooled = _pooled_ci(mean_rows)
        for c in [c for c in sub.columns if c.startswith("predicted_")]:
            st = report_correlation(sub[c], sub["score"])
            # one CI per figure: fit-predictor's (predictor_cv.csv), which the headline quotes, where it has one
            st.update(pooled.get(c[len("predicted_"):], {}))
            res["oof"][c[len("predicted_"):]] = st
            oof_rows.append([c[len("predicted_"):], st["n"], st["r"], fmt_ci(st["ci_low"], st["ci_high"]),
                             fmt_p(st["p_value"])])
        gains = _gains(mean_rows)  # the reported model's paired gain over each other, as fit-predictor computed it
        if gains:
            res["gains"] = {"reference": shown, "models": gains}
            for row in oof_rows:
                g = gains.get(row[0])
                row.append("" if g is None else _signed(g["diff"]) + " " + fmt_ci(g["ci_low"], g["ci_high"], 3))
        if col in sub.columns and res["oof"].get(shown, {}).get("r") is not None:
            st = res["oof"][shown]
            figs.append(figure_html(
                F.measure_scatter(pd.to_numeric(sub[col], errors="coerce"), pd.to_numeric(sub["score"], errors="coerce"),
                                  xlabel=f"predicted memorability ({MODEL_NAMES.get(shown, shown)})", r=st["r"],
                                  ci=(st["ci_low"], st["ci_high"]), n=st["n"],
                                  title="Prediction vs human score, unseen images"),
                "predicted memorability of images no choice saw against the human score",
                "Only images that took no part in choosing or fitting the model that predicted them."))
    if figs:
        parts.append(f'<div class="figrow">{"".join(figs)}</div>')
    if oof is not None and "score" in oof.columns and col in oof.columns:
        sub = oof[oof["part"].astype(str) == kind] if "part" in oof.columns else oof
        parts.extend(_category_parts(ctx, sub, col, res))
    if oof_rows:
        parts.append(f"<h3>Every model on the same unseen images (<code>{esc(oof_source)}</code>)</h3>")
        gained = "gains" in res
        head = ["model", "n", "ρ", "95% CI", "p"] + ([f"ρ of {shown} minus this one [95% CI]"] if gained else [])
        parts.append(html_table(head, [tuple(r) for r in oof_rows], [False, True, True, True, True]
                                + ([True] if gained else [])))
        parts.append(note("Paired bootstrap 95 % CIs. Comparing these models with one another is itself a choice: "
                          "the figure reported for the saved model is the one above."
                          + (" The last column is the difference of two models' ρ on the same images, with a CI "
                             "from resamples that re-rank both models' predictions of the same images: because "
                             "the models share their images, it is much narrower than the two separate CIs "
                             "suggest; an interval that contains 0 means no measurable difference."
                             if gained else "")))
    if inner_means:
        parts.append("<h3>Selection figures (inner cross-validation)</h3>")
        parts.append(html_table(["model", "inner-CV ρ (mean over folds)"],
                                [(m, fmt(v, 3)) for m, v in inner_means.items()], [False, True]))
        parts.append(note("These are the figures the choice of model was made on. Picking the best of several "
                          "close candidates also picks up their luck, so they overstate what to expect on new "
                          "images; they are shown to explain the choice, not as its accuracy."))
    if ceiling and honest["spearman"] is not None:
        kvc = [("human split-half consistency", consistency),
               ("reliability of the full-group score (Spearman-Brown)", reliability),
               ("noise ceiling (√ reliability)", ceiling),
               ("estimate / noise ceiling", honest["spearman"] / ceiling)]
        parts.append(kv_table(kvc))
        parts.append(note(CEILING_NOTE))
    elif not consistency:
        parts.append(note("No noise ceiling: the data set has no split-half scores.", True))
    res["ceiling_source"] = ceiling_source
    return "".join(parts), res


def _category_parts(ctx: ReportContext, sub: pd.DataFrame, col: str, res: dict[str, Any]) -> list[str]:
    """The honest predictions' rho pooled, within and between categories (and per category), side by side.

    A predictor can reach a high pooled rho by telling the categories apart (landscapes are forgettable) while
    ranking the images inside a category no better than chance: the within-category rho says which.
    """
    table = ctx.run.csv("predictor_categories.csv")  # fit-predictor's: one CI per figure
    source = "predictor_categories.csv"
    if table is None or not {"scope", "r", "n"} <= set(table.columns):
        per_image = ctx.per_image
        if per_image is None or "category" not in per_image.columns or "image_id" not in sub.columns:
            return []
        cats = per_image.set_index(per_image["image_id"].astype(str))["category"]
        df = sub.assign(category=sub["image_id"].astype(str).map(cats))
        df = df[df["category"].notna() & (df["category"].astype(str).str.strip() != "")]
        if df["category"].nunique() < 2 or len(df) < 10:
            return []
        from ...stats import correlation_table
        from ...stats.correlation import collected_warnings
        from ..analysis import BOOT_SEED, N_BOOT

        with collected_warnings():  # a small category's NaN row is shown as such, not warned about
            table = correlation_table(df.rename(columns={col: "predicted"}), x="predicted", y="score",
                                      by="category", n_boot=N_BOOT, seed=BOOT_SEED, name="predictor_oof.csv")
        source = "predictor_oof.csv (computed by the report)"
    rows, out = [], {}
    labels = {"within": "within category (category means removed)",
              "pooled": "pooled (mixes telling the categories apart with ranking inside them)",
              "between": "between categories (category means)"}
    for scope in ("within", "pooled", "between"):
        hit = table[table["scope"] == scope]
        if hit.empty:
            continue
        r = hit.iloc[0]
        out[scope] = {"n": int(r["n"]), "r": finite_float(r["r"]), "ci_low": finite_float(r["ci_low"]),
                      "ci_high": finite_float(r["ci_high"]), "p_value": finite_float(r["p_value"]),
                      "n_groups": None if pd.isna(r["n_groups"]) else int(r["n_groups"])}
        label = labels[scope] + (f", {out[scope]['n_groups']} points" if scope == "between" else "")
        rows.append((label, out[scope]["n"], out[scope]["r"], fmt_ci(out[scope]["ci_low"], out[scope]["ci_high"]),
                     fmt_p(out[scope]["p_value"])))
    for r in table[table["scope"] == "group"].itertuples():
        out.setdefault("categories", {})[str(r.group)] = {"n": int(r.n), "r": finite_float(r.r),
                                                          "ci_low": finite_float(r.ci_low),
                                                          "ci_high": finite_float(r.ci_high)}
        rows.append((f"category {r.group}", int(r.n), finite_float(r.r), fmt_ci(r.ci_low, r.ci_high), fmt_p(r.p_value)))
    out["source"] = source
    res["estimate_parts"] = out
    if out.get("within", {}).get("r") is not None:
        ctx.headline["predictor_within"] = out["within"]["r"]
    return [f"<h3>The same unseen images, within and between categories (<code>{esc(source)}</code>)</h3>",
            html_table(["part", "n", "ρ", "95% CI", "p"], rows, [False, True, True, True, True]),
            note("The within-category ρ asks whether the predictor ranks the images inside a category; the "
                 "between-category ρ whether it orders the categories' mean memorability (as many points as "
                 "categories). The pooled ρ mixes both.")]
