"""Honest estimates: choosing a model without letting the choice touch the figure that is reported.

A figure computed on data that took part in a choice (of the features, the model, its settings) is
optimistic: picking the best of several close variants also picks up their luck. ``memlens fit-predictor``
therefore reports, for the model it saves, only figures from images that no choice saw:

* **holdout** (data sets of :data:`AUTO_HOLDOUT_MIN` images or more, ``--holdout 0.2`` by default): a
  seeded, stratified part of the images is set aside *before anything else* (:func:`holdout_split`); the
  models are cross-validated on the rest (``inner-cv``, the selection figures), the best is chosen there, fitted
  on the rest and scored once on the untouched part (``holdout``).
* **nested** cross-validation (smaller sets, or ``--holdout 0``): outer folds give the reported figure
  (``outer-cv``); with ``--model auto`` the choice is made again inside each outer fold's training rows, by an
  inner cross-validation, so the pooled out-of-fold predictions of the *selected* model (model name
  ``selected``) are of a whole procedure that never saw the images it predicts.

This module holds the pieces: the candidates, the choice, the estimate with its paired bootstrap CI, and the
saved model's gain over each other model on the same unseen images (:func:`paired_gains`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: models ``--model auto`` chooses among (all are cross-validated on the same folds)
CANDIDATES = ("svr", "mlp", "ridge")
#: the data set size from which ``--holdout auto`` sets a holdout aside (below it: nested cross-validation)
AUTO_HOLDOUT_MIN = 1000
#: the holdout fraction ``--holdout auto`` uses from :data:`AUTO_HOLDOUT_MIN` images on
AUTO_HOLDOUT = 0.2
#: the labels of the ``estimate`` column of ``predictor_cv.csv``
ESTIMATES = {
    "inner-cv": "cross-validation inside the selection images (the figure the choice was made on: optimistic)",
    "holdout": "images set aside before any choice, predicted once by the model fitted on the others",
    "outer-cv": "outer folds of nested cross-validation (every choice made inside the training folds)",
}
#: estimates that no choice saw (the ones reported for the saved model)
HONEST = ("holdout", "outer-cv")


def resolve_holdout(holdout: float | str | None, n: int) -> float:
    """The holdout fraction: ``None``/``"auto"`` gives :data:`AUTO_HOLDOUT` from :data:`AUTO_HOLDOUT_MIN`
    images on and 0 (nested cross-validation) below; a number in [0, 0.5] is taken as it is."""
    from ..errors import ConfigError

    if holdout is None or (isinstance(holdout, str) and holdout.strip().lower() == "auto"):
        return AUTO_HOLDOUT if n >= AUTO_HOLDOUT_MIN else 0.0
    try:
        frac = float(holdout)
    except (TypeError, ValueError):
        raise ConfigError(f"holdout must be 'auto' or a fraction in [0, 0.5], got {holdout!r}") from None
    if not (0.0 <= frac <= 0.5) or not math.isfinite(frac):
        raise ConfigError(f"holdout must be 'auto' or a fraction in [0, 0.5], got {holdout!r}")
    return frac


def choose_model(table: Any, candidates: Sequence[str] = CANDIDATES, metric: str = "spearman") -> str:
    """The candidate with the highest mean ``metric`` over the folds of a cross-validation table (rows with
    ``fold`` != ``"mean"``); ties go to the earlier candidate. Raises ``ValueError`` when none is scored."""
    import pandas as pd

    folds = table[table["fold"].astype(str) != "mean"]
    best, best_v = None, -math.inf
    for name in candidates:
        v = pd.to_numeric(folds.loc[folds["model"] == name, metric], errors="coerce").mean()
        if math.isfinite(v) and v > best_v:
            best, best_v = name, float(v)
    if best is None:
        raise ValueError(f"no candidate among {', '.join(candidates)} has a finite {metric}")
    return best


def estimate(y_true: Any, y_pred: Any, *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Spearman of predictions against scores with a paired bootstrap 95 % CI (rows resampled together):
    ``{"n", "spearman", "ci_low", "ci_high"}``; rows with a missing prediction are left out."""
    from ..stats import correlate

    yt = np.asarray(y_true, dtype=float)
    yp = np.asarray(y_pred, dtype=float)
    ok = np.isfinite(yt) & np.isfinite(yp)
    if ok.sum() < 4 or np.ptp(yp[ok]) == 0 or np.ptp(yt[ok]) == 0:
        return {"n": int(ok.sum()), "spearman": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    res = correlate(yp[ok], yt[ok], method="spearman", n_boot=n_boot, seed=seed)
    return {"n": int(res.n), "spearman": float(res.r), "ci_low": float(res.ci_low), "ci_high": float(res.ci_high)}


def paired_gains(y_true: Any, predictions: Any, reference: str, *, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, dict[str, float]]:
    """The ``reference`` model's Spearman minus each other model's, on the same images, with a paired bootstrap
    95 % CI: ``{model: {"n", "diff", "ci_low", "ci_high", "p_boot"}}``.

    ``predictions`` maps model names to predictions of the images of ``y_true``. Each resample draws the images
    once and re-ranks both models' predictions of them (:func:`memlens.stats.correlation_difference`), so the
    interval accounts for the models sharing their images: two close models' difference is known far better
    than their two separate CIs suggest. Rows where either model has no prediction are left out of that pair.
    """
    from ..stats import correlation_difference

    if reference not in predictions:
        raise ValueError(f"no predictions of the reference model {reference!r} (models: "
                         f"{', '.join(map(str, predictions)) or 'none'})")
    y = np.asarray(y_true, dtype=float)
    ref = np.asarray(predictions[reference], dtype=float)
    out: dict[str, dict[str, float]] = {}
    for name, p in predictions.items():
        if name == reference:
            continue
        d = correlation_difference(ref, np.asarray(p, dtype=float), y, n_boot=n_boot, seed=seed,
                                   label=f"{reference} minus {name}")
        out[str(name)] = {"n": int(d["n"]), **{k: float(d[k]) for k in ("diff", "ci_low", "ci_high", "p_boot")}}
    return out
