"""Images as the notebook API and the predictors take them: files, folders, PIL images or arrays, one list.

:func:`collect_inputs` turns whatever a user passes (one item or a sequence; a 4-d array is a batch) into
``(label, source)`` pairs in input order, where ``source`` is a :class:`pathlib.Path`, an RGB ``PIL.Image``
or a float32 array (H, W, 3) in [0, 1], plus the inputs that cannot be used (one
:class:`memlens.errors.Problem` each). Folders are searched recursively (sorted), as ``memlens predict`` does.

:func:`as_pil` gives an 8-bit RGB ``PIL.Image`` for any source (a file decoded by
:func:`memlens.data.read_image`: EXIF orientation applied, alpha composited on white), and :func:`as_float_rgb`
checks and converts an array. Arrays follow memlens's input contract: floats in [0, 1] (outside it,
``ValueError`` naming the observed min/max), or ``uint8`` 0-255; (H, W, 3), (3, H, W) or grey (H, W).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Problem

__all__ = ["collect_inputs", "as_pil", "as_float_rgb", "is_array"]

#: how far outside [0, 1] a float input may stray (resampling round-off) before it is refused
_RANGE_TOLERANCE = 1e-4


def is_array(x: Any) -> bool:
    """True for numpy arrays and torch tensors (without importing torch)."""
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("torch")


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()  # a torch tensor


def as_float_rgb(arr: Any, what: str = "image") -> np.ndarray:
    """An image array as float32 (H, W, 3) in [0, 1].

    Accepts (H, W, 3), (3, H, W), (H, W) grey, (H, W, 1) or (1, H, W); ``uint8`` is divided by 255, floats must
    lie in [0, 1] (``ValueError`` naming the observed min/max otherwise); RGBA (4 channels) is refused.
    """
    a = _numpy(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"{what}: expected an image array (H, W, 3), (3, H, W) or (H, W), got shape {a.shape}")
    if a.shape[-1] not in (1, 3) and a.shape[0] in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[-1] != 3:
        raise ValueError(f"{what}: expected 3 colour channels (RGB), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{what}: expected uint8 or float pixels, got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    if a.size:
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if not (np.isfinite(a).all() and lo >= -_RANGE_TOLERANCE and hi <= 1 + _RANGE_TOLERANCE):
            raise ValueError(f"{what}: pixel values must be in [0, 1] (observed min {lo:.4g}, max {hi:.4g}); "
                             "divide 8-bit images by 255")
    return np.clip(a, 0.0, 1.0)


def as_pil(source: Any) -> Any:
    """An 8-bit RGB ``PIL.Image`` of a path, a PIL image or an array (floats rounded to 8 bits).

    Files are decoded by :func:`memlens.data.read_image` (EXIF orientation applied, alpha composited on white;
    :class:`memlens.data.images.ImageReadError` when unreadable).
    """
    from PIL import Image

    from .images import read_image, to_rgb

    if isinstance(source, (str, os.PathLike)):
        return read_image(source)
    if isinstance(source, Image.Image):
        return to_rgb(source)
    a = as_float_rgb(source)
    return Image.fromarray(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8), "RGB")


def collect_inputs(images: Any) -> tuple[list[tuple[str, Any]], list[Problem]]:
    """``(label, source)`` pairs for files, folders, PIL images and arrays, in the order given.

    ``images`` is one item or a sequence (list, tuple, generator) of them; a 4-d array is a batch of images
    ((N, 3, H, W) or (N, H, W, 3)). A file's label is the path as given; a file found in a folder is labelled
    ``folder/relative/path``; in-memory images are labelled ``<image K>`` (K = position among the inputs).
    Paths are returned as :class:`~pathlib.Path` (not decoded here); a missing path or an empty folder is a
    problem; an array with the wrong shape or range raises ``ValueError``. The same file given twice is
    kept once.
    """
    from PIL import Image

    from .layouts import IMAGE_EXTENSIONS, find_images

    if isinstance(images, (str, os.PathLike, Image.Image)) or (is_array(images) and _numpy(images).ndim <= 3):
        images = [images]
    elif is_array(images):
        batch = _numpy(images)
        if batch.ndim != 4:
            raise ValueError(f"images: expected a batch (N, 3, H, W) or (N, H, W, 3), got shape {batch.shape}")
        images = list(batch)
    elif not isinstance(images, Iterable):
        raise TypeError(f"images: expected paths, folders, PIL images or arrays, got {type(images).__name__}")
    items: list[tuple[str, Any]] = []
    problems: list[Problem] = []
    seen: set[Path] = set()
    for k, src in enumerate(images):
        if isinstance(src, (str, os.PathLike)):
            p = Path(src)
            if p.is_dir():
                rels = find_images(p)
                if not rels:
                    problems.append(Problem(str(p), "folder holds no image files "
                                                    f"({', '.join(sorted(IMAGE_EXTENSIONS))})"))
                for rel in rels:
                    full = (p / rel).resolve()
                    if full not in seen:
                        seen.add(full)
                        items.append((f"{str(src).rstrip('/')}/{rel}", p / rel))
            elif p.is_file():
                if p.resolve() not in seen:
                    seen.add(p.resolve())
                    items.append((str(src), p))
            else:
                problems.append(Problem(str(p), "no such file or folder"))
        elif isinstance(src, Image.Image):
            items.append((f"<image {k}>", src))
        elif is_array(src):
            items.append((f"<image {k}>", as_float_rgb(src, f"image {k}")))
        else:
            raise TypeError(f"image {k}: expected a path, a PIL image or an array, got {type(src).__name__}")
    return items, problems
