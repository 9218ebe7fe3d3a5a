"""Evaluation of predictors: stratified train/val/test splits, prediction metrics, the ridge baseline and
:func:`cross_validate` (per-fold metrics and out-of-fold predictions, with mean rows by :func:`summarize_cv`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone

from .mlp import MemorabilityRegressor
from .svr import MemorabilitySVR

#: ridge baseline penalties (on standardised inputs; RidgeCV picks one by efficient leave-one-out)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 6, 15))


#: the label a subcategory too small to spread over the splits is merged into (its category's remainder)
SUBCATEGORY_REST = "~rest"
#: how ``fit-predictor`` can stratify its splits (``--stratify``); ``auto`` resolves by :func:`resolve_stratify`
STRATIFY = ("auto", "category", "subcategory", "none")


def strata_labels(scores: np.ndarray, categories: Sequence[Any] | None = None,
                  subcategories: Sequence[Any] | None = None, *, min_size: int = 2) -> np.ndarray:
    """Stratum per image, as strings.

    Without ``subcategories``: category x (score above the median or not), ``"cat|hi"`` (``"hi"``/``"lo"``
    without categories). With ``subcategories``: the path ``"category|subcategory|hi"`` (no category level
    without categories), meant for the nested dealing of :func:`make_splits` and :func:`holdout_split`
    (``nested=True``), which spreads every level (category, subcategory, subcategory x score half) over the
    splits within one row. A subcategory with fewer than ``min_size`` rows (e.g. fewer than the folds) cannot
    be spread: it is merged into its category's remainder, :data:`SUBCATEGORY_REST`. Missing subcategories
    (None/NaN) count as one more small group and are merged likewise.
    """
    scores = np.asarray(scores, dtype=float)
    above = np.where(scores > np.median(scores), "hi", "lo") if len(scores) else np.zeros(0, dtype=str)
    if subcategories is None:
        if categories is None:
            return above.astype(object)
        return np.array([f"{c}|{a}" for c, a in zip(categories, above, strict=True)], dtype=object)

    def name(v: Any) -> str | None:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        return str(v).replace("|", "/")  # "|" separates the levels

    subs = [name(v) for v in subcategories]
    if len(subs) != len(scores):
        raise ValueError(f"{len(subs)} subcategories for {len(scores)} scores")
    cats = [None] * len(subs) if categories is None else [name(v) for v in categories]
    if len(cats) != len(subs):
        raise ValueError(f"{len(cats)} categories for {len(subs)} subcategories")
    from collections import Counter

    size = Counter(zip(cats, subs, strict=True))
    out = []
    for c, s, a in zip(cats, subs, above, strict=True):
        sub = s if s is not None and size[(c, s)] >= max(1, int(min_size)) else SUBCATEGORY_REST
        out.append(f"{sub}|{a}" if categories is None else f"{c if c is not None else ''}|{sub}|{a}")
    return np.array(out, dtype=object)


def resolve_stratify(stratify: str | None, has_subcategories: bool) -> str:
    """The stratification ``fit-predictor`` uses: ``auto`` (or None) is ``subcategory`` when the data has a
    subcategory column, else ``category`` (category x score half: the behaviour before ``--stratify``
    existed); ``subcategory`` without such a column is a :class:`memlens.errors.ConfigError`."""
    from ..errors import ConfigError

    mode = "auto" if stratify is None else str(stratify).strip().lower()
    if mode not in STRATIFY:
        raise ConfigError(f"stratify must be one of {', '.join(STRATIFY)}, got {stratify!r}")
    if mode == "auto":
        return "subcategory" if has_subcategories else "category"
    if mode == "subcategory" and not has_subcategories:
        raise ConfigError("--stratify subcategory: the run's per_image.csv has no subcategory column with values "
                          "(use --stratify category or auto)")
    return mode


def _dealt_order(strata: np.ndarray, rng: np.random.Generator, nested: bool = False) -> np.ndarray:
    """Row order for dealing: stratum by stratum, strata in random order, random order inside each.

    ``nested``: labels are ``|``-separated paths and every prefix's rows stay together (the groups of each
    level in random order), so dealing spreads every level, not only the finest, within one row."""
    if not len(strata):
        return np.zeros(0, dtype=int)
    if not nested:
        labels = sorted(set(strata.tolist()), key=str)
        labels = [labels[i] for i in rng.permutation(len(labels))]
        return np.concatenate([rng.permutation(np.flatnonzero(strata == lab)) for lab in labels])
    paths = [str(s).split("|") for s in strata.tolist()]

    def order(rows: np.ndarray, level: int) -> list[np.ndarray]:
        groups: dict[str, list[int]] = {}
        leaves: list[int] = []
        for r in rows.tolist():
            (groups.setdefault(paths[r][level], []) if level < len(paths[r]) else leaves).append(r)
        out = [np.asarray(leaves, dtype=int)[rng.permutation(len(leaves))]] if leaves else []
        keys = sorted(groups)
        for k in (keys[i] for i in rng.permutation(len(keys))):
            out += order(np.asarray(groups[k], dtype=int), level + 1)
        return out

    return np.concatenate(order(np.arange(len(strata)), 0))


def make_splits(strata: Sequence[Any], split: str = "kfold", n_splits: int = 5,
                seed: int = 0, *, nested: bool = False) -> list[dict[str, np.ndarray]]:
    """Stratified, disjoint train/val/test index sets.

    Rows are ordered stratum by stratum (random order within each stratum, strata in random order) and
    dealt out in that order: ``kfold`` gives fold ``j`` the rows at positions ``j, j + K, ...`` (each row is
    tested exactly once; ``val`` is empty: early stopping splits the training folds); ``paper`` deals a
    repeating pattern of 6 train, 1 validation and 3 test rows (60/10/30), ``n_splits`` times with different
    seeds. Either way every stratum is spread over the sets in the same proportions (up to one row).
    ``nested``: the labels are paths (:func:`strata_labels` with subcategories) and every level of them is
    spread alike (see :func:`_dealt_order`); the default orders the finest strata only, as before.

    Returns a list of dicts with sorted ``train``, ``val``, ``test`` index arrays.
    """
    strata = np.asarray(list(strata), dtype=object)
    n = len(strata)
    if split not in ("kfold", "paper"):
        raise ValueError(f"split must be 'kfold' or 'paper', got {split!r}")
    if n_splits < 1 or (split == "kfold" and n_splits < 2):
        raise ValueError(f"n_splits must be >= 2 for kfold and >= 1 for paper, got {n_splits}")

    def dealt_order(rng: np.random.Generator) -> np.ndarray:
        return _dealt_order(strata, rng, nested)

    out: list[dict[str, np.ndarray]] = []
    if split == "kfold":
        if n < n_splits:
            raise ValueError(f"{n} rows cannot make {n_splits} folds")
        rng = np.random.default_rng(seed)
        order = dealt_order(rng)
        fold = np.empty(n, dtype=int)
        fold[order] = (np.arange(n) + int(rng.integers(n_splits))) % n_splits
        for j in range(n_splits):
            out.append({"train": np.flatnonzero(fold != j), "val": np.zeros(0, dtype=int),
                        "test": np.flatnonzero(fold == j)})
        return out
    pattern = np.array(["train", "test", "train", "train", "val", "test", "train", "train", "test", "train"])
    for r in range(n_splits):
        rng = np.random.default_rng([seed, r])
        order = dealt_order(rng)
        role = np.empty(n, dtype=object)
        role[order] = pattern[(np.arange(n) + int(rng.integers(len(pattern)))) % len(pattern)]
        out.append({k: np.flatnonzero(role == k) for k in ("train", "val", "test")})
    return out


def holdout_split(strata: Sequence[Any], fraction: float, seed: int = 0, *,
                  nested: bool = False) -> dict[str, np.ndarray]:
    """An untouched test part set aside before any choice: sorted ``select`` and ``holdout`` row indices.

    Stratified like :func:`make_splits` (rows ordered stratum by stratum, random order within each, then
    dealt out), so every stratum is in the holdout in the same proportion (up to one row); the same
    ``strata``, ``fraction`` and ``seed`` always give the same rows. ``fraction`` in (0, 1). ``nested`` as
    for :func:`make_splits`.
    """
    strata = np.asarray(list(strata), dtype=object)
    n = len(strata)
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    n_hold = int(round(n * fraction))
    if n_hold < 1 or n_hold >= n:
        raise ValueError(f"a holdout of {fraction:g} of {n} rows leaves no rows on one side")
    rng = np.random.default_rng([seed, 7919])  # its own stream: independent of the CV folds' seed use
    order = _dealt_order(strata, rng, nested)
    # deal: position p goes to the holdout when floor((p + 1) * f) > floor(p * f) (evenly spread, exact count)
    pos = np.arange(n) + float(rng.random())
    take = np.floor((pos + 1) * n_hold / n) > np.floor(pos * n_hold / n)
    hold = np.sort(order[take])
    if len(hold) != n_hold:  # the random offset can move one row across the end
        hold = np.sort(order[np.argsort(~take, kind="stable")[:n_hold]])
    mask = np.zeros(n, dtype=bool)
    mask[hold] = True
    return {"select": np.flatnonzero(~mask), "holdout": np.flatnonzero(mask)}


def prediction_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Spearman, Pearson, MSE and the AUC of telling above- from below-median images (test median)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import roc_auc_score

    yt = np.asarray(y_true, dtype=float)
    yp = np.asarray(y_pred, dtype=float)
    out = {"n": int(len(yt)), "spearman": math.nan, "pearson": math.nan,
           "mse": float(np.mean((yt - yp) ** 2)) if len(yt) else math.nan, "auc": math.nan}
    if len(yt) >= 3 and np.ptp(yt) > 0 and np.ptp(yp) > 0:
        out["spearman"] = float(spearmanr(yt, yp)[0])
        out["pearson"] = float(pearsonr(yt, yp)[0])
    labels = yt > np.median(yt) if len(yt) else yt
    if len(yt) and 0 < labels.sum() < len(labels):
        out["auc"] = float(roc_auc_score(labels, yp))
    return out


def ridge_baseline(alphas: Sequence[float] = RIDGE_ALPHAS) -> Any:
    """Standardise + RidgeCV (alpha by efficient leave-one-out on the training rows)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=tuple(alphas)))


def linear_head(pipeline: Any) -> MemorabilityRegressor:
    """A fitted :func:`ridge_baseline` pipeline as a fitted :class:`MemorabilityRegressor` with no hidden layer
    (its scaler and coefficients, exactly): what ``predictor.pt`` stores when ridge is the saved model, so
    that ``memlens predict`` and ``explain`` treat it like any other head (no pickles)."""
    scaler, ridge = pipeline[0], pipeline[-1]
    est = MemorabilityRegressor(hidden=(), dropout=0.0)
    scale = np.asarray(scaler.scale_, dtype=np.float64).copy()
    est.x_mean_ = np.asarray(scaler.mean_, dtype=np.float64).copy()
    est.x_scale_ = np.where(scale > 0, scale, 1.0)
    est.coefs_ = [np.asarray(ridge.coef_, dtype=np.float32).reshape(-1, 1)]
    est.intercepts_ = [np.asarray([ridge.intercept_], dtype=np.float32).reshape(1)]
    est.y_mean_, est.y_scale_ = 0.0, 1.0
    est.n_features_in_ = int(len(est.x_mean_))
    est.n_epochs_ = est.best_epoch_ = 0
    est.best_val_loss_ = math.nan
    est.loss_curve_, est.val_loss_curve_ = [], []
    return est


def blas_threads(n: int | None) -> Any:
    """Limit BLAS/LAPACK threads (restored on exit); None: leave them alone."""
    import contextlib

    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(n)), user_api="blas")


@dataclass
class CVResult:
    """Per-fold metrics of each model (``table``) and out-of-fold predictions (``oof``)."""

    table: Any  # DataFrame: fold, model, n_train, n_val, n_test, spearman, pearson, mse, auc, ...
    oof: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (N,) predictions (NaN if never tested)
    estimators: list[dict[str, Any]] = field(default_factory=list)  # per split: model -> fitted estimator


def cross_validate(X: Any, y: Any, splits: list[dict[str, np.ndarray]], *,
                   regressor: MemorabilityRegressor | None = None, ridge: bool = True,
                   svr: MemorabilitySVR | None = None, mlp: bool = True,
                   ceiling: Callable[[np.ndarray], dict[str, float]] | None = None,
                   progress: Callable[[str], Any] | None = None, return_estimators: bool = False,
                   extra_models: dict[str, tuple[Any, Any]] | None = None,
                   blends: dict[str, Sequence[str] | Mapping[str, float]] | None = None) -> CVResult:
    """Fit the MLP, the kernel model (``svr``) and the ridge baseline on each split's training rows; score
    its test rows (``mlp=False`` skips the MLP).

    The MLP stops early on the split's ``val`` rows when there are any, else on its own inner split of the
    training rows (nested: test rows never influence training). Ridge fits on train + val (its penalty is
    chosen by leave-one-out inside them; BLAS threads follow the regressor's ``num_threads``). Every scaler
    is fitted inside the training rows.
    ``ceiling(test_index)`` may return ``{"human_consistency": ..., "spearman_brown": ...}`` for the fold.
    ``return_estimators`` keeps the fitted models (``CVResult.estimators``).
    ``extra_models`` adds models with inputs of their own: ``{name: (unfitted estimator, inputs)}`` where ``inputs``
    is indexable by row like ``X`` (e.g. :class:`memlens.predict.finetune.TrunkActivations`); each fold fits a
    fresh copy (``type(est)(**est.get_params())``) on train + val rows. ``blends`` adds the mean of other
    models' predictions as a model of its own (``{"svr+finetune": ("svr", "finetune")}``, or a weighted mean:
    ``{"svr+finetune": {"svr": 0.7, "finetune": 0.3}}``, divided by their sum): nothing is fitted for it, so it
    costs nothing and every fold's blend uses only that fold's fits.
    """
    import pandas as pd

    y = np.asarray(y, dtype=float)
    base = regressor if regressor is not None else MemorabilityRegressor()
    rows: list[dict[str, Any]] = []
    oof = {"mlp": np.full(len(y), np.nan)} if mlp else {}
    if svr is not None:
        oof["svr"] = np.full(len(y), np.nan)
    if ridge:
        oof["ridge"] = np.full(len(y), np.nan)
    fitted: list[dict[str, Any]] = []
    blend_weights: dict[str, dict[str, float]] = {}  # name -> member -> weight, summing to 1; checked before any fit
    for name, members in (blends or {}).items():
        weights = dict(members) if isinstance(members, Mapping) else dict.fromkeys(members, 1.0)
        total = float(sum(weights.values()))
        if min(weights.values()) < 0 or not total > 0:
            raise ValueError(f"blend {name!r}: weights must be >= 0 with a positive sum, got {weights}")
        blend_weights[name] = {m: float(w) / total for m, w in weights.items()}
    for j, sp in enumerate(splits):
        tr, va, te = sp["train"], sp["val"], sp["test"]
        extra = ceiling(te) if ceiling is not None else {}
        fold_fits: dict[str, Any] = {}
        if mlp:
            t0 = time.perf_counter()
            est = clone(base)
            if base.random_state is not None:
                est.set_params(random_state=int(base.random_state) + j)
            vd = (X[va], y[va]) if len(va) else None
            est.fit(X[tr], y[tr], validation_data=vd)
            pred = est.predict(X[te])
            oof["mlp"][te] = pred
            metrics = prediction_metrics(y[te], pred)
            metrics.pop("n")
            rows.append({"fold": j, "model": "mlp", "n_train": len(tr), "n_val": len(va), "n_test": len(te),
                         **metrics, **extra, "epochs": est.best_epoch_,
                         "seconds": time.perf_counter() - t0})
            fold_fits["mlp"] = est
        if svr is not None:
            t0 = time.perf_counter()
            fit_rows = np.concatenate([tr, va])
            sv = clone(svr).fit(X[fit_rows], y[fit_rows])
            pred_s = sv.predict(X[te])
            oof["svr"][te] = pred_s
            metrics = prediction_metrics(y[te], pred_s)
            metrics.pop("n")
            rows.append({"fold": j, "model": "svr", "n_train": len(fit_rows), "n_val": 0, "n_test": len(te),
                         **metrics, **extra, "seconds": time.perf_counter() - t0})
            fold_fits["svr"] = sv
        if ridge:
            t0 = time.perf_counter()
            fit_rows = np.concatenate([tr, va])
            with blas_threads(base.num_threads):
                rg = ridge_baseline().fit(X[fit_rows], y[fit_rows])
            pred_r = rg.predict(X[te])
            oof["ridge"][te] = pred_r
            metrics = prediction_metrics(y[te], pred_r)
            metrics.pop("n")
            rows.append({"fold": j, "model": "ridge", "n_train": len(fit_rows), "n_val": 0, "n_test": len(te),
                         **metrics, **extra,
                         "alpha": float(rg[-1].alpha_), "seconds": time.perf_counter() - t0})
        if ridge:
            fold_fits["ridge"] = rg
        fold_preds = {m: oof[m][te] for m in oof}
        for name, (est0, inputs) in (extra_models or {}).items():
            t0 = time.perf_counter()
            fit_rows = np.concatenate([tr, va])
            est = type(est0)(**est0.get_params())
            est.fit(inputs[fit_rows], y[fit_rows])
            pred_e = est.predict(inputs[te])
            oof.setdefault(name, np.full(len(y), np.nan))[te] = pred_e
            fold_preds[name] = pred_e
            metrics = prediction_metrics(y[te], pred_e)
            metrics.pop("n")
            rows.append({"fold": j, "model": name, "n_train": len(fit_rows), "n_val": 0, "n_test": len(te),
                         **metrics, **extra, "seconds": time.perf_counter() - t0})
            fold_fits[name] = est
        for name, weights in blend_weights.items():
            if not all(m in fold_preds for m in weights):
                continue
            pred_b = np.sum([w * fold_preds[m] for m, w in weights.items()], axis=0)
            oof.setdefault(name, np.full(len(y), np.nan))[te] = pred_b
            metrics = prediction_metrics(y[te], pred_b)
            metrics.pop("n")
            rows.append({"fold": j, "model": name, "n_train": len(np.concatenate([tr, va])), "n_val": 0,
                         "n_test": len(te), **metrics, **extra, "seconds": 0.0})
        if return_estimators:
            fitted.append(fold_fits)
        if progress is not None:
            last = [r for r in rows if r["fold"] == j]
            progress(f"fold {j + 1}/{len(splits)}: " + ", ".join(
                f"{r['model']} rho={r['spearman']:.3f}" for r in last))
    table = pd.DataFrame(rows)
    return CVResult(table, oof, fitted)


def summarize_cv(table: Any) -> Any:
    """Append one ``fold="mean"`` row per model (means over folds; ``n_*`` summed)."""
    import pandas as pd

    means = []
    for model, g in table.groupby("model", sort=False):
        row: dict[str, Any] = {"fold": "mean", "model": model}
        for c in g.columns:
            if c in ("fold", "model"):
                continue
            v = pd.to_numeric(g[c], errors="coerce")
            if v.notna().any():
                row[c] = int(v.sum()) if c.startswith("n_") else float(v.mean())
        means.append(row)
    out = pd.concat([table.astype({"fold": object}), pd.DataFrame(means)], ignore_index=True)
    return out

