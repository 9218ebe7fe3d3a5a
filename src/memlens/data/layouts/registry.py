"""The layout registry and auto-detection: which layouts exist, in which order they are tried, and
:func:`detect_layout`.

A layout is registered by adding its module's ``LAYOUT`` to ``_REGISTERED`` (the order of :data:`LAYOUTS`,
used in messages) and its name to :data:`DETECTION_ORDER` (where its ``detect`` rule is tried; the first
match wins, so more specific rules come first and ``folder``, which matches any folder, comes last).
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import ConfigError, DataError
from . import csv, folder, lamem, lnsim, memcat
from .reader import Layout

__all__ = ["LAYOUTS", "DETECTION_ORDER", "get_layout", "detect_layout"]

_REGISTERED: tuple[Layout, ...] = (csv.LAYOUT, memcat.LAYOUT, lamem.LAYOUT, lnsim.LAYOUT, folder.LAYOUT)
_BY_NAME: dict[str, Layout] = {layout.name: layout for layout in _REGISTERED}

LAYOUTS: tuple[str, ...] = tuple(_BY_NAME)
"""The names of the registered layouts."""
DETECTION_ORDER: tuple[str, ...] = ("memcat", "lnsim", "lamem", "csv", "folder")
"""The order in which :func:`detect_layout` tries the layouts' rules (every layout once)."""


def get_layout(name: str) -> Layout:
    """The registered :class:`~.reader.Layout` called ``name`` (``ConfigError`` for an unknown name)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown layout {name!r}; choose one of auto, {', '.join(LAYOUTS)}") from None


def detect_layout(source: str | os.PathLike) -> str:
    """Guess the layout of ``source`` (a folder or a table file).

    Rules, first match wins:

    1. a file named ``memcat_image_data.csv`` -> ``memcat``; any other ``.csv``/``.tsv``/``.tab`` file -> ``csv``;
    2. a folder holding ``memcat_image_data.csv`` -> ``memcat``;
    3. a folder holding ``Random_splits/subject_hrs1.mat`` -> ``lnsim``;
    4. a folder holding ``images/`` and a ``splits/`` folder with ``.txt`` files -> ``lamem``;
    5. a folder holding exactly one table (``.csv``/``.tsv``/``.tab``) at its top level -> ``csv``;
       several tables -> :class:`DataError` (name the table instead);
    6. any other folder -> ``folder`` (images only).

    (Each rule is the ``detect`` function of its layout's module, tried in :data:`DETECTION_ORDER`.)

    Raises
    ------
    DataError
        ``source`` does not exist, is a file that is not a table, or a folder with several tables.
    """
    p = Path(source)
    if not p.exists():
        raise DataError(f"{source}: no such file or folder")
    for name in DETECTION_ORDER:
        try:
            if _BY_NAME[name].detect(p):
                return name
        except DataError as exc:  # the path is in this layout, but ambiguously: say where
            raise DataError(f"{source}: {exc}") from None
    raise DataError(
        f"{source}: not a table (.csv, .tsv) or a folder; give a data folder or a table of image paths"
    )
