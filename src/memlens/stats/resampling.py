"""Vectorised resampling for correlations: ranking by counting, group demeaning, partial residuals, the
paired bootstrap, the jackknife, BCa levels, analytic and permutation p-values.

The bootstrap resamples index matrices of shape ``(chunk, n)`` from a :class:`numpy.random.Generator`; for
Spearman every resample is re-ranked (average ranks for ties) with a counting sort (``bincount`` over
precomputed tie-group ids, no per-row ``argsort``); partial correlations residualise all resamples at once by
batched least squares.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover

    pass

#: one logger for the whole package ("memlens.stats"): collected_warnings() captures what correlate() warns
log = logging.getLogger("memlens.stats")

__all__ = ["CorrelationProblem", "bootstrap", "jackknife", "bca_levels", "p_analytic", "permutation_p"]


#: target number of array elements per vectorised chunk (bounds memory: ~16 MB per float64 array)
_CHUNK_ELEMENTS = 2_000_000
#: the BCa jackknife leaves out every row up to this n; above it, a seeded random subset of this many rows
_JACKKNIFE_MAX = 5000
#: a residual keeping less than this fraction of its variance is treated as zero (collinear control)
_COLLINEAR_TOL = 1e-10

# --------------------------------------------------------------------------------------------------
# vectorised building blocks


class _Var:
    """One variable prepared for batched resampling.

    Spearman: tie-group ids (0..u-1, ordered by value) so that any resample is re-ranked by counting.
    Pearson: standardised values (correlation is scale-free; standardising helps numerically).
    """

    __slots__ = ("ids", "n_unique", "values")

    def __init__(self, v: np.ndarray, method: str):
        if method == "spearman":
            uniq, inv = np.unique(v, return_inverse=True)
            self.ids = inv.astype(np.int64).ravel()
            self.n_unique = int(len(uniq))
            self.values = None
        else:
            sd = float(v.std())
            self.values = (v - v.mean()) / sd if sd > 0 else v - v.mean()
            self.ids = None
            self.n_unique = 0

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """The variable on each resample (rows of ``idx``), re-ranked for Spearman."""
        if self.ids is None:
            return self.values[idx]
        return _rank_rows(self.ids[idx], self.n_unique)


def _rank_rows(ids: np.ndarray, n_unique: int) -> np.ndarray:
    """Average ranks (1-based, ties averaged) along each row of a matrix of tie-group ids.

    ``ids`` holds integers in ``[0, n_unique)`` ordered like the values, so ranking a row only needs the
    count of each id in that row: the rank of id ``j`` is ``(#ids < j) + (count_j + 1) / 2``.
    """
    m, n = ids.shape
    flat = (ids + (np.arange(m, dtype=np.int64) * n_unique)[:, None]).ravel()
    counts = np.bincount(flat, minlength=m * n_unique)
    cum = np.cumsum(counts.reshape(m, n_unique), axis=1).ravel()
    avg = cum - (counts - 1) / 2.0
    return avg[flat].reshape(m, n)


def _demean_groups(a: np.ndarray, gid: np.ndarray, n_groups: int) -> np.ndarray:
    """Subtract, in each row of ``a`` (m, n) (or (m, n, k)), the mean of each group given by ``gid`` (m, n)."""
    m, n = gid.shape
    flat = (gid + (np.arange(m, dtype=np.int64) * n_groups)[:, None]).ravel()
    counts = np.maximum(np.bincount(flat, minlength=m * n_groups), 1)
    if a.ndim == 2:
        sums = np.bincount(flat, weights=a.ravel(), minlength=m * n_groups)
        return a - (sums / counts)[flat].reshape(m, n)
    out = np.empty_like(a)
    for j in range(a.shape[2]):
        sums = np.bincount(flat, weights=a[:, :, j].ravel(), minlength=m * n_groups)
        out[:, :, j] = a[:, :, j] - (sums / counts)[flat].reshape(m, n)
    return out


def _residualise(targets: list[np.ndarray], c: np.ndarray) -> list[np.ndarray]:
    """Least-squares residuals of each centred (m, n) target on the centred (m, n, k) controls, per row."""
    gram = np.einsum("mnk,mnl->mkl", c, c)
    ginv = np.linalg.pinv(gram)  # batched; tolerates a collinear or constant control in a resample
    out = []
    for t in targets:
        beta = np.einsum("mkl,ml->mk", ginv, np.einsum("mnk,mn->mk", c, t))
        out.append(t - np.einsum("mnk,mk->mn", c, beta))
    return out


def _rowcorr(a: np.ndarray, b: np.ndarray, ss_a0: np.ndarray | None = None,
             ss_b0: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation of centred rows; NaN where a row has (numerically) no variance left."""
    saa = np.einsum("ij,ij->i", a, a)
    sbb = np.einsum("ij,ij->i", b, b)
    sab = np.einsum("ij,ij->i", a, b)
    bad = (saa <= 0) | (sbb <= 0)
    if ss_a0 is not None:
        bad |= saa <= _COLLINEAR_TOL * ss_a0
    if ss_b0 is not None:
        bad |= sbb <= _COLLINEAR_TOL * ss_b0
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sab / np.sqrt(saa * sbb)
    r[bad] = np.nan
    return np.clip(r, -1.0, 1.0)


class CorrelationProblem:
    """The prepared variables of one correlation; ``transform(idx)`` gives the final centred rows."""

    def __init__(self, x: np.ndarray, y: np.ndarray, c: np.ndarray | None, gid: np.ndarray | None,
                 n_groups: int, method: str):
        self.method = method
        self.xv = _Var(x, method)
        self.yv = _Var(y, method)
        self.cv = [] if c is None else [_Var(c[:, j], method) for j in range(c.shape[1])]
        self.gid = gid
        self.n_groups = n_groups
        self.n = len(x)

    @property
    def width(self) -> int:
        """Elements per resampled row, used to size chunks."""
        return max(self.n, self.xv.n_unique, self.yv.n_unique) * (2 + len(self.cv))

    def transform(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                   np.ndarray, np.ndarray]:
        a = self.xv.gather(idx)
        b = self.yv.gather(idx)
        c = np.stack([v.gather(idx) for v in self.cv], axis=-1) if self.cv else None
        if self.gid is not None:
            g = self.gid[idx]
            a = _demean_groups(a, g, self.n_groups)
            b = _demean_groups(b, g, self.n_groups)
            if c is not None:
                c = _demean_groups(c, g, self.n_groups)
        else:
            a = a - a.mean(axis=1, keepdims=True)
            b = b - b.mean(axis=1, keepdims=True)
            if c is not None:
                c = c - c.mean(axis=1, keepdims=True)
        ss_a0 = np.einsum("ij,ij->i", a, a)
        ss_b0 = np.einsum("ij,ij->i", b, b)
        if c is not None:
            a, b = _residualise([a, b], c)
        return a, b, c, ss_a0, ss_b0

    def stat(self, idx: np.ndarray) -> np.ndarray:
        a, b, _, ss_a0, ss_b0 = self.transform(idx)
        return _rowcorr(a, b, ss_a0 if self.cv else None, ss_b0 if self.cv else None)


def _chunk_rows(width: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, width))


def bootstrap(problem: CorrelationProblem, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` statistics, each on ``n`` rows drawn with replacement (pairs kept together)."""
    n = problem.n
    out = np.empty(n_boot)
    step = _chunk_rows(problem.width)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        out[start:start + b] = problem.stat(idx)
    return out


def jackknife(problem: CorrelationProblem, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Leave-one-out statistics (all rows up to ``_JACKKNIFE_MAX``, else a seeded random subset).

    Returns the values and the weight ``n / n_left_out`` that rescales sums over the subset.
    """
    n = problem.n
    if n <= _JACKKNIFE_MAX:
        leave = np.arange(n)
    else:
        leave = np.sort(rng.choice(n, size=_JACKKNIFE_MAX, replace=False))
        log.debug("BCa acceleration from a random subset of %d of %d leave-one-out samples",
                  _JACKKNIFE_MAX, n)
    base = np.arange(n - 1)
    vals = np.empty(len(leave))
    step = _chunk_rows(problem.width)
    for start in range(0, len(leave), step):
        left = leave[start:start + step]
        idx = base[None, :] + (base[None, :] >= left[:, None])
        vals[start:start + len(left)] = problem.stat(idx)
    return vals, n / len(leave)


def _ndtri(p: np.ndarray | float) -> np.ndarray:
    from scipy.special import ndtri

    return ndtri(p)


def _ndtr(z: np.ndarray | float) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(z)


def bca_levels(boot: np.ndarray, theta: float, jack: np.ndarray, weight: float,
                alpha: float) -> tuple[np.ndarray, float, float]:
    """Adjusted percentile levels of the BCa interval, the bias correction z0 and the acceleration a."""
    prop = (np.sum(boot < theta) + 0.5 * np.sum(boot == theta)) / len(boot)
    z0 = float(_ndtri(prop))
    jack = jack[np.isfinite(jack)]
    d = jack.mean() - jack if len(jack) else np.zeros(1)
    den = 6.0 * (weight * np.sum(d ** 2)) ** 1.5
    a = float(weight * np.sum(d ** 3) / den) if den > 0 else 0.0
    z = _ndtri(np.array([alpha / 2, 1 - alpha / 2]))
    with np.errstate(invalid="ignore", divide="ignore"):
        levels = _ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
    return levels, z0, a


def p_analytic(r: float, df: int) -> float:
    """Two-sided p-value of a correlation with ``df`` residual degrees of freedom (t distribution)."""
    if not math.isfinite(r) or df < 1:
        return math.nan
    if abs(r) >= 1.0:
        return 0.0
    from scipy.stats import t as t_dist

    t = r * math.sqrt(df / ((1.0 - r) * (1.0 + r)))
    return float(min(1.0, 2.0 * t_dist.sf(abs(t), df)))


def permutation_p(problem: CorrelationProblem, r_obs: float, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided permutation p-value, ``(1 + #{|r*| >= |r|}) / (1 + n_perm)``.

    The (ranked, group-demeaned) outcome is permuted (within groups for a within-group correlation).
    With controls this is Freedman-Lane: the residuals of ``y`` given the controls are permuted and the
    permuted vector is residualised again before it is correlated with the residuals of ``x``.
    """
    n = problem.n
    a, b, c, _, _ = problem.transform(np.arange(n)[None, :])
    a, b = a[0], b[0]
    q = None
    if c is not None:
        u, s, _ = np.linalg.svd(c[0], full_matrices=False)
        q = u[:, s > s.max() * 1e-12] if s.size and s.max() > 0 else None
    strata = problem.gid
    if strata is not None:
        base = np.argsort(strata, kind="stable")
    count = 0
    step = _chunk_rows(2 * n)
    for start in range(0, n_perm, step):
        m = min(step, n_perm - start)
        keys = rng.random((m, n))
        if strata is None:
            bp = b[np.argsort(keys, axis=1)]
        else:
            order = np.argsort(strata[None, :] + keys, axis=1)  # grouped by stratum, shuffled inside
            bp = np.empty((m, n))
            bp[:, base] = b[order]
        if q is not None:
            bp = bp - (bp @ q) @ q.T
        rp = _rowcorr(np.broadcast_to(a, bp.shape), bp)
        count += int(np.sum(np.abs(rp) >= abs(r_obs) - 1e-12))
    return (1 + count) / (1 + n_perm)
