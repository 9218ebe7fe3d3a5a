"""The per-batch function of scoring: one batch of images -> latent rows, reconstruction errors, features.

:class:`BatchScorer` is what every engine runs on every batch (the local engine through
:func:`memlens.scoring.score_images`, the Ray engine's actors through the same function on their shards), so
a per-image number has exactly one definition: ``recon_<m>`` = ``metric(x, decode(encode(x)))`` (and with the
weights before exposure for ``recon_<m>_before``), the latent = ``encode(x)`` (or a hooked layer's output)
flattened or average-pooled, the features = the pretrained feature model's pooled output.

Also here: the small pieces those passes need (device resolution, the pretrained feature model, chunking the
autoencoder passes on the CPU, latent pooling).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..metrics import (
    Metric,
    check_images,
    perceptual_distance,
    perceptual_extractor,
    perceptual_from_features,
)

__all__ = ["FEATURE_SIZE", "LATENT_DTYPES", "CPU_CHUNK_PIXELS", "BatchNumbers", "BatchScorer", "check_batch_settings",
           "resolve_device",
           "pretrained_features", "pool_features", "find_layer", "is_channels_last", "forward_chunk",
           "encode_decode", "latent_block"]

#: side (pixels) at which pretrained features are computed (ImageNet resolution)
FEATURE_SIZE = 224
#: accepted ``latent_dtype`` values of the stored latents
LATENT_DTYPES = {"float32": np.float32, "float16": np.float16}
#: score with a copy of the autoencoders whose batch norms are folded into the convolutions before them
#: (:func:`memlens.models.base.fold_batchnorm`; numbers equal to float rounding); benchmarks switch it off to compare
FOLD_BATCHNORM = True
#: on the CPU the autoencoders run on chunks of about this many pixels (one 224 x 224 image for vgg16): with
#: oneDNN, a chunk whose activations stay in cache is faster per image than a large batch (docs/benchmarks.md)
CPU_CHUNK_PIXELS = 224 * 224


def check_batch_settings(pool: str, latent_dtype: str, batch_size: int) -> None:
    """A :class:`ConfigError` for a ``pool``, ``latent_dtype`` or ``batch_size`` no engine accepts."""
    if pool not in ("none", "avg"):
        raise ConfigError(f"pool must be 'none' or 'avg', got {pool!r}")
    if latent_dtype not in LATENT_DTYPES:
        raise ConfigError(f"latent_dtype must be one of {', '.join(LATENT_DTYPES)}, got {latent_dtype!r}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    return dev


def pretrained_features(device: torch.device | str = "cpu") -> nn.Module:
    """Module mapping images in [0, 1] to pooled ImageNet EfficientNet-Lite0 head features (N, 1280) float32."""
    from ..models.efficientnet import pooled_feature_extractor

    return pooled_feature_extractor().to(device).eval()


def pool_features(out: Any) -> torch.Tensor:
    """Last map of a list (or a single tensor): (N, C, h, w) -> mean over positions; (N, D) kept."""
    if isinstance(out, (list, tuple)):
        out = out[-1]
    if out.ndim == 4:
        out = out.mean(dim=(2, 3))
    return out.flatten(1).float()


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule of ``model`` named ``layer``; a :class:`ConfigError` listing the names when there is none."""
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        names = [n for n in modules if n]
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        raise ConfigError(f"layer {layer!r} not found in the autoencoder; layers: {shown}")
    return modules[layer]


def is_channels_last(model: nn.Module) -> bool:
    """Whether the first 4-d parameter of ``model`` is stored channels-last (False when it has none)."""
    for p in model.parameters():
        if p.ndim == 4:
            return bool(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous())
    return False


def forward_chunk(x: torch.Tensor, dev: torch.device) -> int:
    """Images per autoencoder forward pass: the whole batch on a GPU, about CPU_CHUNK_PIXELS on the CPU."""
    if dev.type != "cpu" or x.ndim != 4:
        return max(1, len(x))
    return max(1, CPU_CHUNK_PIXELS // max(1, x.shape[-1] * x.shape[-2]))


def encode_decode(model: nn.Module, x: torch.Tensor, chunk: int,
                  captured: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(encode(x), decode(encode(x)), hooked)`` computed ``chunk`` images at a time.

    ``captured``: the list a forward hook appends to; ``hooked`` is the first output it received in each
    chunk, concatenated (None without a hook).
    """
    zs, xs, hs = [], [], []
    for c in (x.split(chunk) if chunk < len(x) else (x,)):
        if captured is not None:
            captured.clear()
        zc = model.encode(c)
        zs.append(zc)
        xs.append(model.decode(zc))
        if captured:
            hs.append(captured[0])
    hooked = (hs[0] if len(hs) == 1 else torch.cat(hs)) if hs else None
    if len(zs) == 1:
        return zs[0], xs[0], hooked
    return torch.cat(zs), torch.cat(xs), hooked


def latent_block(z: torch.Tensor, pool: str) -> torch.Tensor:
    """One batch's latent rows: ``pool="avg"`` averages over positions, then every latent is flattened."""
    if pool == "avg" and z.ndim >= 3:
        z = z.flatten(2).mean(2)
    return z.flatten(1)


@dataclass
class BatchNumbers:
    """What :class:`BatchScorer` computed for one batch (rows in the batch's order).

    latents : (B, D) float32 latent rows; latent_shape : one image's latent before flattening/pooling;
    columns : ``recon_<m>`` (and ``recon_<m>_before``) -> (B,) float32; features : (B, F) float32 or None.
    """

    latents: np.ndarray
    latent_shape: tuple[int, ...]
    columns: dict[str, np.ndarray]
    features: np.ndarray | None


class BatchScorer:
    """Score one batch of images at a time; the models must already be in eval mode on ``device``.

    Parameters
    ----------
    model : the autoencoder the numbers are about (``encode``/``decode`` in [0, 1]); an int8 copy runs as is.
    metrics : :class:`memlens.metrics.Metric` objects; columns ``recon_<name>``.
    before_model : the weights before exposure (adds ``recon_<name>_before``), or None.
    feature_model : images in [0, 1] -> (N, D) or a list of maps (the last one is pooled); None: no features.
    device : where the batch runs. pool, layer : the latent (see :func:`memlens.scoring.score_images`).
    layer_model : the module ``layer`` is looked up in (default ``model``).
    amp_dtype : autocast dtype of the autoencoder passes (None: float32).
    channels_last : feed channels-last batches. feature_size, resize_features : features of a batch that
        comes without ``feature_images`` are computed on the batch resized to ``feature_size`` when
        ``resize_features`` (tensor sources), else on the batch as it is.
    fold_bn : score with copies of ``model`` and ``before_model`` whose batch norms are folded into the
        convolutions (default :data:`FOLD_BATCHNORM`; never with ``layer``, whose output must be the module's own).
    """

    def __init__(self, model: nn.Module, metrics: Sequence[Metric], *, device: torch.device,
                 before_model: nn.Module | None = None, feature_model: nn.Module | None = None, pool: str = "none",
                 layer: str | None = None, layer_model: nn.Module | None = None, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = True, feature_size: int | None = FEATURE_SIZE, resize_features: bool = False,
                 fold_bn: bool | None = None):
        if (FOLD_BATCHNORM if fold_bn is None else fold_bn) and not layer:
            from ..models.base import fold_batchnorm

            model = fold_batchnorm(model)[0]
            before_model = fold_batchnorm(before_model)[0] if before_model is not None else None
        self.model, self.before_model, self.feature_model = model, before_model, feature_model
        self.metrics = list(metrics)
        self.device, self.pool, self.layer, self.amp_dtype = device, pool, layer, amp_dtype
        self.layer_model = layer_model if layer_model is not None else model
        self.channels_last, self.feature_size, self.resize_features = channels_last, feature_size, resize_features
        self.captured: list[torch.Tensor] = []
        self._perceptual = any(m.fn is perceptual_distance for m in self.metrics)

    @property
    def columns(self) -> list[str]:
        """The per-image columns each batch gives, in table order."""
        cols = [m.column for m in self.metrics]
        return cols + ([f"{c}_before" for c in cols] if self.before_model is not None else [])

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        """While active, ``layer``'s output is captured (a forward hook, removed on exit)."""
        hook = None
        if self.layer:
            hook = find_layer(self.layer_model, self.layer).register_forward_hook(
                lambda _m, _i, out: self.captured.append(out))
        try:
            yield
        finally:
            if hook is not None:
                hook.remove()

    def _forward_ctx(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def __call__(self, images: torch.Tensor, feature_images: torch.Tensor | None = None) -> BatchNumbers:
        """The numbers of one batch (call under ``torch.inference_mode()`` and, with a layer, :meth:`hooked`)."""
        dev, layer = self.device, self.layer
        x = images.to(dev, non_blocking=True)
        if not x.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {x.dtype}")
        x = x.float()
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        chunk = forward_chunk(x, dev)
        with self._forward_ctx():
            z, x_hat, hooked = encode_decode(self.model, x, chunk, self.captured if layer else None)
        x_hat = x_hat.float()
        if layer and hooked is None:
            raise ConfigError(f"layer {layer!r} was not called by the autoencoder's encode/decode")
        lat = hooked if layer else z
        latents = latent_block(lat, self.pool).float().cpu().numpy()
        fs = self.feature_size
        fx = None
        if self.feature_model is not None:
            fx = feature_images.to(dev).float() if feature_images is not None else x
            if feature_images is None and self.resize_features and fs and x.shape[-1] != fs:
                fx = torch.nn.functional.interpolate(x, size=(fs, fs), mode="bilinear", align_corners=False,
                                                     antialias=True).clamp(0, 1)
            if self.channels_last and fx.ndim == 4:
                fx = fx.contiguous(memory_format=torch.channels_last)
        # one EfficientNet pass over x serves the perceptual metric after and before exposure and, when the
        # pretrained features are the same network on the same pixels, the features too (was up to three)
        shared = _SharedPerceptual(x, self.feature_model if fx is x else None) if self._perceptual else None
        columns = {m.column: self._metric(m, x, x_hat, shared) for m in self.metrics}
        if self.before_model is not None:
            before = self.before_model
            with self._forward_ctx():
                xb = torch.cat([before(c) for c in x.split(chunk)]) if chunk < len(x) else before(x)
            xb = xb.float()
            for m in self.metrics:
                columns[f"{m.column}_before"] = self._metric(m, x, xb, shared)
        feats = None
        if self.feature_model is not None:
            pooled = shared.pooled() if shared is not None else None
            feats = (pooled if pooled is not None else pool_features(self.feature_model(fx))).cpu().numpy()
        return BatchNumbers(latents, tuple(lat.shape[1:]), columns, feats)

    @staticmethod
    def _metric(m: Metric, x: torch.Tensor, y: torch.Tensor, shared: _SharedPerceptual | None) -> np.ndarray:
        if shared is not None and m.fn is perceptual_distance:
            check_images(x, y)
            return shared.distance(y).float().cpu().numpy()
        return m(x, y).float().cpu().numpy()


class _SharedPerceptual:
    """The perceptual metric's features of one batch ``x``, computed on first use and kept for every
    reconstruction it is compared with; with ``feature_model`` (the pretrained features of the same pixels),
    its pooled features come from that pass when it is the same network and weights."""

    def __init__(self, x: torch.Tensor, feature_model: nn.Module | None):
        self.x, self.ext = x, perceptual_extractor(x.device)
        src = getattr(self.ext, "source", None)
        self.fuse = (feature_model is not None and src is not None and getattr(feature_model, "source", None) == src
                     and hasattr(self.ext, "forward_with_pooled"))
        self.fx: list[torch.Tensor] | None = None
        self._pooled: torch.Tensor | None = None

    def _features_of_x(self) -> list[torch.Tensor]:
        if self.fx is None:
            with torch.autocast(device_type=self.x.device.type, enabled=False):
                if self.fuse:
                    self.fx, self._pooled = self.ext.forward_with_pooled(self.x, check=False)
                else:
                    self.fx = self.ext(self.x, check=False)
        return self.fx

    def distance(self, y: torch.Tensor) -> torch.Tensor:
        fx = self._features_of_x()
        with torch.autocast(device_type=y.device.type, enabled=False):
            fy = self.ext(y.float(), check=False)
        return perceptual_from_features(fx, fy)

    def pooled(self) -> torch.Tensor | None:
        """The pooled features of x from the shared pass (None when they cannot come from it)."""
        if not self.fuse:
            return None
        self._features_of_x()
        return self._pooled.flatten(1).float()
