"""Decoding images that are not local files: encoded bytes (a Parquet cell) and URLs.

An image given as bytes is decoded by exactly the code that decodes a file (:func:`memlens.data.images.load_image`:
the same reduced-scale JPEG decoding, EXIF orientation, colour conversion and Lanczos resize), so an image scored
from a Parquet table of bytes gives the same numbers as the same image scored from its file. On Linux the bytes
are handed to it as an in-memory file (``memfd``), nothing touches the disk; elsewhere as a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from .images import DEFAULT_MAX_PIXELS, ImageReadError, load_image, verify_image
from .uris import is_uri, read_bytes

__all__ = ["load_image_bytes", "load_image_ref", "verify_image_ref"]


@contextlib.contextmanager
def _as_file(data: bytes) -> Iterator[str]:
    """A path whose content is ``data`` (an anonymous in-memory file where the OS has them)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("memlens-image", 0)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="memlens-image-", delete=False) as fh:  # pragma: no cover - not Linux
        fh.write(data)
    try:  # pragma: no cover
        yield fh.name
    finally:  # pragma: no cover
        os.unlink(fh.name)


def load_image_bytes(data: bytes, size: int, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
                     ) -> np.ndarray:
    """Decode encoded image bytes and prepare them as :func:`~memlens.data.images.load_image` prepares a file:
    ``uint8`` (size, size, 3). Errors are :class:`~memlens.data.images.ImageReadError` naming ``name``."""
    if data is None or len(data) == 0:
        raise ImageReadError(name, "empty image (no bytes)")
    with _as_file(bytes(data)) as path:
        try:
            return load_image(path, size, max_pixels=max_pixels)
        except ImageReadError as exc:
            raise ImageReadError(name, exc.reason) from None


def load_image_ref(ref: Any, size: int, name: str | None = None) -> np.ndarray:
    """An image given as bytes, a URL or a local path, prepared at ``size`` (``uint8`` (size, size, 3))."""
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return load_image_bytes(bytes(ref), size, name or "<bytes>")
    ref = str(ref)
    if is_uri(ref) and not ref.startswith("file://"):
        try:
            data = read_bytes(ref)
        except (OSError, ValueError) as exc:
            raise ImageReadError(name or ref, f"cannot read ({exc})") from None
        return load_image_bytes(data, size, name or ref)
    return load_image(ref[len("file://"):] if ref.startswith("file://") else ref, size)


def verify_image_ref(ref: Any, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, reader: Any = None) -> list[str]:
    """:func:`memlens.data.images.verify_image` for an image given as bytes, a URL, a Parquet-cell locator
    (:mod:`memlens.data.layouts.parquet`) or a path; errors name ``name``. ``reader``: the
    :class:`~memlens.data.layouts.parquet.LocatedReader` of the caller's thread (a new one when not given)."""
    from ..errors import DataError
    from .layouts.parquet import LocatedReader, is_locator

    if isinstance(ref, str) and is_locator(ref):
        own = reader is None
        reader = reader or LocatedReader()
        try:
            ref = reader.image(ref)
        except DataError as exc:
            raise ImageReadError(name, f"cannot read ({exc})") from None
        finally:
            if own:
                reader.close()
    if isinstance(ref, str) and not (is_uri(ref) and not ref.startswith("file://")):
        return verify_image(ref, max_pixels)
    try:
        data = bytes(ref) if not isinstance(ref, str) else read_bytes(ref)
    except (OSError, ValueError) as exc:
        raise ImageReadError(name, f"cannot read ({exc})") from None
    if not data:
        raise ImageReadError(name, "empty image (no bytes)")
    with _as_file(data) as path:
        try:
            return verify_image(path, max_pixels)
        except ImageReadError as exc:
            raise ImageReadError(name, exc.reason) from None
