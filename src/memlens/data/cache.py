"""A decoded-image cache: prepared ``uint8`` arrays on disk, keyed by file content and target size.

Layout of the cache folder::

    FOLDER/v{PIPELINE_VERSION}/{size}/{sha[:2]}/{sha}.npy

where ``sha`` is the SHA-256 of the image file's bytes. A renamed or copied file hits the same entry; an
edited file (new content) misses. Entries are plain ``.npy`` files (open them with
``numpy.load(path, mmap_mode="r")``), written to a temporary file and renamed, so that several DataLoader
workers (processes) can fill the same cache at once: a reader sees a complete entry or none. A damaged
entry counts as a miss and is rewritten.

``hits``/``misses`` count the look-ups of this object in this process (DataLoader workers count in their
own copies).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from .._io import atomic_path

__all__ = ["ImageCache", "PIPELINE_VERSION"]

log = logging.getLogger(__name__)

PIPELINE_VERSION = 1
"""Bumped whenever the pixels produced by :func:`~memlens.data.images.load_image` change (part of the cache
key, so that entries made by an older pipeline are not read back)."""


class ImageCache:
    """Prepared images (``uint8`` (size, size, 3)) stored as ``.npy`` files under ``folder``.

    Parameters
    ----------
    folder : path
        Created when needed.

    Examples
    --------
    >>> cache = ImageCache("cache")                      # doctest: +SKIP
    >>> arr = load_image("a.jpg", 224, cache=cache)      # decodes, stores  # doctest: +SKIP
    >>> arr = load_image("a.jpg", 224, cache=cache)      # read back: cache.hits == 1  # doctest: +SKIP
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0
        self._digests: dict[tuple[str, int, int, int], str] = {}

    def __repr__(self) -> str:
        return f"ImageCache({str(self.folder)!r}, hits={self.hits}, misses={self.misses})"

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "hits": self.hits, "misses": self.misses, "_digests": {}}

    def digest(self, path: str | os.PathLike) -> str:
        """SHA-256 of the file's bytes (remembered per path, size, mtime and inode in this process)."""
        path = os.fspath(path)
        st = os.stat(path)
        memo_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
        found = self._digests.get(memo_key)
        if found is None:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
            found = self._digests[memo_key] = h.hexdigest()
        return found

    def entry(self, path: str | os.PathLike, size: int) -> Path:
        """Where the entry of ``path`` at ``size`` lives (it may not exist)."""
        sha = self.digest(path)
        return self.folder / f"v{PIPELINE_VERSION}" / str(int(size)) / sha[:2] / f"{sha}.npy"

    def get(self, path: str | os.PathLike, size: int, mmap: bool = False) -> np.ndarray | None:
        """The cached array for ``path`` at ``size``, or None (a miss).

        ``mmap=True`` returns a read-only memory map instead of an in-memory copy.
        """
        try:
            entry = self.entry(path, size)
        except OSError:
            self.misses += 1
            return None
        if not entry.is_file():
            self.misses += 1
            return None
        try:
            arr = np.load(entry, mmap_mode="r", allow_pickle=False)
            if arr.dtype != np.uint8 or arr.shape != (size, size, 3):
                raise ValueError(f"unexpected entry {arr.dtype} {arr.shape}")
            out = arr if mmap else np.array(arr)
        except (OSError, ValueError) as exc:
            log.warning("damaged cache entry %s ignored (%s)", entry, exc)
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, path: str | os.PathLike, size: int, array: np.ndarray) -> Path:
        """Store ``array`` (``uint8`` (size, size, 3)) for ``path`` at ``size``; returns the entry path."""
        array = np.asarray(array)
        if array.dtype != np.uint8 or array.shape != (size, size, 3):
            raise ValueError(f"expected uint8 ({size}, {size}, 3), got {array.dtype} {array.shape}")
        entry = self.entry(path, size)
        with atomic_path(entry) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        return entry

    def n_entries(self) -> int:
        """Number of entries on disk (all sizes)."""
        root = self.folder / f"v{PIPELINE_VERSION}"
        return sum(1 for _ in root.glob("*/*/*.npy")) if root.is_dir() else 0
