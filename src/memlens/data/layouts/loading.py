"""Reading a data set: :func:`collect` (every problem listed), :func:`load_dataset` (raises on any
problem) and :func:`load_run_dataset` (the data set a run records in ``RUN/dataset.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError, Problem, RunDirError, ValidationError
from ..uris import has_glob, is_uri
from .checks import Collected, finalize
from .dataset import Dataset
from .memcat import MEMCAT_SCORE_COLUMNS
from .reader import ReadOptions, strip_where
from .registry import LAYOUTS, detect_layout, get_layout

__all__ = ["collect", "load_dataset", "load_run_dataset"]


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
) -> Collected | None:
    """Read ``source`` appending every table-level and row-level problem to ``problems``.

    Returns None when nothing usable could be read (e.g. missing source, missing required column).
    Used by :func:`load_dataset` (which raises on any problem) and by the validator (which reports).
    """
    src = Path(source)
    if layout not in ("auto", *LAYOUTS):
        raise ConfigError(f"unknown layout {layout!r}; choose one of auto, {', '.join(LAYOUTS)}")
    if score_variant is not None and score_variant not in MEMCAT_SCORE_COLUMNS:
        raise ConfigError(f"unknown score variant {score_variant!r}; choose corrected or uncorrected")
    text = os.fspath(source)
    remote = is_uri(text) or (has_glob(text) and not src.exists())
    if remote and layout in ("auto", "parquet"):  # a URI or a glob pattern: a Parquet data set
        layout = "parquet"
    elif not src.exists():
        problems.append(Problem(str(source), "no such file or folder"))
        return None
    if layout == "auto":
        try:
            layout = detect_layout(src)
        except DataError as exc:
            problems.append(Problem(str(source), strip_where(str(exc), str(source))))
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
    raw = get_layout(layout).read(src, ReadOptions(cols, score_variant, splits, source=text), problems)
    if raw is None:
        if len(problems) == n_before:  # pragma: no cover - readers always explain a None
            problems.append(Problem(str(source), f"cannot be read as a {layout} data set"))
        return None
    return finalize(src, layout, raw, options, problems)


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
    """Read a data set into the uniform table (see :mod:`memlens.data.layouts` and ``docs/datasets.md``).

    Parameters
    ----------
    source : path
        A data folder or a table file; for the ``parquet`` layout also a glob pattern or a URI
        (``s3://bucket/images/``).
    layout : {"auto", "csv", "memcat", "lamem", "lnsim", "folder", "parquet"}
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

    Examples
    --------
    >>> import memlens
    >>> # data: a folder made by memlens.make_demo_set (or your own images)
    >>> ds = memlens.load_dataset(data)          # a folder or a table; the layout is detected
    >>> ds.layout, len(ds), ds.has_scores
    ('memcat', 40, True)
    >>> list(ds.table.columns[:5])
    ['image_id', 'path', 'score', 'category', 'subcategory']
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


def load_run_dataset(run: str | os.PathLike) -> Dataset:
    """Reload the data set a run was made from, as ``RUN/dataset.json`` records it, with images held in
    Parquet cells or at URLs as the files under ``RUN/images`` (:func:`memlens.data.local_files.with_image_files`).

    ``source`` (or ``root``) is the folder or table given to ``memlens train``; a relative one is tried
    relative to the run too. Top-level ``image_col``/``score_col``/``category_col``/``score_variant``/
    ``splits`` are reading options, and a ``layout`` inside ``options`` is ignored (the top-level one wins).
    """
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
    src: Any = Path(source) if not is_uri(str(source)) else str(source)
    if isinstance(src, Path) and not src.is_absolute() and not src.exists() and (run / src).exists():
        src = run / src
    options = dict(info.get("options") or {})
    for key in ("image_col", "score_col", "category_col", "score_variant", "splits"):
        if key in info and key not in options:
            options[key] = info[key]
    options.pop("layout", None)
    ds = load_dataset(src, info.get("layout") or "auto", **options)
    from ..local_files import has_remote_images, with_image_files

    # images in Parquet cells or at URLs: the files memlens train wrote under RUN/images (written now if absent)
    return with_image_files(ds, run / "images") if has_remote_images(ds) else ds
