"""Validate a data set in one pass and report every problem (``memlens check``).

:func:`validate_dataset` reads the table like :func:`~memlens.data.layouts.load_dataset` but collects
problems instead of raising, then decodes every usable image completely. Problems (one
:class:`~memlens.errors.Problem` each, ``where: reason``):

* table: missing file or folder, unreadable encoding (not UTF-8), unparsable, missing required columns,
  empty collection;
* rows: missing file, path escaping the data root (``../``, absolute path outside, symlink pointing
  outside), duplicate image id, missing / NaN / non-numeric score, score outside [0, 1];
* images: zero-byte, truncated, corrupt, not an image despite an image extension, more pixels than
  ``max_pixels`` (decompression bomb).

Accepted and counted in ``notes``: grayscale, palette, transparency (composited on white), CMYK, 16-bit,
EXIF-rotated images, upper-case extensions, non-ASCII file names.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..errors import Problem, ValidationError
from .image_bytes import verify_image_ref
from .images import DEFAULT_MAX_PIXELS, ImageReadError, image_notes
from .layouts import Dataset, collect
from .layouts.parquet import LocatedReader

__all__ = ["ValidationReport", "validate_dataset"]

log = logging.getLogger(__name__)

_NOTE_TEXT = {
    "grayscale": "{n} grayscale image{s} converted to RGB",
    "palette": "{n} palette image{s} converted to RGB",
    "alpha": "{n} image{s} with transparency composited on white",
    "CMYK": "{n} CMYK image{s} converted to RGB",
    "16-bit": "{n} 16-bit image{s} scaled to 8 bits",
    "float": "{n} floating-point image{s} scaled to 8 bits",
    "exif": "{n} EXIF-rotated image{s} turned upright",
    "uppercase-ext": "{n} file name{s} with an upper-case extension accepted",
    "non-ascii": "{n} file name{s} with non-ASCII characters accepted",
}


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_dataset`.

    Attributes
    ----------
    source : str
        What was checked.
    layout : str or None
        The layout used (None when it could not be determined).
    problems : list of Problem
        Every problem found, in table order (table-level problems first).
    notes : list of str
        What was chosen or converted (e.g. "3 grayscale images converted to RGB").
    dataset : Dataset or None
        The rows without problems (None when the table itself could not be read).
    conversions : dict
        Count per conversion kind (``grayscale``, ``alpha``, ``exif``, ...).
    """

    source: str
    layout: str | None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dataset: Dataset | None = None
    conversions: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems and self.dataset is not None

    @property
    def summary(self) -> dict[str, Any]:
        """:meth:`Dataset.summary` of the rows without problems (``n_images`` 0 when none)."""
        if self.dataset is None:
            return {"n_images": 0, "layout": self.layout, "root": None, "score": None, "categories": None,
                    "n_without_category": None,
                    "n_subcategories": None, "has_halves": False}
        return self.dataset.summary()

    def lines(self) -> list[str]:
        """One ``where: reason`` line per problem."""
        return [str(p) for p in self.problems]

    def raise_for_problems(self) -> None:
        """Raise :class:`~memlens.errors.ValidationError` listing every problem, if any."""
        if self.problems:
            n = len(self.problems)
            raise ValidationError(self.problems, header=f"{self.source}: {n} problem{'s' if n != 1 else ''}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: source, layout, ok, n_problems, problems, notes, conversions, summary."""
        return {
            "source": self.source,
            "layout": self.layout,
            "ok": self.ok,
            "n_problems": len(self.problems),
            "problems": [{"where": p.where, "reason": p.reason} for p in self.problems],
            "notes": list(self.notes),
            "conversions": dict(self.conversions),
            "summary": self.summary,
        }


def validate_dataset(
    source: str | os.PathLike,
    layout: str = "auto",
    *,
    image_col: str | None = None,
    score_col: str | None = None,
    category_col: str | None = None,
    subcategory_col: str | None = None,
    score_variant: str | None = None,
    splits: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_images: bool = True,
    n_jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Check a data set and report every problem in one pass; data problems never raise.

    Parameters
    ----------
    source, layout, image_col, score_col, category_col, subcategory_col, score_variant, splits
        As for :func:`~memlens.data.layouts.load_dataset`.
    max_pixels : int
        Images with more pixels are reported (decompression-bomb guard).
    check_images : bool
        Decode every image (default). False checks only the table, paths and scores.
    n_jobs : int, optional
        Decoding threads (default: up to 4, at most the number of CPUs).
    progress : callable(done, total), optional
        Called after each image is checked (the CLI's progress bar).

    Returns
    -------
    ValidationReport

    Raises
    ------
    ConfigError
        An option (not the data) is invalid, e.g. an unknown layout name.

    Examples
    --------
    >>> import memlens
    >>> # data: a folder made by memlens.make_demo_set (or your own images)
    >>> report = memlens.validate_dataset(data)  # decodes every image; lists every problem
    >>> report.ok, report.summary["n_images"], [str(p) for p in report.problems]
    (True, 40, [])
    """
    problems: list[Problem] = []
    collected = collect(
        source, layout, problems, image_col=image_col, score_col=score_col, category_col=category_col,
        subcategory_col=subcategory_col, score_variant=score_variant, splits=splits,
    )
    if collected is None:
        return ValidationReport(str(source), None if layout == "auto" else layout, problems)

    table = collected.table
    bad = collected.bad.copy()
    paths = table["path"].tolist()
    ids = table["image_id"].tolist()
    todo = [k for k in range(len(table)) if not bad[k]]
    counts: Counter[str] = Counter()
    image_problems: dict[int, Problem] = {}

    if check_images and todo:
        workers = n_jobs if n_jobs is not None else min(4, os.cpu_count() or 1)

        local = threading.local()  # a LocatedReader per thread (Parquet cells): not shared between threads
        readers: list[LocatedReader] = []  # all of them, closed when the pass is over

        def check(k: int) -> tuple[int, list[str] | None, str | None]:
            if not hasattr(local, "reader"):
                local.reader = LocatedReader()
                readers.append(local.reader)  # list.append is atomic
            try:
                return k, verify_image_ref(paths[k], str(ids[k]), max_pixels, local.reader), None
            except ImageReadError as exc:
                return k, None, exc.reason

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                if workers > 1:
                    with ThreadPoolExecutor(max_workers=workers) as pool:
                        results = pool.map(check, todo, chunksize=16)
                        _consume(results, ids, counts, image_problems, progress, len(todo))
                else:
                    _consume(map(check, todo), ids, counts, image_problems, progress, len(todo))
            finally:
                for reader in readers:
                    reader.close()
    else:
        for k in todo:
            counts.update(image_notes(paths[k], []))

    for k in image_problems:
        bad[k] = True
    problems.extend(image_problems[k] for k in sorted(image_problems))

    notes = list(collected.notes)
    for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        text = _NOTE_TEXT.get(kind, "{n} {kind} image{s} converted to RGB")
        notes.append(text.format(n=n, s="" if n == 1 else "s", kind=kind))
    if not check_images:
        notes.append("images not decoded (check_images=False)")
    dataset = collected.dataset(keep=~bad)
    return ValidationReport(str(source), collected.layout, problems, notes, dataset, dict(counts))


def _consume(results: Any, ids: list[str], counts: Counter[str], image_problems: dict[int, Problem],
             progress: Callable[[int, int], None] | None, total: int) -> None:
    for done, (k, tags, reason) in enumerate(results, start=1):
        if reason is not None:
            image_problems[k] = Problem(ids[k], reason)
        else:
            counts.update(tags)
        if progress is not None:
            progress(done, total)
