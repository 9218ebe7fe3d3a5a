"""Reliability of human scores: split-half consistency, the Spearman-Brown correction, within-group
ceilings; and the Benjamini-Hochberg FDR adjustment used beside them in tables."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from .correlation import METHODS, as_float, collected_warnings, correlate

if TYPE_CHECKING:  # pragma: no cover

    pass

#: one logger for the whole package ("memlens.stats"): collected_warnings() captures what correlate() warns
log = logging.getLogger("memlens.stats")

__all__ = ["spearman_brown", "ceiling_from_split_half", "split_half_reliability", "within_split_half",
           "between_split_half", "fdr_bh", "CEILING_DEFINITION"]

#: what memlens divides by, in words (tables, reports and docs quote it)
CEILING_DEFINITION = ("sqrt of the Spearman-Brown corrected split-half correlation: the highest correlation a "
                      "model can reach with the full-group score when the score's reliability is the only "
                      "limit (Spearman 1904; Lage-Castellanos et al. 2019)")


# --------------------------------------------------------------------------------------------------
# split-half reliability (noise ceiling)


def spearman_brown(r: float, factor: float = 2.0) -> float:
    """Spearman-Brown prophecy: reliability of a test ``factor`` times as long, ``f r / (1 + (f - 1) r)``."""
    if not math.isfinite(r):
        return math.nan
    return float(factor * r / (1.0 + (factor - 1.0) * r))


def ceiling_from_split_half(r: float) -> float:
    """Noise ceiling of a correlation with the full-group score, from the split-half correlation ``r``.

    The full-group score's reliability is the Spearman-Brown prophecy ``2 r / (1 + r)``; a model's correlation
    with that score is at most the square root of the reliability (the correction for attenuation, Spearman
    1904; as a noise ceiling: Lage-Castellanos et al. 2019, PLoS Comput Biol 15:e1006397). NaN when ``r`` is
    not finite; 0 when the reliability is not positive.
    """
    rel = spearman_brown(r)
    if not math.isfinite(rel):
        return math.nan
    return float(math.sqrt(rel)) if rel > 0 else 0.0


def _halves_arrays(halves: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    if hasattr(halves, "half1") and hasattr(halves, "half2"):
        return (np.atleast_2d(np.asarray(halves.half1, dtype=float)),
                np.atleast_2d(np.asarray(halves.half2, dtype=float)), tuple(halves.image_ids))
    try:
        h1, h2 = halves
    except (TypeError, ValueError):
        raise DataError("split halves: expected a SplitHalves or a pair (half1, half2) of arrays") from None
    h1 = np.atleast_2d(as_float(h1, "half1"))
    h2 = np.atleast_2d(as_float(h2, "half2"))
    if h1.shape != h2.shape:
        raise DataError(f"split halves differ in shape: half1 {h1.shape}, half2 {h2.shape}")
    return h1, h2, None


def _split_rs(h1: np.ndarray, h2: np.ndarray, method: str, groups: np.ndarray | None = None) -> np.ndarray:
    """Correlation between the halves for each split (NaN-aware, pairwise per split)."""
    rs = np.full(h1.shape[0], np.nan)
    with collected_warnings() as troubles:
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
        ``split_half`` (the mean of ``method``), ``spearman_brown`` (``2 r / (1 + r)`` applied to it: the
        estimated reliability of the full-group score) and ``ceiling`` (its square root,
        :func:`ceiling_from_split_half`: the highest correlation a model can reach with the full-group score;
        what memlens divides by).

    Examples
    --------
    >>> import memlens
    >>> # data: a folder made by memlens.make_demo_set, which writes split_halves.npz
    >>> rel = memlens.split_half_reliability(memlens.load_split_halves(f"{data}/split_halves.npz"))
    >>> rel["n_images"], rel["n_splits"]
    (40, 5)
    >>> bool(0 < rel["spearman_mean"] < rel["spearman_brown"] < rel["ceiling"] <= 1)
    True
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
    out["split_half"] = out[f"{method}_mean"]
    out["spearman_brown"] = spearman_brown(out[f"{method}_mean"])
    out["ceiling"] = ceiling_from_split_half(out[f"{method}_mean"])
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


def within_split_half(h1: np.ndarray, h2: np.ndarray, groups: np.ndarray, method: str) -> float:
    """Mean over splits of the split-half correlation within ``groups`` (group means removed, as a within row).

    :func:`ceiling_from_split_half` of it is the ceiling of a within-group correlation with the score.
    """
    rs = _split_rs(h1, h2, method, groups=groups)
    ok = rs[np.isfinite(rs)]
    return float(ok.mean()) if len(ok) else math.nan


def between_split_half(h1: np.ndarray, h2: np.ndarray, groups: np.ndarray, method: str) -> float:
    """Mean over splits of the correlation between the halves' group means (one point per group).

    :func:`ceiling_from_split_half` of it is the ceiling of a between-group correlation with the score. NaN
    with fewer than three groups.
    """
    from .parts import between_groups

    with collected_warnings():  # a split without variance between its group means is left out, not warned about
        rs = [between_groups(a, b, groups, method=method, n_boot=0).r
              for a, b in zip(np.atleast_2d(h1), np.atleast_2d(h2), strict=True)]
    ok = [r for r in rs if math.isfinite(r)]
    return float(np.mean(ok)) if ok else math.nan
