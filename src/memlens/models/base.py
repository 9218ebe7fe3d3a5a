"""The autoencoder base class and the backbone description (:class:`BackboneSpec`).

Every autoencoder takes images as float32 RGB in [0, 1], shape (N, 3, H, W), normalises them inside
(``normalize``: ImageNet mean/std for ImageNet-pretrained encoders, none for the paper's VGG16 trained from
pixels), and reconstructs images in [0, 1] through a final sigmoid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "BackboneSpec",
    "Autoencoder",
    "NORMALIZATIONS",
    "check_image_range",
    "RANGE_TOLERANCE",
    "fold_batchnorm",
    "fold_conv_bn_",
]

log = logging.getLogger(__name__)

#: name -> (mean, std) applied inside the model to images in [0, 1]
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]] | None] = {
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # TensorFlow EfficientNet-Lite preprocessing: (x * 255 - 127) / 128
    "lite": ((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3),
}

#: how far outside [0, 1] an input may stray (float rounding of resampling) before it is refused
RANGE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class BackboneSpec:
    """What a registered backbone is: its input contract, latent, weights and their licence.

    Attributes
    ----------
    name : registry name (``create_autoencoder(name)``).
    input_size : default square input size in pixels.
    latent_shape : (C, h, w) of the latent at ``input_size``.
    weights : where pretrained weights come from (provenance), or that there are none.
    license : licence of those weights.
    description : one line.
    size_multiple : input sizes must be multiples of this (the total down-sampling factor).
    inits : the ``init`` values it accepts besides a checkpoint path.
    default_init : the ``init`` used when none is given on the command line.
    normalize : default input normalisation (a key of :data:`NORMALIZATIONS`).
    """

    name: str
    input_size: int
    latent_shape: tuple[int, int, int]
    weights: str
    license: str
    description: str
    size_multiple: int = 32
    inits: tuple[str, ...] = ("scratch",)
    default_init: str = "scratch"
    normalize: str = "imagenet"
    input_sizes: tuple[int, int] = (32, 1024)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of the spec."""
        d = asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        d["inits"] = list(self.inits)
        d["input_sizes"] = list(self.input_sizes)
        d["extra"] = dict(self.extra)
        return d


def check_image_range(x: torch.Tensor, what: str = "images") -> None:
    """Raise ``ValueError`` naming the observed min/max unless ``x`` is a float image batch in [0, 1].

    This synchronises with the device (it reads two numbers); training loops validate each image once
    when it is loaded and call the model with ``check=False``.
    """
    if not torch.is_tensor(x):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{what} must be floating point in [0, 1], got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{what} must have shape (N, 3, H, W), got {tuple(x.shape)}")
    if x.numel() == 0:
        return
    if x.is_cuda and torch.cuda.is_current_stream_capturing():  # values cannot be read inside a CUDA graph
        return
    lo, hi = torch.aminmax(x.detach())
    lo_v, hi_v = float(lo), float(hi)
    if not (lo_v >= -RANGE_TOLERANCE and hi_v <= 1.0 + RANGE_TOLERANCE):  # also catches NaN
        raise ValueError(
            f"{what} must be RGB in [0, 1]; observed min {lo_v:.6g}, max {hi_v:.6g} "
            "(divide 8-bit images by 255; do not pass ImageNet-normalised tensors, models normalise inside)"
        )


class Autoencoder(nn.Module):
    """An encoder/decoder pair with the memlens input contract.

    Subclasses set ``self.encoder`` and ``self.decoder`` (modules) and call ``super().__init__(spec,
    config, normalize)``. ``encode(x)`` maps images in [0, 1] to the latent (N, C, h, w); ``decode(z)``
    maps a latent to images in [0, 1]; ``forward(x) = decode(encode(x))``.

    Attributes
    ----------
    spec : BackboneSpec
    config : dict of the keyword arguments that rebuild this model with ``create_autoencoder``.
    """

    encoder: nn.Module
    decoder: nn.Module

    def __init__(self, spec: BackboneSpec, config: dict[str, Any], normalize: str = "imagenet"):
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {sorted(NORMALIZATIONS)}, got {normalize!r}")
        self.spec = spec
        self.config = dict(config)
        self.normalize = normalize
        norm = NORMALIZATIONS[normalize]
        if norm is None:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean, std = norm
        # non-persistent: the normalisation is part of the config, not of the weights
        self.register_buffer("_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # -- the input contract -------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor, check: bool) -> torch.Tensor:
        if check:
            check_image_range(x)
            m = self.spec.size_multiple
            if x.shape[-1] % m or x.shape[-2] % m:
                raise ValueError(
                    f"{self.spec.name} needs image sides that are multiples of {m}; got "
                    f"{tuple(x.shape[-2:])}"
                )
        if self.normalize == "none":
            return x
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def encode(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] -> latent (N, C, h, w)."""
        return self.encoder(self._prepare(x, check))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (N, C, h, w) -> reconstructed images (N, 3, H, W) in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Reconstruct images: ``decode(encode(x))``."""
        return self.decode(self.encode(x, check=check))

    # -- helpers used by training -------------------------------------------------------------------
    def latent_shape(self, size: int | None = None) -> tuple[int, int, int]:
        """Latent (C, h, w) for a square input of ``size`` pixels (default: the configured size)."""
        size = int(size or self.config.get("input_size") or self.spec.input_size)
        c = self.spec.latent_shape[0]
        h = size // self.spec.size_multiple
        return (c, h, h)

    def batchnorm_layers(self) -> list[nn.modules.batchnorm._BatchNorm]:
        """All batch-norm layers (encoder and decoder)."""
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, normalize={self.normalize!r}, config={self.config!r}"


# -- inference copies ------------------------------------------------------------------------------------

#: modules whose ``forward`` applies ``bn`` straight to ``conv``'s output may declare the pairs of attribute paths
#: (``(("conv", "bn"),)``; a path may index a Sequential: ``"layers.0"``) that :func:`fold_batchnorm` folds


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)  # type: ignore[index]
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    *head, last = path.split(".")
    for part in head:
        module = module[int(part)] if part.isdigit() else getattr(module, part)  # type: ignore[index]
    if last.isdigit():
        module[int(last)] = value  # type: ignore[index]
    else:
        setattr(module, last, value)


def _foldable(conv: Any, bn: Any) -> bool:
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        return False
    if isinstance(conv, nn.ConvTranspose2d):
        return conv.groups == 1 and conv.out_channels == bn.num_features
    return isinstance(conv, nn.Conv2d) and conv.out_channels == bn.num_features


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(parent, conv path, bn path)`` of every batch norm applied directly to a convolution's output."""
    out = []
    for parent in model.modules():
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for a, b in zip(names, names[1:], strict=False):
                if _foldable(parent._modules[a], parent._modules[b]):
                    out.append((parent, a, b))
        for a, b in getattr(type(parent), "conv_bn_pairs", ()):
            try:
                if _foldable(_get(parent, a), _get(parent, b)):
                    out.append((parent, a, b))
            except (AttributeError, IndexError):
                continue
    return out


@torch.no_grad()
def fold_conv_bn_(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    """Fold the eval-mode batch norm ``bn`` into ``conv`` (in place): afterwards ``conv(x)`` equals ``bn(conv(x))``
    to float rounding; the caller replaces ``bn`` with an identity. The new bias is frozen (inference only)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    view = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    conv.weight.mul_(scale.reshape(view).to(conv.weight.dtype))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, int]:
    """``model`` with every frozen batch norm that directly follows a convolution (or a transposed convolution)
    folded into it: ``(model, number folded)``. By default an inference copy (``(model, 0)`` itself when there is
    nothing to fold); ``inplace=True`` folds ``model`` itself (a frozen network that is never trained again).

    In eval mode ``bn(conv(x))`` equals one convolution with scaled weights and a shifted bias, so inference saves
    a pass over every such layer's output. Outputs equal the original's to float rounding. Found: consecutive
    modules of an ``nn.Sequential`` and the ``conv_bn_pairs`` a module class declares. The copy is in eval mode
    and must not be trained; the original is not touched.
    """
    import copy

    if not inplace:
        if not _conv_bn_pairs(model):
            return model, 0
        model = copy.deepcopy(model).eval()
    pairs = _conv_bn_pairs(model)
    for parent, a, b in pairs:
        fold_conv_bn_(_get(parent, a), _get(parent, b))
        _set(parent, b, nn.Identity())
    return model, len(pairs)
