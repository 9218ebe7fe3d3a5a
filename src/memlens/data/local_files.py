"""Images held in Parquet cells or at URLs, as local files.

Scoring reads such images where they are (:mod:`memlens.data.layouts.parquet`, :mod:`memlens.data.uris`). The
stages that decode images by path many times and in any order (training, explain, fit-predictor, baselines,
the report's thumbnails) read them from files instead: :func:`with_image_files` writes each such image once
under a folder of the run (``RUN/images``) and gives the data set with those files as its paths. The data set
keeps its source, layout and options, so the run still records the Parquet data set, not the copies.

A file's name comes from the image id (readable in messages) and a hash of where the image is: the locator and
the Parquet file's size and modification time, or the URL. A file already there is used again, so a Parquet file
rewritten with another size or modification time gives new copies; one rewritten with the same size within the
file system's time resolution (a second on S3), or new content behind the same URL, is not noticed (remove
``RUN/images`` then). Files are written whole (temp file, then rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from ..errors import DataError, first_line
from .layouts.dataset import Dataset
from .layouts.parquet import LocatedReader, is_locator, parse_locator
from .uris import filesystem_for, is_uri, read_bytes

__all__ = ["with_image_files", "has_remote_images", "parquet_stamps"]

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_FORMATS = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
            (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def _remote(path: str) -> bool:
    return is_locator(path) or is_uri(path)


def has_remote_images(ds: Dataset) -> bool:
    """Whether some image of ``ds`` is a Parquet cell or a URL rather than a local file."""
    return any(_remote(str(p)) for p in ds.paths)


def _extension(data: bytes) -> str:
    for magic, ext in _FORMATS:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"  # decoded by content either way


def _stamp(uri: str) -> str:
    """Size and modification time of a Parquet file (a file rewritten with another size or time gets new copies)."""
    fs, path = filesystem_for(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise DataError(f"{uri}: cannot read ({first_line(exc)})") from None
    return f"{info.size}:{info.mtime_ns}"


def parquet_stamps(ds: Dataset) -> list[str]:
    """``FILE<TAB>SIZE:MTIME`` of every Parquet file whose cells hold images of ``ds`` (what a pipeline's data
    fingerprint adds for them: a rewritten file is changed data)."""
    files = sorted({parse_locator(str(p))[2] for p in ds.paths if is_locator(str(p))})
    return [f"{f}\t{_stamp(f)}" for f in files]


def with_image_files(ds: Dataset, folder: str | os.PathLike) -> Dataset:
    """``ds`` with every image held in a Parquet cell or at a URL (``file://`` included) as a file under
    ``folder``; ``ds`` itself when all its images are local files already.

    Reads in the data set's order with one reader, so each row group is read once; images whose file is
    already there are not read. Raises :class:`DataError` when a Parquet file or URL cannot be read.
    """
    paths = [str(p) for p in ds.paths]
    todo = [k for k, p in enumerate(paths) if _remote(p)]
    if not todo:
        return ds
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the folder of image copies ({exc.strerror or exc})") from None
    have = {p.stem: p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    stamps: dict[str, str] = {}
    ids = [str(i) for i in ds.image_ids]
    out = list(paths)
    reader = LocatedReader()
    written = 0
    try:
        for k in todo:
            p = paths[k]
            if p.startswith("file://"):
                out[k] = p[len("file://"):]
                continue
            if is_locator(p):
                file = parse_locator(p)[2]
                if file not in stamps:
                    stamps[file] = _stamp(file)
                where = f"{p}\n{stamps[file]}"
            else:
                where = p
            readable = _UNSAFE.sub("_", ids[k])[-60:].lstrip(".") or "image"  # never a hidden file
            stem = f"{readable}-{hashlib.sha256(where.encode()).hexdigest()[:16]}"
            if stem in have:
                out[k] = str(folder / have[stem])
                continue
            data: Any = reader.image(p) if is_locator(p) else p
            if isinstance(data, str):  # a URL, or a path held in a Parquet cell
                if not is_uri(data) or data.startswith("file://"):
                    out[k] = data[len("file://"):] if data.startswith("file://") else data
                    continue
                try:
                    data = read_bytes(data)
                except (OSError, ValueError) as exc:
                    raise DataError(f"{ids[k]}: cannot read {data} ({exc})") from None
            data = bytes(data or b"")
            if not data:
                raise DataError(f"{ids[k]}: empty image (no bytes in its cell)")
            name = stem + _extension(data)
            try:
                atomic_write_bytes(folder / name, data)
            except OSError as exc:  # a read-only run folder, a full disk
                raise DataError(f"{folder}: cannot write the copy of {ids[k]} ({exc.strerror or exc})") from None
            have[stem] = name
            out[k] = str(folder / name)
            written += 1
    finally:
        reader.close()
    log.info("images from Parquet cells or URLs as files in %s: %d written, %d there already", folder, written,
             len(todo) - written)
    table = ds.table.copy()
    table["path"] = out
    return dataclasses.replace(ds, table=table)
