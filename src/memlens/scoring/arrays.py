"""Streaming array writers: (N, D) ``.npy`` files written row block by row block, and reproducible ``.npz``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path, reserve_disk
from ..errors import DataError

__all__ = ["NpyRows", "MemRows", "write_npz"]


class NpyRows:
    """Write an (N, D) ``.npy`` row block by row block into a memory map (atomic: tmp file then rename).

    N must be known up front for the memory map; for sources of unknown length rows go to a raw side file
    first and are copied into the memory map in blocks at the end (memory stays bounded either way).
    """

    def __init__(self, tmp: Path, n: int | None, dtype: Any, final: Path | None = None):
        self.tmp, self.n, self.dtype = tmp, n, np.dtype(dtype)
        self.final = final or tmp  # the name errors give (the file the temporary one becomes)
        self.mm: np.memmap | None = None
        self.raw: Any = None
        self.rows = 0
        self.width: int | None = None

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if self.width is None:
            self.width = int(block.shape[1])
            if self.n is not None:
                self.mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=(self.n, self.width))
                reserve_disk(self.tmp, self.final)  # a full disk: ENOSPC now, not SIGBUS while writing
            else:
                self.raw = open(self.tmp.with_suffix(".raw"), "wb")  # noqa: SIM115 - closed in finish()
        if self.mm is not None:
            if self.rows + len(block) > self.mm.shape[0]:
                raise DataError(f"the image source yielded more than the {self.n} images it announced")
            self.mm[self.rows : self.rows + len(block)] = block
        else:
            self.raw.write(block.tobytes())
        self.rows += len(block)

    def finish(self) -> None:
        if self.width is None:
            raise DataError("no images to score")
        if self.mm is not None:
            if self.rows != self.mm.shape[0]:
                raise DataError(f"the image source yielded {self.rows} images but announced {self.n}")
            self.mm.flush()
            del self.mm
            self.mm = None
            return
        self.raw.close()
        raw_path = self.tmp.with_suffix(".raw")
        try:
            src = np.memmap(raw_path, dtype=self.dtype, mode="r", shape=(self.rows, self.width))
            dst = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=(self.rows, self.width))
            reserve_disk(self.tmp, self.final)
            step = max(1, (64 << 20) // max(1, self.width * self.dtype.itemsize))
            for s in range(0, self.rows, step):
                dst[s : s + step] = src[s : s + step]
            dst.flush()
            del dst, src
        finally:
            raw_path.unlink(missing_ok=True)

    def abort(self) -> None:
        if self.raw is not None and not self.raw.closed:
            self.raw.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.with_suffix(".raw").unlink()


class MemRows:
    """In-memory counterpart of :class:`NpyRows` (used when no path is given)."""

    def __init__(self, dtype: Any):
        self.dtype = np.dtype(dtype)
        self.blocks: list[np.ndarray] = []

    def write(self, block: np.ndarray) -> None:
        self.blocks.append(np.array(block, dtype=self.dtype))

    def result(self) -> np.ndarray:
        if not self.blocks:
            raise DataError("no images to score")
        return np.concatenate(self.blocks, axis=0)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic, byte-reproducible ``.npz`` (``np.savez`` stamps the current time into the zip entries)."""
    import io
    import zipfile

    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
