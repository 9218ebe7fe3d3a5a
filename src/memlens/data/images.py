"""The image pipeline: decode -> EXIF transpose -> RGB -> resize the shorter side -> centre crop -> [0, 1].

* :func:`read_image` decodes a file into an upright 8-bit RGB ``PIL.Image``. Accepted and converted:
  grayscale and 1-bit, palette, RGBA/LA/PA (alpha composited on **white**, :data:`BACKGROUND`), CMYK,
  16-bit grayscale (``I;16*``/``I``: value / 257, rounded), float (``F``), EXIF orientations 2-8.
* :func:`prepare_image` resizes the shorter side to ``size`` (Lanczos, with ``reducing_gap`` for big
  reductions) and crops the centre square: ``uint8`` array (size, size, 3).
* :func:`load_image` = both, through an optional :class:`~memlens.data.cache.ImageCache`.
* :class:`ImageDataset` / :func:`make_loader`: a torch ``Dataset``/``DataLoader`` yielding
  ``(images float32 (B, 3, size, size) in [0, 1], indices)`` in the given order.

Any file that cannot be used raises :class:`ImageReadError` (a :class:`~memlens.errors.DataError`)
naming the file and the reason. torch is imported only when :class:`ImageDataset` or :func:`make_loader`
is used.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .cache import PIPELINE_VERSION, ImageCache  # bump PIPELINE_VERSION when the pixels made here change

__all__ = [
    "read_image",
    "to_rgb",
    "prepare_image",
    "prepare_image_aspect",
    "load_image",
    "ImageDataset",  # noqa: F822 - built on first use (module __getattr__), so torch loads lazily
    "make_loader",
    "ImageReadError",
    "DEFAULT_MAX_PIXELS",
    "BACKGROUND",
    "PIPELINE_VERSION",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels than this are refused (decompression-bomb guard)."""
BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited on this colour (white)."""

_ORIENTATION_TAG = 0x0112
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class ImageReadError(DataError):
    """An image file cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        if reason is None:  # constructed from a message alone (e.g. when re-raised across processes)
            message = str(path)
            path, _, reason = message.partition(": ")
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ImageReadError, (self.path, self.reason))


# --------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------
def _sniff(path: str) -> str | None:
    """The format that the file's first bytes announce, or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    for sig, fmt in _SIGNATURES:
        if head.startswith(sig):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _open(path: str, max_pixels: int) -> Image.Image:
    """Open (header only) and check the pixel count; raises ImageReadError."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ImageReadError(path, "missing file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageReadError(path, "zero-byte file")
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"pixel count exceeds the decompression-bomb limit ({exc})") from None
    except UnidentifiedImageError:
        fmt = _sniff(path)
        ext = os.path.splitext(path)[1]
        if fmt is not None:
            raise ImageReadError(path, f"corrupt image: starts like a {fmt} file but cannot be decoded") from None
        raise ImageReadError(path, f"not an image file (its content is no known image format despite the "
                                   f"{ext or 'missing'} extension)") from None
    except OSError as exc:
        if exc.errno is not None:  # the operating system refused (permissions, I/O): not the image's fault
            raise ImageReadError(path, f"cannot read the file ({exc.strerror or exc})") from None
        fmt = _sniff(path)  # the decoder gave up on the header (e.g. "Truncated File Read")
        what = f"starts like a {fmt} file but cannot be decoded" if fmt is not None else "cannot be decoded"
        raise ImageReadError(path, f"corrupt image: {what} ({exc})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageReadError(path, f"{w}x{h} = {w * h:,} pixels exceeds the decompression-bomb limit of "
                                   f"{max_pixels:,} (max_pixels)")
    if w == 0 or h == 0:
        im.close()
        raise ImageReadError(path, f"corrupt image: size {w}x{h}")
    return im


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _decode(path: str, max_pixels: int,
            min_side: int | None = None) -> tuple[Image.Image, list[str], int, tuple[float, float]]:
    """Decode ``path`` fully into RGB, *not yet* turned upright.

    Returns ``(image, conversion tags, EXIF orientation, content size)``. ``min_side``: the shorter side
    that the caller needs; large JPEGs are then decoded at a reduced DCT scale keeping the shorter side at
    least twice ``min_side`` (``min_side=1``: fastest, for checks; every byte is still read). The content
    size is the image's extent in its own pixels (fractional after a reduced decode: the last row and
    column then cover a partial block). Raises ImageReadError.
    """
    im = _open(path, max_pixels)
    tags: list[str] = []
    try:
        content = (float(im.size[0]), float(im.size[1]))
        if min_side is not None and im.format == "JPEG":
            w, h = im.size
            factor = min(1.0, 2.0 * min_side / min(w, h))
            if factor <= 0.5:
                drafted = im.draft(None, (max(1, math.ceil(w * factor)), max(1, math.ceil(h * factor))))
                if drafted is not None:
                    box = drafted[1]
                    content = (float(box[2] - box[0]), float(box[3] - box[1]))
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise ImageReadError(path, f"pixel count exceeds the decompression-bomb limit ({exc})") from None
        except OSError as exc:
            msg = str(exc)
            if "truncated" in msg:
                raise ImageReadError(path, f"truncated image ({msg})") from None
            raise ImageReadError(path, f"corrupt image ({msg})") from None
        except Exception as exc:  # decoders raise SyntaxError, ValueError, struct.error, EOFError, ...
            raise ImageReadError(path, f"corrupt image ({type(exc).__name__}: {exc})") from None
        try:
            orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
        except Exception:  # a broken EXIF block is not worth refusing the image
            orientation = 1
        if orientation not in _TRANSPOSE:
            orientation = 1
        else:
            tags.append("exif")
        rgb, tag = _to_rgb(im)
        if tag:
            tags.append(tag)
        return rgb, tags, orientation, content
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"corrupt image ({type(exc).__name__}: {exc})") from None


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _resize_crop(image: Image.Image, size: int, content: tuple[float, float]) -> Image.Image:
    """The centre square of side min(content) resampled to size x size in one Lanczos pass.

    Equivalent to "resize the shorter side to ``size``, then crop the centre", without rounding the
    intermediate size. Being centred, it commutes with the EXIF flips and rotations.
    """
    cw, ch = content
    m = min(cw, ch)
    box = ((cw - m) / 2.0, (ch - m) / 2.0, (cw + m) / 2.0, (ch + m) / 2.0)
    if image.size == (size, size) and box == (0.0, 0.0, float(size), float(size)):
        return image
    return image.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def _composite(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(im: Image.Image) -> tuple[Image.Image, str | None]:
    """8-bit RGB and the kind of conversion (None when already RGB)."""
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode in ("1", "L"):
        return im.convert("RGB"), "grayscale"
    if mode == "P":
        if "transparency" in im.info:
            return _composite(im.convert("RGBA")), "palette"
        return im.convert("RGB"), "palette"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite(im.convert("RGBA")), "alpha"
    if mode == "CMYK":
        return im.convert("RGB"), "CMYK"
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float64)
        out = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(out[..., None], 3, axis=2), "RGB"), "16-bit"
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        out = np.clip(np.rint(np.nan_to_num(arr * scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(out[..., None], 3, axis=2), "RGB"), "float"
    return im.convert("RGB"), mode


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into an upright 8-bit RGB ``PIL.Image`` (see the module docstring).

    Parameters
    ----------
    path : path
        The image file.
    max_pixels : int
        Refuse images with more pixels (decompression-bomb guard). PIL's own hard limit,
        2 x ``PIL.Image.MAX_IMAGE_PIXELS``, applies as well.

    Raises
    ------
    ImageReadError
        Missing, zero-byte, truncated, corrupt, not an image, or too many pixels; the message names the file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image, _, orientation, _ = _decode(os.fspath(path), max_pixels)
    return _upright(image, orientation)


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and crop the centre: ``uint8`` array (size, size, 3).

    One Lanczos resampling of the centred square (with ``reducing_gap`` for large reductions).
    ``image`` should be upright RGB, as returned by :func:`read_image`; other modes are converted.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if image.mode != "RGB":
        image = _to_rgb(image)[0]
    out = _resize_crop(image, int(size), (float(image.size[0]), float(image.size[1])))
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a decoded ``PIL.Image`` (grey, palette, CMYK, 16-bit and float converted; alpha
    composited on white, :data:`BACKGROUND`), as :func:`read_image` converts files; RGB images are returned as
    they are."""
    return _to_rgb(image)[0]


def prepare_image_aspect(image: Image.Image, short_side: int, max_aspect: float = 3.0) -> np.ndarray:
    """:func:`load_image_aspect` for an image already decoded (upright, e.g. by :func:`read_image`): ``uint8``
    array (H, W, 3) with ``min(H, W) == short_side``, one Lanczos resampling, the centre ``max_aspect`` x
    ``short_side`` part of more elongated images. (A file decoded by :func:`load_image_aspect` may differ by
    JPEG draft decoding of large images.)"""
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    if not max_aspect >= 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
    if image.mode != "RGB":
        image = _to_rgb(image)[0]
    cw, ch = float(image.size[0]), float(image.size[1])
    m = min(cw, ch)
    keep_w, keep_h = min(cw, m * max_aspect), min(ch, m * max_aspect)
    box = ((cw - keep_w) / 2.0, (ch - keep_h) / 2.0, (cw + keep_w) / 2.0, (ch + keep_h) / 2.0)
    scale = short_side / m
    size = (max(short_side, round(keep_w * scale)), max(short_side, round(keep_h * scale)))
    out = image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))


def load_image(path: str | os.PathLike, size: int, cache: ImageCache | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and prepare one image: ``uint8`` array (size, size, 3) (= ``prepare_image(read_image(path))``,
    with large JPEGs decoded at a reduced scale first).

    With a ``cache``, an array prepared earlier from a file with the same content is read back instead
    of decoding again.
    """
    path = os.fspath(path)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if cache is not None:
        hit = cache.get(path, size)
        if hit is not None:
            return hit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image, _, orientation, content = _decode(path, max_pixels, min_side=size)
    out = _upright(_resize_crop(image, int(size), content), orientation)
    arr = np.ascontiguousarray(np.asarray(out, dtype=np.uint8))
    if cache is not None:
        cache.put(path, size, arr)
    return arr


def image_batch(paths: Sequence[str | os.PathLike], size: int, cache: ImageCache | None = None) -> Any:
    """Images as one float32 tensor (N, 3, size, size) in [0, 1], each as :func:`load_image` prepares it
    (the pixels a :class:`ImageDataset` / :func:`make_loader` batch holds)."""
    import torch

    return torch.stack([_as_tensor(load_image(p, size, cache)) for p in paths])


def _as_tensor(arr: np.ndarray) -> Any:
    """uint8 (H, W, 3) -> float32 tensor (3, H, W) in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).to(torch.float32).div_(255.0)


def load_image_aspect(path: str | os.PathLike, short_side: int, max_aspect: float = 3.0,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image keeping its aspect ratio: ``uint8`` array (H, W, 3) with ``min(H, W) == short_side``.

    One Lanczos resampling. An image more elongated than ``max_aspect`` keeps its centre
    ``max_aspect`` x ``short_side`` part (panoramas would otherwise cost many times a normal image).
    """
    path = os.fspath(path)
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    if not max_aspect >= 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image, _, orientation, content = _decode(path, max_pixels, min_side=short_side)
    cw, ch = content  # in the stored orientation; a centred box commutes with the EXIF flips/rotations
    m = min(cw, ch)
    keep_w, keep_h = min(cw, m * max_aspect), min(ch, m * max_aspect)
    box = ((cw - keep_w) / 2.0, (ch - keep_h) / 2.0, (cw + keep_w) / 2.0, (ch + keep_h) / 2.0)
    scale = short_side / m
    size = (max(short_side, round(keep_w * scale)), max(short_side, round(keep_h * scale)))
    out = _upright(image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0), orientation)
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))


def image_notes(path: str, tags: Sequence[str]) -> list[str]:
    """Conversion tags plus file-name remarks (upper-case extension, non-ASCII name) for one image."""
    out = list(tags)
    ext = os.path.splitext(path)[1]
    if ext != ext.lower():
        out.append("uppercase-ext")
    if not os.path.basename(path).isascii():
        out.append("non-ascii")
    return out


def verify_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[str]:
    """Decode ``path`` completely (JPEGs at a reduced DCT scale: every byte is still read, so truncation
    is caught) and return the notes (see :func:`image_notes`). Raises ImageReadError.

    Does not silence ``DecompressionBombWarning``; callers running it in threads do that once around the pool.
    """
    _, tags, _, _ = _decode(path, max_pixels, min_side=1)
    return image_notes(path, tags)


# --------------------------------------------------------------------------------------------------------
# torch: Dataset and DataLoader (torch imported on first use)
# --------------------------------------------------------------------------------------------------------
_WORKER_ERROR = re.compile(r"^(?:[\w.]*\.)?(?:ImageReadError|DataError): (.+)$")


def _image_dataset_class() -> type:
    from torch.utils.data import Dataset as TorchDataset

    class ImageDataset(TorchDataset):
        """Images of ``paths`` as float32 tensors (3, size, size) in [0, 1]; item ``i`` is ``(tensor, i)``.

        Parameters
        ----------
        paths : sequence of paths
        size : int
            Side of the square output (shorter side resized to ``size``, then centre crop).
        cache : ImageCache, optional
            Decoded-image cache shared by the workers.
        max_pixels : int
            Decompression-bomb limit.
        """

        def __init__(self, paths: Sequence[str | os.PathLike], size: int, cache: ImageCache | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS):
            self.paths = [os.fspath(p) for p in paths]
            self.size = int(size)
            self.cache = cache
            self.max_pixels = int(max_pixels)

        def __len__(self) -> int:
            return len(self.paths)

        def __getitem__(self, index: int) -> tuple[Any, int]:
            arr = load_image(self.paths[index], self.size, self.cache, self.max_pixels)
            return _as_tensor(arr), int(index)

    ImageDataset.__module__ = __name__
    ImageDataset.__qualname__ = "ImageDataset"
    return ImageDataset


def _clean_loader_class() -> type:
    from torch.utils.data import DataLoader

    class ImageLoader(DataLoader):
        """A DataLoader whose decoding errors from worker processes arrive as one-line DataErrors."""

        def __iter__(self):  # type: ignore[override]
            iterator = super().__iter__()
            try:
                while True:
                    try:
                        batch = next(iterator)
                    except StopIteration:
                        return
                    except DataError as exc:
                        raise _unwrap_worker_error(exc) from None
                    except RuntimeError as exc:  # torch re-raises some exception types as RuntimeError
                        cleaned = _unwrap_worker_error(exc)
                        if cleaned is exc:
                            raise
                        raise cleaned from None
                    yield batch
            finally:
                # stop the worker processes now (an error or an early break would otherwise leave them
                # alive until the iterator is garbage collected)
                shutdown = getattr(iterator, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()

    ImageLoader.__module__ = __name__
    ImageLoader.__qualname__ = "ImageLoader"
    return ImageLoader


def _unwrap_worker_error(exc: BaseException) -> BaseException:
    """The original one-line DataError from a message wrapped by a DataLoader worker."""
    text = str(exc)
    if "DataLoader worker" not in text:
        return exc
    for line in reversed(text.splitlines()):
        m = _WORKER_ERROR.match(line.strip())
        if m:
            return ImageReadError(m.group(1))
    return exc


def __getattr__(name: str) -> Any:
    if name in ("ImageDataset", "ImageLoader"):
        cls = _image_dataset_class() if name == "ImageDataset" else _clean_loader_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lazy(name: str) -> Any:
    return globals().get(name) or __getattr__(name)


def make_loader(paths: Sequence[str | os.PathLike], size: int, batch_size: int = 32, num_workers: int = 0,
                cache: ImageCache | None = None, pin_memory: bool = False,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """A DataLoader over ``paths`` yielding ``(images, indices)`` in the given order.

    ``images`` is float32 (B, 3, size, size) in [0, 1]; ``indices`` (int64) are positions in ``paths``.
    Works with ``num_workers > 0`` (each worker decodes whole items; the order is kept). A file that
    cannot be decoded raises :class:`ImageReadError` naming it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = _lazy("ImageDataset")(paths, size, cache=cache, max_pixels=max_pixels)
    return _lazy("ImageLoader")(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=False)
