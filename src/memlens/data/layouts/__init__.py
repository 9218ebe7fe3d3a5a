"""Data set layouts: read ``csv``, ``memcat``, ``lamem``, ``lnsim``, ``folder`` and ``parquet`` collections into
one table.

Every layout yields a :class:`Dataset` whose ``table`` has the columns

``image_id``
    the image's path relative to the data root, POSIX separators, unique;
``path``
    the absolute path of the file (``parquet``: for an image held in a cell, a locator that
    :func:`memlens.data.layouts.parquet.load_located` decodes; for a URL, the URL);
``score`` (when the source has scores)
    memorability in [0, 1];
``category``, ``subcategory`` (when the source has them)
    strings;

followed by the source's other columns (a column whose name collides with one of the above is renamed
``source_<name>``). Rows keep the source's order (``folder``: sorted by ``image_id``).

:func:`load_dataset` checks the table (columns, paths, scores, duplicates) and raises
:class:`~memlens.errors.ValidationError` listing every problem; it does not decode images.
:func:`memlens.data.validate.validate_dataset` does all of that plus decoding, and reports instead of raising.
The layouts and the detection rules are described in ``docs/datasets.md``.

Modules: :mod:`.dataset` (the :class:`Dataset`), :mod:`.loading` (:func:`load_dataset`, :func:`collect`,
:func:`load_run_dataset`), :mod:`.registry` (the layouts and :func:`detect_layout`), :mod:`.reader` (what
a layout reader gets and returns), one module per layout (:mod:`.csv`, :mod:`.memcat`, :mod:`.lamem`,
:mod:`.lnsim`, :mod:`.folder`, :mod:`.parquet`), :mod:`.tables` (reading tables), :mod:`.image_files`
(finding images) and :mod:`.checks` (the path/score/duplicate checks every layout shares). To add a layout, see :mod:`.reader`.
"""

from __future__ import annotations

from .checks import RESERVED_COLUMNS, Collected
from .csv import CATEGORY_COLUMNS, IMAGE_COLUMNS, SCORE_COLUMNS, SUBCATEGORY_COLUMNS, TABLE_EXTENSIONS
from .dataset import Dataset
from .image_files import IMAGE_EXTENSIONS, find_images
from .lamem import LAMEM_IMAGES, LAMEM_SPLITS
from .lnsim import LNSIM_IMAGES, LNSIM_SPLITS
from .loading import collect, load_dataset, load_run_dataset
from .memcat import MEMCAT_SCORE_COLUMNS, MEMCAT_TABLE
from .reader import Layout, RawTable, ReadOptions
from .registry import DETECTION_ORDER, LAYOUTS, detect_layout, get_layout
from .tables import HALVES_FILE, table_separator

__all__ = [
    "Dataset",
    "load_dataset",
    "load_run_dataset",
    "collect",
    "Collected",
    "detect_layout",
    "LAYOUTS",
    "DETECTION_ORDER",
    "get_layout",
    "Layout",
    "ReadOptions",
    "RawTable",
    "IMAGE_EXTENSIONS",
    "TABLE_EXTENSIONS",
    "MEMCAT_TABLE",
    "MEMCAT_SCORE_COLUMNS",
    "LAMEM_IMAGES",
    "LAMEM_SPLITS",
    "LNSIM_IMAGES",
    "LNSIM_SPLITS",
    "HALVES_FILE",
    "IMAGE_COLUMNS",
    "SCORE_COLUMNS",
    "CATEGORY_COLUMNS",
    "SUBCATEGORY_COLUMNS",
    "RESERVED_COLUMNS",
    "find_images",
    "table_separator",
]
