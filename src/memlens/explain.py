"""Explanations: Integrated Gradients maps, overlays, aggregate maps, a randomisation sanity check, and
the visual descriptors of memorable images.

The model explained is any ``nn.Module`` mapping images in [0, 1], shape (N, 3, H, W), to one score per
image, shape (N,) (the :class:`memlens.predict.MemorabilityModel`: encoder + predictor head). Definitions
(IG, baselines, convergence delta, the sanity check, every descriptor) are in ``docs/explain.md``.

The science functions (:func:`integrated_gradients`, :func:`aggregate_maps`, :func:`randomization_check`,
the figures) take tensors/arrays and do no I/O; :func:`explain_run` is the edge that reads a run directory
and writes ``RUN/attributions/``, ``RUN/descriptors.csv`` and ``RUN/descriptor_correlations.csv``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .descriptors import DESCRIPTOR_COLUMNS, center_share, visual_descriptors

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "IGResult",
    "RandomizationCheck",
    "AggregateMaps",
    "BASELINES",
    "integrated_gradients",
    "make_baseline",
    "gaussian_blur",
    "default_blur_sigma",
    "normalize_maps",
    "aggregate_maps",
    "overlay_figure",
    "aggregate_figure",
    "save_figure",
    "randomize_weights",
    "randomization_check",
    "visual_descriptors",
    "center_share",
    "DESCRIPTOR_COLUMNS",
]

log = logging.getLogger(__name__)

BASELINES = ("black", "blur", "mean")
#: below this absolute convergence delta an image is never flagged (float32 round-off, near-constant models)
DELTA_ABS_FLOOR = 1e-6


# ------------------------------------------------------------------------------------------- inputs
def _as_images(images: Any, name: str = "images") -> torch.Tensor:
    """Validate float RGB images in [0, 1] of shape (N, 3, H, W); return a float32 tensor."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array; got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3, H, W); got {tuple(images.shape)}")
    if not torch.is_floating_point(images):
        raise ValueError(f"{name} must be float in [0, 1]; got dtype {images.dtype}")
    images = images.detach().to(torch.float32)
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name} must lie in [0, 1]; observed min {lo:.4g}, max {hi:.4g}")
    return images


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


class _ScalarOutput(nn.Module):
    """Wrap a model so that it returns exactly one score per image, shape (N,).

    Inputs are clipped to [0, 1] first: a no-op on the IG path (which stays between the baseline and the
    image), it keeps SmoothGrad's noisy copies inside the model's input domain.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.clamp(0.0, 1.0))
        if not isinstance(out, torch.Tensor) or out.numel() != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model must return one score per image, shape ({x.shape[0]},); got {shape}")
        return out.reshape(x.shape[0])


# ----------------------------------------------------------------------------------------- baselines
def default_blur_sigma(height: int, width: int) -> float:
    """Default blur-baseline sigma in pixels: 5 % of the shorter image side (11.2 px at 224 px)."""
    return 0.05 * min(height, width)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images.

    Kernel radius ``ceil(3 * sigma)``, weights ``exp(-d^2 / (2 sigma^2))`` normalised to sum 1, borders
    extended by replicating the edge pixel (so a flat image stays flat and values stay in [0, 1]).
    ``sigma <= 0`` returns a copy.
    """
    if sigma <= 0:
        return images.clone()
    radius = max(1, math.ceil(3.0 * sigma))
    d = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(d**2) / (2.0 * sigma**2))
    k = (k / k.sum()).to(images.dtype).to(images.device)
    c = images.shape[1]
    x = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x


def make_baseline(
    images: torch.Tensor, baseline: str | torch.Tensor | np.ndarray = "black", blur_sigma: float | None = None
) -> torch.Tensor:
    """The IG baseline for each image, shape (N, 3, H, W), in [0, 1].

    ``"black"``: zeros. ``"blur"``: :func:`gaussian_blur` of the image with ``blur_sigma`` pixels
    (default :func:`default_blur_sigma`). ``"mean"``: every pixel set to the image's mean colour. A tensor or
    array broadcastable to the images (e.g. (3, H, W) or (N, 3, H, W)) is used as given (values in [0, 1]).
    """
    images = _as_images(images)
    if isinstance(baseline, str):
        if baseline == "black":
            return torch.zeros_like(images)
        if baseline == "blur":
            sigma = default_blur_sigma(*images.shape[-2:]) if blur_sigma is None else float(blur_sigma)
            return gaussian_blur(images, sigma).clamp(0.0, 1.0)
        if baseline == "mean":
            return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
        raise ValueError(
            f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)} or pass a tensor"
        )
    b = torch.as_tensor(baseline).detach().to(torch.float32)
    if b.ndim == 3:
        b = b.unsqueeze(0)
    try:
        b = b.expand_as(images).clone()
    except RuntimeError as exc:
        raise ValueError(
            f"baseline of shape {tuple(b.shape)} does not broadcast to images of shape {tuple(images.shape)}"
        ) from exc
    return _as_images(b, "baseline")


# -------------------------------------------------------------------------------- integrated gradients
@dataclass
class IGResult:
    """Integrated Gradients of a batch of images (numpy arrays, float32 unless stated).

    Attributes
    ----------
    attributions : (N, 3, H, W) per-pixel, per-channel attributions (their sum over pixels and channels
        approximates ``f(x) - f(baseline)``).
    maps : (N, 1, H, W) ``sum_c |attribution|``: the magnitude map used for overlays and aggregates.
    signed_maps : (N, 1, H, W) ``sum_c attribution``: positive = pushes the score up.
    delta : (N,) convergence delta ``sum(attributions) - (f(x) - f(baseline))`` (with SmoothGrad: the mean
        of ``|delta|`` over the noise samples).
    relative_delta : (N,) ``|delta| / |f(x) - f(baseline)|``.
    map_error : (N,) float64, the estimated error of each map relative to its mass:
        ``sum|A_n - A_{n//2}| / (2 max(sum|A_n|, sum|A_{n//2}|))``, from a second pass at half the steps (NaN
        without the check). Calibrated for the default Gauss-Legendre rule (docs/explain.md).
    flagged : (N,) bool, ``map_error > error_tolerance``: the map is not accurate yet; use more steps. Without
        the error check, ``relative_delta > delta_tolerance`` (and ``|delta| > 1e-6``). Flagged images are
        logged as a warning, never dropped.
    scores, baseline_scores : (N,) ``f(x)`` and ``f(baseline)``.
    """

    attributions: np.ndarray
    maps: np.ndarray
    signed_maps: np.ndarray
    delta: np.ndarray
    relative_delta: np.ndarray
    flagged: np.ndarray
    scores: np.ndarray
    baseline_scores: np.ndarray
    baseline: str
    n_steps: int
    smoothgrad: int = 0
    smoothgrad_sigma: float = 0.1
    seed: int = 0
    delta_tolerance: float = 0.05
    map_error: np.ndarray | None = None
    error_tolerance: float = 0.1
    error_checked: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    @property
    def n_flagged(self) -> int:
        return int(np.sum(self.flagged))

    @property
    def _checked(self) -> bool:
        return bool(self.error_checked)

    def summary(self) -> dict[str, Any]:
        """Settings and convergence summary as a JSON-ready dict."""
        return {
            "n_images": len(self),
            "baseline": self.baseline,
            "n_steps": self.n_steps,
            "smoothgrad": self.smoothgrad,
            "smoothgrad_sigma": self.smoothgrad_sigma,
            "seed": self.seed,
            "delta_tolerance": self.delta_tolerance,
            "n_flagged": self.n_flagged,
            "flag_criterion": "map_error" if self._checked else "relative_delta",
            "error_tolerance": self.error_tolerance,
            "max_map_error": float(np.nanmax(self.map_error)) if self._checked and len(self) else None,
            "median_map_error": float(np.nanmedian(self.map_error)) if self._checked and len(self) else None,
            "max_relative_delta": float(np.nanmax(self.relative_delta)) if len(self) else None,
            "median_relative_delta": float(np.nanmedian(self.relative_delta)) if len(self) else None,
            **self.settings,
        }


def _image_seed(seed: int, image: torch.Tensor) -> int:
    """A seed from ``seed`` and the image's content: SmoothGrad noise does not depend on batching."""
    h = hashlib.sha256(str(int(seed)).encode())
    h.update(image.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") % (2**63)


def integrated_gradients(
    model: nn.Module,
    images: Any,
    baseline: str | torch.Tensor | np.ndarray = "black",
    n_steps: int = 32,
    internal_batch_size: int = 16,
    smoothgrad: int = 0,
    smoothgrad_sigma: float = 0.1,
    seed: int = 0,
    delta_tolerance: float = 0.05,
    blur_sigma: float | None = None,
    method: str = "gausslegendre",
    error_check: bool = True,
    error_tolerance: float = 0.1,
    progress: Callable[[int], None] | None = None,
    label: str | None = None,
) -> IGResult:
    """Integrated Gradients of a scalar-per-image model, built on :class:`captum.attr.IntegratedGradients`.

    Parameters
    ----------
    model
        ``nn.Module`` mapping (N, 3, H, W) images in [0, 1] to (N,) scores. It is put in ``eval()`` mode for
        the computation (its previous mode is restored afterwards).
    images
        (N, 3, H, W) float in [0, 1] (tensor or array); ``ValueError`` otherwise.
    baseline
        ``"black"``, ``"blur"``, ``"mean"`` or a tensor (see :func:`make_baseline`).
    n_steps
        Points of the path integral (captum's Gauss-Legendre rule by default, ``method``).
    internal_batch_size
        Path points evaluated per forward/backward pass. Images are attributed one at a time, so a map never
        depends on the other images of the call.
    smoothgrad
        Number of noisy copies for SmoothGrad (:class:`captum.attr.NoiseTunnel`, ``nt_type="smoothgrad"``);
        0 = plain IG. The noise is Gaussian with SD ``smoothgrad_sigma`` (image units, [0, 1] scale) and is
        seeded from ``seed`` and the image content.
    smoothgrad_sigma
        SD of the SmoothGrad noise, on the [0, 1] image scale (noisy copies are clipped to [0, 1]).
    seed
        Seed of the SmoothGrad noise (combined with each image's content, so a map does not depend on the
        other images of the call); unused without SmoothGrad. The global torch RNG is not touched.
    method
        captum's integration rule: ``"gausslegendre"`` (default), ``"riemann_trapezoid"``, ``"riemann_left"``,
        ``"riemann_right"`` or ``"riemann_middle"``.
    delta_tolerance
        Without ``error_check``: images whose relative convergence delta exceeds this are flagged.
    error_check
        Also integrate with half the steps and estimate each map's error from the difference (about 50 % more
        time). The completeness delta is a poor guide to a map's accuracy: measured against 1,024-step maps it
        missed most inaccurate maps and flagged accurate ones (docs/explain.md); the estimate tracked the real
        error with a Spearman correlation of 0.98 or more.
    error_tolerance
        With ``error_check``: images whose estimated map error (relative to the map's mass) exceeds this are
        flagged (and logged as a warning).
    blur_sigma
        Sigma in pixels of the ``"blur"`` baseline (default 5 % of the shorter side).
    progress
        Optional callback called with 1 after each image (CLI progress bars).
    label
        What the attributions are of, for the convergence warning (e.g. the randomised model of the sanity
        check).

    Returns
    -------
    IGResult
    """
    from captum.attr import IntegratedGradients, NoiseTunnel

    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1; got {n_steps}")
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be >= 1; got {internal_batch_size}")
    if smoothgrad < 0 or smoothgrad_sigma < 0:
        raise ValueError(
            f"smoothgrad and smoothgrad_sigma must be >= 0; got {smoothgrad}, {smoothgrad_sigma}"
        )
    x_all = _as_images(images)
    b_all = make_baseline(x_all, baseline, blur_sigma=blur_sigma)
    baseline_name = baseline if isinstance(baseline, str) else "tensor"
    device = _model_device(model)
    wrapped = _ScalarOutput(model)
    modes = [(m, m.training) for m in model.modules()]  # each layer's own mode (e.g. a frozen BatchNorm)
    model.eval()
    n = x_all.shape[0]
    attrs = np.zeros(tuple(x_all.shape), dtype=np.float32)
    delta = np.zeros(n, dtype=np.float64)
    f_x = np.zeros(n, dtype=np.float64)
    f_b = np.zeros(n, dtype=np.float64)
    half_steps = n_steps // 2
    # captum's Riemann rules need 2 points or more, Gauss-Legendre 1
    check = bool(error_check) and half_steps >= (1 if method == "gausslegendre" else 2)
    map_error = np.full(n, np.nan)
    ig = IntegratedGradients(wrapped)
    nt = NoiseTunnel(ig) if smoothgrad > 0 else None
    fork_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    try:
        with torch.enable_grad():
            for i in range(n):
                x = x_all[i : i + 1].to(device)
                b = b_all[i : i + 1].to(device)
                with torch.no_grad():
                    f_x[i] = float(wrapped(x)[0])
                    f_b[i] = float(wrapped(b)[0])
                x = x.clone().requires_grad_(True)

                def attribute(steps: int, x=x, b=b, i=i) -> tuple[torch.Tensor, float]:
                    if nt is None:
                        a, d = ig.attribute(x, baselines=b, n_steps=steps, method=method,
                                            internal_batch_size=internal_batch_size, return_convergence_delta=True)
                        return a, float(d.reshape(-1)[0])
                    with torch.random.fork_rng(devices=fork_devices):  # the same noise draws at any step count
                        torch.manual_seed(_image_seed(seed, x_all[i]))
                        a, d = nt.attribute(x, nt_type="smoothgrad", nt_samples=smoothgrad, nt_samples_batch_size=1,
                                            stdevs=float(smoothgrad_sigma), baselines=b, n_steps=steps,
                                            method=method, internal_batch_size=internal_batch_size,
                                            return_convergence_delta=True)
                    return a, float(d.detach().abs().mean())

                a, delta[i] = attribute(n_steps)
                attrs[i] = a.detach().cpu().numpy()[0]
                if check:
                    half = attribute(half_steps)[0].detach().cpu().numpy()[0].astype(np.float64)
                    full = attrs[i].astype(np.float64)
                    # relative to the larger of the two maps: bounded (<= 1), also when one of them is all zero
                    mass = max(float(np.abs(full).sum()), float(np.abs(half).sum()))
                    diff = float(np.abs(full - half).sum())
                    map_error[i] = diff / (2 * mass) if mass > 0 else 0.0
                if progress is not None:
                    progress(1)
    finally:
        for m, training in modes:
            m.training = training
    gap = np.abs(f_x - f_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(
            gap > 0, np.abs(delta) / np.maximum(gap, 1e-30), np.where(np.abs(delta) > 0, np.inf, 0.0)
        )
    if check:
        flagged = map_error > error_tolerance
        if flagged.any():
            log.warning("Integrated Gradients%s: the maps of %d of %d images are not accurate yet (estimated error "
                        "up to %.1f%% of the map > tolerance %.1f%% at %d steps); they are kept and flagged, use "
                        "more steps", f" ({label})" if label else "", int(flagged.sum()), n,
                        100 * float(np.max(map_error[flagged])), 100 * error_tolerance, n_steps)
    else:
        flagged = (rel > delta_tolerance) & (np.abs(delta) > DELTA_ABS_FLOOR)
        if flagged.any():
            log.warning(
                "Integrated Gradients%s did not converge for %d of %d images (relative delta up to %.3g > "
                "tolerance %.3g at %d steps); their maps are kept and flagged, use more steps",
                f" ({label})" if label else "",
                int(flagged.sum()),
                n,
                float(np.max(rel[flagged])),
                delta_tolerance,
                n_steps,
            )
    return IGResult(
        attributions=attrs,
        maps=np.abs(attrs).sum(axis=1, keepdims=True).astype(np.float32),
        signed_maps=attrs.sum(axis=1, keepdims=True).astype(np.float32),
        delta=delta,
        relative_delta=rel,
        flagged=flagged,
        scores=f_x,
        baseline_scores=f_b,
        baseline=baseline_name,
        n_steps=int(n_steps),
        smoothgrad=int(smoothgrad),
        smoothgrad_sigma=float(smoothgrad_sigma),
        seed=int(seed),
        delta_tolerance=float(delta_tolerance),
        map_error=map_error,
        error_tolerance=float(error_tolerance),
        error_checked=check,
        settings={
            "internal_batch_size": int(internal_batch_size),
            "method": method,
            "blur_sigma": (
                None
                if baseline_name != "blur"
                else float(default_blur_sigma(*x_all.shape[-2:]) if blur_sigma is None else blur_sigma)
            ),
        },
    )


# ----------------------------------------------------------------------------------- aggregate maps
def normalize_maps(maps: Any) -> np.ndarray:
    """``|map| / sum(|map|)`` per image, shape (N, H, W); maps with no mass become NaN."""
    m = np.abs(np.asarray(maps, dtype=np.float64))
    if m.ndim == 4:
        if m.shape[1] != 1:
            raise ValueError(f"maps must be (N, 1, H, W) or (N, H, W); got {m.shape}")
        m = m[:, 0]
    if m.ndim != 3:
        raise ValueError(f"maps must be (N, 1, H, W) or (N, H, W); got {m.shape}")
    total = m.sum(axis=(1, 2), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, m / np.where(total > 0, total, 1.0), np.nan)


@dataclass
class AggregateMaps:
    """Mean spatially normalised |attribution| of the most and least memorable images.

    ``top``/``bottom``: (H, W) means of :func:`normalize_maps` over the images with score >= the upper
    quantile / <= the lower quantile; ``difference = top - bottom``. Each map sums to 1 (difference to 0).
    """

    top: np.ndarray
    bottom: np.ndarray
    difference: np.ndarray
    n_top: int
    n_bottom: int
    upper_threshold: float
    lower_threshold: float
    quantile: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_top": self.n_top,
            "n_bottom": self.n_bottom,
            "upper_threshold": self.upper_threshold,
            "lower_threshold": self.lower_threshold,
            "quantile": self.quantile,
            "top_center_share": center_share(self.top),
            "bottom_center_share": center_share(self.bottom),
        }


def quartile_groups(scores: Any, quantile: float = 0.25) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Masks (top, bottom, upper, lower): scores >= the (1 - quantile) quantile and <= the quantile one.

    NaN scores are in neither group.
    """
    s = np.asarray(scores, dtype=np.float64)
    if not 0.0 < quantile <= 0.5:
        raise ValueError(f"quantile must be in (0, 0.5]; got {quantile}")
    ok = np.isfinite(s)
    if not ok.any():
        raise ValueError("no finite scores to split into quartiles")
    hi, lo = float(np.quantile(s[ok], 1.0 - quantile)), float(np.quantile(s[ok], quantile))
    return ok & (s >= hi), ok & (s <= lo), hi, lo


def aggregate_maps(
    maps: Any, scores: Any, quantile: float = 0.25, thresholds: tuple[float, float] | None = None
) -> AggregateMaps:
    """Aggregate maps for the top vs bottom ``quantile`` of ``scores`` (see :class:`AggregateMaps`).

    ``maps``: (N, 1, H, W) or (N, H, W) attribution maps (absolute values are taken); ``scores``: (N,).
    ``thresholds``: ``(upper, lower)`` score cut-offs to use instead of the quantiles of ``scores`` (e.g. the
    quartiles of a whole run when ``maps`` cover a sample of it).
    """
    norm = normalize_maps(maps)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (norm.shape[0],):
        raise ValueError(f"got {s.shape[0] if s.ndim else 0} scores for {norm.shape[0]} maps")
    if thresholds is None:
        top, bottom, hi, lo = quartile_groups(s, quantile)
    else:
        hi, lo = float(thresholds[0]), float(thresholds[1])
        ok = np.isfinite(s)
        top, bottom = ok & (s >= hi), ok & (s <= lo)
    valid = np.isfinite(norm).all(axis=(1, 2))
    top, bottom = top & valid, bottom & valid
    if not top.any() or not bottom.any():
        raise ValueError("the top or bottom group has no image with a non-empty map")
    t, b = norm[top].mean(axis=0), norm[bottom].mean(axis=0)
    return AggregateMaps(
        top=t,
        bottom=b,
        difference=t - b,
        n_top=int(top.sum()),
        n_bottom=int(bottom.sum()),
        upper_threshold=hi,
        lower_threshold=lo,
        quantile=float(quantile),
    )


# ------------------------------------------------------------------------------------------ figures
def _hwc(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = np.moveaxis(a, 0, -1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"image must be (3, H, W) or (H, W, 3); got {a.shape}")
    return np.clip(a, 0.0, 1.0)


def _map2d(m: Any) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    a = np.asarray(m, dtype=np.float64)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"map must be (H, W) or (1, H, W); got {a.shape}")
    return a


def overlay_figure(
    image: Any,
    attribution_map: Any,
    title: str | None = None,
    cmap: str = "inferno",
    alpha: float = 0.55,
    clip_percentile: float = 99.0,
    label: str = "|attribution|",
) -> Figure:
    """Image, image + semi-transparent heat map, and a colour bar, as a matplotlib ``Figure``.

    The colour scale runs from 0 to the ``clip_percentile`` percentile of the map (a few extreme pixels do
    not wash out the rest); for a signed map (negative values) it is symmetric around 0 with ``"RdBu_r"``
    unless ``cmap`` is given otherwise. No pyplot state is used.
    """
    from matplotlib.figure import Figure

    img = _hwc(image)
    m = _map2d(attribution_map)
    if m.shape != img.shape[:2]:
        raise ValueError(f"map of shape {m.shape} does not match image of shape {img.shape[:2]}")
    signed = bool(np.nanmin(m) < 0)
    finite = m[np.isfinite(m)]
    if signed:
        vmax = float(np.percentile(np.abs(finite), clip_percentile)) if finite.size else 1.0
        vmin, cmap = -(vmax or 1.0), ("RdBu_r" if cmap == "inferno" else cmap)
        vmax = vmax or 1.0
    else:
        vmin, vmax = 0.0, (float(np.percentile(finite, clip_percentile)) if finite.size else 1.0) or 1.0
    fig = Figure(figsize=(7.0, 3.4), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    ax0.imshow(img, interpolation="nearest")
    # fonts sized for the report, which shows the figure about 450 px wide (a third of its pixel width)
    ax0.set_title("image", fontsize=12)
    ax1.imshow(img, interpolation="nearest")
    im = ax1.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, interpolation="nearest")
    ax1.set_title("Integrated Gradients", fontsize=12)
    for ax in (ax0, ax1):
        ax.set_axis_off()
    cb = fig.colorbar(im, ax=ax1, fraction=0.046, pad=0.03)
    cb.set_label(label, fontsize=11)
    cb.ax.tick_params(labelsize=10)
    cb.ax.yaxis.get_offset_text().set_fontsize(10)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def aggregate_figure(agg: AggregateMaps, cmap: str = "inferno", title: str | None = None) -> Figure:
    """Three panels: mean normalised |attribution| of the top and bottom groups (shared scale) and their
    difference (diverging scale symmetric around 0), each with a colour bar."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    vmax = float(max(np.nanmax(agg.top), np.nanmax(agg.bottom))) or 1.0
    dmax = float(np.nanmax(np.abs(agg.difference))) or 1.0
    panels = [
        (
            agg.top,
            f"top {agg.quantile:.0%} (score >= {agg.upper_threshold:.3g}, n={agg.n_top})",
            cmap,
            0.0,
            vmax,
        ),
        (
            agg.bottom,
            f"bottom {agg.quantile:.0%} (score <= {agg.lower_threshold:.3g}, n={agg.n_bottom})",
            cmap,
            0.0,
            vmax,
        ),
        (agg.difference, "top - bottom", "RdBu_r", -dmax, dmax),
    ]
    for ax, (m, t, cm, lo, hi) in zip(axes, panels, strict=True):
        im = ax.imshow(m, cmap=cm, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(t, fontsize=8)
        ax.set_axis_off()
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.ax.tick_params(labelsize=7)
        cb.set_label("share of attribution per pixel", fontsize=7)
    fig.suptitle(title or "mean spatially normalised |attribution|", fontsize=9)
    return fig


def save_figure(fig: Figure, path: Any, dpi: int = 110) -> None:
    """Write ``fig`` as a PNG atomically."""
    from ._io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


# ----------------------------------------------------------------------------------- sanity check
def randomize_weights(model: nn.Module, module: str | None = "head", seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` whose ``module`` (a dotted attribute path; ``None`` = the whole model) has
    re-initialised weights.

    Every sub-module with a ``reset_parameters()`` method (Linear, Conv, norm layers, ...) is reset to its
    initial distribution; parameters of sub-modules without one are randomly permuted (same values, learned
    structure destroyed). Seeded with a stream derived from ``seed`` (not ``seed`` itself: a head initialised
    under ``torch.manual_seed(seed)`` must not be "re-initialised" to its own starting weights); the global RNG
    state is left untouched.
    """
    clone = copy.deepcopy(model)
    target: nn.Module = clone
    if module:
        for part in module.split("."):
            if not hasattr(target, part) or not isinstance(getattr(target, part), nn.Module):
                names = ", ".join(n for n, _ in target.named_children()) or "none"
                raise ValueError(f"model has no sub-module {module!r} to randomise (children: {names})")
            target = getattr(target, part)
    # "randomise" in ASCII as the second entropy word: a stream no plain torch.manual_seed(seed) shares
    entropy = [int(seed) % 2**64, 0x72616E646F6D]  # SeedSequence takes non-negative words; torch any int
    init_seed, perm_seed = (int(v) for v in np.random.SeedSequence(entropy).generate_state(2))
    cuda = sorted({p.device.index or 0 for p in target.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):  # the CUDA generators too, where the weights live there
        torch.manual_seed(init_seed)
        gen = torch.Generator().manual_seed(perm_seed)
        with torch.no_grad():
            for sub in target.modules():
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
    x = _as_images(images)
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


# ------------------------------------------------------------------------------ run directory (edge)
def _safe_name(image_id: str, max_len: int = 60) -> str:
    """A file-name-safe, collision-free stem for an image id: ``[A-Za-z0-9._-]`` + an 8-hex hash."""
    import re

    stem = str(image_id).rsplit(".", 1)[0] if "." in str(image_id).rsplit("/", 1)[-1] else str(image_id)
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    digest = hashlib.sha1(str(image_id).encode("utf-8")).hexdigest()[:8]
    return f"{clean[:max_len]}_{digest}"


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        from .errors import ConfigError

        raise ConfigError(f"unknown device {device!r} (use auto, cpu or cuda)") from exc


def _load_predictor(path: Any, device: torch.device) -> nn.Module:
    """Load ``RUN/predictor.pt`` as the image -> score :class:`memlens.predict.MemorabilityModel`."""
    from .predict import load_memorability_model

    return load_memorability_model(path, map_location=device).eval()


def _input_size(model: nn.Module, run: Any) -> int:
    """The square side images are loaded at: the model's ``input_size`` (the first encoder's), else its
    autoencoder's ``spec.input_size``, else ``image_size`` in ``RUN/dataset.json``."""
    import json

    spec = getattr(model, "image_spec", None)  # a feature-set predictor: its decoding side (centre squares here)
    if spec and spec[1]:
        return int(spec[1])
    enc = getattr(model, "encoder", None)
    for obj in (model, enc, getattr(enc, "autoencoder", None)):
        if obj is None:
            continue
        size = getattr(obj, "input_size", None) or getattr(getattr(obj, "spec", None), "input_size", None)
        if size:
            return int(size)
    ds_path = run / "dataset.json"
    if ds_path.is_file():
        try:
            size = json.loads(ds_path.read_text(encoding="utf-8")).get("image_size")
        except (ValueError, AttributeError):
            size = None
        if size:
            return int(size)
    from .errors import RunDirError

    raise RunDirError(
        f"cannot tell the input size of the predictor in {run} (no input_size on the model, no image_size "
        "in dataset.json)"
    )


def _load_run_dataset(run: Any) -> Any:
    """Reload the run's data set from ``RUN/dataset.json`` (see :func:`memlens.data.load_run_dataset`)."""
    from .data import load_run_dataset

    return load_run_dataset(run)


def _select_requested(requested: Sequence[str], ids: list[str], root: Any) -> list[tuple[str, str | None]]:
    """Match ``--images`` values to image ids of the run (or to image files outside it).

    Returns (image_id, external_path) pairs: ``external_path`` is None for images of the run.
    """
    from pathlib import Path

    from .errors import DataError

    known = set(ids)
    out, missing = [], []
    root_path = Path(root).resolve() if root else None
    for req in requested:
        if req in known:
            out.append((req, None))
            continue
        p = Path(req).expanduser()
        if p.is_file():
            rp = p.resolve()
            if root_path is not None:
                try:
                    rel = rp.relative_to(root_path).as_posix()
                except ValueError:
                    rel = None
                if rel in known:
                    out.append((rel, None))
                    continue
            out.append((str(p), str(rp)))
            continue
        missing.append(req)
    if missing:
        raise DataError(
            "\n".join(
                f"--images {m}: neither an image id of the run (per_image.csv) nor an image file"
                for m in missing
            )
        )
    seen: set[str] = set()
    return [(i, e) for i, e in out if not (i in seen or seen.add(i))]


# fields of a memlens.stats.correlate result written to descriptor_correlations.csv
_CORR_FIELDS = ("n", "r", "ci_low", "ci_high", "p_value", "method", "ci_method", "confidence", "n_boot", "seed")


def explain_run(
    run_dir: Any,
    *,
    images: Sequence[str] = (),
    top: int = 4,
    bottom: int = 4,
    n_steps: int = 32,
    baseline: str = "black",
    smoothgrad: int = 0,
    smoothgrad_sigma: float = 0.1,
    internal_batch_size: int = 16,
    seed: int = 0,
    aggregate_max: int = 16,
    sanity_max: int = 4,
    n_boot: int = 1000,
    delta_tolerance: float = 0.05,
    error_tolerance: float = 0.1,
    error_check: bool = True,
    device: str = "auto",
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """Explain a run: IG overlays, aggregate maps, the sanity check, descriptors and their correlations.

    Reads ``RUN/predictor.pt`` (the image -> score model), ``RUN/per_image.csv`` and ``RUN/dataset.json``;
    writes ``RUN/attributions/`` (``overlay_*.png``, ``aggregate_*.png``, ``attributions.npz``,
    ``sanity.json``, ``explain.json``), ``RUN/descriptors.csv`` and ``RUN/descriptor_correlations.csv``.

    Parameters
    ----------
    run_dir
        The run directory.
    images
        Extra images to explain: image ids of the run or image files.
    top, bottom
        Overlays for the N most and least memorable images (human score).
    n_steps, baseline, smoothgrad, smoothgrad_sigma, internal_batch_size, seed, delta_tolerance, error_tolerance,
    error_check
        Integrated Gradients settings (:func:`integrated_gradients`). The randomisation check's maps are not
        error-checked (a rank correlation needs no exact maps).
    aggregate_max
        At most this many images per quartile in the aggregate maps (0 = all): the quartile's images that
        are explained anyway (``top``, ``bottom``, ``images``) plus a seeded random sample of the others.
    sanity_max
        At most this many images in the randomisation check (0 = all explained ones): ``images`` first,
        then the most and least memorable alternately.
    n_boot
        Bootstrap resamples of the descriptor correlations (:func:`memlens.stats.correlate`).
    device
        ``auto``, ``cpu`` or ``cuda``.
    progress
        Optional ``progress(stage, total) -> advance(n)`` factory (CLI progress bars).

    Returns
    -------
    dict
        The summary also written to ``RUN/attributions/explain.json``.
    """
    import time
    from pathlib import Path

    import pandas as pd

    from ._io import atomic_path, atomic_write_json, read_run_table
    from .data import load_image
    from .errors import DataError, RunDirError
    from .stats import correlate

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"run directory {run} not found")
    for name, made_by in (("predictor.pt", "memlens fit-predictor"), ("per_image.csv", "memlens score")):
        if not (run / name).exists():
            raise RunDirError(f"{run / name} not found (written by {made_by})")
    if min(top, bottom, aggregate_max, sanity_max) < 0:
        raise ValueError("top, bottom, aggregate_max and sanity_max must be >= 0")

    def _tick(stage: str, total: int) -> Callable[[int], None]:
        return progress(stage, total) if progress is not None else (lambda k: None)

    dev = _resolve_device(device)
    model = _load_predictor(run / "predictor.pt", dev)
    size = _input_size(model, run)
    table = read_run_table(run / "per_image.csv", f"memlens score DATA --run {run}")
    if "image_id" not in table.columns:
        raise RunDirError(f"{run / 'per_image.csv'} has no image_id column")
    table["image_id"] = table["image_id"].astype(str)
    ds = _load_run_dataset(run)
    paths = dict(zip(ds.table["image_id"].astype(str), ds.table["path"].astype(str), strict=True))
    missing = [i for i in table["image_id"] if i not in paths]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} image(s) of {run / 'per_image.csv'} are not in the data set at "
            f"{ds.root}: {shown}"
        )
    ids = table["image_id"].tolist()
    score = (
        pd.to_numeric(table["score"], errors="coerce").to_numpy(float)
        if "score" in table.columns
        else np.full(len(ids), np.nan)
    )
    score_of = dict(zip(ids, score, strict=True))
    timings["load"] = time.perf_counter() - t_start

    # ---- which images get maps
    has_score = np.isfinite(score)
    scored = np.flatnonzero(has_score)
    # ties keep the order of per_image.csv in both directions
    ranked = [ids[i] for i in scored[np.argsort(-score[scored], kind="stable")]]
    ranked_low = [ids[i] for i in scored[np.argsort(score[scored], kind="stable")]]
    chosen = _select_requested(list(images), ids, getattr(ds, "root", None))
    groups: dict[str, list[str]] = {
        "image": [i for i, _ in chosen],
        "top": ranked[:top],
        "bottom": ranked_low[:bottom],
    }
    external = {i: e for i, e in chosen if e is not None}
    agg_sets: dict[str, list[str]] = {"top_quartile": [], "bottom_quartile": []}
    agg_note = None
    if has_score.sum() >= 4:
        tq, bq, hi, lo = quartile_groups(score)
        rng = np.random.default_rng(seed)
        for key, mask in (("top_quartile", tq), ("bottom_quartile", bq)):
            members = [ids[i] for i in np.flatnonzero(mask)]
            if aggregate_max and len(members) > aggregate_max:
                # images explained anyway (--top/--bottom/--images) are reused; a seeded sample fills the rest
                done = set(groups["image"] + groups["top"] + groups["bottom"])
                keep = [m for m in members if m in done][:aggregate_max]
                rest = [m for m in members if m not in done]
                k = aggregate_max - len(keep)
                pick = set(keep) | {rest[i] for i in rng.choice(len(rest), k, replace=False)}
                members = [m for m in members if m in pick]
            agg_sets[key] = members
    else:
        agg_note = "fewer than 4 scored images: no aggregate maps"
    needed = list(
        dict.fromkeys(
            groups["image"]
            + groups["top"]
            + groups["bottom"]
            + agg_sets["top_quartile"]
            + agg_sets["bottom_quartile"]
        )
    )

    # ---- integrated gradients
    t0 = time.perf_counter()

    def _load(i: str) -> np.ndarray:
        return load_image(external.get(i) or paths[i], size)

    x = (
        torch.from_numpy(
            np.stack([_load(i) for i in needed]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        )
        if needed
        else torch.zeros(0, 3, size, size)
    )
    ig_kw = dict(
        baseline=baseline,
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
        smoothgrad=smoothgrad,
        smoothgrad_sigma=smoothgrad_sigma,
        delta_tolerance=delta_tolerance,
        error_tolerance=error_tolerance,
        error_check=error_check,
    )
    res = integrated_gradients(
        model, x, seed=seed, progress=_tick("integrated gradients", len(needed)), **ig_kw
    )
    timings["integrated_gradients"] = time.perf_counter() - t0
    row_of = {i: k for k, i in enumerate(needed)}

    # ---- sanity check
    t0 = time.perf_counter()
    # --images first, then the most and least memorable alternately, at most sanity_max images
    pairs = [
        g[k]
        for k in range(max(len(groups["top"]), len(groups["bottom"])))
        for g in (groups["top"], groups["bottom"])
        if k < len(g)
    ]
    sanity_ids = list(dict.fromkeys(groups["image"] + pairs)) or list(needed)
    if sanity_max:
        sanity_ids = sanity_ids[:sanity_max]
    sanity: dict[str, Any]
    if sanity_ids:
        module = "head" if isinstance(getattr(model, "head", None), nn.Module) else None
        rows = [row_of[i] for i in sanity_ids]
        check = randomization_check(
            model,
            x[rows],
            module=module,
            maps=res.maps[rows],
            seed=seed,
            progress=_tick("sanity check", len(rows)),
            **{**ig_kw, "error_check": False, "delta_tolerance": math.inf},  # ranks, not exact maps
        )
        sanity = check.to_dict()
        sanity["image_ids"] = sanity_ids
        sanity["passed"] = bool(np.isfinite(check.mean) and check.mean < SANITY_THRESHOLD)
        sanity["threshold"] = SANITY_THRESHOLD
    else:
        sanity = {
            "test": "model randomisation (Adebayo et al. 2018)",
            "n_images": 0,
            "note": "no image was explained (no --top, --bottom, --images or aggregate images)",
        }
    timings["sanity_check"] = time.perf_counter() - t0

    # ---- figures
    t0 = time.perf_counter()
    att = run / "attributions"
    att.mkdir(parents=True, exist_ok=True)
    for old in list(att.glob("overlay_*.png")) + list(att.glob("aggregate_*.png")):
        old.unlink()  # a rerun with other images must not leave stale overlays behind
    files: dict[str, str] = {}
    for g in ("image", "top", "bottom"):
        for rank, i in enumerate(groups[g], start=1):
            k = row_of[i]
            label = g if g == "image" else f"{g}{rank:02d}"
            fname = f"overlay_{label}_{_safe_name(i)}.png"
            s = score_of.get(i, np.nan)
            title = (
                f"{i} | score {s:.3f} | predicted {res.scores[k]:.3f}"
                if np.isfinite(s)
                else f"{i} | predicted {res.scores[k]:.3f}"
            )
            if res.flagged[k]:
                title += (f" | NOT ACCURATE YET (est. error {100 * res.map_error[k]:.1f}%)"
                          if np.isfinite(res.map_error[k]) else
                          f" | NOT CONVERGED (rel. delta {res.relative_delta[k]:.2g})")
            save_figure(overlay_figure(x[k], res.maps[k], title=title), att / fname)
            files.setdefault(i, fname)
    agg_info: dict[str, Any] = {"note": agg_note} if agg_note else {}
    if not agg_note:
        agg_ids = agg_sets["top_quartile"] + agg_sets["bottom_quartile"]
        agg_rows = [row_of[i] for i in agg_ids]
        agg = aggregate_maps(
            res.maps[agg_rows], np.array([score_of[i] for i in agg_ids]), quantile=0.25, thresholds=(hi, lo)
        )
        save_figure(aggregate_figure(agg), att / "aggregate_quartiles.png")
        for key, m, cm, signed in (
            ("most_memorable", agg.top, "inferno", False),
            ("least_memorable", agg.bottom, "inferno", False),
            ("difference", agg.difference, "RdBu_r", True),
        ):
            save_figure(
                _single_map_figure(m, key.replace("_", " "), cm, signed), att / f"aggregate_{key}.png"
            )
        agg_info = {
            **agg.to_dict(),
            "top_quartile_ids": agg_sets["top_quartile"],
            "bottom_quartile_ids": agg_sets["bottom_quartile"],
            "max_per_group": aggregate_max,
        }
    timings["figures"] = time.perf_counter() - t0

    # ---- arrays
    def _grp(i: str) -> str:
        return "+".join(g for g, lst in (*groups.items(), *agg_sets.items()) if i in lst)

    with atomic_path(att / "attributions.npz") as tmp:
        extra = {}
        if not agg_note:
            extra = {
                "aggregate_top": agg.top.astype(np.float32),
                "aggregate_bottom": agg.bottom.astype(np.float32),
                "aggregate_difference": agg.difference.astype(np.float32),
            }
        np.savez_compressed(
            tmp,
            image_ids=np.array(needed, dtype=str),
            groups=np.array([_grp(i) for i in needed], dtype=str),
            maps=res.maps,
            signed_maps=res.signed_maps,
            deltas=res.delta,
            relative_deltas=res.relative_delta,
            map_errors=res.map_error,
            flagged=res.flagged,
            scores=np.array([score_of.get(i, np.nan) for i in needed], dtype=np.float64),
            predicted_scores=res.scores,
            baseline_scores=res.baseline_scores,
            **extra,
        )
    atomic_write_json(att / "sanity.json", sanity)

    # ---- descriptors for every image of the run
    t0 = time.perf_counter()
    predicted, predicted_source = _stored_predictions(run, table)
    tick = _tick("descriptors", len(ids))
    rows_out, preds = [], []
    batch: list[torch.Tensor] = []

    def _flush() -> None:
        if batch:
            with torch.no_grad():
                xb = torch.stack(batch).to(dev)
                preds.extend(_ScalarOutput(model)(xb).detach().cpu().numpy().astype(float).tolist())
            batch.clear()

    for i in ids:
        arr = _load(i)
        m = res.maps[row_of[i]] if i in row_of else None
        d = _descriptor_row(arr, m)
        rows_out.append(d)
        if predicted is None:
            batch.append(torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32) / 255.0))
            if len(batch) >= 32:
                _flush()
        tick(1)
    if predicted is None:
        _flush()
        predicted = np.asarray(preds, dtype=float)
        predicted_source = "predictor.pt (in-sample: the predictor was fitted on these images)"
    desc = pd.DataFrame(rows_out, columns=DESCRIPTOR_COLUMNS)
    desc.insert(0, "image_id", ids)
    desc.insert(1, "score", score)
    desc.insert(2, "predicted_score", predicted)
    with atomic_path(run / "descriptors.csv") as tmp:
        desc.to_csv(tmp, index=False)
    timings["descriptors"] = time.perf_counter() - t0

    # ---- correlations
    t0 = time.perf_counter()
    corr_rows = []
    for target in ("score", "predicted_score"):
        y = desc[target].to_numpy(float)
        if not np.isfinite(y).any():
            continue
        for dname in DESCRIPTOR_COLUMNS:
            r = correlate(
                desc[dname].to_numpy(float),
                y,
                method="spearman",
                n_boot=n_boot,
                seed=seed,
                label=f"{dname} vs {target}",
            ).to_dict()
            corr_rows.append(
                {
                    "descriptor": dname,
                    "target": target,
                    **{k: r[k] for k in _CORR_FIELDS},
                }
            )
    corr = pd.DataFrame(corr_rows, columns=["descriptor", "target", *_CORR_FIELDS])
    with atomic_path(run / "descriptor_correlations.csv") as tmp:
        corr.to_csv(tmp, index=False)
    timings["correlations"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    summary = {
        "run": str(run),
        "device": str(dev),
        "input_size": size,
        "n_images": len(ids),
        "integrated_gradients": res.summary(),
        "explained": {
            g: [
                {
                    "image_id": i,
                    "file": files.get(i),
                    "score": score_of.get(i),
                    "predicted_score": float(res.scores[row_of[i]]),
                    "relative_delta": float(res.relative_delta[row_of[i]]),
                    "map_error": float(res.map_error[row_of[i]]) if np.isfinite(res.map_error[row_of[i]]) else None,
                    "flagged": bool(res.flagged[row_of[i]]),
                }
                for i in lst
            ]
            for g, lst in groups.items()
        },
        "flagged_ids": [i for i in needed if res.flagged[row_of[i]]],
        "aggregate": agg_info,
        "sanity": {
            k: sanity.get(k)
            for k in (
                "mean_spearman",
                "median_spearman",
                "passed",
                "threshold",
                "randomized_module",
                "n_images",
            )
        },
        "predicted_score_source": predicted_source,
        "descriptor_correlations": {"n_boot": n_boot, "seed": seed, "file": "descriptor_correlations.csv"},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    atomic_write_json(att / "explain.json", summary)
    log.info(
        "explained %d images (%d flagged) and described %d in %.1f s",
        len(needed),
        res.n_flagged,
        len(ids),
        timings["total"],
    )
    return summary


def _stored_predictions(run: Any, table: Any) -> tuple[np.ndarray | None, str | None]:
    """Predicted scores already in the run: ``per_image.csv`` ``predicted_score``, else the out-of-fold
    predictions of the model saved in ``predictor.pt`` (``predictor_oof.csv`` column ``predicted_<model>``,
    the model named by ``predictor_cv.csv``; ``memlens fit-predictor``); (None, None) when neither."""
    import pandas as pd

    from .predict import saved_model

    if "predicted_score" in table.columns:
        v = pd.to_numeric(table["predicted_score"], errors="coerce").to_numpy(float)
        if np.isfinite(v).any():
            return v, "per_image.csv (predicted_score)"
    oof_path = run / "predictor_oof.csv"
    if oof_path.is_file():
        cv_path = run / "predictor_cv.csv"
        col = f"predicted_{saved_model(pd.read_csv(cv_path) if cv_path.is_file() else None)}"
        oof = pd.read_csv(oof_path)
        if {"image_id", col} <= set(oof.columns):
            by_id = dict(
                zip(
                    oof["image_id"].astype(str),
                    pd.to_numeric(oof[col], errors="coerce"),
                    strict=True,
                )
            )
            v = np.array([by_id.get(i, np.nan) for i in table["image_id"]], dtype=float)
            if np.isfinite(v).any():
                return v, f"predictor_oof.csv ({col}, out-of-fold)"
        log.warning("%s has no usable %s column; predicting in-sample with predictor.pt", oof_path, col)
    return None, None


#: a mean Spearman correlation (trained vs randomised maps) below this passes the sanity check
SANITY_THRESHOLD = 0.5


def _descriptor_row(image_u8: np.ndarray, attribution_map: np.ndarray | None) -> dict[str, float]:
    from .descriptors import image_descriptors

    return image_descriptors(image_u8, attribution_map)


def _single_map_figure(m: np.ndarray, title: str, cmap: str, signed: bool) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0, 3.4), layout="constrained")
    ax = fig.subplots()
    vmax = float(np.nanmax(np.abs(m))) or 1.0
    im = ax.imshow(m, cmap=cmap, vmin=-vmax if signed else 0.0, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label("share of attribution per pixel", fontsize=7)
    cb.ax.tick_params(labelsize=7)
    return fig
