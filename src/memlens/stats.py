"""Correlation statistics done right: paired bootstrap CIs, partial and within-group effects, noise ceiling.

Every number comes with its ``n`` and a confidence interval. The bootstrap resamples **pairs** (rows of
``(x, y, controls, group)`` together), never the variables independently: resampling ``x`` and ``y``
independently destroys their association and gives an interval centred on zero whatever the truth.

Main entry points
-----------------
:func:`correlate`
    Spearman or Pearson correlation (optionally partial, optionally within groups) with a seeded paired
    bootstrap CI (percentile or BCa), an analytic p-value and, on request, a permutation p-value.
:func:`correlation_table`
    Pooled, per-group, within-group and partial correlations of several columns of a table with one
    outcome column, optionally divided by a noise ceiling.
:func:`split_half_reliability`
    Split-half consistency of human scores (the noise ceiling) and its Spearman-Brown correction.
:func:`analyze_per_image` / :func:`analyze_run`
    The table behind ``memlens analyze``: every ``recon_*`` and ``distinctiveness*`` column against the
    memorability score.

Implementation notes
--------------------
The bootstrap is vectorised: resample index matrices of shape ``(chunk, n)`` are drawn from a
:class:`numpy.random.Generator`; for Spearman every resample is re-ranked (average ranks for ties) with a
counting sort (``bincount`` over precomputed tie-group ids, no per-row ``argsort``); partial correlations
residualise all resamples at once by batched least squares. Definitions are in ``docs/statistics.md``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError, RunDirError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .data.halves import SplitHalves

__all__ = [
    "CorrResult",
    "correlate",
    "correlation_table",
    "split_half_reliability",
    "spearman_brown",
    "fdr_bh",
    "analyze_per_image",
    "analyze_run",
    "format_correlations",
    "table_records",
    "METHODS",
    "CI_METHODS",
]

log = logging.getLogger(__name__)

METHODS = ("spearman", "pearson")
CI_METHODS = ("percentile", "bca")

#: target number of array elements per vectorised chunk (bounds memory: ~16 MB per float64 array)
_CHUNK_ELEMENTS = 2_000_000
#: the BCa jackknife leaves out every row up to this n; above it, a seeded random subset of this many rows
_JACKKNIFE_MAX = 5000
#: a residual keeping less than this fraction of its variance is treated as zero (collinear control)
_COLLINEAR_TOL = 1e-10


# --------------------------------------------------------------------------------------------------
# result type


@dataclass(frozen=True)
class CorrResult:
    """A correlation with its paired bootstrap confidence interval.

    Attributes
    ----------
    n : int
        Number of complete rows used (after pairwise removal of NaNs).
    r : float
        Correlation coefficient (NaN for degenerate input).
    ci_low, ci_high : float
        Bootstrap confidence interval (NaN when ``n_boot == 0`` or the input is degenerate).
    p_value : float
        Two-sided analytic p-value (t distribution with ``n - 2 - k - (g - 1)`` degrees of freedom for ``k``
        controls and ``g`` groups).
    method, ci_method : str
        ``"spearman"``/``"pearson"`` and ``"percentile"``/``"bca"``.
    n_boot, seed, confidence : int, int | None, float
        Bootstrap settings that reproduce the interval exactly.
    p_perm : float or None
        Two-sided permutation p-value when requested.
    control : tuple of str or None
        Names of the variables partialled out.
    n_groups : int or None
        Number of groups for a within-group correlation.
    """

    n: int
    r: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    n_boot: int
    seed: int | None
    ci_method: str
    confidence: float
    p_perm: float | None = None
    control: tuple[str, ...] | None = None
    n_groups: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values (``control`` as a list)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.generic):
                v = v.item()
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_frame(self) -> pd.DataFrame:
        """A tidy one-row DataFrame (``control`` joined with ``+``)."""
        import pandas as pd

        row = self.to_dict()
        row["control"] = "+".join(self.control) if self.control else None
        return pd.DataFrame([row])

    def __str__(self) -> str:
        pct = f"{100 * self.confidence:g}%"
        ctl = f" | {', '.join(self.control)}" if self.control else ""
        return (f"{self.method} r{ctl} = {self.r:.3f} [{pct} CI {self.ci_low:.3f}, {self.ci_high:.3f}], "
                f"n = {self.n}, p = {self.p_value:.3g}")


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


class _Problem:
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


def _bootstrap(problem: _Problem, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` statistics, each on ``n`` rows drawn with replacement (pairs kept together)."""
    n = problem.n
    out = np.empty(n_boot)
    step = _chunk_rows(problem.width)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        out[start:start + b] = problem.stat(idx)
    return out


def _jackknife(problem: _Problem, rng: np.random.Generator) -> tuple[np.ndarray, float]:
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


def _bca_levels(boot: np.ndarray, theta: float, jack: np.ndarray, weight: float,
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


def _p_analytic(r: float, df: int) -> float:
    """Two-sided p-value of a correlation with ``df`` residual degrees of freedom (t distribution)."""
    if not math.isfinite(r) or df < 1:
        return math.nan
    if abs(r) >= 1.0:
        return 0.0
    from scipy.stats import t as t_dist

    t = r * math.sqrt(df / ((1.0 - r) * (1.0 + r)))
    return float(min(1.0, 2.0 * t_dist.sf(abs(t), df)))


def _permutation_p(problem: _Problem, r_obs: float, n_perm: int, rng: np.random.Generator) -> float:
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


# --------------------------------------------------------------------------------------------------
# correlate


def _check_method(method: str, ci: str, confidence: float, n_boot: int, nan_policy: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if ci not in CI_METHODS:
        raise ValueError(f"ci must be one of {CI_METHODS}, got {ci!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot!r}")
    if nan_policy not in ("omit", "raise"):
        raise ValueError(f"nan_policy must be 'omit' or 'raise', got {nan_policy!r}")


def _as_float(v: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"{name}: values are not numeric") from None
    return arr


def _controls(control: Any, n: int) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Controls as an (n, k) float array plus their names."""
    if control is None:
        return None, None
    names: tuple[str, ...] | None = None
    if hasattr(control, "columns"):  # DataFrame
        names = tuple(str(c) for c in control.columns)
    elif hasattr(control, "name") and getattr(control, "ndim", 2) == 1:  # Series
        names = (str(control.name),)
    arr = _as_float(control, "control")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise DataError(f"control has shape {arr.shape}; expected ({n},) or ({n}, k) to match x and y")
    if names is None or len(names) != arr.shape[1]:
        names = tuple(f"control{j}" for j in range(arr.shape[1]))
    return arr, names


def correlate(x: Any, y: Any, method: str = "spearman", control: Any = None, n_boot: int = 2000,
              ci: str = "percentile", confidence: float = 0.95, seed: int | None = 0, permutation: int = 0,
              nan_policy: str = "omit", *, groups: Any = None, label: str | None = None) -> CorrResult:
    """Correlation of ``x`` and ``y`` with a paired bootstrap confidence interval.

    Parameters
    ----------
    x, y : array-like, shape (n,)
        The two variables (lists, arrays or pandas Series).
    method : {"spearman", "pearson"}
        Spearman ranks every variable (average ranks for ties) and computes Pearson's r on the ranks.
    control : array-like (n,) or (n, k), DataFrame or Series, optional
        Variables to partial out. The partial correlation correlates the least-squares residuals of ``x`` and
        ``y`` on the controls (plus an intercept); for Spearman everything is ranked first.
    n_boot : int
        Bootstrap resamples (0: no interval). Each resample draws ``n`` rows with replacement, keeping
        ``x``, ``y``, the controls and the group of a row together, and recomputes the whole statistic
        (re-ranking, group-mean removal, residualisation).
    ci : {"percentile", "bca"}
        Percentile interval, or bias-corrected and accelerated (BCa; acceleration from the jackknife).
    confidence : float
        Coverage of the interval (0.95 gives the 2.5 % and 97.5 % bootstrap quantiles).
    seed : int or None
        Seed of the :class:`numpy.random.Generator`; the same seed gives the same interval.
    permutation : int
        If > 0, also a two-sided permutation p-value from this many permutations (``p_perm``).
    nan_policy : {"omit", "raise"}
        ``"omit"`` drops every row with a NaN in any variable (``n`` counts the rows kept).
    groups : array-like (n,), optional
        Group labels: gives the **within-group** correlation (group means of the -- pooled -- ranks or
        values removed before correlating). Rows with a missing group are dropped.
    label : str, optional
        Name used in log messages.

    Returns
    -------
    CorrResult
        ``r`` is NaN (with a logged warning) for degenerate input: fewer rows than parameters + 1, or a
        constant variable.
    """
    _check_method(method, ci, confidence, n_boot, nan_policy)
    what = label or "correlation"
    xa, ya = _as_float(x, "x").ravel(), _as_float(y, "y").ravel()
    if len(xa) != len(ya):
        raise DataError(f"{what}: x has {len(xa)} values but y has {len(ya)}")
    ca, names = _controls(control, len(xa))
    gid = None
    n_groups = None
    if groups is not None:
        import pandas as pd

        gvals = np.asarray(groups, dtype=object).ravel()
        if len(gvals) != len(xa):
            raise DataError(f"{what}: groups has {len(gvals)} values but x has {len(xa)}")
        gid, _ = pd.factorize(pd.Series(gvals), use_na_sentinel=True)
        gid = np.asarray(gid, dtype=np.int64)

    keep = np.isfinite(xa) & np.isfinite(ya)
    if ca is not None:
        keep &= np.all(np.isfinite(ca), axis=1)
    if gid is not None:
        keep &= gid >= 0
    if nan_policy == "raise" and not keep.all():
        raise DataError(f"{what}: {int((~keep).sum())} of {len(keep)} rows have missing values (NaN)")
    xa, ya = xa[keep], ya[keep]
    if ca is not None:
        ca = ca[keep]
    if gid is not None:
        _, gid = np.unique(gid[keep], return_inverse=True)
        gid = gid.astype(np.int64).ravel()
        n_groups = int(gid.max()) + 1 if len(gid) else 0
    n = int(len(xa))
    k = 0 if ca is None else ca.shape[1]
    df = n - 2 - k - ((n_groups or 1) - 1)

    def result(r: float = math.nan, lo: float = math.nan, hi: float = math.nan, p: float = math.nan,
               p_perm: float | None = None) -> CorrResult:
        return CorrResult(n=n, r=float(r), ci_low=float(lo), ci_high=float(hi), p_value=float(p),
                          method=method, n_boot=int(n_boot), seed=seed, ci_method=ci,
                          confidence=float(confidence), p_perm=p_perm, control=names, n_groups=n_groups)

    if df < 1:
        log.warning("%s: too few complete rows (n = %d) for a %s correlation with %d control(s)%s; r is NaN",
                    what, n, method, k, f" and {n_groups} groups" if n_groups else "")
        return result(p_perm=math.nan if permutation else None)
    for name, v in (("x", xa), ("y", ya)):
        if np.all(v == v[0]):
            log.warning("%s: %s is constant over the %d complete rows; r is NaN", what, name, n)
            return result(p_perm=math.nan if permutation else None)

    problem = _Problem(xa, ya, ca, gid, n_groups or 0, method)
    r = float(problem.stat(np.arange(n)[None, :])[0])
    if not math.isfinite(r):
        log.warning("%s: no variance left after removing %s; r is NaN", what,
                    "the controls" if k else "group means")
        return result(p_perm=math.nan if permutation else None)
    p = _p_analytic(r, df)

    seq = np.random.SeedSequence(seed)
    boot_ss, jack_ss, perm_ss = seq.spawn(3)
    lo = hi = math.nan
    if n_boot > 0:
        boot = _bootstrap(problem, n_boot, np.random.default_rng(boot_ss))
        finite = np.isfinite(boot)
        if not finite.all():
            frac = 1 - finite.mean()
            (log.warning if frac > 0.01 else log.debug)(
                "%s: %d of %d bootstrap resamples were degenerate (no variance) and are ignored",
                what, int((~finite).sum()), n_boot)
            boot = boot[finite]
        alpha = 1.0 - confidence
        if len(boot) < 2:
            log.warning("%s: too few valid bootstrap resamples for an interval", what)
        elif ci == "percentile":
            lo, hi = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        else:
            jack, weight = _jackknife(problem, np.random.default_rng(jack_ss))
            levels, z0, a = _bca_levels(boot, r, jack, weight, alpha)
            if not np.all(np.isfinite(levels)):
                log.warning("%s: BCa interval undefined (z0 = %g, a = %g); interval is NaN", what, z0, a)
            else:
                if not math.isfinite(z0):
                    log.warning("%s: every bootstrap r lies on one side of r; BCa uses an extreme quantile",
                                what)
                lo, hi = np.percentile(boot, 100 * levels)
    p_perm = None
    if permutation:
        p_perm = _permutation_p(problem, r, int(permutation), np.random.default_rng(perm_ss))
    return result(r, lo, hi, p, p_perm)


# --------------------------------------------------------------------------------------------------
# split-half reliability (noise ceiling)


def spearman_brown(r: float, factor: float = 2.0) -> float:
    """Spearman-Brown prophecy: reliability of a test ``factor`` times as long, ``f r / (1 + (f - 1) r)``."""
    if not math.isfinite(r):
        return math.nan
    return float(factor * r / (1.0 + (factor - 1.0) * r))


def _halves_arrays(halves: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    if hasattr(halves, "half1") and hasattr(halves, "half2"):
        return (np.atleast_2d(np.asarray(halves.half1, dtype=float)),
                np.atleast_2d(np.asarray(halves.half2, dtype=float)), tuple(halves.image_ids))
    try:
        h1, h2 = halves
    except (TypeError, ValueError):
        raise DataError("split halves: expected a SplitHalves or a pair (half1, half2) of arrays") from None
    h1 = np.atleast_2d(_as_float(h1, "half1"))
    h2 = np.atleast_2d(_as_float(h2, "half2"))
    if h1.shape != h2.shape:
        raise DataError(f"split halves differ in shape: half1 {h1.shape}, half2 {h2.shape}")
    return h1, h2, None


def _split_rs(h1: np.ndarray, h2: np.ndarray, method: str, groups: np.ndarray | None = None) -> np.ndarray:
    """Correlation between the halves for each split (NaN-aware, pairwise per split)."""
    rs = np.full(h1.shape[0], np.nan)
    with _collected_warnings() as troubles:
        for i in range(h1.shape[0]):
            res = correlate(h1[i], h2[i], method=method, n_boot=0, groups=groups, label=f"split {i}")
            rs[i] = res.r
    for message in troubles:
        log.debug("%s", message)
    if troubles:  # one line, not one per split
        log.warning("%d of %d splits gave no %s correlation (e.g. %s); every message at debug level (memlens -vv)",
                    len(troubles), h1.shape[0], method, troubles[0])
    return rs


def split_half_reliability(halves: Any, method: str = "spearman") -> dict[str, Any]:
    """Split-half consistency of human scores: the noise ceiling of any correlation with the score.

    Parameters
    ----------
    halves : SplitHalves or (half1, half2)
        Hit rates of two random halves of the observers, arrays of shape (n_splits, n_images) (or (n_images,)
        for one split).
    method : {"spearman", "pearson"}
        Correlation used for ``r_mean``, ``ceiling`` and ``spearman_brown``. Both ``spearman_*`` and
        ``pearson_*`` statistics are always reported.

    Returns
    -------
    dict
        ``n_images``, ``n_splits``, ``method``, ``spearman_mean`` (mean over splits of the Spearman
        correlation between the halves; images with a NaN in a half are dropped in that split),
        ``spearman_sd``, ``pearson_mean``, ``pearson_sd``, ``r_min``, ``r_max`` (of ``method``),
        ``spearman_brown`` (``2 r / (1 + r)`` applied to the mean of ``method``: the estimated reliability
        of the full-group score) and ``ceiling`` (the mean of ``method``; what memlens divides by).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    h1, h2, _ = _halves_arrays(halves)
    out: dict[str, Any] = {"n_images": int(h1.shape[1]), "n_splits": int(h1.shape[0]), "method": method}
    per: dict[str, np.ndarray] = {}
    for m in METHODS:
        rs = _split_rs(h1, h2, m)
        per[m] = rs
        ok = rs[np.isfinite(rs)]
        out[f"{m}_mean"] = float(ok.mean()) if len(ok) else math.nan
        out[f"{m}_sd"] = float(ok.std(ddof=1)) if len(ok) > 1 else math.nan
    ok = per[method][np.isfinite(per[method])]
    out["r_min"] = float(ok.min()) if len(ok) else math.nan
    out["r_max"] = float(ok.max()) if len(ok) else math.nan
    out["spearman_brown"] = spearman_brown(out[f"{method}_mean"])
    out["ceiling"] = out[f"{method}_mean"]
    return out


def fdr_bh(p_values: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false-discovery rate), in the input order.

    NaN p-values stay NaN and do not count among the tests. A row is significant at FDR level ``q`` when its
    adjusted p-value is at most ``q``. Equals ``scipy.stats.false_discovery_control(p, method="bh")`` on the
    finite values.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    q = p[ok]
    order = np.argsort(q, kind="stable")
    scaled = q[order] * m / np.arange(1, m + 1)
    scaled = np.minimum.accumulate(scaled[::-1])[::-1]  # monotone: p_(i) adj = min over j >= i
    adj = np.empty(m)
    adj[order] = np.minimum(scaled, 1.0)
    out[ok] = adj
    return out


def _within_ceiling(h1: np.ndarray, h2: np.ndarray, groups: np.ndarray, method: str) -> float:
    rs = _split_rs(h1, h2, method, groups=groups)
    ok = rs[np.isfinite(rs)]
    return float(ok.mean()) if len(ok) else math.nan


# --------------------------------------------------------------------------------------------------
# tables


def _require_columns(df: pd.DataFrame, cols: Sequence[str], where: str = "table") -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        avail = ", ".join(map(str, df.columns)) or "none"
        raise DataError(f"{where}: no column {', '.join(repr(c) for c in missing)} "
                        f"(columns available: {avail})")


def _numeric(df: pd.DataFrame, col: str, where: str = "table") -> np.ndarray:
    """A column as float, raising DataError if it holds non-numeric values."""
    import pandas as pd

    _require_columns(df, [col], where)
    s = df[col]
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=float)
    conv = pd.to_numeric(s, errors="coerce")
    bad = conv.isna() & s.notna() & (s.astype(str).str.strip() != "")
    if bad.any():
        example = s[bad].iloc[0]
        label = bad.idxmax()
        row = f"data row {label + 1}" if isinstance(label, (int, np.integer)) else f"row {label!r}"
        texts = s[bad].astype(str).str.strip()
        hint = ""
        if texts.str.fullmatch(r"[-+]?\d*,\d+").mean() > 0.5:
            hint = ("; they look like numbers written with a comma (0,73 or 1,234): save the table with decimal "
                    "points and no thousands separators")
        raise DataError(f"{where}: column {col!r} is not numeric ({int(bad.sum())} non-numeric values, "
                        f"e.g. {example!r} in {row}){hint}")
    return conv.to_numpy(dtype=float)


ControlSpec = str | Sequence[str] | Mapping[str, Sequence[str | Sequence[str]]] | None


def _control_sets(control: ControlSpec, xs: Sequence[str]) -> dict[str, list[tuple[str, ...]]]:
    """Normalise ``control`` to {x: [control set, ...]}; a set containing x itself is skipped."""
    out: dict[str, list[tuple[str, ...]]] = {x: [] for x in xs}
    if control is None:
        return out
    if isinstance(control, Mapping):
        for x, sets in control.items():
            if x not in out:
                continue
            for s in ([sets] if isinstance(sets, str) else sets):
                cs = (s,) if isinstance(s, str) else tuple(s)
                if x not in cs:
                    out[x].append(cs)
        return out
    cs = (control,) if isinstance(control, str) else tuple(control)
    for x in xs:
        if x not in cs and cs:
            out[x].append(cs)
    return out


def _group_labels(df: pd.DataFrame, by: str) -> tuple[np.ndarray, list[Any]]:
    """Group column as an object array (NaN kept) and the sorted distinct non-missing labels."""
    _require_columns(df, [by])
    vals = df[by].to_numpy(dtype=object)
    present = df[by].dropna().unique().tolist()
    try:
        present = sorted(present)
    except TypeError:
        present = sorted(present, key=str)
    return vals, present


@contextlib.contextmanager
def _collected_warnings() -> Iterator[list[str]]:
    """Collect this module's warnings inside the block instead of emitting them (re-logged at debug level)."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield messages
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def correlation_table(df: pd.DataFrame, x: str | Sequence[str], y: str = "score", by: str | None = None,
                      control: ControlSpec = None, method: str = "spearman", n_boot: int = 2000,
                      seed: int | None = 0, ci: str = "percentile", confidence: float = 0.95,
                      permutation: int = 0, ceiling: float | SplitHalves | None = None,
                      id_col: str = "image_id", *, name: str = "table") -> pd.DataFrame:
    """Pooled, per-group, within-group and partial correlations of columns ``x`` with ``y``.

    Parameters
    ----------
    df : DataFrame
        One row per observation (image).
    x : str or list of str
        Predictor columns.
    y : str
        Outcome column (the memorability score).
    by : str, optional
        Group column: adds one ``scope="group"`` row per group and a ``scope="within"`` row (ranks -- for
        Spearman -- over the pooled sample with each group's mean removed, then correlated).
    control : str, list of str, or {x: [control set, ...]}
        Adds ``scope="partial"`` rows: one control set (partialled out together) for every ``x``, or a
        mapping giving the control sets of each ``x``. A set that contains ``x`` itself is skipped.
    method, n_boot, seed, ci, confidence, permutation
        As in :func:`correlate` (every row uses the same seed).
    ceiling : float or SplitHalves, optional
        Noise ceiling of ``y``. A number is used for every row. A :class:`~memlens.data.halves.SplitHalves`
        is restricted to the ids in ``df[id_col]`` and gives scope-specific ceilings: the split-half
        correlation (``method``) over all images for pooled rows, over the group's images for a group row,
        and the within-group split-half correlation for the within row. Partial rows get none.
    id_col : str
        Image-id column used to match ``ceiling`` split halves.
    name : str
        How error messages refer to ``df`` (e.g. its file name).

    Returns
    -------
    DataFrame
        Columns ``x, y, scope, group, control, n, r, ci_low, ci_high, p_value, p_fdr, p_perm, method,
        ci_method, confidence, n_boot, seed, n_groups`` (+ ``ceiling, r_over_ceiling`` when ``ceiling`` is
        given; NaN for partial rows). ``p_fdr``: ``p_value`` adjusted for the false-discovery rate
        (Benjamini-Hochberg, :func:`fdr_bh`) over every row of the table.
    """
    import pandas as pd

    xs = [x] if isinstance(x, str) else list(x)
    if not xs:
        raise ValueError("x must name at least one column")
    sets = _control_sets(control, xs)
    ctl_cols = sorted({c for v in sets.values() for s in v for c in s})
    _require_columns(df, [*xs, y, *ctl_cols, *([by] if by else [])], name)
    yv = _numeric(df, y, name)
    num = {c: _numeric(df, c, name) for c in dict.fromkeys([*xs, *ctl_cols])}
    gvals, glabels = _group_labels(df, by) if by else (None, [])

    ceilings = _ceilings(df, ceiling, by, gvals, glabels, method, id_col, name)
    kw = dict(method=method, n_boot=n_boot, seed=seed, ci=ci, confidence=confidence, permutation=permutation)
    rows: list[dict[str, Any]] = []

    def add(res: CorrResult, xname: str, scope: str, group: Any = None) -> None:
        row = {"x": xname, "y": y, "scope": scope, "group": None if group is None else str(group),
               "control": "+".join(res.control) if res.control else None, "n": res.n, "r": res.r,
               "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value, "p_perm": res.p_perm,
               "method": res.method, "ci_method": res.ci_method, "confidence": res.confidence,
               "n_boot": res.n_boot, "seed": res.seed, "n_groups": res.n_groups}
        if ceilings is not None:
            # the split-half consistency bounds a correlation with the score, not a partial correlation
            c = math.nan if scope == "partial" else ceilings.get((scope, None if group is None else str(group)),
                                                                 ceilings[("pooled", None)])
            row["ceiling"] = c
            row["r_over_ceiling"] = res.r / c if c and math.isfinite(c) and c > 0 else math.nan
        rows.append(row)

    # one row's trouble (a category with too few images, degenerate resamples) is one warning each when
    # correlate is called alone; over a whole table they are summed up in one line, the details at debug level
    with _collected_warnings() as troubles:
        for xname in xs:
            xv = num[xname]
            add(correlate(xv, yv, label=f"{xname} vs {y}", **kw), xname, "pooled")
            if by:
                for g in glabels:
                    mask = np.array([v == g for v in gvals], dtype=bool)
                    add(correlate(xv[mask], yv[mask], label=f"{xname} vs {y} ({by} = {g})", **kw),
                        xname, "group", g)
                add(correlate(xv, yv, groups=gvals, label=f"{xname} vs {y} (within {by})", **kw), xname, "within")
            for cs in sets[xname]:
                cdf = pd.DataFrame({c: num[c] for c in cs})
                add(correlate(xv, yv, control=cdf, label=f"{xname} vs {y} | {'+'.join(cs)}", **kw),
                    xname, "partial")
    if troubles:
        for message in troubles:
            log.debug("%s", message)
        log.warning("%d warning(s) over the table's %d rows (e.g. %s); those rows have r = NaN or fewer "
                    "resamples; every message at debug level (memlens -vv)", len(troubles), len(rows), troubles[0])
    out = pd.DataFrame(rows)
    if not permutation:
        out["p_perm"] = out["p_perm"].astype(float)
    out["n_groups"] = out["n_groups"].astype("Int64")  # a count: 3, not 3.0 (empty where not a within row)
    # every row of one table is one family of tests: Benjamini-Hochberg over all of them
    out.insert(out.columns.get_loc("p_value") + 1, "p_fdr", fdr_bh(out["p_value"]))
    return out


def _ceilings(df: pd.DataFrame, ceiling: Any, by: str | None, gvals: np.ndarray | None, glabels: list[Any],
              method: str, id_col: str, name: str) -> dict[tuple[str, str | None], float] | None:
    if ceiling is None:
        return None
    if isinstance(ceiling, (int, float, np.floating, np.integer)):
        return {("pooled", None): float(ceiling)}
    if not hasattr(ceiling, "subset"):
        raise TypeError(f"ceiling must be a number or a SplitHalves, got {type(ceiling).__name__}")
    _require_columns(df, [id_col], name)
    ids = [str(i) for i in df[id_col].tolist()]
    halves = ceiling.subset(ids)
    out = {("pooled", None): split_half_reliability(halves, method=method)["ceiling"]}
    if by and gvals is not None:
        for g in glabels:
            mask = np.array([v == g for v in gvals], dtype=bool)
            sub = (halves.half1[:, mask], halves.half2[:, mask])
            out[("group", str(g))] = split_half_reliability(sub, method=method)["ceiling"]
        out[("within", None)] = _within_ceiling(halves.half1, halves.half2, gvals, method)
    return out


def fixed_decimals(v: float, digits: int = 3) -> str:
    """A correlation with fixed decimals and no negative zero (``-0.0004`` at 3 digits is ``0.000``)."""
    text = f"{float(v):.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_correlations(table: pd.DataFrame, digits: int = 3) -> str:
    """A compact plain-text rendering of a :func:`correlation_table` result.

    Columns: the correlation (``rho`` for Spearman, ``r`` for Pearson), its interval, ``p``, ``p_fdr``,
    ``p_perm`` when permutations were run, and the row's ceiling and ``r/ceil`` when the table has a ceiling.
    """
    if table.empty:
        return "(no correlations)"
    has_ceiling = "r_over_ceiling" in table.columns
    pct = f"{100 * float(table['confidence'].iloc[0]):g}% CI"
    method = str(table["method"].iloc[0]) if "method" in table.columns else "spearman"

    def f(v: Any, d: int = digits) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "nan"
        return fixed_decimals(v, d)

    def fp(v: Any) -> str:
        return "nan" if v is None or not math.isfinite(v) else f"{v:.2g}"

    def dash(v: Any, d: int) -> str:  # partial rows have no ceiling
        return "-" if v is None or not math.isfinite(v) else f(v, d)

    has_fdr = "p_fdr" in table.columns
    has_perm = "p_perm" in table.columns and bool(np.isfinite(table["p_perm"].to_numpy(dtype=float)).any())
    header = (["x", "scope", "group/control", "n", "rho" if method == "spearman" else "r", pct, "p"]
              + (["p_fdr"] if has_fdr else []) + (["p_perm"] if has_perm else [])
              + (["ceil", "r/ceil"] if has_ceiling else []))
    lines = [header]
    for row in table.to_dict("records"):
        which = row["group"] if row["scope"] == "group" else (
            f"| {row['control']}" if row["scope"] == "partial" else "")
        cells = [str(row["x"]), row["scope"], str(which or ""), str(row["n"]), f(row["r"]),
                 f"[{f(row['ci_low'])}, {f(row['ci_high'])}]", fp(row["p_value"])]
        if has_fdr:
            cells.append(fp(row["p_fdr"]))
        if has_perm:
            cells.append(fp(row["p_perm"]))
        if has_ceiling:
            cells += [dash(row.get("ceiling"), digits), dash(row["r_over_ceiling"], 2)]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
                     for line in lines)


# --------------------------------------------------------------------------------------------------
# memlens analyze


def _measure_columns(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    recon = [c for c in df.columns if str(c).startswith("recon_")]
    dist = [c for c in df.columns if c == "distinctiveness" or str(c).startswith("distinctiveness_")]
    return recon, dist


def analyze_per_image(df: pd.DataFrame, y: str = "score", by: str | None = None, method: str = "spearman",
                      n_boot: int = 2000, seed: int | None = 0, ci: str = "percentile",
                      confidence: float = 0.95, permutation: int = 0, halves: SplitHalves | None = None,
                      id_col: str = "image_id", *, name: str = "table") -> pd.DataFrame:
    """Every ``recon_*`` and ``distinctiveness*`` column of a per-image table correlated with ``y``.

    Rows: pooled, per group and within group (when ``by`` is given), and partial rows -- each ``recon_*``
    column given each ``distinctiveness*`` column, each ``distinctiveness*`` column given each
    ``recon_*`` column, and ``recon_exposure`` given ``exposure_order`` (its position in the exposure stream)
    when the table has both. With ``halves`` (split-half human scores), ceilings as in :func:`correlation_table`.
    """
    recon, dist = _measure_columns(df)
    if not recon and not dist:
        raise DataError(f"{name}: no recon_* or distinctiveness columns to analyse "
                        f"(columns: {', '.join(map(str, df.columns))})")
    control: dict[str, list[tuple[str, ...]]] = {}
    for r in recon:
        control[r] = [(d,) for d in dist]
    if "recon_exposure" in recon and "exposure_order" in df.columns:
        # the loss at exposure comes from a model that has seen the earlier images: partial out the position
        control["recon_exposure"].append(("exposure_order",))
    for d in dist:
        control[d] = [(r,) for r in recon]
    return correlation_table(df, x=[*recon, *dist], y=y, by=by, control=control, method=method,
                             n_boot=n_boot, seed=seed, ci=ci, confidence=confidence, permutation=permutation,
                             ceiling=halves, id_col=id_col, name=name)


_AUTO = "auto"


def analyze_run(run: str | Path, by: str | None = _AUTO, method: str = "spearman", n_boot: int = 2000,
                seed: int | None = 0, ci: str = "percentile", confidence: float = 0.95,
                permutation: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Analyse ``RUN/per_image.csv`` and write ``RUN/correlations.csv`` and ``RUN/correlations.json``.

    Parameters
    ----------
    run : path
        A run directory (``per_image.csv`` with ``image_id``, ``score`` and measure columns; optionally
        ``split_halves.npz``, the noise ceiling).
    by : str, None or "auto"
        Group column; ``"auto"`` uses ``category`` when the table has one with at least two values.
    method, n_boot, seed, ci, confidence, permutation
        As in :func:`correlate`.

    Returns
    -------
    (DataFrame, dict)
        The correlation table and the JSON payload written to ``correlations.json``.
    """

    from ._io import atomic_path, atomic_write_json, read_run_table

    run = Path(run)
    table_path = run / "per_image.csv"
    if not run.is_dir():
        raise RunDirError(f"{run}: no such run directory")
    df = read_run_table(table_path, f"memlens score DATA --run {run}")
    if "score" not in df.columns:
        raise RunDirError(f"{table_path}: no 'score' column (columns: {', '.join(map(str, df.columns))}); "
                          "analysis needs memorability scores")
    # Images held out of the collection as the visual-experience corpus were seen many times during
    # pretraining, not once: they are not part of the single-exposure analysis.
    n_experience = 0
    exp_file = run / "experience_ids.txt"
    if exp_file.is_file() and "image_id" in df.columns:
        held = {line.strip() for line in exp_file.read_text(encoding="utf-8").splitlines() if line.strip()}
        keep = ~df["image_id"].astype(str).isin(held)
        n_experience = int((~keep).sum())
        if n_experience:
            log.info("%d experience images (%s) left out of the exposure analysis", n_experience, exp_file.name)
            df = df[keep]  # the index stays the file's row numbers, which error messages name
    if by == _AUTO:
        by = "category" if "category" in df.columns and df["category"].nunique(dropna=True) >= 2 else None
    recon, dist = _measure_columns(df)
    if not recon and not dist:
        raise RunDirError(f"{table_path}: no recon_* or distinctiveness columns to analyse "
                          f"(columns: {', '.join(map(str, df.columns))})")

    halves = None
    ceiling_info: dict[str, Any] | None = None
    halves_path = run / "split_halves.npz"
    if halves_path.is_file():
        from .data.halves import load_split_halves

        if "image_id" not in df.columns:
            log.warning("%s: no image_id column; the noise ceiling is not reported", table_path)
        else:
            try:
                halves = load_split_halves(halves_path).subset([str(i) for i in df["image_id"]])
            except DataError as exc:
                log.warning("%s: noise ceiling not reported: %s", halves_path, exc)
                halves = None
        if halves is not None:
            rel = split_half_reliability(halves, method=method)
            ceiling_info = {**rel, "source": halves_path.name,
                            "definition": f"mean over splits of the split-half {method} correlation on the "
                                          "run's images (not Spearman-Brown corrected)"}
    table = analyze_per_image(df, by=by, method=method, n_boot=n_boot, seed=seed, ci=ci,
                              confidence=confidence, permutation=permutation, halves=halves,
                              name=str(table_path))
    payload = {
        "run": str(run), "table": table_path.name, "y": "score", "by": by, "method": method, "ci_method": ci,
        "confidence": confidence, "n_boot": n_boot, "seed": seed, "n_images": int(len(df)),
        "n_experience_excluded": n_experience, "ceiling": ceiling_info, "rows": table_records(table),
    }
    with atomic_path(run / "correlations.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_json(run / "correlations.json", payload)
    log.info("wrote %s and %s (%d rows)", run / "correlations.csv", run / "correlations.json", len(table))
    return table, payload


def table_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (NaN/NA/None kept as None, numpy scalars as Python numbers)."""
    import pandas as pd

    out = []
    for row in table.to_dict("records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, np.generic):
                v = v.item()
            if v is pd.NA or (isinstance(v, float) and not math.isfinite(v)):
                v = None
            clean[k] = v
        out.append(clean)
    return out

