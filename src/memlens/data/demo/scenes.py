"""What a demo scene is made of: the categories and subcategories (prototype colours, shapes, object
kinds), the hidden generative parameters of an image (:data:`PARAM_COLUMNS`) and how they are drawn, the
coefficients of the generative model (:data:`DEMO_MODEL`), and the parameter-space distinctiveness ``D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEMO_MODEL",
    "DEMO_CATEGORIES",
    "PARAM_COLUMNS",
    "RGB",
    "Category",
    "Subcategory",
    "SceneParams",
    "assignments",
    "sample_params",
    "parameter_distinctiveness",
]

#: Coefficients of the generative model (see :mod:`memlens.data.demo` and docs/demo-set.md).
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

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Subcategory:
    """A subcategory's prototype: ground style, colours, object kinds and scene layout."""

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
class Category:
    """A category: its memorability offset ``b_cat`` and its subcategories."""

    name: str
    offset: float  # b_cat, logit scale
    subs: tuple[Subcategory, ...]


DEMO_CATEGORIES: tuple[Category, ...] = (
    Category("landscape", -0.50, (
        Subcategory("meadow", "land",
                    (0.28, 0.48, 0.85), (0.70, 0.82, 0.95), (0.40, 0.58, 0.28), (0.20, 0.40, 0.12),
                    (0.16, 0.42, 0.16), ("tree", "bush", "rock"), 0.45, 0.035, 0.5, 0.5, 3.0, 0.22, 0.2),
        Subcategory("desert", "land",
                    (0.42, 0.62, 0.90), (0.92, 0.88, 0.78), (0.88, 0.72, 0.48), (0.76, 0.55, 0.30),
                    (0.40, 0.55, 0.25), ("cactus", "rock"), 0.50, 0.07, 0.15, 0.3, 1.5, 0.18, 0.3),
        Subcategory("snowfield", "land",
                    (0.52, 0.60, 0.72), (0.86, 0.88, 0.91), (0.90, 0.92, 0.96), (0.78, 0.83, 0.90),
                    (0.14, 0.30, 0.22), ("pine", "rock"), 0.42, 0.05, 0.7, 0.2, 2.5, 0.2, 0.1),
    )),
    Category("seascape", -0.15, (
        Subcategory("beach", "beach",
                    (0.22, 0.52, 0.90), (0.76, 0.88, 0.98), (0.12, 0.45, 0.65), (0.92, 0.82, 0.62),
                    (0.85, 0.30, 0.25), ("buoy", "boat"), 0.42, 0.0, 0.3, 0.3, 1.5, 0.12, 0.6),
        Subcategory("open_sea", "water",
                    (0.34, 0.54, 0.80), (0.80, 0.85, 0.90), (0.12, 0.32, 0.50), (0.05, 0.20, 0.38),
                    (0.90, 0.90, 0.88), ("boat", "buoy"), 0.48, 0.0, 0.55, 0.4, 1.2, 0.14, 0.4),
        Subcategory("sunset", "water",
                    (0.30, 0.18, 0.45), (0.98, 0.62, 0.32), (0.55, 0.30, 0.35), (0.18, 0.10, 0.22),
                    (0.15, 0.10, 0.12), ("boat",), 0.55, 0.0, 0.35, 0.3, 1.0, 0.14, 0.2, "sun"),
    )),
    Category("city", 0.20, (
        Subcategory("towers", "street",
                    (0.40, 0.60, 0.86), (0.80, 0.85, 0.90), (0.46, 0.46, 0.49), (0.30, 0.30, 0.33),
                    (0.55, 0.62, 0.70), ("tower",), 0.72, 0.0, 0.35, 0.25, 4.0, 0.16, 0.6),
        Subcategory("houses", "street",
                    (0.45, 0.66, 0.90), (0.84, 0.88, 0.92), (0.50, 0.55, 0.45), (0.36, 0.42, 0.30),
                    (0.82, 0.70, 0.52), ("house",), 0.62, 0.0, 0.4, 0.35, 3.0, 0.2, 0.5),
    )),
    Category("night", 0.0, (
        Subcategory("moonlit", "land",
                    (0.02, 0.03, 0.12), (0.12, 0.16, 0.32), (0.10, 0.13, 0.16), (0.03, 0.04, 0.06),
                    (0.05, 0.07, 0.08), ("pine", "tree"), 0.60, 0.05, 0.3, 0.25, 2.5, 0.22, 0.1,
                    "moon", True),
        Subcategory("city_lights", "street",
                    (0.04, 0.03, 0.14), (0.45, 0.25, 0.30), (0.14, 0.12, 0.16), (0.05, 0.05, 0.07),
                    (0.20, 0.20, 0.26), ("tower", "lamp"), 0.70, 0.0, 0.2, 0.2, 3.5, 0.16, 0.6, None, True),
    )),
    Category("garden", 0.35, (
        Subcategory("flowers", "lawn",
                    (0.40, 0.62, 0.90), (0.80, 0.88, 0.95), (0.32, 0.55, 0.22), (0.14, 0.36, 0.10),
                    (0.90, 0.30, 0.45), ("flower",), 0.22, 0.03, 0.3, 0.7, 5.0, 0.3, 0.3),
        Subcategory("orchard", "lawn",
                    (0.45, 0.65, 0.88), (0.85, 0.88, 0.90), (0.45, 0.58, 0.25), (0.28, 0.42, 0.14),
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

_SALIENT_KINDS = ("ball", "sign", "kite", "balloon")


@dataclass
class SceneParams:
    """The hidden parameters of one image (``vector``, in the order of :data:`PARAM_COLUMNS`), its
    category and subcategory indices, its salient object, and the seed of its rendering details."""

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


def assignments(n: int) -> list[tuple[int, int]]:
    """(category, subcategory) indices for n images: categories as equal as possible, then subcategories."""
    out: list[tuple[int, int]] = []
    n_cat = len(DEMO_CATEGORIES)
    for c, cat in enumerate(DEMO_CATEGORIES):
        n_c = n // n_cat + (1 if c < n % n_cat else 0)
        n_sub = len(cat.subs)
        for s in range(n_sub):
            out += [(c, s)] * (n_c // n_sub + (1 if s < n_c % n_sub else 0))
    return out


def sample_params(rng: np.random.Generator, c: int, s: int) -> SceneParams:
    """Draw the hidden parameters of one image of subcategory ``s`` of category ``c``."""
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
    return SceneParams(
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
