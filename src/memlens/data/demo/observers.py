"""The simulated memory experiment: virtual observers play the repeat-detection game on the demo images.

Observer j (random ability ``a_j``, false-alarm bias ``f_j``) sees a random subset of the images twice; a
hit on the repeat has probability ``sigmoid(logit p_i + a_j)``, a false alarm on the first presentation
``sigmoid(fa_logit_i + f_j)``. Random splits of the observers into halves give split-half hit rates and false-alarm corrected scores.
"""

from __future__ import annotations

import numpy as np

from .scenes import DEMO_MODEL

__all__ = ["sigmoid", "simulate_observers"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def simulate_observers(rng: np.random.Generator, logit_p: np.ndarray, fa_logit: np.ndarray, n_observers: int,
                       n_splits: int) -> dict[str, np.ndarray]:
    """Virtual observers play the repeat-detection game; return counts per image and split-half hit rates."""
    n = len(logit_p)
    k = max(1, min(n, int(round(DEMO_MODEL["view_fraction"] * n))))
    ability = rng.normal(0.0, DEMO_MODEL["sigma_obs_hit"], n_observers)
    fa_bias = rng.normal(0.0, DEMO_MODEL["sigma_obs_fa"], n_observers)
    seen = np.zeros((n_observers, n), dtype=bool)
    counts = np.zeros(n)
    jitter = 2.0 + 0.2 * n_observers * k / n  # how unequal the numbers of responses may become
    for j in range(n_observers):  # sessions of varying length, roughly balanced over images
        k_j = int(np.clip(round(k * rng.uniform(0.7, 1.3)), 1, n))
        order = np.argsort(counts + rng.uniform(0.0, jitter, n), kind="stable")
        seen[j, order[:k_j]] = True
        counts[order[:k_j]] += 1
    hits = (rng.random((n_observers, n)) < sigmoid(logit_p[None, :] + ability[:, None])) & seen
    fas = (rng.random((n_observers, n)) < sigmoid(fa_logit[None, :] + fa_bias[:, None])) & seen
    half1 = np.empty((n_splits, n))
    half2 = np.empty((n_splits, n))
    corrected1 = np.empty((n_splits, n))  # the false-alarm corrected score, (H - FA) / n_resp, of each half
    corrected2 = np.empty((n_splits, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in range(n_splits):
            perm = rng.permutation(n_observers)
            for half, corr, group in ((half1, corrected1, perm[: n_observers // 2]),
                                      (half2, corrected2, perm[n_observers // 2:])):
                views = seen[group].sum(axis=0)
                half[s] = np.where(views > 0, hits[group].sum(axis=0) / views, np.nan)
                corr[s] = np.where(views > 0, (hits[group].sum(axis=0) - fas[group].sum(axis=0)) / views, np.nan)
    return {"H": hits.sum(axis=0), "FA": fas.sum(axis=0), "n_resp": seen.sum(axis=0), "half1": half1,
            "half2": half2, "corrected1": corrected1, "corrected2": corrected2}
