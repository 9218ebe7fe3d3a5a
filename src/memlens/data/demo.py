"""The embedded synthetic demo set: procedural scenes with a SIMULATED memory experiment.

:func:`make_demo_set` draws a small collection of outdoor-like scenes (sky/ground gradients, low-frequency
colour noise, clouds, texture, a wavy horizon, shaded and patterned objects, sometimes one salient
high-contrast object) from hidden generative parameters, gives every image a *true* memorability through a
documented model that uses no autoencoder, and lets virtual observers play the repeat-detection game. The
result is written in the ``memcat`` layout, so the whole memlens pipeline can run on it and later stages can
be checked against a known truth.

**The scores are simulated by virtual observers, not measured on people.** See ``docs/demo-set.md``.

Generative model of the true memorability of image *i* (all terms are written to ``demo_truth.csv``)::

    logit p_i = b0 + b_dist * D_i + b_sal * S_i + b_cat[c_i] + e_i,   e_i ~ N(0, sigma_img^2)

* ``D_i``: distinctiveness in the hidden parameter space: the weighted Euclidean distance from image i's
  standardised parameter vector to the nearest other image of the set, z-scored over the set;
* ``S_i``: contrast (0..1) of the salient high-contrast object, 0 when the image has none;
* ``b_cat``: a modest offset per category.

Observer j (random ability ``a_j``, false-alarm bias ``f_j``) sees a random subset of the images twice. On
the repeat it responds (a hit) with probability ``sigmoid(logit p_i + a_j)``; on the first presentation it
responds (a false alarm) with probability ``sigmoid(f0 - f_typ * D_i + f_j)`` (typical images feel familiar).
Per image: ``H`` hits, ``FA`` false alarms, ``n_resp`` repeat presentations, and, exactly as in MemCat,
``memorability_wo_fa_correction = H / n_resp`` and ``memorability_w_fa_correction = (H - FA) / n_resp``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .._version import __version__
from ..errors import ConfigError, DataError

__all__ = ["make_demo_set", "DEMO_MODEL", "DEMO_CATEGORIES", "PARAM_COLUMNS", "MEMCAT_COLUMNS"]

logger = logging.getLogger(__name__)

GENERATOR = "memlens-demo"
GENERATOR_VERSION = 1
SOURCE = "memlens-demo (simulated)"
JPEG_QUALITY = 90
MARKER_FILE = "demo_config.json"

#: Coefficients of the generative model (see the module docstring and docs/demo-set.md).
DEMO_MODEL: dict[str, float] = {
    "b0": 1.25,  # intercept on the logit scale (a typical image: p ~ 0.78)
    "b_dist": 0.55,  # per standard deviation of parameter-space distinctiveness
    "b_sal": 1.5,  # per unit of salient-object contrast (0..1)
    "sigma_img": 0.35,  # image-specific noise (idiosyncratic memorability), logit scale
    "sigma_obs_hit": 0.45,  # observer ability, logit scale
    "f0": -2.9,  # false-alarm logit of an average image and observer (~5%)
    "f_typ": 0.35,  # false alarms rise with typicality (-D)
    "sigma_obs_fa": 0.6,  # observer false-alarm bias, logit scale
    "p_salient": 0.4,  # probability that an image has a salient object
    "p_atypical": 0.25,  # probability that an image's parameters are drawn from a widened distribution
    "view_fraction": 0.4,  # share of the images that each observer sees (each twice)
}

MEMCAT_COLUMNS = (
    "", "image_file", "category", "subcategory", "current_height", "current_width", "source", "searched_label",
    "resize_factor", "H", "FA", "n_resp", "memorability_wo_fa_correction", "memorability_w_fa_correction",
)

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class _Sub:
    name: str
    style: str  # ground style: land, water, beach, street, lawn
    sky_top: RGB
    sky_bottom: RGB
    ground_far: RGB
    ground_near: RGB
    obj: RGB
    kinds: tuple[str, ...]
    horizon: float
    wave: float
    cloud: float
    texture: float
    n_objects: float
    object_size: float
    pattern: float
    sky_object: str | None = None
    night: bool = False


@dataclass(frozen=True)
class _Cat:
    name: str
    offset: float  # b_cat, logit scale
    subs: tuple[_Sub, ...]


DEMO_CATEGORIES: tuple[_Cat, ...] = (
    _Cat("landscape", -0.50, (
        _Sub("meadow", "land", (0.28, 0.48, 0.85), (0.70, 0.82, 0.95), (0.40, 0.58, 0.28), (0.20, 0.40, 0.12),
             (0.16, 0.42, 0.16), ("tree", "bush", "rock"), 0.45, 0.035, 0.5, 0.5, 3.0, 0.22, 0.2),
        _Sub("desert", "land", (0.42, 0.62, 0.90), (0.92, 0.88, 0.78), (0.88, 0.72, 0.48), (0.76, 0.55, 0.30),
             (0.40, 0.55, 0.25), ("cactus", "rock"), 0.50, 0.07, 0.15, 0.3, 1.5, 0.18, 0.3),
        _Sub("snowfield", "land", (0.52, 0.60, 0.72), (0.86, 0.88, 0.91), (0.90, 0.92, 0.96), (0.78, 0.83, 0.90),
             (0.14, 0.30, 0.22), ("pine", "rock"), 0.42, 0.05, 0.7, 0.2, 2.5, 0.2, 0.1),
    )),
    _Cat("seascape", -0.15, (
        _Sub("beach", "beach", (0.22, 0.52, 0.90), (0.76, 0.88, 0.98), (0.12, 0.45, 0.65), (0.92, 0.82, 0.62),
             (0.85, 0.30, 0.25), ("buoy", "boat"), 0.42, 0.0, 0.3, 0.3, 1.5, 0.12, 0.6),
        _Sub("open_sea", "water", (0.34, 0.54, 0.80), (0.80, 0.85, 0.90), (0.12, 0.32, 0.50), (0.05, 0.20, 0.38),
             (0.90, 0.90, 0.88), ("boat", "buoy"), 0.48, 0.0, 0.55, 0.4, 1.2, 0.14, 0.4),
        _Sub("sunset", "water", (0.30, 0.18, 0.45), (0.98, 0.62, 0.32), (0.55, 0.30, 0.35), (0.18, 0.10, 0.22),
             (0.15, 0.10, 0.12), ("boat",), 0.55, 0.0, 0.35, 0.3, 1.0, 0.14, 0.2, "sun"),
    )),
    _Cat("city", 0.20, (
        _Sub("towers", "street", (0.40, 0.60, 0.86), (0.80, 0.85, 0.90), (0.46, 0.46, 0.49), (0.30, 0.30, 0.33),
             (0.55, 0.62, 0.70), ("tower",), 0.72, 0.0, 0.35, 0.25, 4.0, 0.16, 0.6),
        _Sub("houses", "street", (0.45, 0.66, 0.90), (0.84, 0.88, 0.92), (0.50, 0.55, 0.45), (0.36, 0.42, 0.30),
             (0.82, 0.70, 0.52), ("house",), 0.62, 0.0, 0.4, 0.35, 3.0, 0.2, 0.5),
    )),
    _Cat("night", 0.0, (
        _Sub("moonlit", "land", (0.02, 0.03, 0.12), (0.12, 0.16, 0.32), (0.10, 0.13, 0.16), (0.03, 0.04, 0.06),
             (0.05, 0.07, 0.08), ("pine", "tree"), 0.60, 0.05, 0.3, 0.25, 2.5, 0.22, 0.1, "moon", True),
        _Sub("city_lights", "street", (0.04, 0.03, 0.14), (0.45, 0.25, 0.30), (0.14, 0.12, 0.16),
             (0.05, 0.05, 0.07), (0.20, 0.20, 0.26), ("tower", "lamp"), 0.70, 0.0, 0.2, 0.2, 3.5, 0.16, 0.6,
             None, True),
    )),
    _Cat("garden", 0.35, (
        _Sub("flowers", "lawn", (0.40, 0.62, 0.90), (0.80, 0.88, 0.95), (0.32, 0.55, 0.22), (0.14, 0.36, 0.10),
             (0.90, 0.30, 0.45), ("flower",), 0.22, 0.03, 0.3, 0.7, 5.0, 0.3, 0.3),
        _Sub("orchard", "lawn", (0.45, 0.65, 0.88), (0.85, 0.88, 0.90), (0.45, 0.58, 0.25), (0.28, 0.42, 0.14),
             (0.95, 0.55, 0.10), ("fruit", "bush"), 0.30, 0.03, 0.4, 0.6, 4.0, 0.22, 0.4),
    )),
)

#: Hidden generative parameters of every image (columns of demo_truth.csv), in the order of the vector.
PARAM_COLUMNS: tuple[str, ...] = (
    "sky_top_r", "sky_top_g", "sky_top_b", "sky_bottom_r", "sky_bottom_g", "sky_bottom_b",
    "ground_far_r", "ground_far_g", "ground_far_b", "ground_near_r", "ground_near_g", "ground_near_b",
    "object_r", "object_g", "object_b",
    "horizon", "wave", "cloudiness", "texture", "texture_scale", "n_objects", "object_size", "object_x",
    "pattern", "light_x",
)
# Colour triplets count like one scalar each in the distinctiveness distance.
_PARAM_WEIGHTS = np.array([1 / 3] * 15 + [1.0] * 10)
_N_COLOUR = 15

_SALIENT_KINDS = ("ball", "sign", "kite", "balloon")
_VIVID = np.array([
    (0.95, 0.08, 0.08), (1.0, 0.86, 0.05), (0.95, 0.15, 0.80), (0.05, 0.85, 0.95),
    (1.0, 0.50, 0.0), (0.55, 0.10, 0.95),
])


# ----------------------------------------------------------------------------------------------------------
# parameters


@dataclass
class _Params:
    cat: int
    sub: int
    vector: np.ndarray  # (len(PARAM_COLUMNS),)
    atypicality: float
    salient: bool
    salient_kind: str
    salient_contrast: float
    salient_size: float
    salient_x: float
    detail_seed: int

    def __getitem__(self, name: str) -> float:
        return float(self.vector[PARAM_COLUMNS.index(name)])


def _assignments(n: int) -> list[tuple[int, int]]:
    """(category, subcategory) indices for n images: categories as equal as possible, then subcategories."""
    out: list[tuple[int, int]] = []
    n_cat = len(DEMO_CATEGORIES)
    for c, cat in enumerate(DEMO_CATEGORIES):
        n_c = n // n_cat + (1 if c < n % n_cat else 0)
        n_sub = len(cat.subs)
        for s in range(n_sub):
            out += [(c, s)] * (n_c // n_sub + (1 if s < n_c % n_sub else 0))
    return out


def _sample_params(rng: np.random.Generator, c: int, s: int) -> _Params:
    sub = DEMO_CATEGORIES[c].subs[s]
    atypical = rng.random() < DEMO_MODEL["p_atypical"]
    k = rng.uniform(2.0, 3.5) if atypical else 1.0

    def colour(base: RGB) -> list[float]:
        col = np.asarray(base) + k * 0.045 * rng.standard_normal(3) + k * 0.04 * rng.standard_normal()
        if atypical and rng.random() < 0.3:  # an unusual colour for this kind of scene
            col = 0.35 * col + 0.65 * rng.uniform(0.05, 0.95, 3)
        return list(np.clip(col, 0.02, 0.98))

    vec = colour(sub.sky_top) + colour(sub.sky_bottom) + colour(sub.ground_far) + colour(sub.ground_near)
    vec += colour(sub.obj)
    n_obj = int(np.clip(round(sub.n_objects + k * 0.9 * rng.standard_normal()), 0, 8))
    vec += [
        float(np.clip(sub.horizon + k * 0.04 * rng.standard_normal(), 0.15, 0.85)),
        float(np.clip(sub.wave + k * 0.015 * abs(rng.standard_normal()), 0.0, 0.15)),
        float(np.clip(sub.cloud + k * 0.12 * rng.standard_normal(), 0.0, 1.0)),
        float(np.clip(sub.texture + k * 0.12 * rng.standard_normal(), 0.0, 1.0)),
        float(np.clip(0.5 + k * 0.18 * rng.standard_normal(), 0.0, 1.0)),
        float(n_obj),
        float(np.clip(sub.object_size * math.exp(k * 0.18 * rng.standard_normal()), 0.05, 0.4)),
        float(rng.uniform(0.2, 0.8)),
        float(np.clip(sub.pattern + k * 0.15 * rng.standard_normal(), 0.0, 1.0)),
        float(rng.uniform(-1.0, 1.0)),
    ]
    vector = np.asarray(vec, dtype=float)
    if n_obj == 0:  # the object parameters are unused: set them to the prototype so they add no distance
        vector[12:15] = sub.obj
        vector[PARAM_COLUMNS.index("object_size")] = sub.object_size
        vector[PARAM_COLUMNS.index("object_x")] = 0.5
        vector[PARAM_COLUMNS.index("pattern")] = sub.pattern
    salient = bool(rng.random() < DEMO_MODEL["p_salient"])
    return _Params(
        cat=c, sub=s, vector=vector, atypicality=float(k), salient=salient,
        salient_kind=str(_SALIENT_KINDS[int(rng.integers(len(_SALIENT_KINDS)))]),
        salient_contrast=float(rng.uniform(0.15, 1.0)) if salient else 0.0,
        salient_size=float(rng.uniform(0.12, 0.22)), salient_x=float(rng.uniform(0.2, 0.8)),
        detail_seed=int(rng.integers(2**31 - 1)),
    )


def parameter_distinctiveness(vectors: np.ndarray) -> np.ndarray:
    """Weighted Euclidean distance of each standardised parameter vector to its nearest other vector."""
    v = np.asarray(vectors, dtype=float)
    sd = v.std(axis=0)
    z = (v - v.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    z = z * np.sqrt(_PARAM_WEIGHTS)
    sq = (z * z).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * z @ z.T
    np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


# ----------------------------------------------------------------------------------------------------------
# rendering


@lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    t = pos - i0
    t = t * t * (3.0 - 2.0 * t)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), i0] = 1.0 - t
    m[np.arange(n_out), i0 + 1] += t
    m.setflags(write=False)
    return m


def _noise(rng: np.random.Generator, size: int, grid: int, channels: int = 1) -> np.ndarray:
    """Smooth value noise (size, size, channels), about unit scale, with ``grid`` cells per side."""
    g = rng.standard_normal((channels, grid + 1, grid + 1), dtype=np.float32)
    m = _interp_matrix(size, grid + 1)
    return np.moveaxis(m @ g @ m.T, 0, -1)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    return a + (b - a) * t


class _Canvas:
    """Float RGB image in [0, 1]-ish with anti-aliased, shaded shapes."""

    def __init__(self, img: np.ndarray, light_x: float, night: bool):
        self.img = img
        self.size = img.shape[0]
        light = np.array([light_x, -0.65, 0.75])
        self.light = [float(x) for x in light / np.linalg.norm(light)]
        self.night = night

    def _patch(self, cx: float, cy: float, rx: float, ry: float):
        n = self.size
        x0, x1 = max(0, int((cx - rx) * n) - 2), min(n, int((cx + rx) * n) + 3)
        y0, y1 = max(0, int((cy - ry) * n) - 2), min(n, int((cy + ry) * n) + 3)
        if x1 <= x0 or y1 <= y0:
            return None
        xs = ((np.arange(x0, x1) + 0.5) / n).astype(np.float32)
        ys = ((np.arange(y0, y1) + 0.5) / n).astype(np.float32)
        return (slice(y0, y1), slice(x0, x1)), xs[None, :], ys[:, None]

    def shape(self, kind: str, cx: float, cy: float, a: float, b: float, color, *, shading: str = "flat",
              outline: float = 0.0, outline_color=None, stripes: tuple | None = None,
              windows: tuple | None = None, alpha: float = 1.0, petals: tuple = (5, 0.0)):
        """Draw one shape centred at (cx, cy) with half-sizes (a, b); return (mean before, mean after) colour."""
        a, b = max(a, 0.5 / self.size), max(b, 0.5 / self.size)
        patch = self._patch(cx, cy, a, b)
        if patch is None:
            return None
        sl, xs, ys = patch
        dx, dy = (xs - cx) / a, (ys - cy) / b
        dx, dy = np.broadcast_arrays(dx, dy)
        if kind == "ellipse":
            f = np.sqrt(dx * dx + dy * dy)
        elif kind == "rect":
            f = np.maximum(np.abs(dx), np.abs(dy))
        elif kind == "diamond":
            f = np.abs(dx) + np.abs(dy)
        elif kind == "triangle":  # apex up
            f = np.maximum(np.abs(dy), np.abs(dx) * 2.0 / np.maximum(dy + 1.0, 1e-6))
        elif kind == "hull":  # wider at the top
            f = np.maximum(np.abs(dy), np.abs(dx) / (1.0 - 0.18 * (dy + 1.0)))
        elif kind == "petals":
            k, phase = petals
            r = np.sqrt(dx * dx + dy * dy)
            f = r / (0.72 + 0.28 * np.cos(k * np.arctan2(dy, dx) + phase))
        else:  # pragma: no cover - programming error
            raise ValueError(kind)
        px = 1.0 / (self.size * min(a, b))  # one pixel in units of f
        cover = np.clip((1.0 - f) / px + 0.5, 0.0, 1.0) * alpha
        if not cover.any():
            return None
        col = np.broadcast_to(np.asarray(color, dtype=np.float32), dx.shape + (3,)).copy()
        if stripes is not None:
            freq, angle, color2, strength = stripes
            s = np.sin(2 * np.pi * freq * (dx * math.cos(angle) + dy * math.sin(angle))) > 0
            col = _lerp(col, np.asarray(color2, dtype=np.float32), strength * s[..., None])
        if windows is not None:
            nx, ny, wcolor = windows
            u, v = (dx + 1) / 2 * nx, (dy + 1) / 2 * ny
            fu, fv = u - np.floor(u), v - np.floor(v)
            w = (fu > 0.25) & (fu < 0.75) & (fv > 0.25) & (fv < 0.7) & (np.abs(dx) < 0.9) & (np.abs(dy) < 0.92)
            col[w] = wcolor
        if shading == "sphere":
            fz = np.clip(f, 0.0, 1.0)
            nz = np.sqrt(1.0 - fz * fz)
            lam = np.clip(dx * self.light[0] + dy * self.light[1] + nz * self.light[2], 0.0, 1.0)
            col = col * (0.35 + 0.8 * lam)[..., None]
        elif shading == "flat":
            col = col * (1.0 + 0.18 * (dx * self.light[0] + dy * self.light[1]))[..., None]
        if outline > 0:
            oc = np.asarray((0.05, 0.05, 0.05) if outline_color is None else outline_color, dtype=np.float32)
            ring = np.clip((f - (1.0 - outline)) / px + 0.5, 0.0, 1.0)
            col = _lerp(col, oc, ring[..., None])
        if self.night and windows is None:
            col = col * 0.45
        region = self.img[sl]
        inside = cover > 0.5
        before = region[inside].mean(axis=0) if inside.any() else region.reshape(-1, 3).mean(axis=0)
        region[:] = _lerp(region, np.clip(col, 0.0, 1.2), cover[..., None])
        after = region[inside].mean(axis=0) if inside.any() else before
        return before, after

    def glow(self, cx: float, cy: float, radius: float, color, strength: float) -> None:
        patch = self._patch(cx, cy, 3 * radius, 3 * radius)
        if patch is None:
            return
        sl, xs, ys = patch
        r2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / (radius * radius)
        self.img[sl] += strength * np.exp(-r2)[..., None] * np.asarray(color, dtype=np.float32)

    def local_mean(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        patch = self._patch(cx, cy, rx, ry)
        if patch is None:
            return self.img.reshape(-1, 3).mean(axis=0)
        return self.img[patch[0]].reshape(-1, 3).mean(axis=0)


def _object_style(p: _Params, rng: np.random.Generator) -> dict:
    pattern = p["pattern"]
    strength = float(np.clip((pattern - 0.3) / 0.7, 0.0, 1.0)) * 0.6
    style: dict = {"outline": 0.1 if pattern > 0.5 else 0.0}
    if strength > 0:
        style["stripes"] = (float(rng.uniform(2.0, 5.0)), float(rng.uniform(0, np.pi)),
                            (0.95, 0.95, 0.9) if rng.random() < 0.5 else (0.08, 0.08, 0.1), strength)
    return style


def _draw_object(cv: _Canvas, kind: str, bx: float, by: float, h: float, color: np.ndarray,
                 style: dict, rng: np.random.Generator, night: bool) -> None:
    """One scene object with its base (bottom centre) at (bx, by) and height about h."""
    trunk = (0.35, 0.24, 0.14)
    ground_obj = kind not in ("boat", "buoy")
    if ground_obj:  # contact shadow
        cv.shape("ellipse", bx + 0.15 * h * cv.light[0], by, 0.38 * h, 0.06 * h, (0.0, 0.0, 0.0), alpha=0.3,
                 shading="none")
    if kind == "tree":
        cv.shape("rect", bx, by - 0.18 * h, 0.05 * h, 0.18 * h, trunk)
        cv.shape("ellipse", bx, by - 0.62 * h, 0.28 * h, 0.36 * h, color, shading="sphere", **style)
    elif kind == "pine":
        cv.shape("rect", bx, by - 0.08 * h, 0.04 * h, 0.08 * h, trunk)
        cv.shape("triangle", bx, by - 0.55 * h, 0.26 * h, 0.45 * h, color, **style)
    elif kind == "bush":
        cv.shape("ellipse", bx, by - 0.18 * h, 0.36 * h, 0.2 * h, color * 0.85, shading="sphere", **style)
    elif kind == "rock":
        grey = 0.5 * color + 0.5 * np.array([0.5, 0.48, 0.45])
        cv.shape("ellipse", bx, by - 0.14 * h, 0.34 * h, 0.17 * h, grey, shading="sphere", **style)
    elif kind == "cactus":
        cv.shape("rect", bx, by - 0.45 * h, 0.07 * h, 0.45 * h, color, **style)
        cv.shape("rect", bx + 0.11 * h, by - 0.45 * h, 0.06 * h, 0.03 * h, color)
        cv.shape("rect", bx + 0.16 * h, by - 0.58 * h, 0.04 * h, 0.15 * h, color)
    elif kind == "boat":
        cv.shape("hull", bx, by - 0.08 * h, 0.4 * h, 0.09 * h, color * 0.6 + 0.1, **style)
        cv.shape("rect", bx, by - 0.45 * h, 0.012 * h + 0.5 / cv.size, 0.3 * h, (0.2, 0.15, 0.1))
        cv.shape("triangle", bx + 0.14 * h, by - 0.48 * h, 0.14 * h, 0.3 * h, color, **style)
    elif kind == "buoy":
        cv.shape("ellipse", bx, by - 0.14 * h, 0.13 * h, 0.15 * h, color, shading="sphere",
                 stripes=(3.0, np.pi / 2, (0.95, 0.95, 0.95), 0.8), outline=style.get("outline", 0.0))
    elif kind == "tower":
        th = h * float(rng.uniform(0.9, 1.7))
        wcol = (1.0, 0.85, 0.45) if night else (0.15, 0.22, 0.35)
        cv.shape("rect", bx, by - th, 0.22 * h, th, color, windows=(4, max(3, int(th / h * 6)), wcol),
                 outline=style.get("outline", 0.0) * 0.5)
    elif kind == "house":
        cv.shape("rect", bx, by - 0.25 * h, 0.34 * h, 0.25 * h, color, windows=(3, 2, (0.2, 0.25, 0.35)),
                 **style)
        cv.shape("triangle", bx, by - 0.64 * h, 0.42 * h, 0.15 * h, (0.62, 0.22, 0.16))
    elif kind == "lamp":
        cv.shape("rect", bx, by - 0.4 * h, 0.015 * h + 0.5 / cv.size, 0.4 * h, (0.1, 0.1, 0.1))
        cv.glow(bx, by - 0.82 * h, 0.12 * h, (1.0, 0.8, 0.4), 0.6)
        cv.shape("ellipse", bx, by - 0.82 * h, 0.05 * h, 0.05 * h, (1.0, 0.95, 0.7), shading="none")
    elif kind == "flower":
        cv.shape("rect", bx, by - 0.3 * h, 0.02 * h + 0.5 / cv.size, 0.3 * h, (0.15, 0.45, 0.12))
        hue = np.clip(color + 0.18 * rng.standard_normal(3), 0.05, 1.0)
        cv.shape("petals", bx, by - 0.66 * h, 0.3 * h, 0.3 * h, hue, shading="sphere",
                 petals=(int(rng.integers(4, 8)), float(rng.uniform(0, 2 * np.pi))),
                 outline=style.get("outline", 0.0))
        cv.shape("ellipse", bx, by - 0.66 * h, 0.08 * h, 0.08 * h, (0.95, 0.8, 0.15), shading="sphere")
    elif kind == "fruit":
        cv.shape("ellipse", bx, by - 0.3 * h, 0.28 * h, 0.28 * h, color, shading="sphere", **style)
        cv.shape("ellipse", bx + 0.1 * h, by - 0.62 * h, 0.1 * h, 0.05 * h, (0.2, 0.5, 0.15))
    else:  # pragma: no cover - programming error
        raise ValueError(kind)


def _draw_salient(cv: _Canvas, p: _Params, horizon: float, rng: np.random.Generator) -> float:
    """Draw the salient object; return the measured colour contrast (object vs. what it covers)."""
    c, size, x = p.salient_contrast, p.salient_size, p.salient_x
    kind = p.salient_kind
    in_sky = kind in ("kite", "balloon")
    if in_sky:
        y = float(rng.uniform(0.1 + size, max(0.12 + size, horizon - size)))
    else:
        y = float(rng.uniform(horizon + 0.3 * (1 - horizon), 0.95 - 0.2 * size))
    cy = y if in_sky else y - size
    bg = cv.local_mean(x, cy, size, size)
    far = np.argsort(-((_VIVID - bg) ** 2).sum(axis=1), kind="stable")[:3]  # one of the 3 most contrasting
    vivid = _VIVID[int(far[int(rng.integers(3))])]
    color = bg + c * (vivid - bg)
    other = np.array((0.03, 0.03, 0.05)) if vivid.mean() > 0.5 else np.array((0.97, 0.97, 0.95))
    second = bg + c * (other - bg)
    night, cv.night = cv.night, False
    kw = dict(outline=0.14, outline_color=second, stripes=(2.5, float(rng.uniform(0, np.pi)), second, 0.9))
    if kind == "ball":
        cv.shape("ellipse", x + 0.15 * size * cv.light[0], y, 0.9 * size, 0.15 * size, (0.0, 0.0, 0.0),
                 alpha=0.3, shading="none")
        res = cv.shape("ellipse", x, y - size, size, size, color, shading="sphere", **kw)
    elif kind == "sign":
        cv.shape("rect", x, y - 0.6 * size, 0.05 * size + 0.5 / cv.size, 0.6 * size, (0.25, 0.25, 0.25))
        res = cv.shape("diamond", x, y - 1.6 * size, size, size, color, **kw)
    elif kind == "kite":
        cv.shape("rect", x + 0.3 * size, y + 1.3 * size, 0.3 / cv.size + 0.01 * size, 0.45 * size, second)
        res = cv.shape("diamond", x, y, 0.75 * size, size, color, **kw)
    else:  # balloon
        cv.shape("rect", x, y + 1.5 * size, 0.3 / cv.size + 0.01 * size, 0.6 * size, second)
        res = cv.shape("ellipse", x, y, 0.8 * size, size, color, shading="sphere", **kw)
    cv.night = night
    if res is None:
        return 0.0
    before, after = res
    return float(np.linalg.norm(after - before) / math.sqrt(3.0))


def _render(p: _Params, size: int) -> tuple[np.ndarray, float]:
    """Render one image: uint8 (size, size, 3) and the measured salient-object contrast."""
    cat = DEMO_CATEGORIES[p.cat]
    sub = cat.subs[p.sub]
    v = p.vector
    rng = np.random.default_rng(p.detail_seed)
    n = size  # shapes are anti-aliased analytically: no supersampling needed
    xs = ((np.arange(n) + 0.5) / n).astype(np.float32)
    X, Y = xs[None, :], xs[:, None]
    v = v.astype(np.float32)
    sky_top, sky_bottom = v[0:3], v[3:6]
    g_far, g_near, obj = v[6:9], v[9:12], v[12:15]
    horizon, wave, cloud, texture, tscale = p["horizon"], p["wave"], p["cloudiness"], p["texture"], p["texture_scale"]

    ph = [float(x) for x in rng.uniform(0, 2 * np.pi, 3)]
    hz = horizon + wave * (0.6 * np.sin(2 * np.pi * 1.3 * X + ph[0]) + 0.4 * np.sin(2 * np.pi * 3.1 * X + ph[1]))
    # sky: gradient + low-frequency colour noise + clouds (+ stars at night)
    t = np.clip(Y / np.maximum(hz, 1e-3), 0.0, 1.0)
    sky = _lerp(sky_top, sky_bottom, (t**0.8)[..., None])
    sky = sky + 0.035 * _noise(rng, n, 3, 3)
    cn = _noise(rng, n, 5)[..., 0] + 0.5 * _noise(rng, n, 11)[..., 0]
    cmask = np.clip((cn - (1.3 - 1.8 * cloud)) * 1.2, 0.0, 1.0) * (0.3 + 0.6 * cloud)
    ccol = sky_bottom * 0.3 + (0.22 if sub.night else 0.96) * 0.7
    sky = _lerp(sky, ccol, cmask[..., None])
    if sub.night:
        k = int(rng.integers(40, 90))
        sx, sy = rng.integers(0, n, k), (rng.random(k) * rng.random(k) * horizon * n).astype(int)
        sky[sy, sx] += rng.uniform(0.3, 0.9, k)[:, None]
    sky_cv = _Canvas(sky, p["light_x"], False)
    if sub.sky_object == "sun":
        sx, sy = float(rng.uniform(0.25, 0.75)), float(horizon - rng.uniform(0.05, 0.2))
        sky_cv.glow(sx, sy, 0.16, (1.0, 0.6, 0.3), 0.5)
        sky_cv.shape("ellipse", sx, sy, 0.07, 0.07, (1.0, 0.85, 0.5), shading="none")
    elif sub.sky_object == "moon":
        sx, sy = float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.12, max(0.14, horizon - 0.25)))
        sky_cv.glow(sx, sy, 0.12, (0.6, 0.65, 0.8), 0.35)
        sky_cv.shape("ellipse", sx, sy, 0.055, 0.055, (0.95, 0.95, 0.85), shading="none")
        sky_cv.shape("ellipse", sx + 0.015, sy - 0.01, 0.015, 0.012, (0.8, 0.8, 0.72), shading="none")

    # ground: gradient + textures by style + haze at the horizon
    g = np.clip((Y - hz) / np.maximum(1.0 - hz, 1e-3), 0.0, 1.0)
    ground = _lerp(g_far, g_near, g[..., None])
    grid = int(6 + 26 * tscale)
    tex = _noise(rng, n, grid)[..., 0] + 0.5 * _noise(rng, n, 2 * grid)[..., 0]
    ground = ground * (1.0 + 0.22 * texture * tex)[..., None]
    ground = ground + 0.03 * _noise(rng, n, 4, 3)
    if sub.style in ("water", "beach"):
        streak = np.sin(2 * np.pi * (18.0 * g**0.6 + 0.4 * _noise(rng, n, 6)[..., 0] + 0.0 * X))
        ground = ground + (0.05 + 0.05 * texture) * (streak > 0.7).astype(np.float32)[..., None]
        ground = _lerp(ground, sky_bottom, 0.25 * (1.0 - g)[..., None])
        if sub.style == "beach":
            shore = horizon + (1 - horizon) * (0.45 + 0.04 * np.sin(2 * np.pi * 1.7 * X + ph[2]))
            sand = _lerp(g_near, g_near * 0.85, g[..., None]) * (1.0 + 0.12 * tex)[..., None]
            foam = np.exp(-(((Y - shore) / 0.012) ** 2))[..., None]
            ground = np.where((Y > shore)[..., None], sand, ground)
            ground = _lerp(ground, np.array([0.97, 0.97, 0.95], dtype=np.float32), 0.7 * foam)
    elif sub.style == "street":
        road = np.abs(X - 0.5) < (0.04 + 0.42 * g)
        ground = np.where(road[..., None], ground * 0.7, ground)
        dash = (np.abs(X - 0.5) < (0.004 + 0.01 * g)) & (np.sin(2 * np.pi * 8 * g**0.5) > 0.2) & (g > 0.05)
        dash_col = np.array([0.85, 0.8, 0.5], dtype=np.float32) * (0.5 if sub.night else 1.0)
        ground = np.where(dash[..., None], dash_col, ground)
    elif sub.style == "lawn":
        ground = ground * (1.0 + 0.15 * texture * _noise(rng, n, 28)[..., 0])[..., None]
    haze = np.exp(-np.maximum(Y - hz, 0.0) / 0.06)
    ground = _lerp(ground, sky_bottom, (0.35 * haze)[..., None])
    cover = np.clip((Y - hz) * n + 0.5, 0.0, 1.0)[..., None]
    img = _lerp(sky, ground, cover)

    # objects, far to near
    cv = _Canvas(img, p["light_x"], sub.night)
    style = _object_style(p, rng)
    n_obj = int(round(p["n_objects"]))
    ox, osize = p["object_x"], p["object_size"]
    placed = []
    for _ in range(n_obj):
        bx = float(np.clip(ox + 0.22 * rng.standard_normal(), 0.04, 0.96))
        h_here = horizon + wave * (0.6 * math.sin(2 * np.pi * 1.3 * bx + ph[0])
                                   + 0.4 * math.sin(2 * np.pi * 3.1 * bx + ph[1]))
        depth = float(rng.uniform(0.02, 1.0) ** 1.5)
        if sub.style in ("water", "beach"):
            depth *= 0.4  # on the water, above the shore
        by = h_here + 0.01 + depth * (0.97 - h_here)
        scale = 0.45 + 0.9 * depth
        kind = sub.kinds[int(rng.integers(len(sub.kinds)))]
        color = np.clip(obj + 0.04 * rng.standard_normal(3), 0.0, 1.0)
        placed.append((by, kind, bx, osize * scale, color))
    for by, kind, bx, h, color in sorted(placed, key=lambda item: item[0]):
        _draw_object(cv, kind, bx, by, h, color, style, rng, sub.night)
    contrast = _draw_salient(cv, p, horizon, rng) if p.salient else 0.0

    # camera: vignette, exposure, downsample 2x, sensor noise
    img = cv.img * (1.0 - 0.5 * ((X - 0.5) ** 2 + (Y - 0.5) ** 2))[..., None]
    img = img * float(rng.uniform(0.95, 1.05))
    img = img + 0.008 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(np.clip(img, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8), contrast


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# the simulated experiment


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _simulate_observers(rng: np.random.Generator, logit_p: np.ndarray, fa_logit: np.ndarray, n_observers: int,
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
    hits = (rng.random((n_observers, n)) < _sigmoid(logit_p[None, :] + ability[:, None])) & seen
    fas = (rng.random((n_observers, n)) < _sigmoid(fa_logit[None, :] + fa_bias[:, None])) & seen
    half1 = np.empty((n_splits, n))
    half2 = np.empty((n_splits, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in range(n_splits):
            perm = rng.permutation(n_observers)
            for half, group in ((half1, perm[: n_observers // 2]), (half2, perm[n_observers // 2:])):
                views = seen[group].sum(axis=0)
                half[s] = np.where(views > 0, hits[group].sum(axis=0) / views, np.nan)
    return {"H": hits.sum(axis=0), "FA": fas.sum(axis=0), "n_resp": seen.sum(axis=0), "half1": half1,
            "half2": half2}


# ----------------------------------------------------------------------------------------------------------
# writing


def _fmt(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(int(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return repr(round(float(x), 10))
    return str(x)


def _write_csv(path: Path, header: list[str], rows: list[list], quote: bool = False) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        if quote:  # like MemCat's file: strings quoted, numbers not
            w = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
            w.writerow(header)
            for row in rows:
                w.writerow([float(x) if isinstance(x, (float, np.floating)) else
                            int(x) if isinstance(x, (int, np.integer)) else x for x in row])
        else:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(header)
            for row in rows:
                w.writerow([_fmt(x) for x in row])


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz like numpy.savez, but byte-identical across runs (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def _readme(seed: int, n_images: int, n_experience: int, n_observers: int, n_splits: int, size: int,
            stats: dict) -> str:
    m = DEMO_MODEL
    cats = ", ".join(f"{c.name} ({', '.join(s.name for s in c.subs)}; b_cat={c.offset:+.2f})"
                     for c in DEMO_CATEGORIES)
    return f"""memlens demo set (generator {GENERATOR} v{GENERATOR_VERSION}, memlens {__version__})
=====================================================================

THE MEMORABILITY SCORES IN THIS FOLDER ARE SIMULATED. They come from virtual observers in a simulated
repeat-detection memory game, NOT from human participants. Never report them as human data.

Made by memlens.data.make_demo_set(seed={seed}, n_images={n_images}, image_size={size},
n_experience={n_experience}, n_observers={n_observers}, n_splits={n_splits}).
The same arguments give byte-identical files.

Images: procedurally generated {size}x{size} scenes in 5 categories:
  {cats}.

Generative model of the true memorability p_i (no autoencoder is involved):
  logit p_i = b0 + b_dist * D_i + b_sal * S_i + b_cat[category] + e_i,   e_i ~ N(0, sigma_img^2)
  b0={m['b0']}, b_dist={m['b_dist']}, b_sal={m['b_sal']}, sigma_img={m['sigma_img']}
  D_i = distinctiveness: distance of the image's standardised hidden-parameter vector to the nearest other
        image of the set (colour triplets weighted 1/3 per channel), z-scored over the set.
  S_i = contrast (0..1) of the salient high-contrast object (ball, sign, kite, balloon); 0 if none
        (an image has one with probability {m['p_salient']}).

Simulated experiment: {n_observers} observers, each sees {m['view_fraction']:.0%} of the images twice.
  hit on the repeat:            P = sigmoid(logit p_i + a_j),             a_j ~ N(0, {m['sigma_obs_hit']}^2)
  false alarm on the first one: P = sigmoid({m['f0']} - {m['f_typ']} * D_i + f_j), f_j ~ N(0, {m['sigma_obs_fa']}^2)
  memorability_wo_fa_correction = H / n_resp;  memorability_w_fa_correction = (H - FA) / n_resp

Files
  memcat_image_data.csv    MemCat layout: one row per image, hits, false alarms, responses, both scores
  <category>/<subcategory>/demo_NNNN.jpg   the images (JPEG quality {JPEG_QUALITY})
  split_halves.npz         image, half1, half2: hit rates of {n_splits} random observer splits (n_splits x N)
  demo_truth.csv           ground truth: hidden parameters, D, S, true p, ... per image
  experience/exp_NNNN.jpg  {n_experience} further images from the same generator, no scores (visual experience)
  experience_truth.csv     hidden parameters of the experience images
  demo_config.json         the arguments and model coefficients

Measured on this set: split-half Spearman (mean over splits) = {stats['split_half_spearman']:.3f};
Spearman(true p, FA-corrected score) = {stats['spearman_truth_corrected']:.3f}.
"""


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok])[0])


def _prepare_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder; choose another place for the demo set")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise DataError(f"{root}: folder exists and is not empty; choose an empty or new folder, "
                            "or pass overwrite=True to replace an earlier demo set")
        if not (root / MARKER_FILE).is_file():
            raise DataError(f"{root}: not replaced even with overwrite=True: it is not empty and has no "
                            f"{MARKER_FILE}, so it does not look like a memlens demo set")


def _validate_args(n_images: int, seed: int, image_size: int, n_experience: int, n_observers: int,
                   n_splits: int) -> None:
    problems = []
    if not isinstance(n_images, (int, np.integer)) or n_images < 2:
        problems.append(f"n_images must be an integer >= 2, got {n_images!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        problems.append(f"image_size must be an integer >= 16, got {image_size!r}")
    if not isinstance(n_experience, (int, np.integer)) or n_experience < 0:
        problems.append(f"n_experience must be an integer >= 0, got {n_experience!r}")
    if not isinstance(n_observers, (int, np.integer)) or n_observers < 2:
        problems.append(f"n_observers must be an integer >= 2, got {n_observers!r}")
    if not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        problems.append(f"n_splits must be an integer >= 1, got {n_splits!r}")
    if problems:
        raise ConfigError("make_demo_set: " + "; ".join(problems))


def make_demo_set(root: str | os.PathLike, n_images: int = 240, seed: int = 0, image_size: int = 96,
                  n_experience: int = 160, n_observers: int = 200, n_splits: int = 25,
                  overwrite: bool = False) -> Path:
    """Generate the synthetic demo set with SIMULATED memorability scores, in the ``memcat`` layout.

    Parameters
    ----------
    root : path
        Folder to create. It must not exist or be empty; with ``overwrite=True`` an earlier demo set (a
        folder holding ``demo_config.json``) is replaced. The set is built in a temporary sibling folder
        and moved into place only when complete.
    n_images : int
        Images with scores, spread evenly over 5 categories and their subcategories.
    seed : int
        Seed of everything; the same arguments give byte-identical files.
    image_size : int
        Side of the square images in pixels.
    n_experience : int
        Further unscored images from the same generator, written to ``root/experience/``.
    n_observers : int
        Virtual observers in the simulated repeat-detection game (each sees 40% of the images).
    n_splits : int
        Random splits of the observers into halves written to ``root/split_halves.npz``.
    overwrite : bool
        Replace an earlier demo set at ``root``.

    Returns
    -------
    Path
        ``root``.

    Raises
    ------
    DataError
        ``root`` is a file, or a non-empty folder that may not be replaced.
    ConfigError
        An argument is out of range.
    """
    _validate_args(n_images, seed, image_size, n_experience, n_observers, n_splits)
    root = Path(root).expanduser().absolute()
    _prepare_root(root, overwrite)
    t0 = time.perf_counter()
    ss_params, ss_exp, ss_noise, ss_obs = np.random.SeedSequence([GENERATOR_VERSION, int(seed)]).spawn(4)

    # hidden parameters and the true memorability
    rng = np.random.default_rng(ss_params)
    params = [_sample_params(rng, c, s) for c, s in _assignments(n_images)]
    vectors = np.stack([p.vector for p in params])
    dist_raw = parameter_distinctiveness(vectors)
    sd = dist_raw.std()
    dist = (dist_raw - dist_raw.mean()) / (sd if sd > 0 else 1.0)
    sal = np.array([p.salient_contrast for p in params])
    cat_off = np.array([DEMO_CATEGORIES[p.cat].offset for p in params])
    noise = np.random.default_rng(ss_noise).normal(0.0, DEMO_MODEL["sigma_img"], n_images)
    logit_p = DEMO_MODEL["b0"] + DEMO_MODEL["b_dist"] * dist + DEMO_MODEL["b_sal"] * sal + cat_off + noise
    p_true = _sigmoid(logit_p)
    fa_logit = DEMO_MODEL["f0"] - DEMO_MODEL["f_typ"] * dist
    sim = _simulate_observers(np.random.default_rng(ss_obs), logit_p, fa_logit, n_observers, n_splits)
    exp_rng = np.random.default_rng(ss_exp)
    exp_params = [_sample_params(exp_rng, c, s) for c, s in _assignments(n_experience)]
    exp_params = [exp_params[i] for i in exp_rng.permutation(n_experience)]

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        ids, files, measured = [], [], []
        for i, p in enumerate(params):
            cat = DEMO_CATEGORIES[p.cat]
            name = f"demo_{i + 1:04d}.jpg"
            rel = f"{cat.name}/{cat.subs[p.sub].name}/{name}"
            arr, contrast = _render(p, image_size)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(_jpeg_bytes(arr))
            ids.append(rel)
            files.append(name)
            measured.append(contrast)
        (tmp / "experience").mkdir()
        for i, p in enumerate(exp_params):
            arr, _ = _render(p, image_size)
            (tmp / "experience" / f"exp_{i + 1:04d}.jpg").write_bytes(_jpeg_bytes(arr))

        H, FA, n_resp = sim["H"], sim["FA"], sim["n_resp"]
        with np.errstate(invalid="ignore", divide="ignore"):
            wo = np.where(n_resp > 0, H / n_resp, np.nan)
            w = np.where(n_resp > 0, (H - FA) / n_resp, np.nan)
        rows = []
        for i, p in enumerate(params):
            cat = DEMO_CATEGORIES[p.cat]
            sub = cat.subs[p.sub].name
            rows.append([i + 1, files[i], cat.name, sub, image_size, image_size, SOURCE, sub, 1,
                         int(H[i]), int(FA[i]), int(n_resp[i]), float(wo[i]), float(w[i])])
        _write_csv(tmp / "memcat_image_data.csv", list(MEMCAT_COLUMNS), rows, quote=True)

        truth_header = ["image_id", "image_file", "category", "subcategory", *PARAM_COLUMNS, "atypicality",
                        "salient", "salient_kind", "salient_contrast", "salient_size", "salient_x",
                        "salient_contrast_measured", "distinctiveness_raw", "distinctiveness",
                        "category_offset", "image_noise", "logit_p", "p_true", "fa_prob"]
        truth_rows = []
        for i, p in enumerate(params):
            cat = DEMO_CATEGORIES[p.cat]
            truth_rows.append([ids[i], files[i], cat.name, cat.subs[p.sub].name, *p.vector, p.atypicality,
                               p.salient, p.salient_kind if p.salient else "", p.salient_contrast,
                               p.salient_size if p.salient else 0.0, p.salient_x if p.salient else 0.0,
                               measured[i], dist_raw[i], dist[i], cat_off[i], noise[i], logit_p[i], p_true[i],
                               _sigmoid(fa_logit[i])])
        _write_csv(tmp / "demo_truth.csv", truth_header, truth_rows)
        exp_rows = [[f"experience/exp_{i + 1:04d}.jpg", DEMO_CATEGORIES[p.cat].name,
                     DEMO_CATEGORIES[p.cat].subs[p.sub].name, *p.vector] for i, p in enumerate(exp_params)]
        _write_csv(tmp / "experience_truth.csv", ["image_id", "category", "subcategory", *PARAM_COLUMNS],
                   exp_rows)
        _write_npz(tmp / "split_halves.npz", {"image": np.array(ids), "half1": sim["half1"],
                                               "half2": sim["half2"]})

        split_r = [_spearman(sim["half1"][s], sim["half2"][s]) for s in range(n_splits)]
        stats = {
            "split_half_spearman": float(np.mean(finite)) if (finite := [r for r in split_r if math.isfinite(r)])
            else float("nan"),
            "spearman_truth_corrected": _spearman(p_true, w),
            "spearman_truth_uncorrected": _spearman(p_true, wo),
        }
        config = {
            "generator": GENERATOR, "generator_version": GENERATOR_VERSION, "memlens_version": __version__,
            "scores": "SIMULATED by virtual observers, not human",
            "arguments": {"n_images": n_images, "seed": seed, "image_size": image_size,
                          "n_experience": n_experience, "n_observers": n_observers, "n_splits": n_splits},
            "model": DEMO_MODEL,
            "categories": {c.name: {"offset": c.offset, "subcategories": [s.name for s in c.subs]}
                           for c in DEMO_CATEGORIES},
            "param_columns": list(PARAM_COLUMNS),
            "measured": {k: round(v, 6) if math.isfinite(v) else None for k, v in stats.items()},
        }
        (tmp / MARKER_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.txt").write_text(
            _readme(seed, n_images, n_experience, n_observers, n_splits, image_size, stats), encoding="utf-8")
        _install(tmp, root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("demo set: %d images + %d experience images written to %s in %.1f s (split-half Spearman "
                "%.3f; scores are simulated)", n_images, n_experience, root, time.perf_counter() - t0,
                stats["split_half_spearman"])
    return root


def _install(tmp: Path, root: Path, overwrite: bool) -> None:
    """Move the finished set from ``tmp`` to ``root``, replacing an earlier demo set only when allowed."""
    _prepare_root(root, overwrite)  # again: the folder may have changed while we worked
    os.chmod(tmp, 0o755)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if not root.exists():
        os.replace(tmp, root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
    old.rmdir()
    os.replace(root, old)
    try:
        os.replace(tmp, root)
    except BaseException:
        os.replace(old, root)
        raise
    shutil.rmtree(old, ignore_errors=True)
