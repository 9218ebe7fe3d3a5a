"""The checks every layout shares: a reader's :class:`~.reader.RawTable` -> the uniform table.

:func:`finalize` resolves image paths against the data root (paths escaping it, missing files, broken or
outside symlinks, folders), checks the scores (missing, non-numeric, outside [0, 1], with a hint for
percentages and decimal commas), drops duplicate ids (the first stays), normalises category labels, renames
source columns that clash with the uniform ones, and aligns the split-half scores. Problems are appended
to a list, never raised.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from ...errors import DataError, Problem
from ..halves import SplitHalves
from .dataset import Dataset
from .image_files import IMAGE_EXTENSIONS
from .reader import RawTable
from .tables import HALVES_FILE

__all__ = ["RESERVED_COLUMNS", "Collected", "finalize"]

RESERVED_COLUMNS: tuple[str, ...] = ("image_id", "path", "score", "category", "subcategory")
_NA_STRINGS = frozenset({"", "na", "n/a", "null", "none", "<na>", "-"})


@dataclass
class Collected:
    """The uniform table of every row that has a usable path (duplicates dropped), plus row flags."""

    source: Path
    root: Path
    layout: str
    table: pd.DataFrame
    bad: np.ndarray  # bool per row of table: a row-level problem was found
    notes: list[str]
    halves: SplitHalves | None
    options: dict[str, Any]

    def dataset(self, keep: np.ndarray | None = None) -> Dataset:
        """The Dataset of the rows flagged ``keep`` (default: the rows without problems)."""
        keep = ~self.bad if keep is None else keep
        table = self.table[keep].reset_index(drop=True)
        halves = self.halves
        if halves is not None:
            try:
                halves = halves.subset(table["image_id"].tolist())
            except DataError:
                halves = None
        return Dataset(self.root, self.layout, table, list(self.notes), halves, self.source, dict(self.options))


def _label(value: Any) -> str | None:
    """A category label: stripped text, or None for a blank or missing cell."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def _check_score(value: Any) -> tuple[float, str | None]:
    """(score, problem or None)."""
    if value is None:
        return math.nan, "missing score"
    if isinstance(value, str):
        s = value.strip()
        if s.lower() in _NA_STRINGS:
            return math.nan, "missing score"
        try:
            x = float(s)
        except ValueError:
            return math.nan, f"non-numeric score {value[:40]!r}"
    else:
        try:
            x = float(value)
        except (TypeError, ValueError):
            return math.nan, f"non-numeric score {str(value)[:40]!r}"
    if math.isnan(x):
        return math.nan, "missing score (NaN)"
    if not 0.0 <= x <= 1.0:
        return math.nan, f"score {x:g} outside [0, 1]"
    return x, None


def _score_hint(values: Sequence[Any]) -> str | None:
    """One line on a pattern behind many score problems: percentages, or decimal commas."""
    numbers, commas, percents = [], 0, 0
    for v in values:
        text = str(v).strip() if v is not None else ""
        if re.fullmatch(r"[-+]?\d+,\d+", text):
            commas += 1
            continue
        if re.fullmatch(r"\d+(?:[.,]\d+)?\s*%", text):
            percents += 1
            continue
        try:
            x = float(text)
        except ValueError:
            continue
        if not math.isnan(x):
            numbers.append(x)
    many = max(3, len(values) // 2 + 1)  # a pattern, not one odd cell
    if percents >= many:
        return (f"{percents} scores are written as percentages (e.g. 72.6%): memorability is a hit rate in "
                "[0, 1]; write 0.726")
    if commas >= many:
        return (f"{commas} scores use a decimal comma (e.g. 0,73): save the table with decimal points, or as "
                "semicolon-separated with points")
    if numbers and min(numbers) >= 0 and max(numbers) <= 100 and sum(x > 1 for x in numbers) >= many:
        return ("the scores look like percentages (0 to 100): memorability is a hit rate in [0, 1], divide them "
                "by 100")
    return None


def _under(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` (POSIX) when inside it, else None."""
    rel = os.path.relpath(path, root)
    if rel == "." or rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        return None
    return PurePosixPath(*Path(rel).parts).as_posix()


def finalize(source: Path, layout: str, raw: RawTable, options: dict[str, Any],
             problems: list[Problem]) -> Collected:
    """Check ``raw`` (read from ``source`` in ``layout``) and build the uniform table of every row with a
    usable path; ``options`` are recorded for reloading."""
    root_abs = os.path.abspath(raw.root)
    root_real = os.path.realpath(raw.root)
    n = len(raw.refs)
    ids: list[str | None] = []
    abs_paths: list[str] = []
    bad = np.zeros(n, dtype=bool)

    def where_of(ref: str, row: str) -> tuple[str, str]:
        return (ref or row or "?"), (f" ({row})" if row else "")

    for k, (ref, row) in enumerate(zip(raw.refs, raw.rows, strict=True)):
        where, ctx = where_of(ref, row)
        ref_norm = ref.replace("\\", "/")
        if not ref_norm:
            problems.append(Problem(row or raw.empty_where, "empty image path"))
            ids.append(None)
            abs_paths.append("")
            bad[k] = True
            continue
        if raw.locators is not None:  # not files under the root: the id as given, the locator as the path
            ids.append(ref_norm)
            abs_paths.append(raw.locators[k])
            continue
        if os.path.isabs(ref_norm):
            p = os.path.normpath(ref_norm)
            rel = _under(p, root_abs) or _under(p, root_real)
            base = root_abs if _under(p, root_abs) else root_real
        else:
            p = os.path.normpath(os.path.join(root_abs, ref_norm))
            rel, base = _under(p, root_abs), root_abs
        if rel is None:
            problems.append(Problem(where, f"path escapes the data root {root_abs}{ctx}"))
            ids.append(None)
            abs_paths.append(p)
            bad[k] = True
            continue
        p = os.path.join(root_abs, rel) if base == root_abs else p
        ids.append(rel)
        abs_paths.append(p)
        if not os.path.lexists(p):
            problems.append(Problem(rel, f"missing file{raw.missing_hint}{ctx}"))
            bad[k] = True
        elif not os.path.exists(p):
            problems.append(Problem(rel, f"broken symbolic link (-> {os.readlink(p)}){ctx}"))
            bad[k] = True
        else:
            real = os.path.realpath(p)
            if _under(real, root_real) is None:
                problems.append(Problem(rel, f"symlink points outside the data root (-> {real}){ctx}"))
                bad[k] = True
            elif os.path.isdir(p):
                problems.append(Problem(rel, f"is a folder, not an image file{ctx}"))
                bad[k] = True

    scores = None
    if raw.scores is not None:
        scores = np.full(n, np.nan)
        for k, value in enumerate(raw.scores):
            x, reason = _check_score(value)
            if reason:
                name = ids[k] or raw.refs[k] or raw.rows[k]
                problems.append(Problem(name, reason + (f" ({raw.rows[k]})" if raw.rows[k] else "")))
                bad[k] = True
            scores[k] = x
        hint = _score_hint(raw.scores)
        if hint:
            problems.append(Problem("scores", hint))

    # duplicates: the first occurrence stays, later ones are dropped
    keep = np.ones(n, dtype=bool)
    positions: dict[str, list[int]] = {}
    for k, i in enumerate(ids):
        if i is not None:
            positions.setdefault(i, []).append(k)
    for image_id, pos in positions.items():
        if len(pos) > 1:
            rows = [raw.rows[k] for k in pos if raw.rows[k]]
            detail = f" ({'; '.join(rows[:4])}{'; ...' if len(rows) > 4 else ''})" if rows else ""
            problems.append(Problem(image_id, f"duplicate image id: listed {len(pos)} times{detail}"))
            bad[pos[0]] = True
            keep[pos[1:]] = False
    keep &= np.array([i is not None for i in ids], dtype=bool) if n else keep

    data: dict[str, Any] = {"image_id": [i if i is not None else "" for i in ids], "path": abs_paths}
    if scores is not None:
        data["score"] = scores
    if raw.category is not None:
        data["category"] = [_label(c) for c in raw.category]
    if raw.subcategory is not None:
        data["subcategory"] = [_label(c) for c in raw.subcategory]
    table = pd.DataFrame(data)
    notes = list(raw.notes)
    if raw.category is not None:
        n_blank = sum(c is None for c, k in zip(data["category"], keep, strict=True) if k)
        if n_blank:
            notes.append(f"{n_blank} image(s) have no category: they are left out of the per-category and "
                         "within-category analyses")
    if raw.extra is not None and len(raw.extra.columns):
        extra = raw.extra.reset_index(drop=True)
        renames = {c: f"source_{c}" for c in extra.columns if c in RESERVED_COLUMNS}
        if renames:
            extra = extra.rename(columns=renames)
            notes.append("source columns renamed to avoid clashes: " + ", ".join(f"{a} -> {b}" for a, b in renames.items()))
        table = pd.concat([table, extra], axis=1)
    table = table[keep].reset_index(drop=True)
    bad = bad[keep]
    if n == 0:
        problems.append(Problem(raw.empty_where or str(source), "empty collection: no images found"
                                + (f" (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})" if layout == "folder" else "")))

    halves = raw.halves
    if halves is not None and raw.halves_from_file:
        try:
            halves = halves.subset(table["image_id"].tolist())
            notes.append(f"split-half scores from {HALVES_FILE} ({halves.n_splits} splits)")
        except DataError as exc:
            notes.append(f"{HALVES_FILE} beside the table ignored ({exc})")
            halves = None
    elif halves is not None:  # aligned with the rows: keep the same rows
        halves = SplitHalves(tuple(table["image_id"]), halves.half1[:, keep], halves.half2[:, keep], halves.kind,
                             tuple(SplitHalves(tuple(table["image_id"]), a.half1[:, keep], a.half2[:, keep], a.kind)
                                   for a in halves.alternatives))
    src_out: Any = Path(os.path.abspath(source)) if raw.uri_root is None else str(source)  # keep a URI's "//"
    return Collected(source=src_out, root=Path(root_abs) if raw.uri_root is None else raw.uri_root, layout=layout,
                     table=table, bad=bad, notes=notes, halves=halves, options=options)

