"""The ``memcat`` layout: MemCat's ``memcat_image_data.csv`` with the images in category/subcategory
folders, found by file name; the score is the false-alarm corrected (default) or the raw hit rate.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import Problem
from .image_files import find_images
from .reader import Layout, RawTable, ReadOptions
from .tables import attach_halves, parse_table, pick_column, table_to_raw

__all__ = ["LAYOUT", "MEMCAT_TABLE", "MEMCAT_SCORE_COLUMNS", "detect_memcat", "read_memcat"]

MEMCAT_TABLE = "memcat_image_data.csv"
MEMCAT_SCORE_COLUMNS: dict[str, str] = {
    "corrected": "memorability_w_fa_correction",
    "uncorrected": "memorability_wo_fa_correction",
}


def detect_memcat(path: Path) -> bool:
    """A file named ``memcat_image_data.csv``, or a folder holding one."""
    if path.is_file():
        return path.name.lower() == MEMCAT_TABLE
    return (path / MEMCAT_TABLE).is_file()


def read_memcat(src: Path, options: ReadOptions, problems: list[Problem]) -> RawTable | None:
    """Read MemCat's table (``src``: the table or its folder) and find each image under the root by name."""
    cols, variant = options.columns, options.score_variant or "corrected"
    if src.is_dir():
        table_path, root = src / MEMCAT_TABLE, src
    else:
        table_path, root = src, src.parent
    if not table_path.is_file():
        problems.append(Problem(str(table_path), "missing: a memcat folder needs memcat_image_data.csv"))
        return None
    parsed = parse_table(table_path, problems)
    if parsed is None:
        return None
    strings, typed, lines = parsed
    columns = list(strings.columns)
    where = str(table_path)
    n0 = len(problems)
    image = pick_column(columns, cols["image"] or "image_file", (), "--image-col", where, problems)
    score_name = cols["score"] or MEMCAT_SCORE_COLUMNS[variant]
    score = pick_column(columns, score_name, (), "--score-col" if cols["score"] else "--score-variant",
                        where, problems)
    category = pick_column(columns, cols["category"], ("category",), "--category-col", where, problems)
    subcategory = pick_column(columns, cols["subcategory"], ("subcategory",), "--subcategory-col", where,
                              problems)
    if len(problems) > n0 or image is None or score is None:
        return None
    # both memorability columns stay in the table, so that the other variant remains available
    keep = tuple(c for c in MEMCAT_SCORE_COLUMNS.values() if c in columns)
    raw = table_to_raw(table_path, root, strings, typed, lines, image, score, category, subcategory,
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
    attach_halves(raw, table_path.parent)
    return raw


LAYOUT = Layout("memcat", detect=detect_memcat, read=read_memcat, order=1, detect_rank=10)
