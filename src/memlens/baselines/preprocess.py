"""The preprocessing the pretrained baselines' authors document, reproduced without torchvision.

Both ResMem and ViTMem resize every image to a fixed square (256 x 256, the aspect ratio is not kept) with
PIL's bilinear filter (what torchvision's ``Resize`` does for PIL images: ``image.resize((w, h), BILINEAR)``,
antialiased by PIL), crop the centre (torchvision's ``CenterCrop`` offset: ``int(round((256 - crop) / 2))``,
14 for 227 and 16 for 224) and scale 8-bit values to [0, 1] (``ToTensor``); ViTMem's normalisation (mean 0,
std 1) changes nothing.

Sources: files are decoded by :func:`memlens.data.read_image` (EXIF orientation applied, alpha composited on
white: for ordinary RGB files the pixels PIL's ``Image.open(path).convert("RGB")`` gives); PIL images are
converted to RGB the same way; float arrays in [0, 1] are resized per channel in PIL's 32-bit float mode (the
same bilinear filter, no rounding to 8 bits), ``uint8`` arrays as 8-bit images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["resize_center_crop", "crop_offset"]


def crop_offset(size: int, crop: int) -> int:
    """torchvision's centre-crop offset: ``int(round((size - crop) / 2))`` (Python's round: half to even)."""
    return int(round((size - crop) / 2.0))


def resize_center_crop(source: Any, resize: int, crop: int) -> np.ndarray:
    """One image as float32 (3, crop, crop) in [0, 1]: resized to ``resize`` x ``resize`` (PIL bilinear),
    centre crop. ``source``: a path, a PIL image or an array (see the module docstring)."""
    from PIL import Image

    from ..data.inputs import as_float_rgb, as_pil, is_array

    top = crop_offset(resize, crop)
    if is_array(source) and not (isinstance(source, np.ndarray) and source.dtype == np.uint8):
        a = as_float_rgb(source)
        chans = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), "F").resize(
            (resize, resize), Image.Resampling.BILINEAR), dtype=np.float32) for c in range(3)]
        out = np.stack(chans)[:, top:top + crop, top:top + crop]
        return np.clip(out, 0.0, 1.0)
    im = as_pil(source)
    small = np.asarray(im.resize((resize, resize), Image.Resampling.BILINEAR), dtype=np.uint8)
    out = small[top:top + crop, top:top + crop].transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(out)
