"""The parts of a correlation that categories and a second measure make visible.

:func:`between_groups` is the between-category part: the correlation of the category means (what a pooled
correlation mixes with the within-category one, :func:`memlens.stats.correlate` with ``groups``).
:func:`correlation_difference` is the paired difference of two correlations with the same outcome (e.g. the
error after the single exposure minus the error before it), with a bootstrap interval from shared resamples.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..errors import DataError
from .correlation import CorrResult, _check_method, as_float
from .resampling import CorrelationProblem, p_analytic

#: one logger for the whole package ("memlens.stats"): collected_warnings() captures what correlate() warns
log = logging.getLogger("memlens.stats")

__all__ = ["between_groups", "correlation_difference", "group_means"]


def _rank(a: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (rows of a 2-d array ranked independently)."""
    from scipy.stats import rankdata

    return rankdata(a, axis=-1)


def _rowcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt(np.einsum("...i,...i->...", a, a) * np.einsum("...i,...i->...", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.einsum("...i,...i->...", a, b) / den
    return np.where(den > 0, np.clip(r, -1.0, 1.0), np.nan)


def group_means(v: np.ndarray, gid: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean of ``v`` per group id (0..n_groups-1); NaN for an empty group."""
    sums = np.bincount(gid, weights=v, minlength=n_groups)
    counts = np.bincount(gid, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def between_groups(x: Any, y: Any, groups: Any, method: str = "spearman", n_boot: int = 2000,
                   confidence: float = 0.95, seed: int | None = 0, *, label: str | None = None) -> CorrResult:
    """Between-group correlation: ``x``'s group means against ``y``'s (one point per group).

    For ``method="spearman"`` the group means of the values are ranked (Spearman over the groups). ``n`` is
    the number of images, ``n_groups`` the number of points the correlation has; the analytic p-value uses
    ``n_groups - 2`` degrees of freedom, so with five categories it is weak evidence whatever ``n`` is. The
    interval resamples images **within each group** (every group keeps its size), keeping each image's ``x``
    and ``y`` together, and recomputes the group means. Rows with a NaN or a missing group are dropped.
    """
    import pandas as pd

    _check_method(method, "percentile", confidence, n_boot, "omit")
    what = label or "between-group correlation"
    xa, ya = as_float(x, "x").ravel(), as_float(y, "y").ravel()
    gvals = np.asarray(groups, dtype=object).ravel()
    if not (len(xa) == len(ya) == len(gvals)):
        raise DataError(f"{what}: x, y and groups have {len(xa)}, {len(ya)} and {len(gvals)} values")
    gid, _ = pd.factorize(pd.Series(gvals), use_na_sentinel=True)
    keep = np.isfinite(xa) & np.isfinite(ya) & (gid >= 0)
    xa, ya = xa[keep], ya[keep]
    _, gid = np.unique(gid[keep], return_inverse=True)
    gid = gid.astype(np.int64).ravel()
    k = int(gid.max()) + 1 if len(gid) else 0

    def result(r: float = math.nan, lo: float = math.nan, hi: float = math.nan, p: float = math.nan) -> CorrResult:
        return CorrResult(n=int(len(xa)), r=float(r), ci_low=float(lo), ci_high=float(hi), p_value=float(p),
                          method=method, n_boot=int(n_boot), seed=seed, ci_method="percentile",
                          confidence=float(confidence), n_groups=k)

    if k < 3:
        log.warning("%s: %d group(s) with data; a between-group correlation needs at least 3; r is NaN", what, k)
        return result()
    mx, my = group_means(xa, gid, k), group_means(ya, gid, k)
    stat = (lambda a, b: _rowcorr(_rank(a), _rank(b))) if method == "spearman" else _rowcorr
    r = float(stat(mx, my))
    if not math.isfinite(r):
        log.warning("%s: the group means of x or y are constant; r is NaN", what)
        return result()
    lo = hi = math.nan
    if n_boot > 0:
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        bx = np.empty((n_boot, k))
        by = np.empty((n_boot, k))
        for g in range(k):  # resample within each group: every group keeps its size
            members = np.flatnonzero(gid == g)
            pick = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
            bx[:, g] = xa[pick].mean(axis=1)
            by[:, g] = ya[pick].mean(axis=1)
        boot = stat(bx, by)
        boot = boot[np.isfinite(boot)]
        alpha = 1.0 - confidence
        if len(boot) >= 2:
            lo, hi = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return result(r, lo, hi, p_analytic(r, k - 2))


def correlation_difference(x1: Any, x2: Any, y: Any, method: str = "spearman", n_boot: int = 2000,
                           confidence: float = 0.95, seed: int | None = 0, *,
                           label: str | None = None) -> dict[str, Any]:
    """Paired difference ``r(x1, y) - r(x2, y)`` with a bootstrap interval from shared resamples.

    Each resample draws ``n`` images with replacement and recomputes both correlations on the same images
    (re-ranking for Spearman), so the interval accounts for the correlation between ``x1`` and ``x2``.
    Rows with a NaN in any of the three variables are dropped. Returns ``n, r1, r2, diff, ci_low, ci_high,
    p_boot`` (two-sided: twice the smaller share of resampled differences on either side of 0, at least
    ``1 / n_boot``), ``method, n_boot, seed, confidence``.
    """
    _check_method(method, "percentile", confidence, n_boot, "omit")
    what = label or "difference of correlations"
    a, b, c = (as_float(v, name).ravel() for v, name in ((x1, "x1"), (x2, "x2"), (y, "y")))
    if not (len(a) == len(b) == len(c)):
        raise DataError(f"{what}: x1, x2 and y have {len(a)}, {len(b)} and {len(c)} values")
    keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(c)
    a, b, c = a[keep], b[keep], c[keep]
    n = int(len(a))
    out: dict[str, Any] = {"n": n, "r1": math.nan, "r2": math.nan, "diff": math.nan, "ci_low": math.nan,
                           "ci_high": math.nan, "p_boot": math.nan, "method": method, "n_boot": int(n_boot),
                           "seed": seed, "confidence": float(confidence)}
    if n < 4:
        log.warning("%s: too few complete rows (n = %d); the difference is NaN", what, n)
        return out
    p1 = CorrelationProblem(a, c, None, None, 0, method)
    p2 = CorrelationProblem(b, c, None, None, 0, method)
    whole = np.arange(n)[None, :]
    r1, r2 = float(p1.stat(whole)[0]), float(p2.stat(whole)[0])
    out.update(r1=r1, r2=r2, diff=r1 - r2)
    if n_boot > 0 and math.isfinite(r1 - r2):
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        diffs = np.empty(n_boot)
        step = max(1, 4_000_000 // (4 * n))
        for start in range(0, n_boot, step):
            idx = rng.integers(0, n, size=(min(step, n_boot - start), n))
            diffs[start:start + len(idx)] = p1.stat(idx) - p2.stat(idx)
        diffs = diffs[np.isfinite(diffs)]
        alpha = 1.0 - confidence
        if len(diffs) >= 2:
            lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            share = min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0)))
            out.update(ci_low=float(lo), ci_high=float(hi), p_boot=min(1.0, max(2 * share, 1.0 / len(diffs))))
    return out
