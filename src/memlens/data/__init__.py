"""Data sets: layouts (csv, memcat, lamem, lnsim, folder), validation, image decoding and caching,
split-half human scores, and the embedded synthetic demo set.

Every layout is read into one uniform table (:class:`Dataset.table`) with columns ``image_id`` (path
relative to the data root, POSIX separators), ``path`` (absolute), ``score`` (optional), ``category`` and
``subcategory`` (optional), followed by the source's other columns.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Dataset": "memlens.data.layouts",
    "load_dataset": "memlens.data.layouts",
    "load_run_dataset": "memlens.data.layouts",
    "detect_layout": "memlens.data.layouts",
    "LAYOUTS": "memlens.data.layouts",
    "validate_dataset": "memlens.data.validate",
    "ValidationReport": "memlens.data.validate",
    "read_image": "memlens.data.images",
    "prepare_image": "memlens.data.images",
    "prepare_image_aspect": "memlens.data.images",
    "to_rgb": "memlens.data.images",
    "collect_inputs": "memlens.data.inputs",
    "load_image": "memlens.data.images",
    "load_image_aspect": "memlens.data.images",
    "image_batch": "memlens.data.images",
    "ImageCache": "memlens.data.cache",
    "ImageDataset": "memlens.data.images",
    "make_loader": "memlens.data.images",
    "SplitHalves": "memlens.data.halves",
    "load_split_halves": "memlens.data.halves",
    "make_demo_set": "memlens.data.demo",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memlens.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
