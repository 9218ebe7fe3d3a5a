"""``vgg16``: the paper's VGG16 autoencoder.

Encoder: the convolutional part of VGG16 with batch norm (13 conv 3x3 + BN + ReLU layers, 5 max pools;
224 px -> 512 x 7 x 7), laid out exactly like torchvision's ``vgg16_bn().features`` (same indices), so
torchvision's ImageNet weights map one to one. Decoder: the mirror, five blocks, each a 2x2 stride-2
transposed convolution followed by (BN, ReLU, 3x3 conv) layers (3, 3, 3, 2, 2 of them; 512 -> 512 -> 256
-> 128 -> 64 -> 3 channels), then a sigmoid -- the architecture of the imagenet-autoencoder VGG16 used in
the paper, so its published checkpoints load (keys mapped explicitly, see :func:`imagenet_autoencoder_mapping`).

Input normalisation: none for weights trained from pixels in [0, 1] (scratch, imagenet-autoencoder
checkpoints), ImageNet mean/std when the encoder starts from torchvision's classifier (``init="imagenet"``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .base import Autoencoder, BackboneSpec
from .checkpoint import load_mapped_state_dict, read_state_dict

__all__ = [
    "VGG16Autoencoder",
    "SPEC",
    "VGG16_BN_URL",
    "WEIGHTS_ENV",
    "ENCODER_STAGES",
    "DECODER_PLAN",
    "torchvision_mapping",
    "imagenet_autoencoder_mapping",
]

log = logging.getLogger(__name__)

VGG16_BN_URL = "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"
WEIGHTS_ENV = "MEMLENS_VGG16_BN_WEIGHTS"

#: conv layers per encoder stage (each stage ends with a 2x2 max pool) and their widths
ENCODER_STAGES: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
#: decoder blocks: (in channels, out channels, number of BN/ReLU/conv layers)
DECODER_PLAN: tuple[tuple[int, int, int], ...] = ((512, 512, 3), (512, 256, 3), (256, 128, 3), (128, 64, 2), (64, 3, 2))

SPEC = BackboneSpec(
    name="vgg16",
    input_size=224,
    latent_shape=(512, 7, 7),
    weights=(
        "scratch; or encoder from torchvision's VGG16-BN ImageNet classifier (vgg16_bn-6c64b313.pth: a local "
        f"file via weights=PATH or ${WEIGHTS_ENV}, or downloaded from {VGG16_BN_URL} with a hash check when "
        "download=True); or a whole imagenet-autoencoder / memlens checkpoint (init=PATH)"
    ),
    license=(
        "architecture: memlens code (BSD-3-Clause); torchvision weights: BSD-3-Clause code, trained on "
        "ImageNet (non-commercial research terms); imagenet-autoencoder checkpoints: their authors' terms"
    ),
    description="The paper's VGG16-BN autoencoder: 13 conv + 5 pools (224 -> 512x7x7), mirrored decoder.",
    size_multiple=32,
    inits=("scratch", "imagenet"),
    default_init="scratch",
    normalize="none",
    input_sizes=(32, 1024),
)


class _UpBlock(nn.Module):
    """2x2 stride-2 transposed conv, then ``n`` x (BN, ReLU, 3x3 conv); the last conv changes the width."""

    conv_bn_pairs = (("up", "layers.0"),)  # for memlens.models.base.fold_batchnorm

    def __init__(self, cin: int, cout: int, n: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, kernel_size=2, stride=2)
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                       nn.Conv2d(cin, cout if i == n - 1 else cin, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.up(x))


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.conv_positions: list[int] = []  # index in ``features`` of each of the 13 convs (BN follows)
        cin = 3
        for n, width in ENCODER_STAGES:
            for _ in range(n):
                self.conv_positions.append(len(layers))
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                cin = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_UpBlock(a, b, n) for a, b, n in DECODER_PLAN])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(z)  # logits; Autoencoder.decode applies the sigmoid


_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_mapping(encoder: _Encoder) -> dict[str, str]:
    """Our encoder keys -> torchvision ``vgg16_bn`` keys (``features.N.*``), one entry per tensor."""
    mapping: dict[str, str] = {}
    for p in encoder.conv_positions:
        for k in ("weight", "bias"):
            mapping[f"features.{p}.{k}"] = f"features.{p}.{k}"
        for k in _BN_KEYS:
            mapping[f"features.{p + 1}.{k}"] = f"features.{p + 1}.{k}"
    return mapping


def imagenet_autoencoder_mapping(model: VGG16Autoencoder) -> dict[str, str]:
    """Our keys -> the imagenet-autoencoder ``VGGAutoEncoder`` keys (after removing ``module.``).

    Theirs: ``encoder.conv{s}.{j} EncoderLayer.layer.{0: conv, 1: BN}.*`` and
    ``decoder.conv{b}.0 UpSampling.*`` / ``decoder.conv{b}.{j+1} DecoderLayer.layer.{0: BN, 2: conv}.*``.
    """
    mapping: dict[str, str] = {}
    ci = 0
    for s, (n, _) in enumerate(ENCODER_STAGES, start=1):
        for j in range(n):
            p = model.encoder.conv_positions[ci]
            for k in ("weight", "bias"):
                mapping[f"encoder.features.{p}.{k}"] = f"encoder.conv{s}.{j} EncoderLayer.layer.0.{k}"
            for k in _BN_KEYS:
                mapping[f"encoder.features.{p + 1}.{k}"] = f"encoder.conv{s}.{j} EncoderLayer.layer.1.{k}"
            ci += 1
    for b, (_, _, n) in enumerate(DECODER_PLAN, start=1):
        for k in ("weight", "bias"):
            mapping[f"decoder.blocks.{b - 1}.up.{k}"] = f"decoder.conv{b}.0 UpSampling.{k}"
        for j in range(n):
            for k in _BN_KEYS:
                mapping[f"decoder.blocks.{b - 1}.layers.{3 * j}.{k}"] = f"decoder.conv{b}.{j + 1} DecoderLayer.layer.0.{k}"
            for k in ("weight", "bias"):
                mapping[f"decoder.blocks.{b - 1}.layers.{3 * j + 2}.{k}"] = f"decoder.conv{b}.{j + 1} DecoderLayer.layer.2.{k}"
    return mapping


class VGG16Autoencoder(Autoencoder):
    """The paper's VGG16-BN autoencoder (see the module docstring)."""

    def __init__(self, spec: BackboneSpec, config: dict[str, Any], *, normalize: str = "none"):
        super().__init__(spec, config, normalize=normalize)
        self.encoder = _Encoder()
        self.decoder = _Decoder()

    def load_torchvision_encoder(self, source: str | os.PathLike | None = None, *, download: bool = False) -> dict[str, Any]:
        """Initialise the encoder from torchvision's VGG16-BN ImageNet state dict.

        ``source``: a local file (else ``$MEMLENS_VGG16_BN_WEIGHTS``); with neither, the official URL is
        fetched through ``torch.hub`` with its hash checked -- only when ``download=True``.
        The classifier (``classifier.*``) is ignored; every ``features.N.*`` tensor must load.
        """
        path = source or os.environ.get(WEIGHTS_ENV) or None
        if path is not None:
            sd = read_state_dict(Path(path))
            origin = str(path)
        elif download:
            try:
                raw = torch.hub.load_state_dict_from_url(VGG16_BN_URL, map_location="cpu", progress=False,
                                                         check_hash=True, weights_only=True)
            except Exception as exc:  # network or hash failures
                raise CheckpointError(f"could not fetch the VGG16-BN ImageNet weights from {VGG16_BN_URL}: {exc}") from None
            sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in raw.items()}
            origin = VGG16_BN_URL
        else:
            raise ConfigError(
                "vgg16 init='imagenet' needs torchvision's VGG16-BN ImageNet weights (vgg16_bn-6c64b313.pth): "
                f"pass weights=PATH, set ${WEIGHTS_ENV}, or allow the download from {VGG16_BN_URL} "
                "(download=True; CLI: --download-weights)"
            )
        mapping = torchvision_mapping(self.encoder)
        report = load_mapped_state_dict(self.encoder, sd, mapping, what=f"VGG16-BN ImageNet weights ({origin})",
                                        ignore=("classifier.",))
        report["path"] = origin
        return report

    def foreign_mapping(self, source: Mapping[str, torch.Tensor]) -> dict[str, str] | None:
        """Key mapping for a foreign whole-autoencoder state dict (imagenet-autoencoder), else None."""
        if any(k.startswith("encoder.conv1.") for k in source):
            return imagenet_autoencoder_mapping(self)
        return None

