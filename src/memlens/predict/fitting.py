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

from .evaluation import cross_validate, make_splits, strata_labels, summarize_cv
from .inputs import DEFAULT_INPUTS, load_run_inputs
from .mlp import MemorabilityRegressor, torch_device
from .predictor_file import save_predictor
from .svr import MemorabilitySVR

log = logging.getLogger(__name__)

DEFAULT_MODEL = "svr"
MODELS = ("svr", "mlp")


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
                      model: str = DEFAULT_MODEL, progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Cross-validate the SVR, the MLP and the ridge baseline on a run, then fit ``model`` on every image.

    Writes ``RUN/predictor_cv.csv`` (one row per fold and model, then one ``fold="mean"`` row per model;
    columns ``fold, model, n_train, n_val, n_test, spearman, pearson, mse, auc``, when
    ``RUN/split_halves.npz`` exists the test images' ``human_consistency`` (mean split-half Spearman: the
    noise ceiling memlens compares with, as ``memlens analyze`` does) and ``spearman_brown`` (its
    Spearman-Brown value, the reliability of the full-group score), ``epochs`` (MLP), ``alpha`` (ridge),
    ``seconds``, ``saved``), ``RUN/predictor_oof.csv`` (out-of-fold predictions) and ``RUN/predictor.pt``
    (see :func:`save_predictor`), all atomically.

    Parameters
    ----------
    cv : number of folds (``kfold``, default 5) or of repeated random 60/10/30 splits (``paper``, default 1).
    split : ``kfold`` or ``paper`` (stratified by category x above/below-median score).
    inputs : a feature set of :mod:`memlens.features` (default ``lite01``: pretrained multi-stage features of
        two ImageNet networks, extracted from the run's images and cached in the run), ``latents`` (the
        autoencoder's), ``features`` (``features.npy``: pooled Lite0 head features from ``memlens score``)
        or ``both`` (latents and features.npy, concatenated).
    model : the model saved in ``predictor.pt``: ``svr`` (support-vector regression; with a feature set,
        one per feature block, averaged) or ``mlp`` (:class:`MemorabilityRegressor`). Both are
        cross-validated, with the ridge baseline, whichever is saved.

    Returns
    -------
    dict with ``table`` (the CV DataFrame incl. mean rows), ``summary`` (model -> mean metrics), ``ceiling``,
    ``paths``, ``n_images``, ``seconds``.
    """
    from .._io import atomic_path

    run = Path(run)
    t0 = time.perf_counter()
    from ..errors import ConfigError, DataError

    n_splits = int(cv) if cv is not None else (5 if split == "kfold" else 1)
    if split == "kfold" and n_splits < 2:
        raise ConfigError(f"--cv {n_splits}: k-fold cross-validation needs at least 2 folds")
    if model not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    torch_device(device)  # fail early on a bad device
    data = load_run_inputs(run, inputs)
    from ..features import FEATURE_SETS

    svr_base = MemorabilitySVR(blocks=FEATURE_SETS[inputs].blocks() if inputs in FEATURE_SETS else None)
    if split == "kfold" and n_splits > len(data.y) // 2:
        raise DataError(f"{len(data.y)} images are too few for {n_splits} folds")
    strata = strata_labels(data.y, data.categories)
    splits = make_splits(strata, split=split, n_splits=n_splits, seed=seed)
    params = {"hidden": tuple(hidden), "max_epochs": int(max_epochs), "device": device, **(regressor_params or {})}
    base = MemorabilityRegressor(random_state=seed, **params)
    ceiling, overall = _ceiling_fn(run, data.image_ids)
    log.info("fit-predictor: %d images, %d columns (%s), %s x%d", len(data.y), data.X.shape[1], inputs, split,
             n_splits)
    res = cross_validate(data.X, data.y, splits, regressor=base, svr=svr_base, ceiling=ceiling, progress=progress)
    table = summarize_cv(res.table)
    for k, v in overall.items():  # the mean row: the ceiling of all images
        table.loc[table["fold"] == "mean", k] = v
    table.insert(2, "inputs", inputs)
    table.insert(3, "split", split)
    table["saved"] = table["model"] == model  # the model kept in predictor.pt
    with atomic_path(run / "predictor_cv.csv") as tmp:
        table.to_csv(tmp, index=False)
    import pandas as pd

    oof = pd.DataFrame({"image_id": data.image_ids, "score": data.y,
                        **{f"predicted_{m}": v for m, v in res.oof.items()}})
    with atomic_path(run / "predictor_oof.csv") as tmp:
        oof.to_csv(tmp, index=False)

    if progress is not None:
        progress("fitting the final model on every image")
    final = (clone(svr_base) if model == "svr" else MemorabilityRegressor(random_state=seed, **params)
             ).fit(data.X, data.y)
    mean_rows = table[table["fold"] == "mean"].set_index("model")
    summary = {m: {c: _num(mean_rows.loc[m, c]) for c in ("spearman", "pearson", "mse", "auc")
                   if c in mean_rows.columns} for m in mean_rows.index}
    info = {"inputs": inputs, "model": model, "split": split, "n_splits": n_splits, "seed": seed,
            "n_images": len(data.y), "cv": summary, "ceiling": overall,
            "final_epochs": getattr(final, "best_epoch_", None)}
    save_predictor(run / "predictor.pt", final, data.recipe, info=info)
    seconds = time.perf_counter() - t0
    return {"table": table, "summary": summary, "ceiling": overall, "n_images": len(data.y), "model": model,
            "n_features": int(data.X.shape[1]), "seconds": seconds,
            "paths": [run / "predictor_cv.csv", run / "predictor_oof.csv", run / "predictor.pt"]}


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
