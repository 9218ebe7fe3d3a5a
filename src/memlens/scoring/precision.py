"""Arithmetic of the scoring forward passes: float32, bfloat16 autocast, or int8 copies of the autoencoders."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError

__all__ = ["PRECISIONS", "cpu_has_bf16", "int8_models"]

#: accepted ``precision`` values -> autocast dtype (None: no autocast; int8 runs quantized copies instead)
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                                             "int8": None}


def cpu_has_bf16() -> bool:
    """Whether oneDNN reports native bf16 support on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def int8_models(model: nn.Module, before_model: nn.Module | None, batches: Iterator, calibration: Any,
                size: int | None, paths: list[str] | None,
                tensor: Any) -> tuple[nn.Module, nn.Module | None, Iterator, dict[str, Any]]:
    """Int8 copies of the autoencoders, calibrated on ``calibration`` or by default on the scored images.

    The default: :func:`memlens.quantize.calibration_indices` (8 images spread over the collection) of
    ``paths`` (a path source) or of ``tensor`` (an image tensor source); for any other source, the stream's
    first 8 images.

    Returns ``(model, before_model, batches, info)``; ``batches`` still yields every image (the ones
    peeked at for calibration are put back in front). Models that are int8 copies already are used as they
    are (one copy can serve many calls).
    """
    import itertools

    from ..quantize import INT8_CALIBRATION_IMAGES, Int8Autoencoder, calibration_indices, quantize_autoencoder

    todo = [m for m in (model, before_model) if m is not None and not isinstance(m, Int8Autoencoder)]
    def info(q: Any, how: str) -> dict[str, Any]:
        return {"int8_calibration_images": q.calibration_images, "int8_calibration": how, "int8_engine": q.engine,
                "int8_activation_bits": q.activation_bits,
                "int8_calibration_max_rel_mse": q.calibration_error.get("max_rel_mse", float("nan")),
                "int8_calibration_median_rel_mse": q.calibration_error.get("median_rel_mse", float("nan"))}

    if not todo:  # quantized already (a caller reusing one int8 copy across calls)
        if calibration is not None:
            raise ConfigError("calibration= has no effect on a model that is an int8 copy already")
        return model, before_model, batches, info(model, "given int8 model")
    expected = (size, size) if paths is not None and size else \
        tuple(tensor.shape[-2:]) if tensor is not None else None
    how = "given"
    if calibration is None and paths is not None:
        calibration = [paths[i] for i in calibration_indices(len(paths))]
        how = "spread over the collection"
    elif calibration is None and tensor is not None:
        calibration = tensor[calibration_indices(len(tensor))]
        how = "spread over the collection"
    if isinstance(calibration, np.ndarray) and calibration.dtype.kind in "USO":
        calibration = calibration.tolist()  # an array of paths
    if calibration is None:
        peeked: list[Any] = []
        images: list[torch.Tensor] = []
        n = 0
        for item in batches:
            peeked.append(item)
            images.append(item[1][: INT8_CALIBRATION_IMAGES - n])
            n += len(images[-1])
            if n >= INT8_CALIBRATION_IMAGES:
                break
        batches = itertools.chain(peeked, batches)
        if not images:
            raise DataError("no images to score")
        cal = torch.cat(images).float()
        how = "first images scored"
    elif isinstance(calibration, (torch.Tensor, np.ndarray)):
        cal = torch.as_tensor(calibration).float()
        how += " images" if how == "given" else ""
    elif isinstance(calibration, (str, os.PathLike)) or not isinstance(calibration, Sequence) or not calibration:
        raise ConfigError("int8 calibration must be a non-empty list of image paths, a list of image tensors or "
                          "an image tensor (N, 3, H, W)")
    elif all(isinstance(c, torch.Tensor) for c in calibration):
        try:
            cal = torch.cat([c if c.ndim == 4 else c.unsqueeze(0) for c in calibration]).float()
        except RuntimeError as e:
            raise ConfigError(f"int8 calibration tensors do not stack into one batch: {e}") from None
        how += " images"
    elif all(isinstance(c, (str, os.PathLike)) for c in calibration):
        from ..data import image_batch

        if size is None:
            raise ConfigError("image_size is needed to decode the int8 calibration images")
        try:
            cal = image_batch(calibration, size)
        except OSError as e:
            raise DataError(f"int8 calibration image: {e}") from None
        how += " paths" if how == "given" else ""
    else:
        raise ConfigError("int8 calibration must be all image paths or all image tensors, not a mix")
    if cal.ndim != 4 or len(cal) == 0 or cal.shape[1] != 3:
        raise ConfigError(f"int8 calibration images must be a non-empty (N, 3, H, W) batch, got {tuple(cal.shape)}")
    if expected is not None and tuple(cal.shape[-2:]) != expected:
        raise ConfigError(f"int8 calibration images are {tuple(cal.shape[-2:])} pixels but the scored images are "
                          f"{expected}: calibrate at the size you score")

    def q(m: nn.Module | None) -> nn.Module | None:
        return m if m is None or isinstance(m, Int8Autoencoder) else quantize_autoencoder(m, cal)

    qmodel, qbefore = q(model), q(before_model)
    return qmodel, qbefore, batches, info(qmodel, how)
