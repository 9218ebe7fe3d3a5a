"""``memlens fit-predictor`` on a run (:func:`fit_predictor_run`): cross-validation with the noise ceiling of
``RUN/split_halves.npz``, ``predictor_cv.csv``/``predictor_oof.csv``, the final model in ``predictor.pt``;
and :func:`saved_model`, which model a ``predictor_cv.csv`` says was saved."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from .evaluation import (
    blas_threads,
    cross_validate,
    holdout_split,
    linear_head,
    make_splits,
    ridge_baseline,
    strata_labels,
    summarize_cv,
)
from .finetune import TRUNK_STAGE
from .inputs import DEFAULT_INPUTS, load_run_inputs
from .mlp import MemorabilityRegressor, torch_device
from .predictor_file import save_predictor
from .selection import CANDIDATES, HONEST, choose_model, estimate, resolve_holdout
from .svr import MemorabilitySVR

log = logging.getLogger(__name__)

#: ``finetune="auto"`` fine-tunes from this many scored images on (where a holdout, not nested CV, is used)
AUTO_FINETUNE_MIN = 1000
DEFAULT_MODEL = "auto"
MODELS = ("auto", "svr", "mlp", "ridge", "svr+finetune")


def _ceiling_fn(run: Path, image_ids: list[str]) -> tuple[Callable[[np.ndarray], dict[str, float]] | None,
                                                          dict[str, float]]:
    """Per-fold noise ceiling from RUN/split_halves.npz (when it and memlens.stats exist)."""
    path = run / "split_halves.npz"
    if not path.is_file():
        return None, {}
    try:
        from ..stats import split_half_reliability
    except ImportError:  # pragma: no cover - stats is optional for this module
        log.warning("memlens.stats is unavailable: no noise ceiling")
        return None, {}
    from ..data.halves import load_split_halves
    from ..errors import DataError

    try:
        halves = load_split_halves(path).subset(image_ids)
    except DataError as exc:
        log.warning("no noise ceiling: %s", exc)
        return None, {}

    def one(idx: np.ndarray) -> dict[str, float]:
        sub = halves.subset([image_ids[i] for i in idx])
        rel = split_half_reliability(sub)
        return {"human_consistency": float(rel["spearman_mean"]), "spearman_brown": float(rel["spearman_brown"])}

    return one, one(np.arange(len(image_ids)))


def fit_predictor_run(run: str | os.PathLike, *, cv: int | None = None, split: str = "kfold", seed: int = 0,
                      inputs: str = DEFAULT_INPUTS, hidden: Sequence[int] = (256,), max_epochs: int = 200,
                      device: str = "cpu", regressor_params: dict[str, Any] | None = None,
                      model: str = DEFAULT_MODEL, holdout: float | str | None = "auto",
                      finetune: str | None = "auto", finetune_params: dict[str, Any] | None = None,
                      progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Choose, evaluate honestly and save a memorability predictor for a run.

    Every figure written for the saved model comes from images that no choice saw
    (:mod:`memlens.predict.selection`):

    * with a **holdout** (``holdout="auto"``: 20 % from 1,000 images on), that part of the images is set aside
      first (seeded, stratified); the SVR, the MLP and the ridge baseline are cross-validated on the rest
      (``estimate="inner-cv"`` rows: the selection figures), ``model="auto"`` picks the best there, every
      model is fitted on the rest and scored once on the holdout (``estimate="holdout"``);
    * without one (**nested** cross-validation, smaller sets or ``holdout=0``) the folds give the
      ``outer-cv`` rows; with ``model="auto"`` the choice is repeated inside each outer fold's training rows
      (an inner cross-validation), and the pooled out-of-fold predictions of those choices are the rows of
      model ``selected``; the model saved is chosen by a cross-validation of every image (``inner-cv`` rows).

    The saved model is then refitted on every image (so the estimate is, if anything, slightly low).

    Writes ``RUN/predictor_cv.csv`` (one row per estimate, fold and model, then ``fold="mean"`` rows;
    columns ``fold, model, inputs, split, estimate, n_train, n_val, n_test, spearman, pearson, mse, auc``,
    the noise ceiling of the test images (``human_consistency``, ``spearman_brown``) when
    ``RUN/split_halves.npz`` exists, ``spearman_pooled, ci_low, ci_high`` (the Spearman of the pooled honest
    predictions with its paired bootstrap 95 % CI, on mean rows), ``epochs`` (MLP), ``alpha`` (ridge),
    ``seconds``, ``saved`` (the model in ``predictor.pt``), ``reported`` (the rows of its honest estimate)),
    ``RUN/predictor_oof.csv`` (``image_id, score, part`` and one ``predicted_<model>``
    column per model: each image predicted by models that did not see it; ``part`` says by which estimate)
    and ``RUN/predictor.pt`` (see :func:`save_predictor`; its ``info["estimate"]`` is the honest figure), all
    atomically.

    Parameters
    ----------
    cv : number of folds (``kfold``, default 5) or of repeated random 60/10/30 splits (``paper``, default 1).
    split : ``kfold`` or ``paper`` (stratified by category x above/below-median score).
    inputs : a feature set of :mod:`memlens.features` (default ``lite01``: pretrained multi-stage features of
        two ImageNet networks, extracted from the run's images and cached in the run), ``latents`` (the
        autoencoder's), ``features`` (``features.npy``: pooled Lite0 head features from ``memlens score``)
        or ``both`` (latents and features.npy, concatenated).
    model : the model saved in ``predictor.pt``: ``auto`` (default: the best of ``svr``, ``mlp`` and
        ``ridge`` by cross-validation inside the selection images), ``svr`` (support-vector regression;
        with a feature set, one per feature block, averaged), ``mlp`` (:class:`MemorabilityRegressor`) or
        ``ridge``. All are evaluated, whichever is saved.
    holdout : ``"auto"`` (0.2 from 1,000 images on, else 0), or a fraction in [0, 0.5]; 0 means nested
        cross-validation.
    finetune : a network of the feature set (``efficientnet_lite0``, or ``lite0``) whose last stages are
        fine-tuned on the scores (:class:`memlens.predict.finetune.FineTunedLiteRegressor`, settings in
        ``finetune_params``), evaluated as ``finetune`` and blended with the SVR as ``svr+finetune`` (the
        mean of the two predictions), a candidate of ``model="auto"``. ``"auto"`` (default): Lite0 when the
        feature set runs it and the run has 1,000 scored images or more (:data:`AUTO_FINETUNE_MIN`; below, nested
        cross-validation would fit about 36 tails), else none; None or ``"none"``: no fine-tuning.

    Returns
    -------
    dict with ``table`` (the CV DataFrame incl. mean rows), ``summary`` (model -> mean metrics of the
    honest estimate), ``inner`` (model -> mean inner-cv Spearman), ``estimate`` (the saved model's honest
    figure: ``kind, model, n, spearman, ci_low, ci_high``), ``model``, ``holdout``, ``ceiling``, ``paths``,
    ``n_images``, ``seconds``.
    """
    import pandas as pd

    from .._io import atomic_path
    from ..errors import ConfigError, DataError

    run = Path(run)
    t0 = time.perf_counter()
    n_splits = int(cv) if cv is not None else (5 if split == "kfold" else 1)
    if split == "kfold" and n_splits < 2:
        raise ConfigError(f"--cv {n_splits}: k-fold cross-validation needs at least 2 folds")
    if model not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    torch_device(device)  # fail early on a bad device
    variant = _finetune_variant(finetune, inputs)
    if variant is not None and str(finetune).lower() == "auto" and _n_scored(run) < AUTO_FINETUNE_MIN:
        variant = None  # small sets: nested CV would fit ~36 tails for a blend least likely to help there
    if model == "svr+finetune" and variant is None:
        raise ConfigError("--model svr+finetune needs --finetune NETWORK")
    trunk = {variant: TRUNK_STAGE} if variant else None
    data = load_run_inputs(run, inputs, trunk=trunk, progress=progress)
    n = len(data.y)
    frac = resolve_holdout(holdout, n)
    from ..features import FEATURE_SETS

    svr_base = MemorabilitySVR(blocks=FEATURE_SETS[inputs].blocks() if inputs in FEATURE_SETS else None)
    n_cv_rows = n - int(round(n * frac))
    if split == "kfold" and n_splits > n_cv_rows // 2:
        raise DataError(f"{n_cv_rows} images are too few for {n_splits} folds"
                        + (f" after a holdout of {frac:g}" if frac else ""))
    params = {"hidden": tuple(hidden), "max_epochs": int(max_epochs), "device": device, **(regressor_params or {})}
    base = MemorabilityRegressor(random_state=seed, **params)
    ceiling, overall = _ceiling_fn(run, data.image_ids)
    cats = np.asarray(data.categories, dtype=object) if data.categories is not None else None
    X, y = data.X, np.asarray(data.y, dtype=float)

    def strata(idx: np.ndarray) -> np.ndarray:
        return strata_labels(y[idx], None if cats is None else cats[idx].tolist())

    def sub_ceiling(idx: np.ndarray) -> Callable[[np.ndarray], dict[str, float]] | None:
        return None if ceiling is None else (lambda te: ceiling(idx[te]))

    ft_base = None
    if variant is not None:
        from .finetune import FineTunedLiteRegressor

        ft_base = FineTunedLiteRegressor(variant, random_state=seed, device=device,
                                         num_threads=None, **(finetune_params or {}))
    candidates = CANDIDATES + (("svr+finetune",) if ft_base is not None else ())

    def models(idx: np.ndarray) -> dict[str, Any]:
        if ft_base is None:
            return {}
        return {"extra_models": {"finetune": (ft_base, data.trunk[variant][idx])},
                "blends": {"svr+finetune": ("svr", "finetune")}}

    def run_cv(idx: np.ndarray, splits: list[dict[str, np.ndarray]], tag: str, **kw: Any) -> Any:
        res = cross_validate(X[idx], y[idx], splits, regressor=base, svr=svr_base, ceiling=sub_ceiling(idx),
                             progress=None if progress is None else (lambda m: progress(f"{tag} {m}")),
                             **models(idx), **kw)
        res.table.insert(2, "estimate", tag)
        return res

    log.info("fit-predictor: %d images, %d columns (%s), %s x%d, holdout %g, model %s", n, X.shape[1], inputs,
             split, n_splits, frac, model)
    every = np.arange(n)
    oof_cols: dict[str, np.ndarray] = {}
    part = np.full(n, "", dtype=object)
    tables = []
    if frac > 0:
        hs = holdout_split(strata(every), frac, seed)
        sel, hold = hs["select"], hs["holdout"]
        inner = run_cv(sel, make_splits(strata(sel), split=split, n_splits=n_splits, seed=seed), "inner-cv")
        chosen = choose_model(inner.table, candidates) if model == "auto" else model
        if progress is not None:
            progress(f"fitting every model on the {len(sel)} selection images, scoring the {len(hold)} held out")
        outer = cross_validate(X, y, [{"train": sel, "val": np.zeros(0, dtype=int), "test": hold}], regressor=base,
                               svr=svr_base, ceiling=ceiling, **models(every))
        outer.table.insert(2, "estimate", "holdout")
        tables += [inner.table, outer.table]
        for m in outer.oof:
            col = np.full(n, np.nan)
            col[sel] = inner.oof[m]
            col[hold] = outer.oof[m][hold]
            oof_cols[m] = col
        part[sel], part[hold] = "inner-cv", "holdout"
        honest_rows = hold
        kind = "holdout"
        inner_means = _mean_spearman(inner.table)
    else:
        splits = make_splits(strata(every), split=split, n_splits=n_splits, seed=seed)
        outer = run_cv(every, splits, "outer-cv")
        tables.append(outer.table)
        oof_cols = dict(outer.oof)
        tested = np.zeros(n, dtype=bool)
        for sp in splits:
            tested[sp["test"]] = True
        part[tested] = "outer-cv"
        honest_rows = np.flatnonzero(tested)
        kind = "outer-cv"
        inner_means = {}
        if model == "auto":
            selected = np.full(n, np.nan)
            sel_rows = []
            for j, sp in enumerate(splits):
                tr = np.concatenate([sp["train"], sp["val"]])
                k_in = min(n_splits if split == "kfold" else 5, len(tr) // 2)
                inner_j = cross_validate(X[tr], y[tr], make_splits(strata(tr), n_splits=max(2, k_in),
                                                                    seed=seed + 1 + j),
                                         regressor=base, svr=svr_base, **models(tr))
                pick = choose_model(inner_j.table, candidates)
                selected[sp["test"]] = oof_cols[pick][sp["test"]]
                row = outer.table[(outer.table["fold"] == j) & (outer.table["model"] == pick)].iloc[0].to_dict()
                sel_rows.append({**row, "model": "selected", "chosen": pick})
                if progress is not None:
                    progress(f"outer fold {j + 1}/{len(splits)}: the inner cross-validation chose {pick}")
            tables.append(pd.DataFrame(sel_rows))
            oof_cols = {"selected": selected, **oof_cols}
            # the model to save: chosen by a cross-validation of every image (its figures are inner-cv)
            final_cv = run_cv(every, make_splits(strata(every), split=split, n_splits=n_splits, seed=seed + 1000),
                              "inner-cv")
            tables.insert(0, final_cv.table)
            chosen = choose_model(final_cv.table, candidates)
            inner_means = _mean_spearman(final_cv.table)
        else:
            chosen = model
    table = pd.concat(tables, ignore_index=True)
    table = _add_means(table, overall, y, oof_cols, honest_rows, seed)
    table.insert(2, "inputs", inputs)
    table.insert(3, "split", split)
    honest_model = "selected" if "selected" in oof_cols else chosen
    table["saved"] = table["model"] == chosen  # the model kept in predictor.pt
    # the rows whose figure is reported for it: its honest estimate (the selection procedure's, when it chose)
    table["reported"] = (table["model"] == honest_model) & (table["estimate"] == kind)
    with atomic_path(run / "predictor_cv.csv") as tmp:
        table.to_csv(tmp, index=False)
    oof = pd.DataFrame({"image_id": data.image_ids, "score": y, "part": part,
                        **{f"predicted_{m}": v for m, v in oof_cols.items()}})
    with atomic_path(run / "predictor_oof.csv") as tmp:
        oof.to_csv(tmp, index=False)

    # the honest figure: its mean row's pooled Spearman and CI (computed once, in _add_means)
    at = table[(table["fold"] == "mean") & table["reported"]].iloc[0]
    est = {"kind": kind, "model": chosen, "procedure": honest_model,
           "n": int(np.isfinite(oof_cols[honest_model][honest_rows]).sum()),
           "spearman": float(at["spearman_pooled"]), "ci_low": float(at["ci_low"]), "ci_high": float(at["ci_high"])}
    if progress is not None:
        progress(f"fitting the final model ({chosen}) on every image")
    finetuned = None
    if chosen == "svr+finetune":
        final = clone(svr_base).fit(X, y)
        finetuned = type(ft_base)(**ft_base.get_params()).fit(data.trunk[variant], y)
    elif chosen == "svr":
        final = clone(svr_base).fit(X, y)
    elif chosen == "mlp":
        final = MemorabilityRegressor(random_state=seed, **params).fit(X, y)
    else:
        with blas_threads(base.num_threads):
            final = linear_head(ridge_baseline().fit(X, y))
    mean_rows = table[(table["fold"] == "mean") & (table["estimate"] == kind)].set_index("model")
    summary = {m: {c: _num(mean_rows.loc[m, c]) for c in ("spearman", "pearson", "mse", "auc", "spearman_pooled",
                                                          "ci_low", "ci_high")
                   if c in mean_rows.columns} for m in mean_rows.index}
    info = {"inputs": inputs, "model": chosen, "model_option": model, "split": split, "n_splits": n_splits,
            "seed": seed, "holdout": frac, "n_images": n, "estimate": est, "inner": inner_means, "cv": summary,
            "ceiling": overall, "final_epochs": getattr(final, "best_epoch_", None)}
    if ft_base is not None:
        info["finetune"] = {k: v for k, v in ft_base.get_params().items() if k not in ("device", "num_threads")}
    save_predictor(run / "predictor.pt", final, data.recipe, info=info, finetuned=finetuned)
    seconds = time.perf_counter() - t0
    return {"table": table, "summary": summary, "inner": inner_means, "estimate": est, "ceiling": overall,
            "n_images": n, "model": chosen, "holdout": frac, "n_features": int(X.shape[1]), "seconds": seconds,
            "paths": [run / "predictor_cv.csv", run / "predictor_oof.csv", run / "predictor.pt"]}


def _n_scored(run: Path) -> int:
    """Rows of ``RUN/per_image.csv`` with a finite score (0 when it cannot be read: the loader says why)."""
    import pandas as pd

    try:
        table = pd.read_csv(run / "per_image.csv", usecols=["score"])
    except (OSError, ValueError):
        return 0
    return int(np.isfinite(pd.to_numeric(table["score"], errors="coerce").to_numpy(float)).sum())


def _finetune_variant(finetune: str | None, inputs: str) -> str | None:
    """``lite0``/``efficientnet_lite0`` -> ``efficientnet_lite0``, checked against the feature set's networks."""
    if finetune is None or str(finetune).lower() in ("", "none", "off"):
        return None
    from ..errors import ConfigError
    from ..features import FEATURE_SETS

    name = str(finetune).lower()
    fs = FEATURE_SETS.get(inputs)
    nets = [v for v, _ in fs.backbones] if fs is not None else []
    if name == "auto":
        return "efficientnet_lite0" if "efficientnet_lite0" in nets else None
    variant = name if name.startswith("efficientnet_") else f"efficientnet_{name}"
    if variant not in nets:
        raise ConfigError(f"--finetune {finetune}: the feature set {inputs!r} runs "
                          + (", ".join(v.replace('efficientnet_', '') for v in nets) if nets else "no pretrained network")
                          + "; fine-tune one of those")
    return variant


def _mean_spearman(table: Any) -> dict[str, float]:
    import pandas as pd

    folds = table[table["fold"].astype(str) != "mean"]
    return {str(m): float(pd.to_numeric(g["spearman"], errors="coerce").mean())
            for m, g in folds.groupby("model", sort=False)}


def _add_means(table: Any, overall: dict[str, float], y: np.ndarray, oof: dict[str, np.ndarray],
               honest_rows: np.ndarray, seed: int) -> Any:
    """Mean rows per (estimate, model), the whole ceiling on them, and on the honest estimate's mean rows the
    pooled Spearman of the honest predictions with its paired bootstrap CI."""
    import pandas as pd

    parts = []
    for tag, g in table.groupby("estimate", sort=False):
        s = summarize_cv(g.drop(columns="estimate"))
        s.insert(2, "estimate", tag)
        if "chosen" in s.columns:  # which model each outer fold selected: no mean
            s.loc[s["fold"] == "mean", "chosen"] = None
        for k, v in overall.items():
            s.loc[s["fold"] == "mean", k] = v
        if tag in HONEST:
            for m in s.loc[s["fold"] == "mean", "model"]:
                if m in oof:
                    e = estimate(y[honest_rows], oof[m][honest_rows], seed=seed)
                    at = (s["fold"] == "mean") & (s["model"] == m)
                    s.loc[at, "spearman_pooled"] = e["spearman"]
                    s.loc[at, "ci_low"] = e["ci_low"]
                    s.loc[at, "ci_high"] = e["ci_high"]
        parts.append(s)
    return pd.concat(parts, ignore_index=True)


def saved_model(cv_table: Any) -> str:
    """The model kept in ``predictor.pt``, from ``predictor_cv.csv`` (a DataFrame, or None): the ``model`` of the
    rows whose ``saved`` column is true; ``"mlp"`` for tables without that column (runs before it existed, when
    the MLP was always the one saved)."""
    if cv_table is not None and {"saved", "model"} <= set(cv_table.columns):
        saved = cv_table[cv_table["saved"].astype(str).str.lower().isin(["true", "1"])]["model"]
        if len(saved):
            return str(saved.iloc[0])
    return "mlp"


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
