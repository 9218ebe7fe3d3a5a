"""Attribution maps as pictures and groups: normalisation, top- vs bottom-quartile aggregate maps, overlays
and aggregate figures (matplotlib, no I/O except :func:`save_figure`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..descriptors import center_share

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: one logger for the package ("memlens.explain"), as before the split
log = logging.getLogger("memlens.explain")


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
    from .._io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)



def single_map_figure(m: np.ndarray, title: str, cmap: str, signed: bool) -> Figure:
    """One map as a figure with a colour bar (``signed``: a diverging scale centred on 0)."""
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
