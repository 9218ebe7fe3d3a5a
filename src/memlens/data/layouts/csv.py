"""The ``csv`` layout: a table of image paths (``.csv``, ``.tsv`` or ``.tab``), optionally with scores and
categories; columns are auto-detected by name or given explicitly. Paths are relative to the table's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ...errors import DataError, Problem
from .image_files import IMAGE_EXTENSIONS
from .reader import Layout, RawTable, ReadOptions
from .tables import attach_halves, parse_table, pick_column, table_to_raw

__all__ = [
    "LAYOUT",
    "TABLE_EXTENSIONS",
    "IMAGE_COLUMNS",
    "SCORE_COLUMNS",
    "CATEGORY_COLUMNS",
    "SUBCATEGORY_COLUMNS",
    "detect_csv",
    "read_csv_layout",
]

TABLE_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".tab")

# Column auto-detection for tables: the first name present (case-insensitive) wins.
IMAGE_COLUMNS: tuple[str, ...] = (
    "image", "image_id", "image_file", "image_path", "image_name", "img", "filename", "file_name", "file",
    "filepath", "file_path", "path",
)
SCORE_COLUMNS: tuple[str, ...] = (
    "score", "memorability", "memorability_score", "mem_score", "memorability_w_fa_correction", "hit_rate",
)
CATEGORY_COLUMNS: tuple[str, ...] = ("category", "class", "scene_category")
SUBCATEGORY_COLUMNS: tuple[str, ...] = ("subcategory", "sub_category", "subclass")


def _tables_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in TABLE_EXTENSIONS
    )


def detect_csv(path: Path) -> bool:
    """A table file, or a folder holding exactly one table at its top level (several: ``DataError``)."""
    if path.is_file():
        return path.suffix.lower() in TABLE_EXTENSIONS
    tables = _tables_in(path)
    if len(tables) > 1:
        names = ", ".join(t.name for t in tables)
        raise DataError(f"several tables ({names}); give the table to use instead of the folder")
    return len(tables) == 1


def _image_column_fallback(strings: pd.DataFrame, exclude: set[str]) -> str | None:
    """The first column whose every non-empty value ends with an image extension."""
    for col in strings.columns:
        if col in exclude:
            continue
        vals = [v for v in strings[col].tolist() if v.strip()]
        if vals and all(os.path.splitext(v.strip())[1].lower() in IMAGE_EXTENSIONS for v in vals):
            return col
    return None


def read_csv_layout(src: Path, options: ReadOptions, problems: list[Problem]) -> RawTable | None:
    """Read a table (or the one table in the folder ``src``); honours the explicit column names."""
    cols = options.columns
    if src.is_dir():
        tables = _tables_in(src)
        if len(tables) != 1:
            found = ", ".join(t.name for t in tables) or "none"
            problems.append(Problem(str(src), f"the csv layout needs exactly one table (.csv, .tsv) in the "
                                              f"folder, found: {found}; give the table itself"))
            return None
        table_path = tables[0]
    else:
        table_path = src
    parsed = parse_table(table_path, problems)
    if parsed is None:
        return None
    strings, typed, lines = parsed
    columns = list(strings.columns)
    where = str(table_path)
    n0 = len(problems)
    image = pick_column(columns, cols["image"], IMAGE_COLUMNS, "--image-col", where, problems)
    score = pick_column(columns, cols["score"], SCORE_COLUMNS, "--score-col", where, problems)
    category = pick_column(columns, cols["category"], CATEGORY_COLUMNS, "--category-col", where, problems)
    subcategory = pick_column(columns, cols["subcategory"], SUBCATEGORY_COLUMNS, "--subcategory-col", where,
                              problems)
    if len(problems) > n0:
        return None
    if image is None:
        image = _image_column_fallback(strings, {c for c in (score, category, subcategory) if c})
    if image is None:
        problems.append(Problem(where, "missing required column: no image-path column (looked for "
                                       f"{', '.join(IMAGE_COLUMNS)}; use --image-col); columns found: "
                                       f"{', '.join(columns) or 'none'}"))
        return None
    chosen = [c for c in (image, score, category, subcategory) if c is not None]
    if len(set(chosen)) != len(chosen):
        problems.append(Problem(where, f"one column chosen for two roles ({', '.join(chosen)})"))
        return None
    raw = table_to_raw(table_path, table_path.parent, strings, typed, lines, image, score, category,
                       subcategory)
    raw.notes.append(f"table {table_path.name}: images from column {image!r}"
                     + (f", scores from {score!r}" if score else ", no score column")
                     + (f", categories from {category!r}" if category else ""))
    attach_halves(raw, table_path.parent)
    return raw


LAYOUT = Layout("csv", detect=detect_csv, read=read_csv_layout, order=0, detect_rank=40)
