"""Visual descriptors of images: colour, entropy, texture (GLCM), clutter (Canny edges), IG centre share.

Every descriptor is a plain number per image, computed from the RGB image in [0, 1] (or uint8), so that it can
be correlated with memorability and with predicted memorability. The exact definitions are in
``docs/explain.md`` and repeated in :func:`visual_descriptors`.

Science code only: arrays in, a :class:`pandas.DataFrame` out, no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DESCRIPTOR_COLUMNS",
    "GLCM_LEVELS",
    "GLCM_ANGLES_DEG",
    "CANNY_SIGMA",
    "COLOUR_BINS_PER_CHANNEL",
    "visual_descriptors",
    "image_descriptors",
    "center_share",
    "shannon_entropy_bits",
    "colourfulness",
    "to_hwc_float",
]

log = logging.getLogger(__name__)

#: grey levels the image is quantised to before the GLCM (``floor(grey_uint8 * GLCM_LEVELS / 256)``)
GLCM_LEVELS = 32
#: GLCM offsets: distance 1 pixel at these angles (degrees, skimage convention); properties are averaged
GLCM_ANGLES_DEG = (0, 45, 90, 135)
#: Gaussian sigma (pixels) of the Canny edge detector (skimage defaults for the hysteresis thresholds)
CANNY_SIGMA = 1.0
#: RGB quantisation of the colour histogram: bins per channel (8 -> 8**3 = 512 colour bins)
COLOUR_BINS_PER_CHANNEL = 8

DESCRIPTOR_COLUMNS = [
    "lab_l_mean",
    "lab_l_sd",
    "lab_a_mean",
    "lab_a_sd",
    "lab_b_mean",
    "lab_b_sd",
    "hsv_s_mean",
    "hsv_v_mean",
    "colourfulness",
    "colour_entropy",
    "grey_entropy",
    "glcm_contrast",
    "glcm_energy",
    "glcm_homogeneity",
    "edge_density",
    "ig_center_share",
]


# --------------------------------------------------------------------------------------------- inputs
def to_hwc_float(image: Any) -> np.ndarray:
    """One image as float64 (H, W, 3) in [0, 1].

    Accepts uint8 (H, W, 3) (divided by 255) or float (3, H, W) / (H, W, 3) in [0, 1] (numpy or torch).
    Raises ``ValueError`` for other shapes and for float values outside [0, 1] (naming the observed range).
    """
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise ValueError(f"an image must have 3 dimensions (H, W, 3) or (3, H, W); got shape {arr.shape}")
    if arr.dtype == np.uint8:
        if arr.shape[-1] != 3:
            raise ValueError(f"a uint8 image must be (H, W, 3); got shape {arr.shape}")
        return arr.astype(np.float64) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [0, 1]; got dtype {arr.dtype}")
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = np.moveaxis(arr, 0, -1)
    elif arr.shape[-1] != 3:
        raise ValueError(f"a float image must be (3, H, W) or (H, W, 3); got shape {arr.shape}")
    arr = arr.astype(np.float64)
    lo, hi = (float(np.min(arr)), float(np.max(arr))) if arr.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise ValueError(f"float images must lie in [0, 1]; observed min {lo:.4g}, max {hi:.4g}")
    return arr


def _iter_images(images: Any) -> list[Any]:
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [images]
        if images.ndim != 4:
            raise ValueError(
                f"images must be (N, 3, H, W) float or (N, H, W, 3) uint8; got shape {images.shape}"
            )
        return list(images)
    if isinstance(images, Sequence):
        return list(images)
    raise TypeError(f"images must be an array, a tensor or a sequence of images; got {type(images).__name__}")


def _iter_maps(maps: Any, n: int) -> list[np.ndarray | None]:
    if maps is None:
        return [None] * n
    if hasattr(maps, "detach"):
        maps = maps.detach().cpu().numpy()
    if isinstance(maps, np.ndarray):
        if maps.ndim == 4:
            if maps.shape[1] != 1:
                raise ValueError(
                    f"attribution maps must be (N, 1, H, W) or (N, H, W); got shape {maps.shape}"
                )
            maps = maps[:, 0]
        if maps.ndim != 3:
            raise ValueError(f"attribution maps must be (N, 1, H, W) or (N, H, W); got shape {maps.shape}")
        items: list[Any] = list(maps)
    else:
        items = list(maps)
    if len(items) != n:
        raise ValueError(f"got {len(items)} attribution maps for {n} images")
    out: list[np.ndarray | None] = []
    for m in items:
        if m is None:
            out.append(None)
            continue
        if hasattr(m, "detach"):
            m = m.detach().cpu().numpy()
        m = np.asarray(m, dtype=np.float64)
        m = m[0] if m.ndim == 3 and m.shape[0] == 1 else m
        if m.ndim != 2:
            raise ValueError(f"an attribution map must be (H, W) or (1, H, W); got shape {m.shape}")
        out.append(m)
    return out


# ------------------------------------------------------------------------------------------ measures
def shannon_entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy, in bits, of a histogram (``-sum p log2 p`` over non-empty bins)."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness ``M = sigma_rgyb + 0.3 * mu_rgyb`` on the 0-255 scale.

    ``rg = R - G``, ``yb = (R + G) / 2 - B``; ``sigma_rgyb = sqrt(sd(rg)^2 + sd(yb)^2)``,
    ``mu_rgyb = sqrt(mean(rg)^2 + mean(yb)^2)``; population standard deviations (ddof = 0).
    ``rgb`` is float (H, W, 3) in [0, 1].
    """
    x = np.asarray(rgb, dtype=np.float64) * 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    sigma = np.sqrt(rg.std() ** 2 + yb.std() ** 2)
    mu = np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(sigma + 0.3 * mu)


def center_share(attribution_map: Any, center_fraction: float = 0.5) -> float:
    """Share of attribution mass (``|map|``) inside the central rectangle of the image.

    The central rectangle spans ``round(center_fraction * H)`` rows starting at row
    ``round((H - round(center_fraction * H)) / 2)`` (likewise for columns), i.e. a centred box covering
    ``center_fraction**2`` of the area (0.25 for the default 0.5). NaN when the map has no mass.
    """
    if not 0.0 < center_fraction <= 1.0:
        raise ValueError(f"center_fraction must be in (0, 1]; got {center_fraction}")
    m = np.abs(np.asarray(attribution_map, dtype=np.float64))
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"an attribution map must be (H, W); got shape {m.shape}")
    h, w = m.shape
    ch, cw = max(1, round(center_fraction * h)), max(1, round(center_fraction * w))
    top, left = round((h - ch) / 2), round((w - cw) / 2)
    total = m.sum()
    if not np.isfinite(total) or total <= 0:
        return float("nan")
    return float(m[top : top + ch, left : left + cw].sum() / total)


def image_descriptors(
    image: Any, attribution_map: Any = None, center_fraction: float = 0.5
) -> dict[str, float]:
    """The descriptors of one image (see :func:`visual_descriptors`) as a dict."""
    from skimage.color import rgb2gray, rgb2lab
    from skimage.feature import canny, graycomatrix, graycoprops

    rgb = to_hwc_float(image)
    out: dict[str, float] = {}

    lab = rgb2lab(rgb)
    for i, name in enumerate(("l", "a", "b")):
        out[f"lab_{name}_mean"] = float(lab[..., i].mean())
        out[f"lab_{name}_sd"] = float(lab[..., i].std())
    # HSV value and saturation as skimage.color.rgb2hsv defines them (V = max, S = (max - min) / max, 0 where
    # max = min), without its hue: a quarter of the descriptors' time
    v = rgb.max(axis=-1)
    delta = np.ptp(rgb, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sat = np.where(delta == 0.0, 0.0, delta / v)
    out["hsv_s_mean"] = float(sat.mean())
    out["hsv_v_mean"] = float(v.mean())
    out["colourfulness"] = colourfulness(rgb)

    rgb_u8 = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.int64)
    q = rgb_u8 * COLOUR_BINS_PER_CHANNEL // 256
    codes = (q[..., 0] * COLOUR_BINS_PER_CHANNEL + q[..., 1]) * COLOUR_BINS_PER_CHANNEL + q[..., 2]
    out["colour_entropy"] = shannon_entropy_bits(
        np.bincount(codes.ravel(), minlength=COLOUR_BINS_PER_CHANNEL**3)
    )

    grey = rgb2gray(rgb)  # 0.2125 R + 0.7154 G + 0.0721 B
    grey_u8 = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
    out["grey_entropy"] = shannon_entropy_bits(np.bincount(grey_u8.ravel(), minlength=256))

    levels = (grey_u8.astype(np.int64) * GLCM_LEVELS // 256).astype(np.uint8)
    glcm = graycomatrix(
        levels,
        distances=[1],
        angles=[np.deg2rad(a) for a in GLCM_ANGLES_DEG],
        levels=GLCM_LEVELS,
        symmetric=True,
        normed=True,
    )
    for prop in ("contrast", "energy", "homogeneity"):
        out[f"glcm_{prop}"] = float(graycoprops(glcm, prop).mean())

    edges = canny(grey, sigma=CANNY_SIGMA, mode="nearest")
    out["edge_density"] = float(edges.mean())

    if attribution_map is None:
        out["ig_center_share"] = float("nan")
    else:
        m = np.asarray(attribution_map)
        m = m[0] if m.ndim == 3 and m.shape[0] == 1 else m
        if m.shape != rgb.shape[:2]:
            raise ValueError(
                f"attribution map of shape {m.shape} does not match image of shape {rgb.shape[:2]}"
            )
        out["ig_center_share"] = center_share(m, center_fraction)
    return out


def visual_descriptors(
    images: Any,
    attribution_maps: Any = None,
    center_fraction: float = 0.5,
    image_ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-image visual descriptors related to memorability.

    Parameters
    ----------
    images
        ``(N, 3, H, W)`` float in [0, 1] (numpy or torch), ``(N, H, W, 3)`` uint8, or a sequence of single
        images of either kind (sizes may differ).
    attribution_maps
        Optional ``(N, 1, H, W)`` / ``(N, H, W)`` maps, or a sequence with ``None`` for images without one;
        gives ``ig_center_share`` (NaN otherwise).
    center_fraction
        Side of the central box as a fraction of the image side (0.5 -> the central quarter of the area).
    image_ids
        Optional identifiers, written as a first ``image_id`` column.

    Returns
    -------
    pandas.DataFrame
        One row per image with the columns of :data:`DESCRIPTOR_COLUMNS`:

        - ``lab_{l,a,b}_{mean,sd}``: mean and population SD of CIELAB L*, a*, b* (``skimage.color.rgb2lab``,
          D65).
        - ``hsv_s_mean``, ``hsv_v_mean``: mean HSV saturation and value (``skimage.color.rgb2hsv``),
          in [0, 1].
        - ``colourfulness``: Hasler & Suesstrunk (2003) ``M`` on the 0-255 scale (:func:`colourfulness`).
        - ``colour_entropy``: entropy in bits of the RGB histogram with 8 bins per channel (512 colours,
          ``bin = value_uint8 * 8 // 256``); 0 to 9 bits.
        - ``grey_entropy``: entropy in bits of the 256-bin histogram of ``rgb2gray`` rounded to uint8; 0 to 8.
        - ``glcm_{contrast,energy,homogeneity}``: ``skimage.feature.graycoprops`` of the symmetric, normalised
          grey-level co-occurrence matrix of the grey image quantised to 32 levels, distance 1 pixel, angles
          0, 45, 90, 135 degrees, averaged over the angles.
        - ``edge_density``: fraction of pixels marked by ``skimage.feature.canny`` (sigma 1, default
          hysteresis thresholds 0.1 / 0.2, borders extended by the nearest pixel) on the grey image.
        - ``ig_center_share``: :func:`center_share` of the attribution map.

    Examples
    --------
    >>> import numpy as np, memlens
    >>> images = np.random.default_rng(0).random((2, 3, 48, 48))   # (N, 3, H, W) in [0, 1]
    >>> table = memlens.visual_descriptors(images, image_ids=["a", "b"])
    >>> table["image_id"].tolist(), {"colourfulness", "edge_density", "grey_entropy"} <= set(table.columns)
    (['a', 'b'], True)
    """
    items = _iter_images(images)
    maps = _iter_maps(attribution_maps, len(items))
    if image_ids is not None and len(image_ids) != len(items):
        raise ValueError(f"got {len(image_ids)} image ids for {len(items)} images")
    rows = [image_descriptors(img, m, center_fraction) for img, m in zip(items, maps, strict=True)]
    df = pd.DataFrame(rows, columns=DESCRIPTOR_COLUMNS)
    if image_ids is not None:
        df.insert(0, "image_id", list(image_ids))
    log.debug("computed %d descriptors for %d images", len(DESCRIPTOR_COLUMNS), len(df))
    return df
