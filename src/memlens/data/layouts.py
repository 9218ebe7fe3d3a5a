"""Data set layouts: read ``csv``, ``memcat``, ``lamem``, ``lnsim`` and ``folder`` collections into one table.

Every layout yields a :class:`Dataset` whose ``table`` has the columns

``image_id``
    the image's path relative to the data root, POSIX separators, unique;
``path``
    the absolute path of the file;
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
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError, Problem, ValidationError
from .halves import SplitHalves, lnsim_image_ids, load_split_halves

__all__ = [
    "Dataset",
    "load_dataset",
    "detect_layout",
    "LAYOUTS",
    "IMAGE_EXTENSIONS",
    "MEMCAT_TABLE",
    "MEMCAT_SCORE_COLUMNS",
    "IMAGE_COLUMNS",
    "SCORE_COLUMNS",
    "CATEGORY_COLUMNS",
    "SUBCATEGORY_COLUMNS",
    "find_images",
]

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("csv", "memcat", "lamem", "lnsim", "folder")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
TABLE_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".tab")
MEMCAT_TABLE = "memcat_image_data.csv"
MEMCAT_SCORE_COLUMNS: dict[str, str] = {
    "corrected": "memorability_w_fa_correction",
    "uncorrected": "memorability_wo_fa_correction",
}
LNSIM_IMAGES, LNSIM_SPLITS = "Image_data", "Random_splits"
LAMEM_IMAGES, LAMEM_SPLITS = "images", "splits"
HALVES_FILE = "split_halves.npz"

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
RESERVED_COLUMNS: tuple[str, ...] = ("image_id", "path", "score", "category", "subcategory")
_NA_STRINGS = frozenset({"", "na", "n/a", "null", "none", "<na>", "-"})


# --------------------------------------------------------------------------------------------------------
# The Dataset
# --------------------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A collection of images with (optional) memorability scores, read from one of the layouts.

    Attributes
    ----------
    root : Path
        The data root; ``image_id`` values are relative to it.
    layout : str
        One of :data:`LAYOUTS`.
    table : pandas.DataFrame
        ``image_id``, ``path``, ``score``?, ``category``?, ``subcategory``?, then the source's other columns.
    notes : list of str
        What was chosen or converted while reading (e.g. which score column).
    halves : SplitHalves or None
        Split-half human scores aligned with ``table`` (the noise ceiling), when the source has them.
    source : Path or None
        What was given to :func:`load_dataset` (a folder or a table file).
    options : dict
        The options given to :func:`load_dataset` other than ``source`` and ``layout`` (column names,
        ``score_variant``, ``splits``), for reloading.
    """

    root: Path
    layout: str
    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    halves: SplitHalves | None = None
    source: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def has_scores(self) -> bool:
        """Whether the table has a ``score`` column."""
        return "score" in self.table.columns

    @property
    def image_ids(self) -> list[str]:
        return self.table["image_id"].tolist()

    @property
    def paths(self) -> list[str]:
        return self.table["path"].tolist()

    @property
    def scores(self) -> np.ndarray | None:
        """The scores as float64, or None without a score column."""
        return self.table["score"].to_numpy(dtype=float) if self.has_scores else None

    def subset(self, image_ids: Iterable[str]) -> Dataset:
        """The rows whose ``image_id`` is in ``image_ids``, in that order (halves restricted alike)."""
        ids = list(image_ids)
        index = pd.Index(self.table["image_id"])
        pos = index.get_indexer(ids)
        if (pos < 0).any():
            missing = [i for i, p in zip(ids, pos, strict=True) if p < 0]
            raise DataError(f"{len(missing)} image ids are not in the data set, e.g. {missing[0]}")
        table = self.table.iloc[pos].reset_index(drop=True)
        halves = self.halves.subset(ids) if self.halves is not None else None
        return Dataset(self.root, self.layout, table, list(self.notes), halves, self.source, dict(self.options))

    def spec(self) -> dict[str, Any]:
        """Keyword arguments of :func:`load_dataset` that read this data set again (JSON-serialisable)."""
        return {"source": str(self.source if self.source is not None else self.root), "layout": self.layout,
                **self.options}

    def to_record(self) -> dict[str, Any]:
        """What a run's ``dataset.json`` stores: ``source``, ``root``, ``layout``, ``options``, ``n_images``
        (reload with ``load_dataset(rec["source"], rec["layout"], **rec["options"])``)."""
        return {"source": str(self.source if self.source is not None else self.root), "root": str(self.root),
                "layout": self.layout, "options": dict(self.options), "n_images": len(self)}

    def summary(self) -> dict[str, Any]:
        """Counts and score statistics: ``n_images``, ``layout``, ``root``, ``score`` (n, mean, sd with
        ddof=1, min, max) or None, ``categories`` ({name: count}, sorted by name) or None,
        ``n_without_category`` (blank category cells), ``n_subcategories`` or None, ``has_halves``."""
        out: dict[str, Any] = {"n_images": len(self), "layout": self.layout, "root": str(self.root)}
        if self.has_scores and len(self):
            s = self.table["score"].to_numpy(dtype=float)
            out["score"] = {
                "n": int(s.size),
                "mean": float(s.mean()),
                "sd": float(s.std(ddof=1)) if s.size > 1 else float("nan"),
                "min": float(s.min()),
                "max": float(s.max()),
            }
        else:
            out["score"] = None
        if "category" in self.table.columns:
            counts = self.table["category"].dropna().astype(str).value_counts()
            out["categories"] = {str(k): int(counts[k]) for k in sorted(counts.index)}
            out["n_without_category"] = int(self.table["category"].isna().sum())
        else:
            out["categories"] = None
        if "subcategory" in self.table.columns:
            sub = self.table[["category", "subcategory"]] if "category" in self.table else self.table[["subcategory"]]
            out["n_subcategories"] = int(len(sub.drop_duplicates()))
        else:
            out["n_subcategories"] = None
        out["has_halves"] = self.halves is not None
        return out


# --------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------
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

    Raises
    ------
    DataError
        ``source`` does not exist, is a file that is not a table, or a folder with several tables.
    """
    p = Path(source)
    if not p.exists():
        raise DataError(f"{source}: no such file or folder")
    if p.is_file():
        if p.name.lower() == MEMCAT_TABLE:
            return "memcat"
        if p.suffix.lower() in TABLE_EXTENSIONS:
            return "csv"
        raise DataError(
            f"{source}: not a table (.csv, .tsv) or a folder; give a data folder or a table of image paths"
        )
    if (p / MEMCAT_TABLE).is_file():
        return "memcat"
    if (p / LNSIM_SPLITS / "subject_hrs1.mat").is_file():
        return "lnsim"
    if (p / LAMEM_IMAGES).is_dir() and (p / LAMEM_SPLITS).is_dir() and any((p / LAMEM_SPLITS).glob("*.txt")):
        return "lamem"
    tables = _tables_in(p)
    if len(tables) == 1:
        return "csv"
    if len(tables) > 1:
        names = ", ".join(t.name for t in tables)
        raise DataError(f"{source}: several tables ({names}); give the table to use instead of the folder")
    return "folder"


def load_dataset(
    source: str | os.PathLike,
    layout: str = "auto",
    *,
    image_col: str | None = None,
    score_col: str | None = None,
    category_col: str | None = None,
    subcategory_col: str | None = None,
    score_variant: str | None = None,
    splits: Sequence[str] | None = None,
) -> Dataset:
    """Read a data set into the uniform table (see the module docstring and ``docs/datasets.md``).

    Parameters
    ----------
    source : path
        A data folder or a table file.
    layout : {"auto", "csv", "memcat", "lamem", "lnsim", "folder"}
        ``"auto"`` uses :func:`detect_layout`.
    image_col, score_col, category_col, subcategory_col : str, optional
        Table columns to use instead of the auto-detected ones (``csv``; also honoured by ``memcat``).
    score_variant : {"corrected", "uncorrected"}, optional
        ``memcat`` only: the false-alarm corrected score (default) or the raw hit rate.
    splits : list of str, optional
        ``lamem`` only: split files to read, e.g. ``["train_1", "val_1"]`` (default: every split file).

    Returns
    -------
    Dataset

    Raises
    ------
    ValidationError
        The table has problems (missing columns or files, bad scores, duplicate ids, paths escaping the
        root, ...); every problem is listed. Images are not decoded here: use ``validate_dataset``.
    ConfigError
        An option has an invalid value.
    """
    problems: list[Problem] = []
    collected = collect(
        source, layout, problems, image_col=image_col, score_col=score_col, category_col=category_col,
        subcategory_col=subcategory_col, score_variant=score_variant, splits=splits,
    )
    if problems or collected is None:
        n = len(problems)
        raise ValidationError(
            problems, header=f"{source}: {n} problem{'s' if n != 1 else ''} in the data set "
            "(`memlens check` lists them all)"
        )
    return collected.dataset()


def find_images(root: str | os.PathLike) -> list[str]:
    """Image files under ``root`` (recursive, hidden files and folders skipped, symlinked folders not
    followed), as sorted POSIX paths relative to ``root``."""
    return _walk_images(Path(root))[0]


def _label(value: Any) -> str | None:
    """A category label: stripped text, or None for a blank or missing cell."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def _walk_images(root: Path) -> tuple[list[str], int]:
    """(sorted relative image paths, number of symlinked folders not followed)."""
    found: list[str] = []
    links = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        links += sum(os.path.islink(os.path.join(dirpath, d)) for d in dirnames)
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            found.append((rel_dir / name).as_posix())
    return sorted(found), links


# --------------------------------------------------------------------------------------------------------
# Collection: every layout -> _Raw -> _Collected (problems appended, never raised)
# --------------------------------------------------------------------------------------------------------
@dataclass
class _Raw:
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


@dataclass
class _Collected:
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


def collect(
    source: str | os.PathLike,
    layout: str,
    problems: list[Problem],
    *,
    image_col: str | None = None,
    score_col: str | None = None,
    category_col: str | None = None,
    subcategory_col: str | None = None,
    score_variant: str | None = None,
    splits: Sequence[str] | None = None,
) -> _Collected | None:
    """Read ``source`` appending every table-level and row-level problem to ``problems``.

    Returns None when nothing usable could be read (e.g. missing source, missing required column).
    Used by :func:`load_dataset` (which raises on any problem) and by the validator (which reports).
    """
    src = Path(source)
    if layout not in ("auto", *LAYOUTS):
        raise ConfigError(f"unknown layout {layout!r}; choose one of auto, {', '.join(LAYOUTS)}")
    if score_variant is not None and score_variant not in MEMCAT_SCORE_COLUMNS:
        raise ConfigError(f"unknown score variant {score_variant!r}; choose corrected or uncorrected")
    if not src.exists():
        problems.append(Problem(str(source), "no such file or folder"))
        return None
    if layout == "auto":
        try:
            layout = detect_layout(src)
        except DataError as exc:
            problems.append(Problem(str(source), _strip_where(str(exc), str(source))))
            return None
    options: dict[str, Any] = {}
    for key, value in (("image_col", image_col), ("score_col", score_col), ("category_col", category_col),
                       ("subcategory_col", subcategory_col), ("score_variant", score_variant)):
        if value is not None:
            options[key] = value
    if splits:
        options["splits"] = list(splits)
    cols = {"image": image_col, "score": score_col, "category": category_col, "subcategory": subcategory_col}
    n_before = len(problems)
    if layout == "csv":
        raw = _read_csv_layout(src, cols, problems)
    elif layout == "memcat":
        raw = _read_memcat(src, cols, score_variant or "corrected", problems)
    elif layout == "lamem":
        raw = _read_lamem(src, splits, problems)
    elif layout == "lnsim":
        raw = _read_lnsim(src, problems)
    else:
        raw = _read_folder(src, problems)
    if raw is None:
        if len(problems) == n_before:  # pragma: no cover - readers always explain a None
            problems.append(Problem(str(source), f"cannot be read as a {layout} data set"))
        return None
    return _finalize(src, layout, raw, options, problems)


# --------------------------------------------------------------------------------------------------------
# Layout readers
# --------------------------------------------------------------------------------------------------------
def _tables_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in TABLE_EXTENSIONS
    )


def _strip_where(message: str, where: str) -> str:
    prefix = f"{where}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _read_table_text(path: Path, problems: list[Problem]) -> str | None:
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


def _separator(path: Path, text: str) -> tuple[str, int]:
    """(separator, lines before the header): Excel's ``sep=;`` first line names it (not ``strip()``: ``sep=\t``
    and ``sep=`` + space are kept), a ``.tsv``/``.tab`` file uses tabs, otherwise the most frequent of
    ``,`` ``\t`` ``;`` in the header line."""
    first = text.split("\n", 1)[0].rstrip("\r\n")
    excel = re.fullmatch(r"sep=(.)", first)
    if excel:
        return excel.group(1), 1
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t", 0
    counts = {sep: first.count(sep) for sep in (",", "\t", ";")}
    best = max(counts, key=lambda s: counts[s])
    return (best if counts[best] > 0 else ","), 0


def _parse_table(path: Path, problems: list[Problem]) -> tuple[pd.DataFrame, pd.DataFrame, list[int]] | None:
    """Read a table twice: as strings (for exact checks) and with type inference (pass-through columns).

    Returns (strings, typed, line numbers of the rows) or None with a problem.
    """
    text = _read_table_text(path, problems)
    if text is None:
        return None
    if not text.strip():
        problems.append(Problem(str(path), "empty table (no header line, no rows): empty collection"))
        return None
    sep, skip = _separator(path, text)
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


def _pick_column(columns: Sequence[str], explicit: str | None, candidates: Sequence[str], flag: str,
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


def _image_column_fallback(strings: pd.DataFrame, exclude: set[str]) -> str | None:
    """The first column whose every non-empty value ends with an image extension."""
    for col in strings.columns:
        if col in exclude:
            continue
        vals = [v for v in strings[col].tolist() if v.strip()]
        if vals and all(os.path.splitext(v.strip())[1].lower() in IMAGE_EXTENSIONS for v in vals):
            return col
    return None


def _table_to_raw(table_path: Path, root: Path, strings: pd.DataFrame, typed: pd.DataFrame, lines: list[int],
                  image: str, score: str | None, category: str | None, subcategory: str | None,
                  keep_columns: Sequence[str] = ()) -> _Raw:
    used = [c for c in (image, score, category, subcategory) if c is not None and c not in keep_columns]
    extra = typed.drop(columns=used)
    name = table_path.name
    return _Raw(
        root=root,
        refs=[v.strip() for v in strings[image].tolist()],
        rows=[f"{name} line {ln}" for ln in lines],
        scores=strings[score].tolist() if score is not None else None,
        category=strings[category].tolist() if category is not None else None,
        subcategory=strings[subcategory].tolist() if subcategory is not None else None,
        extra=extra,
        empty_where=str(table_path),
    )


def _read_csv_layout(src: Path, cols: dict[str, str | None], problems: list[Problem]) -> _Raw | None:
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
    parsed = _parse_table(table_path, problems)
    if parsed is None:
        return None
    strings, typed, lines = parsed
    columns = list(strings.columns)
    where = str(table_path)
    n0 = len(problems)
    image = _pick_column(columns, cols["image"], IMAGE_COLUMNS, "--image-col", where, problems)
    score = _pick_column(columns, cols["score"], SCORE_COLUMNS, "--score-col", where, problems)
    category = _pick_column(columns, cols["category"], CATEGORY_COLUMNS, "--category-col", where, problems)
    subcategory = _pick_column(columns, cols["subcategory"], SUBCATEGORY_COLUMNS, "--subcategory-col", where,
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
    raw = _table_to_raw(table_path, table_path.parent, strings, typed, lines, image, score, category,
                        subcategory)
    raw.notes.append(f"table {table_path.name}: images from column {image!r}"
                     + (f", scores from {score!r}" if score else ", no score column")
                     + (f", categories from {category!r}" if category else ""))
    _attach_halves(raw, table_path.parent)
    return raw


def _attach_halves(raw: _Raw, folder: Path) -> None:
    """Attach the split-half scores of a ``split_halves.npz`` beside the table (csv and memcat layouts)."""
    halves_file = folder / HALVES_FILE
    if halves_file.is_file():
        try:
            raw.halves = load_split_halves(halves_file)
            raw.halves_from_file = True
        except DataError as exc:
            raw.notes.append(f"{HALVES_FILE} beside the table ignored ({_strip_where(str(exc), str(halves_file))})")


def _read_memcat(src: Path, cols: dict[str, str | None], variant: str, problems: list[Problem]) -> _Raw | None:
    if src.is_dir():
        table_path, root = src / MEMCAT_TABLE, src
    else:
        table_path, root = src, src.parent
    if not table_path.is_file():
        problems.append(Problem(str(table_path), "missing: a memcat folder needs memcat_image_data.csv"))
        return None
    parsed = _parse_table(table_path, problems)
    if parsed is None:
        return None
    strings, typed, lines = parsed
    columns = list(strings.columns)
    where = str(table_path)
    n0 = len(problems)
    image = _pick_column(columns, cols["image"] or "image_file", (), "--image-col", where, problems)
    score_name = cols["score"] or MEMCAT_SCORE_COLUMNS[variant]
    score = _pick_column(columns, score_name, (), "--score-col" if cols["score"] else "--score-variant",
                         where, problems)
    category = _pick_column(columns, cols["category"], ("category",), "--category-col", where, problems)
    subcategory = _pick_column(columns, cols["subcategory"], ("subcategory",), "--subcategory-col", where,
                               problems)
    if len(problems) > n0 or image is None or score is None:
        return None
    # both memorability columns stay in the table, so that the other variant remains available
    keep = tuple(c for c in MEMCAT_SCORE_COLUMNS.values() if c in columns)
    raw = _table_to_raw(table_path, root, strings, typed, lines, image, score, category, subcategory,
                        keep_columns=keep)
    # images are found under category/subcategory folders by file name
    by_name: dict[str, list[str]] = {}
    by_lower: dict[str, list[str]] = {}
    for rel in find_images(root):
        name = rel.rsplit("/", 1)[-1]
        by_name.setdefault(name, []).append(rel)
        by_lower.setdefault(name.lower(), []).append(rel)
    refs: list[str] = []
    cats = raw.category or [""] * len(raw.refs)
    subs = raw.subcategory or [""] * len(raw.refs)
    for name, row, cat, sub in zip(raw.refs, raw.rows, cats, subs, strict=True):
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        hits = by_name.get(base) or by_lower.get(base.lower()) or []
        expected = "/".join(x for x in (cat.strip(), sub.strip(), base) if x)
        if not base:
            refs.append(name)
        elif len(hits) == 1:
            refs.append(hits[0])
        elif len(hits) > 1:
            if expected in hits:
                refs.append(expected)
            else:
                problems.append(Problem(base, f"found in several places ({', '.join(hits[:3])}); cannot tell "
                                              f"which is meant ({row})"))
                refs.append(hits[0])
        else:
            refs.append(expected)  # reported as a missing file at its expected place
    raw.refs = refs
    raw.missing_hint = " (no file of that name anywhere under the root)"
    kind = {MEMCAT_SCORE_COLUMNS["corrected"]: " (false-alarm corrected)",
            MEMCAT_SCORE_COLUMNS["uncorrected"]: " (uncorrected hit rate)"}.get(score, "")
    raw.notes.append(f"score = {score}{kind}")
    _attach_halves(raw, table_path.parent)
    return raw


_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def _split_sort_key(name: str) -> tuple[int, str, int]:
    m = re.fullmatch(r"([a-z]+)_(\d+)", name)
    if m:
        return (_SPLIT_ORDER.get(m.group(1), 3), m.group(1), int(m.group(2)))
    return (4, name, 0)


def _read_lamem(src: Path, splits: Sequence[str] | None, problems: list[Problem]) -> _Raw | None:
    if not src.is_dir():
        problems.append(Problem(str(src), "the lamem layout needs a folder with images/ and splits/"))
        return None
    split_dir = src / LAMEM_SPLITS
    if not split_dir.is_dir() or not (src / LAMEM_IMAGES).is_dir():
        problems.append(Problem(str(src), "the lamem layout needs images/ and splits/{train,val,test}_N.txt"))
        return None
    available = {p.stem: p for p in split_dir.glob("*.txt")}
    if not available:
        problems.append(Problem(str(split_dir), "no split files (*.txt) found: empty collection"))
        return None
    if splits:
        chosen = []
        for s in splits:
            stem = s[:-4] if s.endswith(".txt") else s
            if stem not in available:
                problems.append(Problem(str(split_dir), f"no split file {stem}.txt (available: "
                                                        f"{', '.join(sorted(available, key=_split_sort_key))})"))
            else:
                chosen.append(stem)
        if len(chosen) < len(splits):
            return None
    else:
        chosen = sorted(available, key=_split_sort_key)
    refs: list[str] = []
    rows: list[str] = []
    scores: list[Any] = []
    split_col: list[str] = []
    first: dict[str, int] = {}  # image -> index in refs, across files
    for stem in chosen:
        path = available[stem]
        text = _read_table_text(path, problems)
        if text is None:
            continue
        seen_here: set[str] = set()
        for ln, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):  # blank lines and '# comments'
                continue
            parts = line.split()
            where = f"{LAMEM_SPLITS}/{path.name} line {ln}"
            if len(parts) != 2:
                problems.append(Problem(where, f"expected 'filename score', got {line.strip()[:60]!r}"))
                continue
            name, value = parts
            if name in first and name not in seen_here:
                prev = scores[first[name]]
                if _same_number(prev, value) is False:
                    problems.append(Problem(f"{LAMEM_IMAGES}/{name}", f"conflicting scores {prev} and {value} in "
                                                                     f"different split files ({where})"))
                continue
            seen_here.add(name)
            if name not in first:
                first[name] = len(refs)
            refs.append(f"{LAMEM_IMAGES}/{name}")
            rows.append(where)
            scores.append(value)
            split_col.append(stem)
    raw = _Raw(root=src, refs=refs, rows=rows, scores=scores,
               extra=pd.DataFrame({"split": split_col}, dtype=object), empty_where=str(split_dir))
    raw.notes.append(f"split files: {', '.join(chosen)}" + ("" if splits else " (all; each image once, "
                                                                         "column split = first file listing it)"))
    return raw


def _same_number(a: Any, b: Any) -> bool | None:
    try:
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-6)
    except (TypeError, ValueError):
        return None


def _read_lnsim(src: Path, problems: list[Problem]) -> _Raw | None:
    if not src.is_dir():
        problems.append(Problem(str(src), "the lnsim layout needs a folder with Image_data/ and Random_splits/"))
        return None
    try:
        halves = load_split_halves(src)
    except DataError as exc:
        msg = str(exc)
        where, _, reason = msg.partition(": ")
        problems.append(Problem(where, reason) if reason else Problem(str(src), msg))
        return None
    ids = list(lnsim_image_ids(halves.n_images))
    image_dir = src / LNSIM_IMAGES
    if not image_dir.is_dir():
        problems.append(Problem(str(image_dir), "missing: the lnsim layout keeps its images in Image_data/"))
        return None
    # tolerate a different case of the file names (e.g. 0001.JPG)
    present = {p.name.lower(): p.name for p in image_dir.iterdir()}
    refs = []
    for i in ids:
        name = i.split("/", 1)[1]
        actual = name if (image_dir / name).exists() else present.get(name.lower(), name)
        refs.append(f"{LNSIM_IMAGES}/{actual}")
    extra_images = len(set(present) - {r.split("/", 1)[1].lower() for r in refs})
    raw = _Raw(root=src, refs=refs, rows=[f"column {k + 1} of subject_hrs1/2.mat" for k in range(len(ids))],
               scores=[float(x) for x in halves.scores()], empty_where=str(src / LNSIM_SPLITS),
               halves=SplitHalves(tuple(refs), halves.half1, halves.half2))
    raw.notes.append(f"score = mean over {halves.n_splits} random splits of the two halves' hit rates "
                     "(Random_splits/subject_hrs1.mat, subject_hrs2.mat)")
    if extra_images:
        raw.notes.append(f"{extra_images} files in {LNSIM_IMAGES}/ have no scores and are ignored")
    return raw


def _read_folder(src: Path, problems: list[Problem]) -> _Raw | None:
    if not src.is_dir():
        problems.append(Problem(str(src), "the folder layout needs a folder of images"))
        return None
    refs, links = _walk_images(src)
    raw = _Raw(root=src, refs=refs, rows=[""] * len(refs), empty_where=str(src))
    if links:
        raw.notes.append(f"{links} symlinked folders not followed")
    return raw


# --------------------------------------------------------------------------------------------------------
# Common checks: paths, scores, duplicates -> the uniform table
# --------------------------------------------------------------------------------------------------------
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


def _finalize(source: Path, layout: str, raw: _Raw, options: dict[str, Any],
              problems: list[Problem]) -> _Collected:
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
        halves = SplitHalves(tuple(table["image_id"]), halves.half1[:, keep], halves.half2[:, keep])
    return _Collected(source=Path(os.path.abspath(source)), root=Path(root_abs), layout=layout, table=table, bad=bad, notes=notes,
                      halves=halves, options=options)


def load_run_dataset(run: str | os.PathLike) -> Dataset:
    """Reload the data set a run was made from, as ``RUN/dataset.json`` records it.

    ``source`` (or ``root``) is the folder or table given to ``memlens train``; a relative one is tried
    relative to the run too. Top-level ``image_col``/``score_col``/``category_col``/``score_variant``/
    ``splits`` are reading options, and a ``layout`` inside ``options`` is ignored (the top-level one wins).
    """
    import json

    from ..errors import RunDirError

    run = Path(run)
    path = run / "dataset.json"
    if not path.is_file():
        raise RunDirError(f"{path} not found: it records where the run's images are (written by memlens train); "
                          "pass DATA")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        source = info.get("source") or info.get("root")
    except (ValueError, AttributeError) as exc:
        raise RunDirError(f"{path}: unreadable (expected JSON with 'source'; {exc})") from None
    if not source:
        raise RunDirError(f"{path} has no 'source': cannot find the run's images")
    src = Path(source)
    if not src.is_absolute() and not src.exists() and (run / src).exists():
        src = run / src
    options = dict(info.get("options") or {})
    for key in ("image_col", "score_col", "category_col", "score_variant", "splits"):
        if key in info and key not in options:
            options[key] = info[key]
    options.pop("layout", None)
    return load_dataset(src, info.get("layout") or "auto", **options)

