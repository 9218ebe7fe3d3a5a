"""``memlens fit-predictor`` on a run (:func:`fit_predictor_run`): cross-validation with the noise ceiling of
``RUN/split_halves.npz``, ``predictor_cv.csv``/``predictor_oof.csv``, the final model in ``predictor.pt``;
and :func:`saved_model`, which model a ``predictor_cv.csv`` says was saved."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    resolve_stratify,
    ridge_baseline,
    strata_labels,
    summarize_cv,
)
from .finetune import N_STAGES, TRUNK_STAGE
from .inputs import DEFAULT_INPUTS, load_run_inputs
from .mlp import MemorabilityRegressor, torch_device
from .predictor_file import save_predictor
from .selection import CANDIDATES, HONEST, choose_model, estimate, paired_gains, resolve_holdout
from .svr import MemorabilitySVR

log = logging.getLogger(__name__)

#: ``finetune="auto"`` fine-tunes from this many scored images on (where a holdout, not nested CV, is used)
AUTO_FINETUNE_MIN = 1000
DEFAULT_MODEL = "auto"
#: weight of the fine-tuned tails in ``svr+finetune`` (the SVR has the rest): see docs/predictor.md
DEFAULT_BLEND = 0.3
MODELS = ("auto", "svr", "mlp", "ridge", "svr+finetune")
#: ``predictor_cv.csv`` columns of the reported model's gain over each other model (that model's mean row of the
#: honest estimate): the difference of their Spearman on the same unseen images, its paired bootstrap 95 % CI and p
GAIN_COLUMNS = ("reported_minus", "reported_minus_ci_low", "reported_minus_ci_high", "reported_minus_p")


def _ceiling_fn(run: Path, image_ids: list[str], scores: np.ndarray | None = None
                ) -> tuple[Callable[[np.ndarray], dict[str, float]] | None, dict[str, float]]:
    """Per-fold noise ceiling from RUN/split_halves.npz (when it and memlens.stats exist), on the halves of the
    score that is analysed (:meth:`memlens.data.halves.SplitHalves.matching` with ``scores``)."""
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
    if scores is not None:
        halves, _ = halves.matching(scores)

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
                      finetune_stage: int = TRUNK_STAGE, blend: float = DEFAULT_BLEND, stratify: str = "category",
                      progress: Callable[[str], Any] | None = None,
                      on_step: Callable[[int, int], Any] | None = None) -> dict[str, Any]:
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
    ``RUN/predictor_oof.csv`` (``image_id, score, part, fold`` and one ``predicted_<model>``
    column per model: each image predicted by models that did not see it; ``part`` says by which estimate,
    ``fold`` by which split of it: the ``fold`` of its rows in ``predictor_cv.csv``, empty where none tested it),
    ``RUN/predictor_categories.csv`` when the images have two categories or more (the honest predictions'
    Spearman pooled, per category, within and between categories: a :func:`memlens.stats.correlation_table`,
    with the noise ceiling of each part when split halves exist; ``estimate["within"]``/``["between"]`` too)
    and ``RUN/predictor.pt`` (see :func:`save_predictor`; its ``info["estimate"]`` is the honest figure), all
    atomically.

    Parameters
    ----------
    cv : number of folds (``kfold``, default 5) or of repeated random 60/10/30 splits (``paper``, default 1).
    split : ``kfold`` or ``paper`` (stratified as ``stratify`` says).
    stratify : ``auto`` (default: ``subcategory`` when ``per_image.csv`` has a ``subcategory`` column with values,
        else ``category``), ``category`` (category x above/below-median score, or the score half alone without
        categories: the behaviour before this option), ``subcategory`` (category > subcategory > score half,
        every level spread over the splits within one image; a subcategory with fewer images than folds, or than
        10 for ``paper``, is merged into its category's remainder) or ``none`` (seeded random splits). The
        holdout is stratified alike.
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
        ``finetune_params``, e.g. ``{"n_seeds": 3}``), evaluated as ``finetune`` and blended with the SVR as
        ``svr+finetune`` (``(1 - blend) * svr + blend * tails``), a candidate of ``model="auto"``. ``"auto"``
        (default): Lite0 when the feature set runs it and the run has 1,000 scored images or more
        (:data:`AUTO_FINETUNE_MIN`; below, nested cross-validation would fit about 36 tails), else none; None or
        ``"none"``: no fine-tuning.
    finetune_stage : the last frozen stage (1-7, default :data:`memlens.predict.finetune.TRUNK_STAGE`): the
        stages after it, the head convolution and the output are fine-tuned. Lower is deeper fine-tuning: more
        trainable layers, larger cached activations (held in memory: a stage-2 map is about 3.4x a stage-5
        one, a stage-1 map 9x, about 0.8 MB per image for Lite0 at 224 px) and slower fits
        (a GPU, ``device="cuda"``, is then worth having).
    blend : weight of the fine-tuned tails in ``svr+finetune``, in (0, 1) (default :data:`DEFAULT_BLEND`).
    progress : called with a line of text per step.
    on_step : called as ``on_step(done, total)`` after every fit (each split of each cross-validation, then the
        final model; ``total`` is known from the start): what the CLI's progress bar shows.

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
    if not 0.0 < float(blend) < 1.0:
        raise ConfigError(f"blend must be between 0 and 1 (the tails' weight in svr+finetune), got {blend}")
    if not 1 <= int(finetune_stage) <= N_STAGES:
        raise ConfigError(f"finetune_stage must be a stage of EfficientNet-Lite, 1-{N_STAGES} (the last frozen one), "
                          f"got {finetune_stage}")
    strat = resolve_stratify(stratify, _run_subcategories(run) is not None)  # before any feature is extracted
    variant = _finetune_variant(finetune, inputs)
    if variant is not None and str(finetune).lower() == "auto" and _n_scored(run) < AUTO_FINETUNE_MIN:
        variant = None  # small sets: nested CV would fit ~36 tails for a blend least likely to help there
    if model == "svr+finetune" and variant is None:
        raise ConfigError("--model svr+finetune needs --finetune NETWORK")
    if variant is None and int(finetune_stage) != TRUNK_STAGE:
        log.warning("finetune_stage %d is not used: no network is fine-tuned here (finetune=%s; auto fine-tunes "
                    "Lite0 of a feature set from %d scored images on)", int(finetune_stage), finetune,
                    AUTO_FINETUNE_MIN)
    trunk = {variant: int(finetune_stage)} if variant else None
    data = load_run_inputs(run, inputs, trunk=trunk, progress=progress)
    n = len(data.y)
    frac = resolve_holdout(holdout, n)
    svr_base = _svr_base(inputs)
    n_cv_rows = n - int(round(n * frac))
    if split == "kfold" and n_splits > n_cv_rows // 2:
        raise DataError(f"{n_cv_rows} images are too few for {n_splits} folds"
                        + (f" after a holdout of {frac:g}" if frac else ""))
    params = {"hidden": tuple(hidden), "max_epochs": int(max_epochs), "device": device, **(regressor_params or {})}
    base = MemorabilityRegressor(random_state=seed, **params)
    ceiling, overall = _ceiling_fn(run, data.image_ids, np.asarray(data.y, dtype=float))
    cats = np.asarray(data.categories, dtype=object) if data.categories is not None else None
    subcats = _run_subcategories(run, data.image_ids) if strat == "subcategory" else None
    X, y = data.X, np.asarray(data.y, dtype=float)
    strata = _strata_fn(y, cats, subcats, strat, split, n_splits)
    nested = strat == "subcategory"

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
                "blends": {"svr+finetune": {"svr": 1.0 - blend, "finetune": blend}}}

    steps = {"done": 0, "total": 0}

    def step(msg: str | None = None) -> None:
        """One fit done (a split of a cross-validation, or the final model): ``on_step(done, total)``."""
        steps["done"] += 1
        if msg is not None and progress is not None:
            progress(msg)
        if on_step is not None:
            on_step(steps["done"], steps["total"])

    def run_cv(idx: np.ndarray, splits: list[dict[str, np.ndarray]], tag: str, **kw: Any) -> Any:
        res = cross_validate(X[idx], y[idx], splits, regressor=base, svr=svr_base, ceiling=sub_ceiling(idx),
                             progress=lambda m: step(f"{tag} {m}"), **models(idx), **kw)
        res.table.insert(2, "estimate", tag)
        return res

    log.info("fit-predictor: %d images, %d columns (%s), %s x%d stratified by %s, holdout %g, model %s", n,
             X.shape[1], inputs, split, n_splits, strat, frac, model)
    plan = _split_plan(strata, n, split=split, n_splits=n_splits, seed=seed, frac=frac, nested=nested)
    every = np.arange(n)

    def k_inner(sp: dict[str, np.ndarray]) -> int:  # the inner folds of nested CV's choice in an outer fold
        return max(2, min(n_splits if split == "kfold" else 5, (len(sp["train"]) + len(sp["val"])) // 2))

    # the fits to come, for on_step's total: every split of every cross-validation, then the final model
    steps["total"] = len(plan["splits"]) + 1 + (1 if frac > 0 else 0)
    if frac == 0 and model == "auto":
        steps["total"] += sum(k_inner(sp) for sp in plan["splits"]) + n_splits
    oof_cols: dict[str, np.ndarray] = {}
    part = np.full(n, "", dtype=object)
    tables = []
    if frac > 0:
        sel, hold = plan["select"], plan["holdout"]
        inner = run_cv(sel, plan["splits"], "inner-cv")
        chosen = choose_model(inner.table, candidates) if model == "auto" else model
        if progress is not None:
            progress(f"fitting every model on the {len(sel)} selection images, scoring the {len(hold)} held out")
        outer = cross_validate(X, y, [{"train": sel, "val": np.zeros(0, dtype=int), "test": hold}], regressor=base,
                               svr=svr_base, ceiling=ceiling, return_estimators=True,
                               progress=lambda m: step(f"holdout {m}"), **models(every))
        holdout_store = _holdout_model(chosen, outer.estimators[0])
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
        holdout_store = None
        splits = plan["splits"]
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
                inner_j = cross_validate(X[tr], y[tr], make_splits(strata(tr), n_splits=k_inner(sp),
                                                                    seed=seed + 1 + j, nested=nested),
                                         regressor=base, svr=svr_base, progress=lambda m: step(None),
                                         **models(tr))
                pick = choose_model(inner_j.table, candidates)
                selected[sp["test"]] = oof_cols[pick][sp["test"]]
                row = outer.table[(outer.table["fold"] == j) & (outer.table["model"] == pick)].iloc[0].to_dict()
                sel_rows.append({**row, "model": "selected", "chosen": pick})
                if progress is not None:
                    progress(f"outer fold {j + 1}/{len(splits)}: the inner cross-validation chose {pick}")
            tables.append(pd.DataFrame(sel_rows))
            oof_cols = {"selected": selected, **oof_cols}
            # the model to save: chosen by a cross-validation of every image (its figures are inner-cv)
            final_cv = run_cv(every, make_splits(strata(every), split=split, n_splits=n_splits, seed=seed + 1000,
                                                 nested=nested), "inner-cv")
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
    # the reported model's gain over each other model on the same unseen images (paired: shared resamples), on
    # the other models' mean rows of the honest estimate
    versus = paired_gains(y[honest_rows], {m: v[honest_rows] for m, v in oof_cols.items()}, honest_model, seed=seed)
    for c in GAIN_COLUMNS:
        table[c] = np.nan
    for m, g in versus.items():
        at_m = (table["fold"] == "mean") & (table["estimate"] == kind) & (table["model"] == m)
        for c, k in zip(GAIN_COLUMNS, ("diff", "ci_low", "ci_high", "p_boot"), strict=True):
            table.loc[at_m, c] = g[k]
    with atomic_path(run / "predictor_cv.csv") as tmp:
        table.to_csv(tmp, index=False)
    fold = pd.array([pd.NA] * n, dtype="Int64")
    for r, (_, j) in _held_out_by(plan, n).items():
        fold[r] = j
    oof = pd.DataFrame({"image_id": data.image_ids, "score": y, "part": part, "fold": fold,
                        **{f"predicted_{m}": v for m, v in oof_cols.items()}})
    with atomic_path(run / "predictor_oof.csv") as tmp:
        oof.to_csv(tmp, index=False)

    # the honest figure: its mean row's pooled Spearman and CI (computed once, in _add_means)
    at = table[(table["fold"] == "mean") & table["reported"]].iloc[0]
    est = {"kind": kind, "model": chosen, "procedure": honest_model,
           "n": int(np.isfinite(oof_cols[honest_model][honest_rows]).sum()),
           "spearman": float(at["spearman_pooled"]), "ci_low": float(at["ci_low"]), "ci_high": float(at["ci_high"])}
    est["versus"] = versus
    parts = _category_parts(run, data.image_ids, y, cats, oof_cols[honest_model], honest_rows, seed)
    if parts is not None:
        parts.insert(0, "estimate", kind)  # which images: the held-out ones, or the outer folds' (never chosen on)
        with atomic_path(run / "predictor_categories.csv") as tmp:
            parts.to_csv(tmp, index=False)
        for scope in ("within", "between"):
            hit = parts[parts["scope"] == scope]
            if len(hit):
                est[scope] = {k: _num(hit.iloc[0][k]) for k in ("n", "r", "ci_low", "ci_high")}
                if scope == "between":
                    est[scope]["n_groups"] = int(hit.iloc[0]["n_groups"])
    else:
        (run / "predictor_categories.csv").unlink(missing_ok=True)  # a stale table of an earlier fit
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
    step(None)
    mean_rows = table[(table["fold"] == "mean") & (table["estimate"] == kind)].set_index("model")
    summary = {m: {c: _num(mean_rows.loc[m, c]) for c in ("spearman", "pearson", "mse", "auc", "spearman_pooled",
                                                          "ci_low", "ci_high")
                   if c in mean_rows.columns} for m in mean_rows.index}
    info = {"inputs": inputs, "model": chosen, "model_option": model, "split": split, "n_splits": n_splits,
            "stratify": strat, "seed": seed, "holdout": frac, "n_images": n, "estimate": est, "inner": inner_means, "cv": summary,
            "ceiling": overall, "final_epochs": getattr(final, "best_epoch_", None)}
    if ft_base is not None:
        info["finetune"] = {k: v for k, v in ft_base.get_params().items() if k not in ("device", "num_threads")}
        info["finetune"]["blend"] = float(blend)  # the weight behind the svr+finetune rows, whichever was saved
        info["finetune"]["stage"] = int(finetune_stage)
    save_predictor(run / "predictor.pt", final, data.recipe, info=info, finetuned=finetuned, holdout=holdout_store,
                   blend=blend)
    seconds = time.perf_counter() - t0
    return {"table": table, "summary": summary, "inner": inner_means, "estimate": est, "ceiling": overall,
            "n_images": n, "model": chosen, "holdout": frac, "n_features": int(X.shape[1]), "seconds": seconds,
            "stratify": strat,
            "paths": [run / "predictor_cv.csv", run / "predictor_oof.csv", run / "predictor.pt",
                      *([run / "predictor_categories.csv"] if parts is not None else [])]}


def _holdout_model(chosen: str, fits: dict[str, Any]) -> dict[str, Any] | None:
    """The fitted model of the honest estimate (fitted on the selection images) as ``save_predictor`` stores it."""
    if chosen == "svr+finetune":
        return {"head": fits["svr"], "finetuned": fits["finetune"]}
    if chosen == "ridge":
        return {"head": linear_head(fits["ridge"]), "finetuned": None}
    if chosen in fits:
        return {"head": fits[chosen], "finetuned": None}
    return None


def _category_parts(run: Path, image_ids: Sequence[str], y: np.ndarray, cats: np.ndarray | None,
                    predicted: np.ndarray, rows: np.ndarray, seed: int) -> Any:
    """The honest predictions' Spearman pooled, per category, within and between categories (with the noise
    ceiling of each part when the run has split halves): a :func:`memlens.stats.correlation_table`, or None
    without two categories among those rows."""
    import pandas as pd

    if cats is None:
        return None
    rows = np.asarray(rows)
    c = pd.Series(cats[rows], dtype=object)
    c = c.where(c.notna() & (c.astype(str).str.strip() != ""))
    if c.dropna().nunique() < 2:
        return None
    from ..data.halves import load_split_halves
    from ..errors import DataError
    from ..stats import correlation_table
    from ..stats.correlation import collected_warnings

    ids = [str(image_ids[i]) for i in rows]
    df = pd.DataFrame({"image_id": ids, "score": y[rows], "predicted": predicted[rows], "category": c.to_numpy()})
    halves = None
    if (run / "split_halves.npz").is_file():
        try:
            halves, _ = load_split_halves(run / "split_halves.npz").subset(ids).matching(y[rows])
        except DataError:
            halves = None  # _ceiling_fn has said why
    with collected_warnings():  # a small category's NaN row is in the table, not a warning each
        return correlation_table(df, x="predicted", y="score", by="category", n_boot=2000, seed=seed,
                                 ceiling=halves, name="predictor_oof.csv")


# ------------------------------------------------------------------------------ splits (shared with the refits)
def _run_subcategories(run: Path, image_ids: Sequence[str] | None = None) -> np.ndarray | None:
    """``RUN/per_image.csv``'s ``subcategory`` column, in the order of ``image_ids`` (as read without them);
    None when the table has no such column or no value in it (or cannot be read: the loader says why)."""
    import pandas as pd

    try:
        table = pd.read_csv(run / "per_image.csv", dtype={"image_id": str, "subcategory": object})
    except (OSError, ValueError):
        return None
    if "subcategory" not in table.columns or not table["subcategory"].notna().any():
        return None
    if image_ids is None:
        return table["subcategory"].to_numpy(dtype=object)
    by_id = dict(zip(table["image_id"].astype(str), table["subcategory"], strict=False))
    return np.array([by_id.get(i) for i in image_ids], dtype=object)


def _strata_fn(y: np.ndarray, cats: np.ndarray | None, subcats: np.ndarray | None, stratify: str, split: str,
               n_splits: int) -> Callable[[np.ndarray], np.ndarray]:
    """``strata(rows)``: the strata labels of those rows (their own score median), as ``stratify`` says."""
    min_size = n_splits if split == "kfold" else 10  # the paper split deals 10-row patterns (6/1/3)

    def strata(idx: np.ndarray) -> np.ndarray:
        if stratify == "none":
            return np.full(len(idx), "", dtype=object)
        c = None if cats is None else cats[idx].tolist()
        if stratify == "subcategory":
            return strata_labels(y[idx], c, subcats[idx].tolist(), min_size=min_size)
        return strata_labels(y[idx], c)

    return strata


def _split_plan(strata: Callable[[np.ndarray], np.ndarray], n: int, *, split: str, n_splits: int, seed: int,
                frac: float, nested: bool) -> dict[str, Any]:
    """The splits :func:`fit_predictor_run` evaluates on: with a holdout, ``select``/``holdout`` rows and the
    cross-validation ``splits`` of the selection rows (indices into ``select``); without, the ``splits`` of every
    row. The fold refits of ``memlens explain`` (:func:`refit_fold_models`) rebuild them with this function."""
    every = np.arange(n)
    if frac > 0:
        hs = holdout_split(strata(every), frac, seed, nested=nested)
        sel = hs["select"]
        return {"kind": "holdout", "select": sel, "holdout": hs["holdout"],
                "splits": make_splits(strata(sel), split=split, n_splits=n_splits, seed=seed, nested=nested)}
    return {"kind": "outer-cv", "splits": make_splits(strata(every), split=split, n_splits=n_splits, seed=seed,
                                                      nested=nested)}


def _plan_fits(plan: dict[str, Any]) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """Every fit whose predictions went into ``predictor_oof.csv``: ``(estimate, fold) -> {"train", "val",
    "test"}`` in row indices of the run's inputs (the MLP's seed offset is the fold)."""
    if plan["kind"] == "holdout":
        sel = plan["select"]
        fits = {("inner-cv", j): {k: sel[sp[k]] for k in ("train", "val", "test")}
                for j, sp in enumerate(plan["splits"])}
        fits[("holdout", 0)] = {"train": sel, "val": np.zeros(0, dtype=int), "test": plan["holdout"]}
        return fits
    return {("outer-cv", j): dict(sp) for j, sp in enumerate(plan["splits"])}


def _held_out_by(plan: dict[str, Any], n: int) -> dict[int, tuple[str, int]]:
    """Row -> the (estimate, fold) whose model predicted it in ``predictor_oof.csv`` (the last split that tested
    it, as :func:`cross_validate` overwrites); rows no split tested are absent."""
    out: dict[int, tuple[str, int]] = {}
    for key, f in _plan_fits(plan).items():
        for r in f["test"].tolist():
            out[int(r)] = key
    return out


def _svr_base(inputs: str) -> MemorabilitySVR:
    """The unfitted SVR of ``fit-predictor`` for these inputs (one per feature block of a feature set)."""
    from ..features import FEATURE_SETS

    return MemorabilitySVR(blocks=FEATURE_SETS[inputs].blocks() if inputs in FEATURE_SETS else None)


# ------------------------------------------------------------------------------ fold models, refitted
#: how closely a refitted fold model must reproduce ``predictor_oof.csv`` (in SDs of the scores): the SVR, the MLP
#: and ridge are deterministic; fine-tuned tails trained with another thread count or device drift a little
OOF_MATCH_TOLERANCE = {"svr": 1e-4, "mlp": 1e-4, "ridge": 1e-4, "svr+finetune": 2e-2}


@dataclass
class FoldRefit:
    """Models of a run's saved configuration that did not see given images (:func:`refit_fold_models`).

    ``fits``: ``(estimate, fold) -> {"head", "finetuned", "blend", "train_rows", "n_train"}``, where
    ``(estimate, fold)`` names the rows of ``predictor_cv.csv`` (``("outer-cv", 2)``, ``("inner-cv", 0)``,
    ``("holdout", 0)``) or ``("leave-out", 0)``: one extra fit on every scored image but the requested ones that
    no split tested (the paper split tests 30 % of the images). ``key_of``: requested image id -> its key
    (scored images only: the others are in no fit). ``train_rows`` index ``image_ids`` (the predictor's rows).
    ``check``: the refitted models' predictions of the requested images against ``predictor_oof.csv``.
    """

    model: str
    image_ids: list[str]
    fits: dict[tuple[str, int], dict[str, Any]]
    key_of: dict[str, tuple[str, int]]
    assignment: str
    check: dict[str, Any]
    settings: dict[str, Any]


def refit_fold_models(run: str | os.PathLike, image_ids: Sequence[str], *, device: str = "cpu",
                      progress: Callable[[str], Any] | None = None) -> FoldRefit:
    """Refit the model saved in ``RUN/predictor.pt`` on the training rows of the splits that held out
    ``image_ids``: the cross-validation fold models of :func:`fit_predictor_run`, only those needed.

    The saved configuration (inputs, model kind, its hyper-parameters, fine-tuning settings, split, folds,
    stratification, holdout and seed, from ``predictor.pt``) rebuilds the splits with the functions
    :func:`fit_predictor_run` used (:func:`_split_plan`); ``predictor_oof.csv``'s ``fold`` column (when there) must
    agree with them. Each needed fold model is fitted as the cross-validation fitted it (same rows, same seed), so
    its predictions of the images it held out reproduce ``predictor_oof.csv`` (``check``; within
    :data:`OOF_MATCH_TOLERANCE`, else a warning). Images no split tested share one leave-out fit (see
    :class:`FoldRefit`). Raises :class:`memlens.errors.RunDirError` when the run lacks what this needs or changed
    since ``memlens fit-predictor``.
    """
    import pandas as pd

    from ..errors import RunDirError
    from .finetune import FineTunedLiteRegressor
    from .predictor_file import read_predictor, regressor_from_state

    run = Path(run)
    again = "rerun memlens fit-predictor, or explain with the final model (--model-for final)"
    obj = read_predictor(run / "predictor.pt")
    info = obj.get("info") or {}
    missing = [k for k in ("inputs", "split", "n_splits", "seed") if k not in info]
    if missing:
        raise RunDirError(f"{run / 'predictor.pt'} does not record how it was cross-validated (no "
                          f"{', '.join(missing)} in its info): the fold models cannot be refitted; {again}")
    oof_path = run / "predictor_oof.csv"
    if not oof_path.is_file():
        raise RunDirError(f"{oof_path} not found: the fold models are those of memlens fit-predictor's "
                          f"cross-validation; {again}")
    oof = pd.read_csv(oof_path, dtype={"image_id": str})
    model = str(info.get("model") or "mlp")
    inputs, split, n_splits, seed = str(info["inputs"]), str(info["split"]), int(info["n_splits"]), int(info["seed"])
    frac = float(info.get("holdout") or 0.0)
    stratify = str(info.get("stratify") or "category")  # predictors fitted before --stratify: category
    ft_state = obj.get("finetuned")
    if model == "svr+finetune" and ft_state is None:
        raise RunDirError(f"{run / 'predictor.pt'}: model svr+finetune without its fine-tuned tails; {again}")
    variant = str(ft_state["params"]["variant"]) if model == "svr+finetune" else None
    trunk = {variant: int(ft_state["stage"])} if variant else None
    data = load_run_inputs(run, inputs, need_recipe=False, trunk=trunk, progress=progress)
    n = len(data.y)
    y = np.asarray(data.y, dtype=float)
    ids = [str(i) for i in data.image_ids]
    if oof["image_id"].tolist() != ids or not np.allclose(pd.to_numeric(oof["score"], errors="coerce"), y,
                                                          rtol=1e-9, atol=1e-12, equal_nan=True):
        raise RunDirError(f"{oof_path} lists other images or scores than the scored rows of {run / 'per_image.csv'}: "
                          f"the run changed since memlens fit-predictor; {again}")
    cats = np.asarray(data.categories, dtype=object) if data.categories is not None else None
    subcats = _run_subcategories(run, ids) if stratify == "subcategory" else None
    if stratify == "subcategory" and subcats is None:
        raise RunDirError(f"{run / 'per_image.csv'} lost the subcategory column the splits were stratified by; "
                          f"{again}")
    strata = _strata_fn(y, cats, subcats, stratify, split, n_splits)
    plan = _split_plan(strata, n, split=split, n_splits=n_splits, seed=seed, frac=frac,
                       nested=stratify == "subcategory")
    fits_all = _plan_fits(plan)
    held = _held_out_by(plan, n)
    how = (f"{split} split x{n_splits}, stratified by {stratify}, seed {seed}"
           + (f", holdout {frac:g}" if frac else ""))
    if {"part", "fold"} <= set(oof.columns):
        stored = {r: (str(p), int(f)) for r, (p, f) in enumerate(zip(oof["part"], oof["fold"], strict=True))
                  if pd.notna(f)}
        if stored != held:
            bad = next(r for r in range(n) if stored.get(r) != held.get(r))
            def name(k: tuple[str, int] | None) -> str:
                return "no split" if k is None else f"{k[0]} fold {k[1]}"

            raise RunDirError(f"{oof_path}: image {ids[bad]!r} was predicted by {name(stored.get(bad))} but the "
                              f"splits rebuilt from predictor.pt ({how}) say {name(held.get(bad))}; {again}")
        assignment = f"predictor_oof.csv (part, fold), the splits rebuilt alike ({how})"
    else:
        assignment = f"splits rebuilt from predictor.pt's settings ({how}); predictor_oof.csv has no fold column"
    pos = {i: r for r, i in enumerate(ids)}
    wanted = list(dict.fromkeys(str(i) for i in image_ids if str(i) in pos))
    key_of: dict[str, tuple[str, int]] = {}
    left: list[int] = []
    for i in wanted:
        r = pos[i]
        if r in held:
            key_of[i] = held[r]
        else:
            key_of[i] = ("leave-out", 0)
            left.append(r)
    needed = list(dict.fromkeys(key_of.values()))
    if left:
        keep = np.setdiff1d(np.arange(n), np.asarray(left, dtype=int))
        fits_all[("leave-out", 0)] = {"train": keep, "val": np.zeros(0, dtype=int), "test": np.asarray(left)}
        log.warning("%d explained image(s) were tested by no split (%s): they are explained by one model fitted "
                    "on the %d other scored images", len(left), how, len(keep))

    head_state = obj["head"]
    blend = float(ft_state.get("blend", 0.5)) if variant else 0.5
    ft_params = ({k: v for k, v in ft_state["params"].items() if k not in ("device", "num_threads")}
                 if variant else None)
    fits: dict[tuple[str, int], dict[str, Any]] = {}
    stored_holdout = obj.get("holdout")
    for key in needed:
        f = fits_all[key]
        tr, va = f["train"], f["val"]
        rows = np.concatenate([tr, va])
        if key == ("holdout", 0) and stored_holdout is not None:  # fit-predictor kept it: nothing to refit
            ft_stored = stored_holdout.get("finetuned")
            fits[key] = {"head": regressor_from_state(stored_holdout["head"]),
                         "finetuned": FineTunedLiteRegressor.from_state(
                             {**ft_stored, "params": {**ft_stored["params"], "device": device}})
                         if ft_stored is not None else None,
                         "blend": float(ft_stored.get("blend", blend)) if ft_stored is not None else blend,
                         "train_rows": rows, "n_train": int(len(rows)), "seconds": 0.0,
                         "stored": True}
            continue
        if progress is not None:
            progress(f"refitting the {model} model of {key[0]} fold {key[1]} on {len(rows)} images")
        t0 = time.perf_counter()
        if model in ("svr", "svr+finetune"):
            head = clone(_svr_base(inputs)).fit(_rows(data.X, rows), y[rows])
        elif model == "ridge":
            head = linear_head(ridge_baseline().fit(_rows(data.X, rows), y[rows]))
        else:  # the MLP, seeded like its cross-validation (seed + fold; the final model had the seed)
            params = dict(regressor_from_state(head_state).get_params())
            if str(params.get("device", "cpu")).startswith("cuda") and not _cuda_available():
                params["device"] = "cpu"
            est = MemorabilityRegressor(**{**params, "random_state": seed + (key[1] if key[0] != "leave-out" else 0)})
            vd = (_rows(data.X, va), y[va]) if len(va) else None
            head = est.fit(_rows(data.X, tr), y[tr], validation_data=vd)
        ft = None
        if variant:
            ft = FineTunedLiteRegressor(**{**ft_params, "device": device, "num_threads": None})
            ft.fit(data.trunk[variant][rows], y[rows])
        fits[key] = {"head": head, "finetuned": ft, "blend": blend, "train_rows": rows, "n_train": int(len(rows)),
                     "seconds": time.perf_counter() - t0}

    # the refitted models reproduce predictor_oof.csv for the images they held out
    col = f"predicted_{model}"
    compared, diffs = [], []
    if col in oof.columns:
        stored_pred = pd.to_numeric(oof[col], errors="coerce").to_numpy(float)
        for i, key in key_of.items():
            r = pos[i]
            if key[0] == "leave-out" or not np.isfinite(stored_pred[r]):
                continue
            fit = fits[key]
            p_ = float(fit["head"].predict(_rows(data.X, np.array([r])))[0])
            if fit["finetuned"] is not None:
                p_ = (1 - blend) * p_ + blend * float(fit["finetuned"].predict(data.trunk[variant][np.array([r])])[0])
            compared.append(i)
            diffs.append(abs(p_ - stored_pred[r]))
    sd = float(np.std(y)) or 1.0
    tol = OOF_MATCH_TOLERANCE.get(model, 1e-4) * sd
    max_diff = float(max(diffs)) if diffs else None
    check = {"n_images": len(compared), "column": col, "max_abs_diff": max_diff, "tolerance": tol,
             "tolerance_sd": OOF_MATCH_TOLERANCE.get(model, 1e-4),
             "passed": None if max_diff is None else bool(max_diff <= tol)}
    if check["passed"] is False:
        log.warning("the refitted fold models predict the images they held out up to %.3g away from %s (tolerance "
                    "%.3g): they are not exactly fit-predictor's fold models (they still never saw those images)",
                    max_diff, oof_path.name, tol)
    settings = {"inputs": inputs, "model": model, "split": split, "n_splits": n_splits, "seed": seed,
                "holdout": frac, "stratify": stratify}
    return FoldRefit(model=model, image_ids=ids, fits=fits, key_of=key_of, assignment=assignment, check=check,
                     settings=settings)


def _rows(X: Any, rows: np.ndarray) -> np.ndarray:
    """Rows of an array or memory map as a plain array."""
    return np.asarray(X[np.asarray(rows, dtype=int)])


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


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
