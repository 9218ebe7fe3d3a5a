"""The ``lamem`` layout: LaMem's ``images/`` folder and ``splits/*.txt`` files of ``filename score`` lines."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ...errors import Problem
from .reader import Layout, RawTable, ReadOptions
from .tables import read_table_text

__all__ = ["LAYOUT", "LAMEM_IMAGES", "LAMEM_SPLITS", "detect_lamem", "read_lamem"]

LAMEM_IMAGES, LAMEM_SPLITS = "images", "splits"


def detect_lamem(path: Path) -> bool:
    """A folder holding ``images/`` and a ``splits/`` folder with ``.txt`` files."""
    return ((path / LAMEM_IMAGES).is_dir() and (path / LAMEM_SPLITS).is_dir()
            and any((path / LAMEM_SPLITS).glob("*.txt")))


_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def _split_sort_key(name: str) -> tuple[int, str, int]:
    m = re.fullmatch(r"([a-z]+)_(\d+)", name)
    if m:
        return (_SPLIT_ORDER.get(m.group(1), 3), m.group(1), int(m.group(2)))
    return (4, name, 0)


def read_lamem(src: Path, options: ReadOptions, problems: list[Problem]) -> RawTable | None:
    """Read the split files (``options.splits``, default all); an image listed in several is read once."""
    splits = options.splits
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
        text = read_table_text(path, problems)
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
    raw = RawTable(root=src, refs=refs, rows=rows, scores=scores,
                   extra=pd.DataFrame({"split": split_col}, dtype=object), empty_where=str(split_dir))
    raw.notes.append(f"split files: {', '.join(chosen)}" + ("" if splits else " (all; each image once, "
                                                                         "column split = first file listing it)"))
    return raw


def _same_number(a: Any, b: Any) -> bool | None:
    try:
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-6)
    except (TypeError, ValueError):
        return None



LAYOUT = Layout("lamem", detect=detect_lamem, read=read_lamem, order=2, detect_rank=30)
