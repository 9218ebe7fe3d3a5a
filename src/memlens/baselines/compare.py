"""``memlens baselines RUN``: the run's predictor and other memorability models on the same images.

The images are those of the predictor's honest estimate: the rows of ``RUN/predictor_oof.csv`` whose ``part``
is the estimate ``predictor_cv.csv`` reports for the saved model (``holdout`` or ``outer-cv``), each predicted
by a model that did not see it (column ``predicted_<model>``). On those images:

* pretrained baselines (ResMem, ViTMem) score every image once; their scores are cached in
  ``RUN/baseline_<name>.csv`` (with each file's size and modification time and the weights file's), so a rerun
  scores only new or changed images;
* baselines that need fitting (``ridge-lite0``, ``paper-mlp``) are cross-validated on **the predictor's outer
  folds**: for each ``fold`` of those rows, fitted on every other scored image of the run and applied to that
  fold (with a holdout: fitted on the images the predictor was fitted on, applied to the holdout; with k-fold
  nested cross-validation: exactly the predictor's outer training rows; with repeated paper splits, a superset
  of them: the images no split of that fold tested). Their out-of-fold predictions go to
  ``RUN/baseline_<name>.csv`` too.

Every model is then compared on the images all of them predicted: ``RUN/baselines.csv`` (one row per model:
Spearman with the human scores and its paired bootstrap CI, every model resampled on the same images with the
same seed) and ``RUN/baselines_diff.csv`` (memlens's predictor **minus** each baseline, the paired difference
of the two Spearman correlations on shared resamples: :func:`memlens.stats.correlation_difference`); settings,
timings and the training-data overlap note in ``RUN/baselines.json``. All files are written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError, RunDirError
from .registry import BASELINES, baseline_available, baseline_info, get_baseline

__all__ = ["compare_baselines", "BaselineComparison", "resolve_models", "honest_rows", "training_overlap",
           "TABLE_COLUMNS", "DIFF_COLUMNS", "MEMLENS"]

log = logging.getLogger(__name__)

#: the row of memlens's own predictor in baselines.csv
MEMLENS = "memlens"
#: columns of RUN/baselines.csv
TABLE_COLUMNS = ("model", "inputs", "spearman", "ci_low", "ci_high", "n", "trained_on", "overlap", "needs_fit",
                 "license", "evaluated_on")
#: columns of RUN/baselines_diff.csv
DIFF_COLUMNS = ("model", "compared_with", "direction", "n", "spearman_memlens", "spearman_model", "difference",
                "ci_low", "ci_high", "p_boot")
#: data set layouts / names whose images a pretrained model may have been trained on
_KNOWN_SETS = {"lamem": "LaMem", "memcat": "MemCat"}


@dataclass
class BaselineComparison:
    """What :func:`compare_baselines` found: ``table`` (baselines.csv), ``diff`` (baselines_diff.csv),
    ``predictions`` (image_id, score, one column per model, on the compared images), ``info`` (baselines.json),
    ``skipped`` (model -> why it did not run), ``paths`` (files written)."""

    table: pd.DataFrame
    diff: pd.DataFrame
    predictions: pd.DataFrame
    info: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ inputs
def honest_rows(run: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of ``predictor_oof.csv`` behind the predictor's honest estimate, with its predictions.

    Returns ``(oof, how)``: ``oof`` is the whole file (scored rows) with a boolean column ``_honest`` and the
    predictor's predictions in ``_memlens``; ``how`` says which estimate, model, column and part.
    """
    from ..predict import saved_model

    path = run / "predictor_oof.csv"
    if not run.is_dir():
        raise RunDirError(f"{run}: no such run directory")
    if not path.is_file():
        raise RunDirError(f"{path} not found: memlens baselines compares with the run's predictor; run "
                          f"memlens fit-predictor {run} first")
    oof = pd.read_csv(path, dtype={"image_id": str})
    for col in ("image_id", "score"):
        if col not in oof.columns:
            raise RunDirError(f"{path}: no {col!r} column (columns: {', '.join(map(str, oof.columns))})")
    oof["score"] = pd.to_numeric(oof["score"], errors="coerce")
    oof = oof[np.isfinite(oof["score"].to_numpy(float))].reset_index(drop=True)
    cv_path = run / "predictor_cv.csv"
    cv = pd.read_csv(cv_path) if cv_path.is_file() else None
    model, part = None, None
    if cv is not None and {"reported", "model", "estimate"} <= set(cv.columns):
        rep = cv[cv["reported"].astype(str).str.lower().isin(["true", "1"])]
        if len(rep):
            model, part = str(rep["model"].iloc[0]), str(rep["estimate"].iloc[0])
    if model is None:  # runs fitted before the reported column: the saved model, its outer estimate
        model = saved_model(cv)
        if "part" in oof.columns:
            parts = set(oof["part"].dropna().astype(str))
            part = next((p for p in ("holdout", "outer-cv") if p in parts), None)
    col = f"predicted_{model}"
    if col not in oof.columns:
        cols = [c for c in oof.columns if c.startswith("predicted_")]
        if not cols:
            raise RunDirError(f"{path}: no predicted_<model> column; rerun memlens fit-predictor {run}")
        col = cols[0]
        model = col[len("predicted_"):]
    pred = pd.to_numeric(oof[col], errors="coerce").to_numpy(float)
    honest = np.isfinite(pred)
    if part is not None and "part" in oof.columns:
        honest &= (oof["part"].astype(str) == part).to_numpy()
    if honest.sum() < 4:
        raise RunDirError(f"{path}: only {int(honest.sum())} images with an out-of-fold prediction by the predictor; "
                          "too few to compare")
    oof["_honest"] = honest
    oof["_memlens"] = pred
    return oof, {"model": model, "column": col, "part": part or "out-of-fold", "n": int(honest.sum())}


def _folds(oof: pd.DataFrame, part: str) -> list[np.ndarray]:
    """Test rows of each outer fold of the honest rows (indices into ``oof``)."""
    honest = oof["_honest"].to_numpy(bool)
    if "fold" in oof.columns and pd.to_numeric(oof["fold"], errors="coerce")[honest].notna().all():
        f = pd.to_numeric(oof["fold"], errors="coerce").to_numpy(float)
        return [np.flatnonzero(honest & (f == j)) for j in sorted(set(f[honest].tolist()))]
    if part == "holdout":  # one fit on the selection images, applied to the held-out ones
        return [np.flatnonzero(honest)]
    raise RunDirError("predictor_oof.csv has no fold column for the images of the honest estimate, so the fitted "
                      "baselines cannot be cross-validated on the predictor's folds; rerun memlens fit-predictor "
                      "(or leave out ridge-lite0 and paper-mlp: --models resmem,vitmem)")


def training_overlap(run: Path, trained_on: Sequence[str]) -> tuple[bool, str]:
    """Whether the run's data set may be one a pretrained model was trained on: its layout (``memcat``,
    ``lamem``) or its source's name says so, and it is not the generated demo set."""
    if not trained_on:
        return False, ""
    try:
        info = json.loads((run / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, "dataset.json unreadable: overlap unknown"
    layout = str(info.get("layout") or "").lower()
    source = str(info.get("source") or info.get("root") or "")
    root = Path(str(info.get("root") or source))
    root = root if root.is_dir() else root.parent
    if (root / "demo_config.json").is_file():
        return False, "the generated demo set (simulated images)"
    seen = {v.lower() for v in trained_on}
    for key, name in _KNOWN_SETS.items():
        if name.lower() not in seen:
            continue
        if layout == key:
            return True, f"the run's data set has the {name} layout, and the model was trained on {name}"
        if key in source.lower():
            return True, f"the run's data source ({source}) is named like {name}, which the model was trained on"
    return False, ""


def resolve_models(models: str | Sequence[str], run: Path, weights: Mapping[str, str] | None = None
                   ) -> tuple[list[str], dict[str, str]]:
    """The baselines to run and, for ``all-installed``, those left out and why.

    ``models``: ``"all-installed"`` (every baseline whose weights are found and whose inputs the run has) or
    names (a comma-separated string or a list); an explicitly named baseline that cannot run is a
    :class:`memlens.errors.ConfigError` saying why (one line each)."""
    weights = dict(weights or {})
    names = [m.strip().lower() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    if not names:
        raise ConfigError("--models: give at least one baseline name, or all-installed")
    every = "all-installed" in names or "all" in names
    if every:
        names = list(BASELINES)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline {unknown[0]!r}; baselines: {', '.join(BASELINES)}, all-installed")
    bad_weights = [k for k in weights if k not in BASELINES]
    if bad_weights:
        raise ConfigError(f"--weights {bad_weights[0]}=...: no such baseline ({', '.join(BASELINES)})")
    chosen, skipped, problems = [], {}, []
    for n in dict.fromkeys(names):
        info = baseline_info(n)
        if info.needs_fit:
            ok, why = get_baseline(n).available_for(run)
        else:
            ok, why = baseline_available(n, weights=weights.get(n))
        if ok:
            chosen.append(n)
        elif every:
            skipped[n] = why
        else:
            problems.append(f"{n}: {why}")
    if problems:
        raise ConfigError("\n".join(problems))
    if not chosen:
        raise ConfigError("no baseline can run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return chosen, skipped


# ------------------------------------------------------------------------------------------------ caches
def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _cache_path(run: Path, name: str) -> Path:
    return run / f"baseline_{name}.csv"


def _read_cache(path: Path, weights: str) -> dict[str, tuple[float, str]]:
    """image_id -> (score, file stamp) of a pretrained baseline's cache made with these weights."""
    if not path.is_file():
        return {}
    try:
        c = pd.read_csv(path, dtype={"image_id": str, "file_stamp": str, "weights": str})
    except (OSError, ValueError):
        return {}
    if not {"image_id", "predicted_score", "file_stamp", "weights"} <= set(c.columns):
        return {}
    c = c[c["weights"].astype(str) == weights]
    return {i: (float(s), str(f)) for i, s, f in zip(c["image_id"], c["predicted_score"], c["file_stamp"],
                                                     strict=True)}


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    from .._io import atomic_path

    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


# ------------------------------------------------------------------------------------------------ models
def _pretrained(run: Path, name: str, ids: list[str], paths: dict[str, str], *, weights: str | None,
                device: str, batch_size: int, progress: Callable[[str], Any] | None,
                tick: Callable[[int], Any] | None) -> tuple[np.ndarray, dict[str, Any]]:
    from .pretrained import weights_stamp

    t0 = time.perf_counter()
    model = get_baseline(name, weights=weights, device=device, batch_size=batch_size)
    wpath = model.find_weights()
    wstamp = weights_stamp(wpath)
    cache_file = _cache_path(run, name)
    cached = _read_cache(cache_file, wstamp)
    stamps = {i: _file_stamp(paths[i]) for i in ids}
    todo = [i for i in ids if not (i in cached and cached[i][1] == stamps[i] and math.isfinite(cached[i][0]))]
    scores = {i: cached[i][0] for i in ids if i not in set(todo)}
    problems: list[str] = []
    if todo:
        if progress is not None:
            progress(f"{name}: scoring {len(todo)} images" + (f" ({len(ids) - len(todo)} cached)" if len(todo) < len(ids)
                                                              else ""))
        # every image of the run, as a file (a missing or unreadable one becomes a problem, its score NaN)
        new, probs = model.predict_items([(i, Path(paths[i])) for i in todo], progress=tick)
        problems = [str(p) for p in probs]
        if problems:
            log.warning("%s: %d image(s) could not be read and are left out (e.g. %s)", name, len(problems), problems[0])
        scores.update({i: float(v) for i, v in zip(todo, new, strict=True)})
    elif progress is not None:
        progress(f"{name}: all {len(ids)} images cached in {cache_file.name}")
    # the cache keeps images scored before with these weights (other parts of the run), refreshed ones replaced
    keep = {i: v for i, v in cached.items() if i not in scores}
    rows = [{"image_id": i, "predicted_score": s, "file_stamp": cached[i][1], "weights": wstamp}
            for i, (s, _) in keep.items()]
    rows += [{"image_id": i, "predicted_score": scores[i], "file_stamp": stamps[i], "weights": wstamp}
             for i in ids if i in scores]
    _write_csv(cache_file, pd.DataFrame(rows, columns=["image_id", "predicted_score", "file_stamp", "weights"]))
    out = np.array([scores.get(i, math.nan) for i in ids], dtype=float)
    return out, {"weights": str(wpath), "n_scored": len(todo), "n_cached": len(ids) - len(todo),
                 "problems": problems, "seconds": round(time.perf_counter() - t0, 2), "file": cache_file.name}


def _fitted(run: Path, name: str, oof: pd.DataFrame, folds: list[np.ndarray], *, seed: int, device: str,
            progress: Callable[[str], Any] | None) -> tuple[np.ndarray, dict[str, Any]]:
    from ..predict.evaluation import blas_threads

    t0 = time.perf_counter()
    adapter = get_baseline(name, seed=seed, device=device)
    ids = oof["image_id"].astype(str).tolist()
    y = oof["score"].to_numpy(float)
    X = adapter.run_features(run, ids, progress=progress)
    t_features = time.perf_counter() - t0
    pred = np.full(len(ids), np.nan)
    fold_col = np.full(len(ids), -1)
    for j, test in enumerate(folds):
        train = np.setdiff1d(np.arange(len(ids)), test)
        est = adapter.estimator(j)
        with blas_threads(1):
            est.fit(X[train], y[train])
            pred[test] = est.predict(X[test])
        fold_col[test] = j
        if progress is not None:
            progress(f"{name}: fold {j + 1}/{len(folds)} fitted on {len(train)} images, {len(test)} predicted")
    honest = oof["_honest"].to_numpy(bool)
    frame = pd.DataFrame({"image_id": np.asarray(ids)[honest], "predicted_score": pred[honest],
                          "fold": fold_col[honest]})
    _write_csv(_cache_path(run, name), frame)
    return pred[honest], {"n_features": int(X.shape[1]), "n_folds": len(folds),
                          "features_seconds": round(t_features, 2), "seconds": round(time.perf_counter() - t0, 2),
                          "file": _cache_path(run, name).name}


# ------------------------------------------------------------------------------------------------ main
def compare_baselines(run: str | os.PathLike, models: str | Sequence[str] = "all-installed", *,
                      weights: Mapping[str, str] | None = None, n_boot: int = 2000, seed: int = 0,
                      batch_size: int = 16, device: str = "auto", progress: Callable[[str], Any] | None = None,
                      tick: Callable[[int], Any] | None = None) -> BaselineComparison:
    """Compare memorability baselines with the run's predictor on the images of its honest estimate.

    Parameters
    ----------
    run : a run directory with ``predictor_oof.csv`` (``memlens fit-predictor``) and ``dataset.json``.
    models : ``"all-installed"`` (default) or baseline names (:func:`memlens.list_baselines`).
    weights : ``{name: path}`` of pretrained weights files (default: found as docs/baselines.md says).
    n_boot, seed : paired bootstrap resamples and their seed (the same resamples for every model).
    batch_size, device : of the pretrained networks (``device`` also of the fitted baselines' feature extraction).
    progress : called with a line of text at each step; ``tick(k)`` after every ``k`` images scored.

    Returns
    -------
    BaselineComparison, whose ``table`` is ``RUN/baselines.csv``: columns ``model, inputs, spearman, ci_low,
    ci_high, n, trained_on, overlap, needs_fit, license, evaluated_on``, the first row memlens's predictor;
    ``diff`` is ``RUN/baselines_diff.csv`` (``model, compared_with, direction, n, spearman_memlens,
    spearman_model, difference, ci_low, ci_high, p_boot``: ``difference`` = memlens minus the model).

    Examples
    --------
    >>> from memlens.baselines import compare_baselines
    >>> # run: a run directory with predictor_oof.csv (memlens run DATA --out RUN)
    >>> res = compare_baselines(run, models="ridge-lite0", n_boot=200)
    >>> res.table["model"].tolist()
    ['memlens', 'ridge-lite0']
    >>> list(res.diff.columns[:4])
    ['model', 'compared_with', 'direction', 'n']
    """
    from .._io import atomic_write_json
    from ..data import load_run_dataset
    from ..stats import correlate, correlation_difference

    run = Path(run)
    t0 = time.perf_counter()
    if int(n_boot) < 0:
        raise ConfigError(f"n_boot must be >= 0, got {n_boot}")
    oof, how = honest_rows(run)
    chosen, skipped = resolve_models(models, run, weights)
    weights = dict(weights or {})
    honest = oof["_honest"].to_numpy(bool)
    ids = oof["image_id"].astype(str).to_numpy()[honest].tolist()
    y = oof["score"].to_numpy(float)[honest]
    preds: dict[str, np.ndarray] = {MEMLENS: oof["_memlens"].to_numpy(float)[honest]}
    details: dict[str, Any] = {}
    folds = None
    paths: dict[str, str] = {}
    if any(not baseline_info(n).needs_fit for n in chosen):
        table = load_run_dataset(run).table
        paths = dict(zip(table["image_id"].astype(str), table["path"].astype(str), strict=True))
        missing = [i for i in ids if i not in paths]
        if missing:
            raise DataError(f"{len(missing)} images of predictor_oof.csv are not in the run's data set "
                            f"(e.g. {missing[0]!r}): the data moved or changed since fit-predictor")
    for name in chosen:
        if baseline_info(name).needs_fit:
            if folds is None:
                folds = _folds(oof, how["part"])
            preds[name], details[name] = _fitted(run, name, oof, folds, seed=seed,
                                                 device="cpu" if device == "auto" else device, progress=progress)
        else:
            preds[name], details[name] = _pretrained(run, name, ids, paths, weights=weights.get(name), device=device,
                                                     batch_size=batch_size, progress=progress, tick=tick)
    common = np.isfinite(y) & np.all([np.isfinite(p) for p in preds.values()], axis=0)
    n_drop = int(len(y) - common.sum())
    if n_drop:
        log.warning("%d of %d images lack a prediction of some model (unreadable files): compared on the other %d",
                    n_drop, len(y), int(common.sum()))
    where = f"{how['part']} images of the predictor's estimate ({int(common.sum())})"
    rows = []
    inputs_memlens = _predictor_inputs(run, how["model"])
    for name, p in preds.items():
        r = correlate(p[common], y[common], method="spearman", n_boot=int(n_boot), seed=seed)
        if name == MEMLENS:
            info = {"inputs": inputs_memlens, "trained_on": "this run (out-of-fold)", "overlap": False,
                    "needs_fit": True, "license": "BSD-3-Clause"}
        else:
            bi = baseline_info(name)
            ov, _why = training_overlap(run, bi.trained_on)
            info = {"inputs": bi.inputs, "trained_on": ", ".join(bi.trained_on) if bi.trained_on else
                    "this run (cross-validated on the predictor's folds)", "overlap": ov,
                    "needs_fit": bi.needs_fit, "license": bi.license}
        rows.append({"model": name, "inputs": info["inputs"], "spearman": r.r, "ci_low": r.ci_low,
                     "ci_high": r.ci_high, "n": r.n, "trained_on": info["trained_on"], "overlap": info["overlap"],
                     "needs_fit": info["needs_fit"], "license": info["license"], "evaluated_on": where})
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    diffs = []
    for name, p in preds.items():
        if name == MEMLENS:
            continue
        d = correlation_difference(preds[MEMLENS][common], p[common], y[common], method="spearman",
                                   n_boot=int(n_boot), seed=seed, label=f"memlens minus {name}")
        diffs.append({"model": name, "compared_with": MEMLENS, "direction": f"memlens minus {name}", "n": d["n"],
                      "spearman_memlens": d["r1"], "spearman_model": d["r2"], "difference": d["diff"],
                      "ci_low": d["ci_low"], "ci_high": d["ci_high"], "p_boot": d["p_boot"]})
    diff = pd.DataFrame(diffs, columns=list(DIFF_COLUMNS))
    predictions = pd.DataFrame({"image_id": np.asarray(ids)[common], "score": y[common],
                                **{f"predicted_{k}": v[common] for k, v in preds.items()}})
    overlaps = {n: training_overlap(run, baseline_info(n).trained_on)[1] for n in chosen
                if training_overlap(run, baseline_info(n).trained_on)[0]}
    info = {"run": str(run), "models": [MEMLENS, *chosen], "skipped": skipped, "n_boot": int(n_boot), "seed": seed,
            "predictor": how, "n_images": int(common.sum()), "n_dropped": n_drop, "evaluated_on": where,
            "direction": "baselines_diff.csv: difference = Spearman(memlens) - Spearman(model), paired resamples",
            "overlap": overlaps, "details": details, "seconds": round(time.perf_counter() - t0, 2)}
    _write_csv(run / "baselines.csv", table)
    _write_csv(run / "baselines_diff.csv", diff)
    atomic_write_json(run / "baselines.json", info)
    written = [run / "baselines.csv", run / "baselines_diff.csv", run / "baselines.json"]
    written += [run / d["file"] for d in details.values() if d.get("file")]
    return BaselineComparison(table=table, diff=diff, predictions=predictions, info=info, skipped=skipped,
                              paths=written)


def _predictor_inputs(run: Path, model: str) -> str:
    """What the run's predictor is: its inputs and model, from predictor_cv.csv."""
    cv_path = run / "predictor_cv.csv"
    inputs = None
    if cv_path.is_file():
        cv = pd.read_csv(cv_path)
        if "inputs" in cv.columns and cv["inputs"].notna().any():
            inputs = str(cv["inputs"].dropna().iloc[0])
    return f"{inputs or 'the run'} ({model})"
