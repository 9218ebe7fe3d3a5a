"""Predict the memorability of new images with a fitted run: encoder + head, end to end, batched.

An image's score does not depend on the batch it is in (every module is in eval mode). Files that cannot be
read are listed as problems and skipped; the others are scored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, MemlensError, Problem, RunDirError

__all__ = ["PredictResult", "collect_images", "predict_images"]

log = logging.getLogger(__name__)


@dataclass
class PredictResult:
    """``table``: columns ``image, predicted_score`` in input order; ``problems``: files skipped, and why."""

    table: Any
    problems: list[Problem] = field(default_factory=list)


def collect_images(sources: Iterable[str | os.PathLike]) -> tuple[list[tuple[str, Path]], list[Problem]]:
    """Expand files and folders (recursively, sorted) into ``(label, path)`` pairs, in the order given.

    The label is the file as given, or ``folder/relative/path`` for files found in a folder.
    """
    from .data.layouts import IMAGE_EXTENSIONS, find_images

    items: list[tuple[str, Path]] = []
    problems: list[Problem] = []
    seen: set[Path] = set()
    for src in sources:
        p = Path(src)
        if p.is_dir():
            rels = find_images(p)
            if not rels:
                problems.append(Problem(str(p), "folder holds no image files "
                                                f"({', '.join(sorted(IMAGE_EXTENSIONS))})"))
            for rel in rels:
                full = (p / rel).resolve()
                if full not in seen:
                    seen.add(full)
                    items.append((f"{str(src).rstrip('/')}/{rel}", p / rel))
        elif p.is_file():
            if p.resolve() not in seen:
                seen.add(p.resolve())
                items.append((str(src), p))
        else:
            problems.append(Problem(str(p), "no such file or folder"))
    return items, problems


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def predict_images(sources: Sequence[str | os.PathLike], run: str | os.PathLike | None = None, *,
                   model: Any = None, batch_size: int = 32, device: str = "auto",
                   progress: Callable[[int], None] | None = None) -> PredictResult:
    """Predicted memorability for image files and folders, with the predictor of ``run`` (or ``model``).

    Parameters
    ----------
    sources : image files and/or folders (searched recursively).
    run : a run directory holding ``predictor.pt`` (written by ``memlens fit-predictor``).
    model : a :class:`memlens.predict.MemorabilityModel` to use instead of ``run``.
    batch_size : images per forward pass (the scores do not depend on it).
    device : ``auto``, ``cpu`` or ``cuda``.
    progress : called with the number of images done after each batch.
    """
    import pandas as pd
    import torch

    from .data.images import load_image, load_image_aspect

    if batch_size < 1:
        raise MemlensError(f"batch_size must be >= 1, got {batch_size}")
    dev = _resolve_device(device)
    if model is None:
        if run is None:
            raise MemlensError("give a run directory (with predictor.pt) or a model")
        path = Path(run) / "predictor.pt"
        if not Path(run).is_dir():
            raise RunDirError(f"--run {run}: no such run directory")
        if not path.is_file():
            raise RunDirError(f"{path}: missing; fit a predictor first: memlens fit-predictor {run}")
    items, problems = collect_images(sources)
    if not items:  # nothing to score: say why without loading the networks
        log.warning("%d input(s) skipped, no image to score", len(problems))
        return PredictResult(table=pd.DataFrame({"image": pd.Series(dtype=str),
                                                 "predicted_score": pd.Series(dtype=float)}), problems=problems)
    if model is None:
        from .predict import load_memorability_model

        model = load_memorability_model(path, map_location=dev)
    model = model.to(dev).eval()
    mode, size = getattr(model, "image_spec", ("square", None))
    if mode != "aspect":
        size = size or model.input_size or max([s for s in getattr(model, "sizes", []) if s] or [224])

    def load(path: Path) -> np.ndarray:
        if mode == "aspect":  # shorter side = size, aspect kept: a batch holds images of one shape
            return load_image_aspect(path, size)
        return load_image(path, size)

    labels: list[str] = []
    scores: list[float] = []
    batch: list[np.ndarray] = []
    batch_labels: list[str] = []

    def flush() -> None:
        if not batch:
            return
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0).to(dev)
        with torch.inference_mode():
            y = model(x).double().cpu().numpy()
        labels.extend(batch_labels)
        scores.extend(float(v) for v in y)
        if progress is not None:
            progress(len(batch))
        batch.clear()
        batch_labels.clear()

    for label, path in items:
        try:
            arr = load(path)
        except DataError as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            problems.append(Problem(label, reason))
            continue
        if batch and arr.shape != batch[0].shape:
            flush()
        batch.append(arr)
        batch_labels.append(label)
        if len(batch) >= batch_size:
            flush()
    flush()
    if problems:
        log.warning("%d input(s) skipped", len(problems))
    table = pd.DataFrame({"image": labels, "predicted_score": np.asarray(scores, dtype=float)})
    return PredictResult(table=table, problems=problems)
