"""The ``parquet`` layout: a Parquet data set whose rows hold the images themselves (encoded bytes) or their
paths/URLs, with optional ``image_id``, score and category columns.

The source is a ``.parquet`` file, a folder of them (recursive; names starting with ``.`` or ``_`` skipped) or a
glob pattern, local or a URI (``s3://``, ``gs://``, ``hdfs://`` through ``pyarrow.fs``; any other fsspec scheme
through fsspec). Files are read in sorted order, rows in file order; that is the data set's order.

Columns (auto-detected by name, case-insensitive; ``--image-col`` etc. override):

``image`` (:data:`PARQUET_IMAGE_COLUMNS`)
    binary (encoded JPEG/PNG/... bytes), a string (a path relative to the data set's folder, an absolute path or
    a URL), or a struct with ``bytes`` and/or ``path`` fields (the Hugging Face ``datasets`` Image feature).
``image_id`` (optional)
    the key of the row in the outputs. Without it: the image path for path rows, ``FILE#ROW`` (the file relative
    to the data set's folder and the row within it) for bytes rows.
score, category, subcategory (optional), other columns (passed through), as in the ``csv`` layout.

In the uniform table, a row of bytes has as ``path`` a *locator* (``parquet::COLUMN::ROW::FILE``) that
:func:`load_located` decodes; :class:`ParquetSource` reads the data set row group by row group without building
the table (the Ray engine's streaming reader: the driver holds the file list and row counts only).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import ConfigError, DataError, Problem, first_line
from ..uris import filesystem_for, is_uri, join_uri, list_files
from .csv import CATEGORY_COLUMNS, SCORE_COLUMNS, SUBCATEGORY_COLUMNS
from .reader import Layout, RawTable, ReadOptions, strip_where
from .tables import pick_column

__all__ = ["LAYOUT", "PARQUET_IMAGE_COLUMNS", "ID_COLUMN", "LOCATOR_PREFIX", "ParquetSource", "Unit",
           "open_parquet_source", "open_parquet_file", "LocatedReader", "is_locator", "parse_locator", "load_located", "detect_parquet", "read_parquet_layout"]

PARQUET_IMAGE_COLUMNS: tuple[str, ...] = ("image", "image_bytes", "bytes", "img", "content", "image_path",
                                          "path", "file", "filepath", "url", "image_url")
ID_COLUMN = "image_id"
LOCATOR_PREFIX = "parquet::"


def is_locator(path: str) -> bool:
    """Whether a table ``path`` is a locator of an image held in a Parquet cell."""
    return str(path).startswith(LOCATOR_PREFIX)


def _locator(column: str, row: int, file: str) -> str:
    return f"{LOCATOR_PREFIX}{column}::{row}::{file}"


def parse_locator(loc: str) -> tuple[str, int, str]:
    """``(column, row within the file, file)`` of a locator."""
    column, row, file = loc[len(LOCATOR_PREFIX):].split("::", 2)
    return column, int(row), file


def cell_image(value: Any) -> Any:
    """The image of a cell: bytes, or a path/URL string (a struct cell: its ``bytes``, else its ``path``)."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


@dataclass(frozen=True)
class Unit:
    """A run of row groups of one file: the unit of work, retry and resumption of the Ray engine."""

    index: int
    file: int
    row_groups: tuple[int, ...]
    start: int  # first row of the unit in the data set
    n: int
    file_row: int  # first row of the unit within its file


@dataclass
class ParquetSource:
    """A Parquet data set, described from its files' footers only (no row is read).

    Attributes: ``source`` (as given), ``root`` (the folder file names are relative to), ``files`` (URIs or
    local paths, sorted), ``rel`` (their names relative to ``root``), ``group_rows`` (rows of each row group,
    per file), ``columns`` (the schema's names) and the chosen ``image_col``, ``id_col``, ``score_col``,
    ``category_col``, ``subcategory_col``; ``image_kind`` is ``"bytes"``, ``"path"`` or ``"struct"``.
    """

    source: str
    root: str
    files: list[str]
    rel: list[str]
    group_rows: list[list[int]]
    columns: list[str]
    image_col: str
    image_kind: str
    id_col: str | None = None
    score_col: str | None = None
    category_col: str | None = None
    subcategory_col: str | None = None
    offsets: np.ndarray = field(init=False)
    # the footers read by open_parquet_source, so that reading a file again does not fetch its footer again;
    # kept in this process only (not pickled to Ray workers, which read the footer of the file they open)
    _footers: dict[int, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        counts = [sum(g) for g in self.group_rows]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_footers"] = {}
        return state

    def open(self, file: int) -> Any:
        """File ``file`` opened for reading (a ``pyarrow.parquet.ParquetFile``; close it, or use ``with``)."""
        return open_parquet_file(self.files[file], self._footers.get(file))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def extra_columns(self) -> list[str]:
        """Source columns passed through to the outputs (all but the image and the chosen roles)."""
        used = {self.image_col, self.id_col, self.score_col, self.category_col, self.subcategory_col}
        return [c for c in self.columns if c not in used]

    def units(self, max_rows: int) -> list[Unit]:
        """Consecutive row groups of each file, grouped up to ``max_rows`` rows (a larger group is one unit)."""
        out: list[Unit] = []
        for f, groups in enumerate(self.group_rows):
            pos = 0
            cur: list[int] = []
            n = 0
            for g, rows in enumerate(groups):
                if cur and n + rows > max_rows:
                    out.append(Unit(len(out), f, tuple(cur), int(self.offsets[f]) + pos - n, n, pos - n))
                    cur, n = [], 0
                cur.append(g)
                n += rows
                pos += rows
            if cur and n:
                out.append(Unit(len(out), f, tuple(cur), int(self.offsets[f]) + pos - n, n, pos - n))
        return out

    def image_ids(self, file: int, file_row: int, n: int, ids: Sequence[Any] | None,
                  images: Sequence[Any] | None) -> list[str]:
        """The ids of ``n`` rows of ``file`` from ``file_row``: the id column, the path, or ``FILE#ROW``."""
        if ids is not None:
            return [str(i) for i in ids]
        if self.image_kind == "path" and images is not None:
            return [str(cell_image(v)) for v in images]
        return [f"{self.rel[file]}#{file_row + i}" for i in range(n)]

    def read_unit(self, unit: Unit, batch_rows: int = 256, columns: Sequence[str] | None = None
                  ) -> Iterator[tuple[int, pd.DataFrame]]:
        """``(first file row, rows)`` batches of a unit: ``image_id``, ``image`` (bytes or a path/URL) and the
        score/category/subcategory and extra columns, named as in the uniform table."""
        wanted = list(columns) if columns is not None else self.columns
        read = [c for c in self.columns if c in wanted or c in (self.image_col, self.id_col)]
        pos = unit.file_row
        with self.open(unit.file) as pf:
            batches = pf.iter_batches(batch_size=batch_rows, row_groups=list(unit.row_groups), columns=read,
                                      use_threads=False)
            for batch in _reading(batches, self.files[unit.file]):
                frame = self.uniform(batch, unit.file, pos)
                yield pos, frame
                pos += batch.num_rows

    def uniform(self, batch: Any, file: int, file_row: int) -> pd.DataFrame:
        """A record batch of this data set as uniform columns (``image_id``, ``image``, ``score``, ...)."""
        images = [cell_image(v) for v in batch.column(self.image_col).to_pylist()]
        if self.image_kind == "path":
            images = [self.resolve_path(str(v)) if v is not None else None for v in images]
        ids_col = batch.column(self.id_col).to_pylist() if self.id_col else None
        raw_paths = batch.column(self.image_col).to_pylist() if self.image_kind == "path" else None
        out = pd.DataFrame({"image_id": self.image_ids(file, file_row, batch.num_rows, ids_col, raw_paths)})
        out["image"] = pd.Series(images, dtype=object)
        for role, col in (("score", self.score_col), ("category", self.category_col),
                          ("subcategory", self.subcategory_col)):
            if col is not None:
                out[role] = batch.column(col).to_pandas()
        for col in self.extra_columns:
            if col in batch.schema.names:
                out[col if col not in out.columns else f"source_{col}"] = batch.column(col).to_pandas()
        return out

    def resolve_path(self, ref: str) -> str:
        """A path/URL cell as a readable location: URLs and absolute paths as they are, relative paths under
        the data set's folder."""
        if is_uri(ref) or os.path.isabs(ref):
            return ref
        return join_uri(self.root, ref)


def open_parquet_file(uri: str, footer: Any = None) -> Any:
    """A Parquet file opened for reading (``footer``: its metadata, when already read).

    Not cached: a file is opened by whoever reads it and closed after, so that a file rewritten under the same
    name is read as it is now (a module-level cache of open files served the old footer with the new bytes),
    and no open file or object-storage client outlives its reader."""
    import pyarrow.parquet as pq

    fs, path = filesystem_for(uri)
    try:
        return pq.ParquetFile(path, filesystem=fs, metadata=footer)  # opened by it: closed by its close()
    except (OSError, ValueError) as exc:
        raise DataError(f"{uri}: not a readable Parquet file ({first_line(exc)})") from None


def _reading(batches: Iterator[Any], uri: str) -> Iterator[Any]:
    """``batches`` with a read failure (a network error, a truncated file) as a :class:`DataError`."""
    try:
        yield from batches
    except (OSError, ValueError) as exc:
        raise DataError(f"{uri}: cannot read ({first_line(exc)})") from None


def _kind(arrow_type: Any) -> str | None:
    import pyarrow as pa

    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or \
            pa.types.is_fixed_size_binary(arrow_type):
        return "bytes"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "path"
    if pa.types.is_struct(arrow_type) and {"bytes", "path"} & {arrow_type.field(i).name
                                                                for i in range(arrow_type.num_fields)}:
        return "struct"
    return None


def open_parquet_source(source: str | os.PathLike, *, image_col: str | None = None, score_col: str | None = None,
                        category_col: str | None = None, subcategory_col: str | None = None) -> ParquetSource:
    """Describe a Parquet data set (files, row groups, columns) from the footers; no row is read.

    Raises :class:`DataError` (no files, unreadable file, no image column, files with other columns) or
    :class:`ConfigError` (a named column that is missing)."""

    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ConfigError("the parquet layout needs pyarrow: pip install 'memlens[ray]' (or pyarrow)") from None
    text = os.fspath(source)
    root, files = list_files(text, ".parquet")
    if not files:
        raise DataError(f"{text}: no .parquet files")
    problems: list[Problem] = []
    group_rows: list[list[int]] = []
    schema = None
    footers = {}
    for k, f in enumerate(files):
        with open_parquet_file(f) as pf:
            if schema is None:
                schema = pf.schema_arrow
            elif pf.schema_arrow.names != schema.names:
                raise DataError(f"{f}: columns {', '.join(pf.schema_arrow.names)} differ from the first file's "
                                f"({', '.join(schema.names)})")
            md = footers[k] = pf.metadata
        group_rows.append([md.row_group(g).num_rows for g in range(md.num_row_groups)])
    assert schema is not None
    columns = list(schema.names)
    where = files[0]
    image = pick_column(columns, image_col, PARQUET_IMAGE_COLUMNS, "--image-col", where, problems)
    score = pick_column(columns, score_col, SCORE_COLUMNS, "--score-col", where, problems)
    category = pick_column(columns, category_col, CATEGORY_COLUMNS, "--category-col", where, problems)
    subcategory = pick_column(columns, subcategory_col, SUBCATEGORY_COLUMNS, "--subcategory-col", where, problems)
    if problems:
        raise ConfigError(str(problems[0]))
    if image is None:
        raise DataError(f"{where}: no image column (looked for {', '.join(PARQUET_IMAGE_COLUMNS)}; use "
                        f"--image-col); columns found: {', '.join(columns)}")
    kind = _kind(schema.field(image).type)
    if kind is None:
        raise DataError(f"{where}: column {image!r} holds {schema.field(image).type}, not image bytes, paths "
                        "or {bytes, path} structs")
    id_col = ID_COLUMN if ID_COLUMN in columns and image != ID_COLUMN else None
    rel = [f[len(root):].lstrip("/") if f.startswith(root) else f.rsplit("/", 1)[-1] for f in files]
    ps = ParquetSource(source=text, root=root, files=files, rel=rel, group_rows=group_rows, columns=columns,
                       image_col=image, image_kind=kind, id_col=id_col, score_col=score,
                       category_col=category, subcategory_col=subcategory)
    ps._footers.update(footers)
    return ps


# --------------------------------------------------------------------------------------------------------
# locators: images of Parquet cells in the uniform table


class LocatedReader:
    """The image of a locator. The reader keeps its last file open and its last row group read, so a scan in
    order opens each file once and reads each row group once; a new reader opens the files again (and sees
    them as they are now). One reader per thread: it is not safe to share between threads.

    A file that cannot be opened or read raises :class:`DataError`; a row past its end too."""

    def __init__(self) -> None:
        self._file: tuple[str, Any] | None = None
        self._group: tuple[str, str, int, list[Any]] | None = None

    def _open(self, file: str) -> Any:
        if self._file is None or self._file[0] != file:
            self.close()
            self._file = (file, open_parquet_file(file))
        return self._file[1]

    def close(self) -> None:
        """Close the file kept open and drop the row group kept (the reader reads them again when asked)."""
        if self._file is not None:
            self._file[1].close()
        self._file = None
        self._group = None

    def image(self, loc: str) -> Any:
        column, row, file = parse_locator(loc)
        pf = self._open(file)
        md = pf.metadata
        start = 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if row < start + n:
                if self._group is None or self._group[:3] != (file, column, g):
                    try:
                        values = pf.read_row_group(g, columns=[column], use_threads=False).column(0).to_pylist()
                    except (OSError, ValueError) as exc:
                        raise DataError(f"{file}: cannot read row group {g} ({first_line(exc)})") from None
                    self._group = (file, column, g, values)
                value = cell_image(self._group[3][row - start])
                if isinstance(value, str) and value and not is_uri(value) and not os.path.isabs(value):
                    # a relative path in a {bytes, path} cell without bytes: beside its Parquet file
                    value = join_uri(file.rsplit("/", 1)[0] if is_uri(file) else os.path.dirname(file), value)
                return value
            start += n
        raise DataError(f"{file}: no row {row}")


def load_located(paths: Sequence[str], size: int, reader: LocatedReader | None = None,
                 names: Sequence[str] | None = None) -> np.ndarray:
    """Decode images given as locators, URLs or files: ``uint8`` (N, size, size, 3), in order."""
    from ..image_bytes import load_image_ref

    own = reader is None
    reader = reader or LocatedReader()
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    try:
        for k, p in enumerate(paths):
            name = names[k] if names is not None else None
            ref = reader.image(p) if is_locator(p) else p
            out[k] = load_image_ref(ref, size, name or (p if not is_locator(p) else None))
    finally:
        if own:
            reader.close()
    return out


# --------------------------------------------------------------------------------------------------------
# the layout


def detect_parquet(path: Path) -> bool:
    """A ``.parquet`` file, or a folder holding ``.parquet`` files at its top level."""
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    return any(p.suffix.lower() == ".parquet" and not p.name.startswith((".", "_")) for p in path.iterdir())


def read_parquet_layout(src: Path, options: ReadOptions, problems: list[Problem]) -> RawTable | None:
    """Read the non-image columns of a Parquet data set (images are decoded later, through locators)."""
    text = options.source or str(src)
    cols = options.columns
    try:
        ps = open_parquet_source(text, image_col=cols["image"], score_col=cols["score"],
                                 category_col=cols["category"], subcategory_col=cols["subcategory"])
    except (DataError, ConfigError) as exc:
        problems.append(Problem(text, strip_where(str(exc), text)))
        return None
    read = [c for c in ps.columns if c != ps.image_col or ps.image_kind == "path"]
    frames = []
    for f, uri in enumerate(ps.files):
        try:
            with ps.open(f) as pf:
                table = pf.read(columns=read, use_threads=False)
        except DataError as exc:
            problems.append(Problem(text, strip_where(str(exc), text)))
            return None
        except (OSError, ValueError) as exc:
            problems.append(Problem(text, f"{uri}: cannot read ({first_line(exc)})"))
            return None
        frame = table.to_pandas()
        ids = frame[ps.id_col].tolist() if ps.id_col else None
        paths = frame[ps.image_col].tolist() if ps.image_kind == "path" else None
        frame.insert(0, "__id", ps.image_ids(f, 0, len(frame), ids, paths))
        frame.insert(1, "__row", [f"{ps.rel[f]} row {i}" for i in range(len(frame))])
        if ps.image_kind == "path":
            frame["__path"] = [ps.resolve_path(str(p)) if p is not None else "" for p in paths]
        else:
            frame["__path"] = [_locator(ps.image_col, i, uri) for i in range(len(frame))]
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    local_paths = ps.image_kind == "path" and not any(is_uri(p) for p in frame["__path"])
    extra = frame[[c for c in ps.extra_columns if c in frame.columns]]
    raw = RawTable(
        root=Path(ps.root) if not is_uri(ps.root) else Path("."),
        refs=[str(p) for p in (frame[ps.image_col] if local_paths else frame["__id"])],
        rows=frame["__row"].tolist(),
        scores=frame[ps.score_col].tolist() if ps.score_col else None,
        category=frame[ps.category_col].tolist() if ps.category_col else None,
        subcategory=frame[ps.subcategory_col].tolist() if ps.subcategory_col else None,
        extra=extra.reset_index(drop=True),
        empty_where=text,
        locators=None if local_paths else frame["__path"].tolist(),
        uri_root=ps.root if is_uri(ps.root) else None,
    )
    raw.notes.append(f"{len(ps.files)} Parquet file(s): images from column {ps.image_col!r} ({ps.image_kind})"
                     + (f", ids from {ps.id_col!r}" if ps.id_col else "")
                     + (f", scores from {ps.score_col!r}" if ps.score_col else ", no score column")
                     + (f", categories from {ps.category_col!r}" if ps.category_col else ""))
    return raw


LAYOUT = Layout("parquet", detect=detect_parquet, read=read_parquet_layout, order=5, detect_rank=35)
