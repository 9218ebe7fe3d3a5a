"""The ``lnsim`` layout: ``Image_data/`` and ``Random_splits/subject_hrs1.mat``/``subject_hrs2.mat`` (the
hit rates of random observer halves); the score is the mean over splits of the two halves' hit rates.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError, Problem
from ..halves import SplitHalves, lnsim_image_ids, load_split_halves
from .reader import Layout, RawTable, ReadOptions

__all__ = ["LAYOUT", "LNSIM_IMAGES", "LNSIM_SPLITS", "detect_lnsim", "read_lnsim"]

LNSIM_IMAGES, LNSIM_SPLITS = "Image_data", "Random_splits"


def detect_lnsim(path: Path) -> bool:
    """A folder holding ``Random_splits/subject_hrs1.mat``."""
    return (path / LNSIM_SPLITS / "subject_hrs1.mat").is_file()


def read_lnsim(src: Path, options: ReadOptions, problems: list[Problem]) -> RawTable | None:
    """Read the split-half hit rates and pair them with the images (no reading options apply)."""
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
    raw = RawTable(root=src, refs=refs,
                   rows=[f"column {k + 1} of subject_hrs1/2.mat" for k in range(len(ids))],
                   scores=[float(x) for x in halves.scores()], empty_where=str(src / LNSIM_SPLITS),
                   halves=SplitHalves(tuple(refs), halves.half1, halves.half2, halves.kind))
    raw.notes.append(f"score = mean over {halves.n_splits} random splits of the two halves' hit rates "
                     "(Random_splits/subject_hrs1.mat, subject_hrs2.mat)")
    if extra_images:
        raw.notes.append(f"{extra_images} files in {LNSIM_IMAGES}/ have no scores and are ignored")
    return raw


LAYOUT = Layout("lnsim", detect=detect_lnsim, read=read_lnsim, order=3, detect_rank=20)
