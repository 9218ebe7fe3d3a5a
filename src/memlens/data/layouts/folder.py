"""The ``folder`` layout: every image file under a folder (recursive, sorted), without scores."""

from __future__ import annotations

from pathlib import Path

from ...errors import Problem
from .image_files import walk_images
from .reader import Layout, RawTable, ReadOptions

__all__ = ["LAYOUT", "detect_folder", "read_folder"]


def detect_folder(path: Path) -> bool:
    """Any folder (the last rule of auto-detection)."""
    return path.is_dir()


def read_folder(src: Path, options: ReadOptions, problems: list[Problem]) -> RawTable | None:
    """List the image files under ``src`` (no reading options apply)."""
    if not src.is_dir():
        problems.append(Problem(str(src), "the folder layout needs a folder of images"))
        return None
    refs, links = walk_images(src)
    raw = RawTable(root=src, refs=refs, rows=[""] * len(refs), empty_where=str(src))
    if links:
        raw.notes.append(f"{links} symlinked folders not followed")
    return raw


LAYOUT = Layout("folder", detect=detect_folder, read=read_folder, order=4, detect_rank=100)
