"""The contract between a layout reader and the checks every layout shares.

A layout module (``csv.py``, ``memcat.py``, ``lamem.py``, ``lnsim.py``, ``folder.py``) provides one
:class:`Layout`: a ``detect`` rule (does this file or folder look like the layout?) and a ``read``
function that turns the source into a :class:`RawTable` (image paths as written, raw scores and labels,
pass-through columns). Readers append every problem they find to a list instead of raising, and return
None only when nothing usable could be read (after appending a problem that says why).
:func:`~memlens.data.layouts.checks.finalize` then checks paths, scores and duplicates for all layouts
alike and builds the uniform table.

To add a layout: write a module in this package with a reader and a ``LAYOUT = Layout(...)`` (its
``detect_rank`` says when auto-detection tries it), and add a test; the registry finds every module here that
defines ``LAYOUT`` (:mod:`memlens.data.layouts.registry`), and ``--layout`` offers it. Describe it in
``docs/datasets.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ...errors import Problem
from ..halves import SplitHalves

__all__ = ["Layout", "ReadOptions", "RawTable", "strip_where"]


@dataclass(frozen=True)
class ReadOptions:
    """The options of :func:`~memlens.data.layouts.load_dataset` that readers honour.

    ``columns`` maps the roles ``"image"``, ``"score"``, ``"category"`` and ``"subcategory"`` to a column
    name given by the user, or None (auto-detect); ``score_variant`` is memcat's ``"corrected"`` or
    ``"uncorrected"`` (None: the default); ``splits`` are lamem's split files (None or empty: all).
    """

    columns: dict[str, str | None]
    score_variant: str | None = None
    splits: Sequence[str] | None = None
    source: str | None = None  # the source as given (a URI or glob for the parquet layout)


@dataclass
class RawTable:
    """What a layout reader produces before the common path/score checks."""

    root: Path
    refs: list[str]                 # image paths as written (relative to root, or absolute)
    rows: list[str]                 # where each row comes from, for messages ("scores.csv row 3"), or ""
    scores: list[Any] | None = None  # raw values (str or float)
    category: list[Any] | None = None
    subcategory: list[Any] | None = None
    extra: pd.DataFrame | None = None  # pass-through columns aligned with refs
    notes: list[str] = field(default_factory=list)
    halves: SplitHalves | None = None  # aligned with refs
    halves_from_file: bool = False     # csv: halves come from split_halves.npz and may be partial
    empty_where: str = ""
    missing_hint: str = ""  # appended to "missing file"
    #: images that are not files under ``root`` (parquet: cells of bytes, URLs): ``path`` of each row, in which
    #: case ``refs`` are the image ids and no file check applies
    locators: list[str] | None = None
    uri_root: str | None = None  # the data root when it is a URI (``root`` is then meaningless)


@dataclass(frozen=True)
class Layout:
    """A data layout: its name, how to recognise it, and how to read it.

    ``detect(path)`` is given an existing file or folder and says whether it is in this layout; it raises
    :class:`~memlens.errors.DataError` with a reason (no location: the caller adds it) when the path is
    in this layout but ambiguous (e.g. a folder with several tables). ``read(src, options, problems)``
    returns a :class:`RawTable`, or None after appending the problem that prevents reading.
    """

    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, ReadOptions, list[Problem]], RawTable | None]
    #: position in :data:`~memlens.data.layouts.LAYOUTS` (messages, ``--layout`` choices); ties by name
    order: int = 100
    #: when auto-detection tries this layout's ``detect`` (lower first; the first match wins)
    detect_rank: int = 50


def strip_where(message: str, where: str) -> str:
    """``message`` without a leading ``"{where}: "`` (for a :class:`Problem` that names the place itself)."""
    prefix = f"{where}: "
    return message[len(prefix):] if message.startswith(prefix) else message

