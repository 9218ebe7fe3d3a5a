"""Image sources for scoring: a data set, a table, paths, a tensor or an iterable, as batches.

Every source becomes an iterator of ``(image_ids, images, feature_images)`` batches: ``images`` float in
[0, 1], (B, 3, H, W); ``feature_images`` the same images decoded again at the feature size (path sources
whose feature size differs from the model's input size), else None.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import ConfigError, DataError

__all__ = ["model_input_size", "as_paths", "path_batches", "tensor_batches", "iter_batches", "source_length",
           "all_files", "uint8_batch", "located_batches", "located_calibration"]

log = logging.getLogger(__name__)


def model_input_size(model: nn.Module) -> int | None:
    """The side in pixels the model declares (``config["input_size"]`` or ``spec.input_size``), or None."""
    config = getattr(model, "config", None) or {}
    size = config.get("input_size") if isinstance(config, dict) else None
    spec = getattr(model, "spec", None)
    return int(size or getattr(spec, "input_size", 0) or 0) or None


def as_paths(source: Any) -> tuple[list[str], list[str]] | None:
    """(ids, paths) for a Dataset, a DataFrame with ``path`` or a sequence of paths; None otherwise."""
    table = getattr(source, "table", None)
    if isinstance(table, pd.DataFrame):
        source = table
    if isinstance(source, pd.DataFrame):
        if "path" not in source.columns:
            raise DataError("the image table has no 'path' column")
        paths = [str(p) for p in source["path"]]
        ids = [str(i) for i in source["image_id"]] if "image_id" in source.columns else paths
        return ids, paths
    if isinstance(source, (str, os.PathLike)):
        raise DataError(f"{source}: pass a loaded data set (memlens.data.load_dataset) or a list of image paths")
    if isinstance(source, Sequence) and source and all(isinstance(p, (str, os.PathLike)) for p in source):
        paths = [str(p) for p in source]
        return paths, paths
    return None


def path_batches(ids: list[str], paths: list[str], size: int, feature_size: int | None, batch_size: int,
                  num_workers: int, cache: Any,
                  pin_memory: bool = False) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]]:
    """Decoded batches of image files; a second loader decodes them at ``feature_size`` when it differs.

    Images that are not local files (cells of a Parquet data set, URLs: see :mod:`memlens.data.layouts.parquet`)
    are decoded in this process, in order, by :func:`located_batches`.
    """
    from ..data import make_loader

    if not all_files(paths):
        if num_workers:
            log.info("images in Parquet cells or at URLs are decoded in this process (num_workers ignored)")
        yield from located_batches(ids, paths, size, feature_size, batch_size)
        return

    main = make_loader(paths, size, batch_size=batch_size, num_workers=num_workers, cache=cache,
                       pin_memory=pin_memory)
    feat = None
    if feature_size is not None and feature_size != size:
        feat = make_loader(paths, feature_size, batch_size=batch_size, num_workers=num_workers, cache=cache,
                           pin_memory=pin_memory)
    feat_iter = iter(feat) if feat is not None else None
    for images, idx in main:
        fimages = None
        if feat_iter is not None:
            fimages, fidx = next(feat_iter)
            if not torch.equal(torch.as_tensor(idx), torch.as_tensor(fidx)):  # pragma: no cover - loader bug
                raise RuntimeError("image loaders went out of step")
        yield [ids[int(i)] for i in idx], images, fimages


def all_files(paths: Sequence[str]) -> bool:
    """Whether every path is a local file path (not a Parquet-cell locator nor a URL)."""
    from ..data.layouts.parquet import is_locator
    from ..data.uris import is_uri

    return not any(is_locator(p) or is_uri(p) for p in paths)


def uint8_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], the values :func:`memlens.data.make_loader` gives."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(torch.float32).div_(255.0)


def located_batches(ids: list[str], paths: list[str], size: int, feature_size: int | None,
                    batch_size: int) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]]:
    """Batches of images given as Parquet-cell locators, URLs or files, decoded in this process in order."""
    from ..data.layouts.parquet import LocatedReader, load_located

    reader = LocatedReader()
    try:
        for a in range(0, len(paths), batch_size):
            chunk, names = paths[a : a + batch_size], ids[a : a + batch_size]
            images = uint8_batch(load_located(chunk, size, reader, names))
            fimages = None
            if feature_size is not None and feature_size != size:
                fimages = uint8_batch(load_located(chunk, feature_size, reader, names))
            yield list(names), images, fimages
    finally:
        reader.close()


def located_calibration(paths: list[str], size: int | None) -> torch.Tensor:
    """The int8 calibration images (:func:`memlens.quantize.calibration_indices`) of a located source."""
    from ..data.layouts.parquet import load_located
    from ..quantize import calibration_indices

    if size is None:
        raise ConfigError("image_size is needed to decode the int8 calibration images")
    return uint8_batch(load_located([paths[i] for i in calibration_indices(len(paths))], size))


def tensor_batches(images: Any, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor, None]]:
    """Batches of an (N, 3, H, W) tensor or array; ids ``0..N-1``."""
    n = len(images)
    for start in range(0, n, batch_size):
        chunk = torch.as_tensor(np.asarray(images[start : start + batch_size]) if isinstance(images, np.ndarray)
                                else images[start : start + batch_size])
        yield [str(i) for i in range(start, start + len(chunk))], chunk, None


def iter_batches(items: Iterable[Any], batch_size: int) -> Iterator[tuple[list[str], torch.Tensor, None]]:
    """Batches from an iterable of ``(image_id, image)`` pairs or of bare images (ids ``0, 1, ...``)."""
    ids: list[str] = []
    imgs: list[torch.Tensor] = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2:
            image_id, image = item
        else:
            image_id, image = str(i), item
        t = torch.as_tensor(image)
        if t.ndim != 3:
            raise ValueError(f"image {image_id}: expected shape (3, H, W), got {tuple(t.shape)}")
        ids.append(str(image_id))
        imgs.append(t)
        if len(imgs) == batch_size:
            yield ids, torch.stack(imgs), None
            ids, imgs = [], []
    if imgs:
        yield ids, torch.stack(imgs), None


def source_length(source: Any) -> int | None:
    """``len(source)``, or None for a source without a length (a generator)."""
    try:
        return len(source)
    except TypeError:
        return None
