"""Plan a scoring run: which images, which metrics, which references, which device — before any image is read.

:func:`prepare_run` turns a run directory and (optionally) data into a :class:`ScoreJob`; every engine starts
from one. Also here: the default metrics, the neighbour references of distinctiveness and the guard that
refuses to score other data into a run whose analyses describe its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError, RunDirError
from ..metrics import get_metric

__all__ = ["DEFAULT_METRICS", "REFERENCES", "ANALYSIS_OUTPUTS", "ScoreJob", "prepare_run", "default_metrics",
           "reference_args", "check_same_data", "resolve_metrics"]

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("mse", "l1", "dssim", "ms-dssim", "perceptual")
#: the neighbour references of ``distinctiveness``: all images, within each category, among the training split
REFERENCES = ("all", "category", "split")
#: results of the stages after score: they describe the data the run was trained and scored on
ANALYSIS_OUTPUTS = ("correlations.json", "predictor.pt", "predictor_cv.csv", "descriptors.csv", "attributions",
                    "report.html", "results.json")


def default_metrics() -> list[str]:
    """The metrics ``memlens score`` uses by default: :data:`DEFAULT_METRICS`, plus ``lpips`` when installed."""
    return list(DEFAULT_METRICS) + (["lpips"] if get_metric("lpips").available else [])


@dataclass
class ScoreJob:
    """Everything about a scoring run that is resolved before any image is scored.

    Attributes
    ----------
    run : the run directory.
    dataset : the loaded :class:`memlens.data.Dataset`.
    table : its image table (index reset), in dataset order.
    ref_args : ``reference``/``groups`` arguments for the neighbour search.
    metrics : resolved metric names.
    checkpoint, before_checkpoint : ``autoencoder.pt`` and ``autoencoder_before.pt`` (or None).
    device : the resolved torch device of this process.
    """

    run: Path
    dataset: Any
    table: Any
    ref_args: dict[str, Any]
    metrics: list[str]
    checkpoint: Path
    before_checkpoint: Path | None
    device: Any


def prepare_run(run: str | os.PathLike, data: Any = None, *, metrics: Sequence[str] | None = None,
                distinct_reference: str = "all", device: str = "auto", distinct_k: int = 1) -> ScoreJob:
    """Resolve the run directory, the data, the metrics and the device (no image is read).

    ``data`` is a folder/table, a loaded Dataset, or None to reload ``RUN/dataset.json``; an optional metric
    that cannot be built (lpips offline) is skipped with a warning when ``metrics`` is None.
    """
    from ..data import load_dataset, load_run_dataset
    from .batch import resolve_device

    run = Path(run)
    ckpt = run / "autoencoder.pt"
    if not ckpt.is_file():
        raise RunDirError(f"{run}: no autoencoder.pt (train first: memlens train DATA --out {run})")
    if distinct_reference not in REFERENCES:
        raise ConfigError(f"distinctiveness reference must be one of {', '.join(REFERENCES)}, "
                          f"got {distinct_reference!r}")
    if data is None:
        ds = load_run_dataset(run)
    elif hasattr(data, "table"):
        ds = data
    else:
        ds = load_dataset(data)
        check_same_data(run, ds)
    table = ds.table.reset_index(drop=True)
    if len(table) == 0:
        raise DataError(f"{getattr(ds, 'root', data)}: no images to score")
    if int(distinct_k) > 1 and int(distinct_k) >= len(table):  # fewer than k other images for all: all NaN
        raise ConfigError(f"--distinct-k {distinct_k}: needs more than {distinct_k} images; the data set has "
                          f"{len(table)}")
    ref_args = reference_args(table, distinct_reference)
    dev = resolve_device(device)
    names = resolve_metrics(metrics, dev)
    before = run / "autoencoder_before.pt"
    return ScoreJob(run=run, dataset=ds, table=table, ref_args=ref_args, metrics=names, checkpoint=ckpt,
                    before_checkpoint=before if before.is_file() else None, device=dev)


def resolve_metrics(metrics: Sequence[str] | None, device: Any) -> list[str]:
    """Metric names: ``metrics`` resolved, or :func:`default_metrics` less an optional metric that cannot be
    built on ``device`` (lpips offline: skipped with a warning)."""
    explicit = metrics is not None
    names = [get_metric(m).name for m in (metrics if explicit else default_metrics())]
    if not explicit and "lpips" in names:
        try:
            from ..metrics import lpips_model

            lpips_model(device)
        except Exception as exc:  # optional and not asked for: skip rather than fail the run
            log.warning("lpips skipped: %s", exc)
            names.remove("lpips")
    return names


def reference_args(table: pd.DataFrame, reference: str) -> dict[str, Any]:
    """The ``groups=`` / ``reference=`` arguments of the neighbour search for a distinctiveness reference.

    ``all``: none; ``category``: each image's category (an image without one is a group of its own, so its
    within-category distinctiveness is NaN); ``split``: the rows whose ``split`` starts with ``train``.
    """
    if reference == "all":
        return {}
    if reference == "category":
        if "category" not in table.columns:
            raise ConfigError("distinctiveness reference 'category' needs a category column; this data has none")
        cat = table["category"]
        missing = (cat.isna() | (cat.astype(str).str.strip() == "")).to_numpy()
        labels = cat.astype(str).to_numpy(dtype=object)
        if missing.any():
            # an image without a category has no category to be compared within: a group of its own (NaN),
            # not one shared "nan" category of all unlabelled images
            log.warning("%d image(s) have no category: their within-category distinctiveness is NaN",
                        int(missing.sum()))
            for j in np.flatnonzero(missing):
                labels[j] = ("<no category>", int(j))
        return {"groups": labels}
    if reference == "split":
        if "split" not in table.columns:
            raise ConfigError("distinctiveness reference 'split' needs a split column; this data has none")
        mask = table["split"].astype(str).str.lower().str.startswith("train").to_numpy()
        if not mask.any():
            raise ConfigError("distinctiveness reference 'split': no image has a split starting with 'train'")
        return {"reference": mask}
    raise ConfigError(f"distinctiveness reference must be one of {', '.join(REFERENCES)}, got {reference!r}")


def check_same_data(run: Path, ds: Any) -> None:
    """Scoring other data than the run's into a run whose analyses exist would leave them describing the
    old data: refuse (one line), naming what to do instead. "The same data" is the same table content
    (image ids, scores, categories and the other columns; ``manifest.json`` of train), wherever it lies."""
    import json

    from ..train.records import table_sha256

    later = [n for n in ANALYSIS_OUTPUTS if (run / n).exists()]
    if not later:
        return
    try:
        recorded = json.loads((run / "manifest.json").read_text(encoding="utf-8")).get("input", {})
    except (OSError, ValueError, AttributeError):
        recorded = {}
    if recorded.get("table_sha256"):
        if recorded["table_sha256"] == table_sha256(ds.table):
            return
    else:  # a run without a manifest: its data folder and number of images
        try:
            meta = json.loads((run / "dataset.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if meta.get("root") is None or (Path(meta["root"]).resolve() == Path(ds.root).resolve()
                                        and meta.get("n_images") == len(ds)):
            return
    old = recorded.get("source") or "other data"
    new = getattr(ds, "source", None) or getattr(ds, "root", None)
    raise RunDirError(f"{run} was trained on {old}, and its analyses ({', '.join(later[:4])}"
                      f"{', ...' if len(later) > 4 else ''}) describe that data; {new} is other data (another "
                      "table: images, scores or columns differ), and scoring it here would leave them out of date. "
                      "Score without DATA, or copy autoencoder*.pt, config.json, dataset.json and manifest.json to "
                      "a new run folder and score there")
