"""Pretraining's augmentation: random resized crop + horizontal flip, in torch, from a given generator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["augment_batch", "CROP_SCALE", "CROP_RATIO"]

#: random resized crop: area fraction and aspect-ratio ranges
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (area 35-100%, aspect 3/4-4/3) + horizontal flip, per image, same output size.

    ``x``: (B, 3, H, W) in [0, 1] on the CPU; the result stays in [0, 1].
    """
    b, _, h, w = x.shape
    out = torch.empty_like(x)
    area = h * w
    log_r = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for i in range(b):
        u = torch.rand(3 * 10 + 1, generator=generator).tolist()
        ch, cw, top, left = h, w, 0, 0
        for t in range(10):
            s = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u[3 * t]
            r = math.exp(log_r[0] + (log_r[1] - log_r[0]) * u[3 * t + 1])
            cw_t = int(round(math.sqrt(area * s * r)))
            ch_t = int(round(math.sqrt(area * s / r)))
            if 0 < cw_t <= w and 0 < ch_t <= h:
                ch, cw = ch_t, cw_t
                pos = u[3 * t + 2]
                top = int(pos * (h - ch + 1)) if h > ch else 0
                left = int(((pos * 7919) % 1.0) * (w - cw + 1)) if w > cw else 0
                break
        crop = x[i:i + 1, :, top:top + ch, left:left + cw]
        if (ch, cw) != (h, w):
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        if u[-1] < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0]
    return out.clamp_(0.0, 1.0)
