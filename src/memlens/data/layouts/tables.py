"""Reading tables (shared by the ``csv``, ``memcat`` and ``lamem`` layouts): text decoding, the separator,
parsing, choosing columns, the raw table of a parsed table, and the ``split_halves.npz`` beside a table.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError, Problem
from ..halves import load_split_halves
from .reader import RawTable, strip_where

__all__ = [
    "HALVES_FILE",
    "read_table_text",
    "table_separator",
    "parse_table",
    "pick_column",
    "table_to_raw",
    "attach_halves",
]

HALVES_FILE = "split_halves.npz"


def read_table_text(path: Path, problems: list[Problem]) -> str | None:
    """The table's text (UTF-8 with or without BOM, or UTF-16 with BOM), or None with a problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(str(path), f"cannot read the table ({exc.strerror or exc})"))
        return None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with its byte-order mark (Excel's "Unicode text")
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass  # not UTF-16 after all: reported below
    if b"\x00" in data[:8192]:
        problems.append(Problem(str(path), "not a text table (binary content, e.g. a spreadsheet saved "
                                           "with a .csv name); export it as UTF-8 CSV"))
        return None
    for encoding in ("utf-8", "utf-8-sig"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            err = exc
            continue
        return text[1:] if text.startswith("\ufeff") else text
    bad = data[err.start:err.start + 1]
    problems.append(Problem(
        str(path),
        f"unreadable table encoding: not UTF-8 (byte 0x{bad.hex()} at offset {err.start}; tried utf-8 and "
        "utf-8-sig); save the table as UTF-8",
    ))
    return None


def table_separator(path: Path, text: str) -> tuple[str, int]:
    """How to split the table file ``path`` whose text is ``text``: ``(separator, lines before the header)``.

    Excel's ``sep=;`` first line names the separator (that line is skipped; it is not stripped, so
    ``sep=`` followed by a tab or a space is kept); a ``.tsv``/``.tab`` file uses tabs; otherwise the most
    frequent of comma, tab and semicolon in the header line wins (a comma when none occurs). ``text`` may be
    the first line alone. ``memlens check`` (every table layout) and ``memlens stats`` read tables this way.
    """
    first = text.split("\n", 1)[0].rstrip("\r\n")
    excel = re.fullmatch(r"sep=(.)", first)
    if excel:
        return excel.group(1), 1
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t", 0
    counts = {sep: first.count(sep) for sep in (",", "\t", ";")}
    best = max(counts, key=lambda s: counts[s])
    return (best if counts[best] > 0 else ","), 0


def parse_table(path: Path, problems: list[Problem]) -> tuple[pd.DataFrame, pd.DataFrame, list[int]] | None:
    """Read a table twice: as strings (for exact checks) and with type inference (pass-through columns).

    Returns (strings, typed, line numbers of the rows) or None with a problem.
    """
    text = read_table_text(path, problems)
    if text is None:
        return None
    if not text.strip():
        problems.append(Problem(str(path), "empty table (no header line, no rows): empty collection"))
        return None
    sep, skip = table_separator(path, text)
    try:
        strings = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                              skip_blank_lines=False, skiprows=skip)
        typed = pd.read_csv(io.StringIO(text), sep=sep, skip_blank_lines=False, skiprows=skip)
    except (pd.errors.ParserError, ValueError) as exc:
        msg = " ".join(str(exc).split())
        problems.append(Problem(str(path), f"cannot parse the table ({msg})"))
        return None
    strings.columns = [str(c).strip() for c in strings.columns]
    typed.columns = list(strings.columns)
    if len(strings) != len(typed):  # pragma: no cover - both reads see the same rows
        typed = strings.copy()
    blank = (strings == "").all(axis=1).to_numpy() if len(strings.columns) else np.zeros(len(strings), bool)
    lines = [i + 2 + skip for i in range(len(strings)) if not blank[i]]
    strings = strings[~blank].reset_index(drop=True)
    typed = typed[~blank].reset_index(drop=True)
    # An unnamed first column holding 1..n or 0..n-1 is a row index written by R or pandas: drop it.
    first = strings.columns[0] if len(strings.columns) else None
    if first is not None and (first == "" or first.startswith("Unnamed: 0")):
        vals = pd.to_numeric(strings[first], errors="coerce").to_numpy()
        n = len(vals)
        if n and (np.array_equal(vals, np.arange(1, n + 1)) or np.array_equal(vals, np.arange(n))):
            strings = strings.drop(columns=[first])
            typed = typed.drop(columns=[first])
    return strings, typed, lines


def pick_column(columns: Sequence[str], explicit: str | None, candidates: Sequence[str], flag: str,
                where: str, problems: list[Problem]) -> str | None:
    """The column named by ``explicit`` (a problem when absent) or the first candidate present."""
    if explicit is not None:
        if explicit in columns:
            return explicit
        lower = {c.lower(): c for c in columns}
        if explicit.lower() in lower:
            return lower[explicit.lower()]
        problems.append(Problem(where, f"missing required column {explicit!r} (given by {flag}); columns "
                                       f"found: {', '.join(columns) or 'none'}"))
        return None
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def table_to_raw(table_path: Path, root: Path, strings: pd.DataFrame, typed: pd.DataFrame, lines: list[int],
                 image: str, score: str | None, category: str | None, subcategory: str | None,
                 keep_columns: Sequence[str] = ()) -> RawTable:
    """The raw table of a parsed table: images, scores and labels from the chosen columns (as strings),
    every other column (and ``keep_columns``) passed through with inferred types."""
    used = [c for c in (image, score, category, subcategory) if c is not None and c not in keep_columns]
    extra = typed.drop(columns=used)
    name = table_path.name
    return RawTable(
        root=root,
        refs=[v.strip() for v in strings[image].tolist()],
        rows=[f"{name} line {ln}" for ln in lines],
        scores=strings[score].tolist() if score is not None else None,
        category=strings[category].tolist() if category is not None else None,
        subcategory=strings[subcategory].tolist() if subcategory is not None else None,
        extra=extra,
        empty_where=str(table_path),
    )


def attach_halves(raw: RawTable, folder: Path) -> None:
    """Attach the split-half scores of a ``split_halves.npz`` beside the table (csv and memcat layouts)."""
    halves_file = folder / HALVES_FILE
    if halves_file.is_file():
        try:
            raw.halves = load_split_halves(halves_file)
            raw.halves_from_file = True
        except DataError as exc:
            raw.notes.append(f"{HALVES_FILE} beside the table ignored ({strip_where(str(exc), str(halves_file))})")
