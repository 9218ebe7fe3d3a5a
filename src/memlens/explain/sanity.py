"""The weight-randomisation sanity check (Adebayo et al. 2018): maps of the trained model against maps of
the same model with randomised weights; a faithful explanation must change."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .gradients import as_images, integrated_gradients

if TYPE_CHECKING:  # pragma: no cover
    pass

#: one logger for the package ("memlens.explain"), as before the split
log = logging.getLogger("memlens.explain")


# ----------------------------------------------------------------------------------- sanity check
def randomize_weights(model: nn.Module, module: str | None = "head", seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` whose ``module`` (a dotted attribute path, or several joined by ``+`` such as
    ``"head+tails"``; ``None`` = the whole model) has re-initialised weights.

    Every sub-module with a ``reset_parameters()`` method (Linear, Conv, norm layers, ...) is reset to its
    initial distribution; parameters of sub-modules without one are randomly permuted (same values, learned
    structure destroyed). Seeded with a stream derived from ``seed`` (not ``seed`` itself: a head initialised
    under ``torch.manual_seed(seed)`` must not be "re-initialised" to its own starting weights); the global RNG
    state is left untouched.
    """
    clone = copy.deepcopy(model)
    targets: list[nn.Module] = [clone]
    if module:  # "a.b" is one dotted path; "head+tails" names several sub-modules, randomised together
        targets = []
        for path in module.split("+"):
            target: nn.Module = clone
            for part in path.split("."):
                if not hasattr(target, part) or not isinstance(getattr(target, part), nn.Module):
                    names = ", ".join(n for n, _ in target.named_children()) or "none"
                    raise ValueError(f"model has no sub-module {path!r} to randomise (children: {names})")
                target = getattr(target, part)
            targets.append(target)
    # "randomise" in ASCII as the second entropy word: a stream no plain torch.manual_seed(seed) shares
    entropy = [int(seed) % 2**64, 0x72616E646F6D]  # SeedSequence takes non-negative words; torch any int
    init_seed, perm_seed = (int(v) for v in np.random.SeedSequence(entropy).generate_state(2))
    cuda = sorted({p.device.index or 0 for t in targets for p in t.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):  # the CUDA generators too, where the weights live there
        torch.manual_seed(init_seed)
        gen = torch.Generator().manual_seed(perm_seed)
        with torch.no_grad():
            for sub in (m for t in targets for m in t.modules()):
                own = list(sub.parameters(recurse=False))
                if not own:
                    continue
                if callable(getattr(sub, "reset_parameters", None)):
                    sub.reset_parameters()
                else:
                    for p in own:
                        flat = p.detach().reshape(-1)
                        perm = torch.randperm(flat.numel(), generator=gen).to(flat.device)
                        p.copy_(flat[perm].reshape(p.shape))
    return clone


@dataclass
class RandomizationCheck:
    """Model-randomisation sanity check (Adebayo et al., 2018).

    ``spearman[i]``: Spearman rank correlation, over pixels, between image i's |attribution| map from the
    trained model and from the model with ``module`` re-initialised. A low mean says the maps depend on the
    learned weights; a mean near 1 says they do not (then they explain the input, not the model).
    """

    spearman: np.ndarray
    module: str | None
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.spearman)) if np.isfinite(self.spearman).any() else float("nan")

    @property
    def median(self) -> float:
        return float(np.nanmedian(self.spearman)) if np.isfinite(self.spearman).any() else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": "model randomisation (Adebayo et al. 2018)",
            "statistic": "Spearman rank correlation over pixels between |IG| maps of the trained and the "
            "randomised model, per image",
            "randomized_module": self.module,
            "seed": self.seed,
            "n_images": int(self.spearman.size),
            "mean_spearman": self.mean,
            "median_spearman": self.median,
            "min_spearman": float(np.nanmin(self.spearman)) if np.isfinite(self.spearman).any() else None,
            "max_spearman": float(np.nanmax(self.spearman)) if np.isfinite(self.spearman).any() else None,
            "per_image_spearman": [None if not np.isfinite(v) else float(v) for v in self.spearman],
            "interpretation": "low correlation = the maps depend on the learned weights (as they should); "
            "correlation near 1 = the maps do not depend on what the model learned",
            **self.settings,
        }


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import spearmanr

    out = np.full(a.shape[0], np.nan)
    for i in range(a.shape[0]):
        x, y = a[i].ravel(), b[i].ravel()
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        out[i] = float(spearmanr(x, y).statistic)
    return out


def randomization_check(
    model: nn.Module,
    images: Any,
    *,
    module: str | None = "head",
    randomized_model: nn.Module | None = None,
    maps: Any = None,
    seed: int = 0,
    **ig_kwargs: Any,
) -> RandomizationCheck:
    """Rank-correlate IG maps of ``model`` with those of a weight-randomised copy.

    Parameters
    ----------
    model
        The trained model (images in [0, 1] -> (N,) scores).
    images
        (N, 3, H, W) float in [0, 1].
    module
        Dotted name of the sub-module to re-initialise (default ``"head"``, the predictor head of a
        :class:`~memlens.predict.MemorabilityModel`); ``None`` randomises the whole model.
    randomized_model
        Use this model instead of :func:`randomize_weights` (``module`` is then only recorded).
    maps
        Precomputed (N, 1, H, W) maps of the trained model with the same IG settings (saves one IG pass).
    seed
        Seed of the randomisation (and of SmoothGrad, if used).
    **ig_kwargs
        Passed to :func:`integrated_gradients` (``baseline``, ``n_steps``, ``internal_batch_size``, ...).
    """
    x = as_images(images)
    ig_kwargs = {"error_check": False, **ig_kwargs}  # a rank correlation needs no error-checked maps
    if maps is None:
        maps = integrated_gradients(model, x, seed=seed, **ig_kwargs).maps
    maps = np.asarray(maps)
    if maps.shape[0] != x.shape[0]:
        raise ValueError(f"got {maps.shape[0]} maps for {x.shape[0]} images")
    rnd = randomized_model if randomized_model is not None else randomize_weights(model, module, seed)
    what = f"randomised {module}" if module and randomized_model is None else "randomised model"
    rmaps = integrated_gradients(rnd, x, seed=seed, label=f"{what}, sanity check", **ig_kwargs)
    rho = _spearman_rows(np.abs(maps).reshape(maps.shape[0], -1), rmaps.maps.reshape(maps.shape[0], -1))
    settings = {
        k: (v if isinstance(v, (int, float, str, type(None))) else "tensor")
        for k, v in ig_kwargs.items()
        if k != "progress"
    }
    res = RandomizationCheck(spearman=rho, module=module, seed=int(seed), settings={"ig": settings})
    log.info("randomisation check: mean Spearman %.3f over %d images (module %s)", res.mean, rho.size, module)
    return res



#: a mean Spearman correlation (trained vs randomised maps) below this passes the sanity check
SANITY_THRESHOLD = 0.5
