"""The layout registry and auto-detection: which layouts exist, in which order they are tried, and
:func:`detect_layout`.

Every module of this package that defines ``LAYOUT`` (a :class:`~.reader.Layout`) is a layout: adding one is
adding one module. ``Layout.order`` places it in :data:`LAYOUTS` (messages, the CLI's ``--layout`` choices);
``Layout.detect_rank`` places its ``detect`` rule in :data:`DETECTION_ORDER` (the first match wins, so more
specific rules come first and ``folder``, which matches any folder, comes last).
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import ConfigError, DataError
from .reader import Layout

__all__ = ["LAYOUTS", "DETECTION_ORDER", "get_layout", "detect_layout", "discover_layouts"]



#: the modules of this package that hold the machinery every layout shares (not layouts themselves)
_SHARED_MODULES = frozenset({"checks", "dataset", "image_files", "loading", "reader", "registry", "tables"})


def discover_layouts(folder: Path | None = None, package: str | None = None) -> tuple[Layout, ...]:
    """The ``LAYOUT`` of every module of ``package`` (default: this one, less its shared machinery), by
    ``order`` (then name)."""
    import importlib
    import pkgutil

    folder, package = folder or Path(__file__).parent, package or __package__
    found = []
    for info in pkgutil.iter_modules([str(folder)]):
        if package == __package__ and info.name in _SHARED_MODULES:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        layout = getattr(module, "LAYOUT", None)
        if isinstance(layout, Layout):
            found.append(layout)
    return tuple(sorted(found, key=lambda lay: (lay.order, lay.name)))


_REGISTERED: tuple[Layout, ...] = discover_layouts()
_BY_NAME: dict[str, Layout] = {layout.name: layout for layout in _REGISTERED}

LAYOUTS: tuple[str, ...] = tuple(_BY_NAME)
"""The names of the registered layouts."""
DETECTION_ORDER: tuple[str, ...] = tuple(lay.name for lay in sorted(_REGISTERED, key=lambda lay: (lay.detect_rank,
                                                                                                    lay.name)))
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
