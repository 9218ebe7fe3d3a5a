"""Predict the memorability of new images with a fitted run (encoder + head, end to end, batched) or with a
pretrained baseline of :mod:`memlens.baselines` (``model="resmem"``): what ``memlens predict`` and
:func:`memlens.predict_images` run.

An image's score does not depend on the batch it is in (every module is in eval mode). Files that cannot be
read are listed as problems and skipped; the others are scored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
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

    The label is the file as given, or ``folder/relative/path`` for files found in a folder
    (:func:`memlens.data.collect_inputs`, which also takes PIL images and arrays).
    """
    from .data.inputs import collect_inputs

    items, problems = collect_inputs([os.fspath(s) if isinstance(s, os.PathLike) else s for s in sources])
    return [(label, Path(src)) for label, src in items], problems


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def predict_images(sources: Any, run: str | os.PathLike | None = None, *,
                   model: Any = None, batch_size: int = 32, device: str = "auto",
                   weights: str | os.PathLike | None = None,
                   progress: Callable[[int], None] | None = None) -> PredictResult:
    """Predicted memorability of images with the predictor of ``run``, a fitted ``model`` or a pretrained baseline.

    Parameters
    ----------
    sources : image files and/or folders (searched recursively), PIL images or arrays in [0, 1] (H, W, 3); one
        or a sequence (:func:`memlens.data.collect_inputs`).
    run : a run directory holding ``predictor.pt`` (written by ``memlens fit-predictor``).
    model : a :class:`memlens.predict.MemorabilityModel` to use instead of ``run``, or the name of a pretrained
        baseline (``"resmem"``, ``"vitmem"``: :mod:`memlens.baselines`; then no run is needed).
    batch_size : images per forward pass (the scores do not depend on it).
    device : ``auto``, ``cpu`` or ``cuda``.
    weights : a baseline's weights file (default: found as docs/baselines.md says).
    progress : called with the number of images done after each batch.

    In-memory images are prepared as files are (the run's predictor: resized and cropped by its feature set's
    rule; a float array is rounded to 8 bits first), so an array made from a file scores as the file does (up to
    the reduced-scale decoding memlens uses for JPEG files at least twice the size needed).
    """
    import pandas as pd
    import torch

    from .data.images import load_image, load_image_aspect, prepare_image, prepare_image_aspect
    from .data.inputs import as_pil, collect_inputs

    if batch_size < 1:
        raise MemlensError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(model, str):
        if run is not None:
            raise MemlensError("give a run directory or a baseline model name, not both")
        return _predict_baseline(sources, model, batch_size=batch_size, device=device, weights=weights,
                                 progress=progress)
    dev = _resolve_device(device)
    if model is None:
        if run is None:
            raise MemlensError("give a run directory (with predictor.pt), a model, or a baseline name "
                               "(model='resmem')")
        path = Path(run) / "predictor.pt"
        if not Path(run).is_dir():
            raise RunDirError(f"--run {run}: no such run directory")
        if not path.is_file():
            raise RunDirError(f"{path}: missing; fit a predictor first: memlens fit-predictor {run}")
    items, problems = collect_inputs(sources)
    if not items:  # nothing to score: say why without loading the networks
        log.warning("%d input(s) skipped, no image to score", len(problems))
        return PredictResult(table=_empty_table(), problems=problems)
    if model is None:
        from .predict import load_memorability_model

        model = load_memorability_model(path, map_location=dev)
    model = model.to(dev).eval()
    mode, size = getattr(model, "image_spec", ("square", None))
    if mode != "aspect":
        size = size or model.input_size or max([s for s in getattr(model, "sizes", []) if s] or [224])

    def load(src: Any) -> np.ndarray:
        if isinstance(src, Path):
            if mode == "aspect":  # shorter side = size, aspect kept: a batch holds images of one shape
                return load_image_aspect(src, size)
            return load_image(src, size)
        im = as_pil(src)
        return prepare_image_aspect(im, size) if mode == "aspect" else prepare_image(im, size)

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

    for label, src in items:
        try:
            arr = load(src)
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


def _empty_table() -> Any:
    import pandas as pd

    return pd.DataFrame({"image": pd.Series(dtype=str), "predicted_score": pd.Series(dtype=float)})


def _predict_baseline(sources: Any, name: str, *, batch_size: int, device: str, weights: Any,
                      progress: Callable[[int], None] | None) -> PredictResult:
    """:func:`predict_images` with a pretrained baseline of :mod:`memlens.baselines` (no run needed)."""
    import pandas as pd

    from .baselines import baseline_info, get_baseline
    from .data.inputs import collect_inputs
    from .errors import ConfigError

    info = baseline_info(name)
    if info.needs_fit:
        raise ConfigError(f"{info.name} is fitted on labelled images, so it cannot predict without them: compare it "
                          f"on a run (memlens baselines RUN --models {info.name}); pretrained models: "
                          "resmem, vitmem")
    items, problems = collect_inputs(sources)
    if not items:
        log.warning("%d input(s) skipped, no image to score", len(problems))
        return PredictResult(table=_empty_table(), problems=problems)
    adapter = get_baseline(info.name, weights=weights, device=device, batch_size=batch_size)
    scores, bad = adapter.predict_items(items, progress=progress)
    problems += bad
    ok = np.isfinite(scores)
    if problems:
        log.warning("%d input(s) skipped", len(problems))
    table = pd.DataFrame({"image": [lab for (lab, _), k in zip(items, ok, strict=True) if k],
                          "predicted_score": scores[ok]})
    return PredictResult(table=table, problems=problems)
