"""One correlation with its paired bootstrap CI: :class:`CorrResult` and :func:`correlate` (Spearman or
Pearson, optionally partial, optionally within groups; percentile or BCa interval; analytic and permutation
p-values)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from .resampling import CorrelationProblem, bca_levels, bootstrap, jackknife, p_analytic, permutation_p

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


#: one logger for the whole package ("memlens.stats"): collected_warnings() captures what correlate() warns
log = logging.getLogger("memlens.stats")

__all__ = ["METHODS", "CI_METHODS", "CorrResult", "correlate", "as_float", "collected_warnings"]


METHODS = ("spearman", "pearson")
CI_METHODS = ("percentile", "bca")


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


def as_float(v: Any, name: str) -> np.ndarray:
    """``v`` as a float array; a DataError naming ``name`` when it is not numeric."""
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
    arr = as_float(control, "control")
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

    Examples
    --------
    >>> import numpy as np, memlens
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=200)
    >>> y = x + rng.normal(size=200)
    >>> res = memlens.correlate(x, y, n_boot=500, seed=0)   # Spearman, paired bootstrap 95% CI
    >>> res.n, bool(0.5 < res.r < 0.9), bool(res.ci_low < res.r < res.ci_high)
    (200, True, True)
    >>> list(res.to_frame().columns[:5])
    ['n', 'r', 'ci_low', 'ci_high', 'p_value']
    """
    _check_method(method, ci, confidence, n_boot, nan_policy)
    what = label or "correlation"
    xa, ya = as_float(x, "x").ravel(), as_float(y, "y").ravel()
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

    problem = CorrelationProblem(xa, ya, ca, gid, n_groups or 0, method)
    r = float(problem.stat(np.arange(n)[None, :])[0])
    if not math.isfinite(r):
        log.warning("%s: no variance left after removing %s; r is NaN", what,
                    "the controls" if k else "group means")
        return result(p_perm=math.nan if permutation else None)
    p = p_analytic(r, df)

    seq = np.random.SeedSequence(seed)
    boot_ss, jack_ss, perm_ss = seq.spawn(3)
    lo = hi = math.nan
    if n_boot > 0:
        boot = bootstrap(problem, n_boot, np.random.default_rng(boot_ss))
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
            jack, weight = jackknife(problem, np.random.default_rng(jack_ss))
            levels, z0, a = bca_levels(boot, r, jack, weight, alpha)
            if not np.all(np.isfinite(levels)):
                log.warning("%s: BCa interval undefined (z0 = %g, a = %g); interval is NaN", what, z0, a)
            else:
                if not math.isfinite(z0):
                    log.warning("%s: every bootstrap r lies on one side of r; BCa uses an extreme quantile",
                                what)
                lo, hi = np.percentile(boot, 100 * levels)
    p_perm = None
    if permutation:
        p_perm = permutation_p(problem, r, int(permutation), np.random.default_rng(perm_ss))
    return result(r, lo, hi, p, p_perm)


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Collect the warnings of memlens.stats inside the block instead of emitting them (re-logged at debug level)."""
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
