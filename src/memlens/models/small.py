"""``small``: a compact convolutional autoencoder for the demo, tests and quick CPU experiments.

Encoder: three stride-2 3x3 conv/BN/ReLU stages (``width``, 2x, 4x channels) and a 1x1 projection to
``latent_channels``; 64 px in -> (latent_channels, 8, 8). Decoder: the mirror (1x1, then three x2
nearest up-sampling + 3x3 conv/BN/ReLU blocks) and a 3x3 conv to RGB; sigmoid output.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from .base import Autoencoder, BackboneSpec

__all__ = ["SmallAutoencoder", "SPEC"]

SPEC = BackboneSpec(
    name="small",
    input_size=64,
    latent_shape=(32, 8, 8),
    weights="none (trained from scratch; use pretrain mode for visual experience)",
    license="BSD-3-Clause (memlens code; no third-party weights)",
    description="Small conv autoencoder (3 stride-2 stages, ~0.12M parameters) for demos, tests and CPUs.",
    size_multiple=8,
    inits=("scratch",),
    default_init="scratch",
    normalize="imagenet",
    input_sizes=(16, 256),
)


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(*_cbr(cin, cout))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.body(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SmallAutoencoder(Autoencoder):
    """See the module docstring. ``width``: channels of the first stage; ``latent_channels``: C of z."""

    def __init__(self, spec: BackboneSpec, config: dict[str, Any], *, width: int = 24, latent_channels: int = 32,
                 normalize: str = "imagenet"):
        super().__init__(spec, config, normalize=normalize)
        w = int(width)
        self.encoder = nn.Sequential(
            *_cbr(3, w, stride=2), *_cbr(w, 2 * w, stride=2), *_cbr(2 * w, 4 * w, stride=2),
            nn.Conv2d(4 * w, latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            *_cbr(latent_channels, 4 * w, k=1),
            _Up(4 * w, 2 * w), _Up(2 * w, w), _Up(w, w),
            nn.Conv2d(w, 3, 3, padding=1),
        )
