"""Finding image files: the extensions memlens reads and a walk of a data root (hidden entries skipped)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "find_images", "walk_images"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def find_images(root: str | os.PathLike) -> list[str]:
    """Image files under ``root`` (recursive, hidden files and folders skipped, symlinked folders not
    followed), as sorted POSIX paths relative to ``root``."""
    return walk_images(Path(root))[0]


def walk_images(root: Path) -> tuple[list[str], int]:
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

