"""Execution engines for ``memlens score``: ``local`` (this process) and ``ray`` (a Ray cluster).

:func:`score_run` is :func:`memlens.measures.score_run` with two more choices:

* ``engine="local"`` scores in this process; ``engine="ray"`` spreads contiguous shards of the image table
  over a pool of Ray actors (:mod:`memlens.engines.ray_engine`) and merges the shards back into the standard
  run files in dataset order. Both give the same per-image numbers (to float tolerance).
* ``index`` chooses the neighbour search behind ``distinctiveness`` / ``distinctiveness_features``:
  ``exact`` (:func:`memlens.neighbors.distinctiveness`), ``flat`` (FAISS exact), ``ivf`` or ``hnsw``
  (FAISS approximate; their recall against exact search is measured on a random sample and recorded in
  ``RUN/index.json`` and ``RUN/config.json``). See :mod:`memlens.index`.

``engine="local", index="exact"`` is exactly :func:`memlens.measures.score_run`, which is implemented here
(:func:`prepare_run` + :func:`memlens.measures.score_images` + :func:`finish_run`); the Ray engine runs the
same scoring code on shards and writes the same files through :func:`finish_run`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ENGINES", "INDEXES", "ScoreJob", "score_run", "prepare_run", "finish_run"]

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
INDEXES = ("exact", "flat", "ivf", "hnsw")


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

    Same rules as :func:`memlens.measures.score_run`: ``data`` is a folder/table, a loaded Dataset, or None
    to reload ``RUN/dataset.json``; an optional metric that cannot be built (lpips offline) is skipped with
    a warning when ``metrics`` is None.
    """
    from .. import measures
    from ..data import load_dataset
    from ..errors import ConfigError, DataError, RunDirError
    from ..metrics import get_metric

    run = Path(run)
    ckpt = run / "autoencoder.pt"
    if not ckpt.is_file():
        raise RunDirError(f"{run}: no autoencoder.pt (train first: memlens train DATA --out {run})")
    if distinct_reference not in measures._REFERENCES:
        raise ConfigError(f"distinctiveness reference must be one of {', '.join(measures._REFERENCES)}, "
                          f"got {distinct_reference!r}")
    if data is None:
        ds = measures._dataset_from_run(run)
    elif hasattr(data, "table"):
        ds = data
    else:
        ds = load_dataset(data)
        _check_same_data(run, ds)
    table = ds.table.reset_index(drop=True)
    if len(table) == 0:
        raise DataError(f"{getattr(ds, 'root', data)}: no images to score")
    if int(distinct_k) > 1 and int(distinct_k) >= len(table):  # fewer than k other images for all: all NaN
        raise ConfigError(f"--distinct-k {distinct_k}: needs more than {distinct_k} images; the data set has "
                          f"{len(table)}")
    ref_args = measures._reference_args(table, distinct_reference)
    dev = measures.resolve_device(device)

    explicit = metrics is not None
    names = [get_metric(m).name for m in (metrics if explicit else measures.default_metrics())]
    if not explicit and "lpips" in names:
        try:
            from ..metrics import _lpips_model

            _lpips_model(dev)
        except Exception as exc:  # optional and not asked for: skip rather than fail the run
            log.warning("lpips skipped: %s", exc)
            names.remove("lpips")
    before = run / "autoencoder_before.pt"
    return ScoreJob(run=run, dataset=ds, table=table, ref_args=ref_args, metrics=names, checkpoint=ckpt,
                    before_checkpoint=before if before.is_file() else None, device=dev)


#: results of the stages after score: they describe the data the run was trained and scored on
_ANALYSIS_OUTPUTS = ("correlations.json", "predictor.pt", "predictor_cv.csv", "descriptors.csv", "attributions",
                     "report.html", "results.json")


def _check_same_data(run: Path, ds: Any) -> None:
    """Scoring other data than the run's into a run whose analyses exist would leave them describing the
    old data: refuse (one line), naming what to do instead. "The same data" is the same table content
    (image ids, scores, categories and the other columns; ``manifest.json`` of train), wherever it lies."""
    import json

    from ..errors import RunDirError
    from ..train import table_sha256

    later = [n for n in _ANALYSIS_OUTPUTS if (run / n).exists()]
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


def finish_run(job: ScoreJob, result: Any, *, layer: str | None = None, pool: str = "none",
               latent_dtype: str = "float32", feature_size: int | None = 224, batch_size: int = 32,
               distinct_k: int = 1, distinct_metric: str = "euclidean", distinct_reference: str = "all",
               index: str = "exact", index_options: dict[str, Any] | None = None,
               settings: dict[str, Any] | None = None) -> Any:
    """Write ``latent_ids.txt``, ``per_image.csv``, ``split_halves.npz``, ``config.json`` (and ``index.json``).

    ``result`` is a :class:`memlens.measures.ScoreResult` whose rows follow ``job.table`` (its latents and
    features already written to ``RUN/latents.npy`` and ``RUN/features.npy``). The columns and their order
    are those of :func:`memlens.measures.score_run`; ``layer`` ... ``batch_size`` are the scoring
    settings to record (as given to :func:`memlens.measures.score_images`); ``settings`` adds keys to the ``score`` section of
    ``RUN/config.json``.

    Returns
    -------
    DataFrame
        The per-image table as written (``attrs["info"]`` holds timings and, for FAISS indexes, the
        index reports).
    """
    import numpy as np
    import pandas as pd

    from .. import measures
    from .._io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
    from ..errors import DataError
    from ..index import distinctiveness_index

    run, table, ds = job.run, job.table, job.dataset
    ids = result.table["image_id"].tolist()
    if ids != table["image_id"].astype(str).tolist():
        raise DataError(f"{run}: the scored images are not the data set's images in order "
                        f"({len(ids)} scored, {len(table)} in the table)")
    if any("\n" in i for i in ids):  # pragma: no cover - ids are file paths
        raise DataError("an image id contains a line break; latent_ids.txt cannot hold it")
    # at once: latents.npy and features.npy are already in place, and their rows are these images
    atomic_write_text(run / "latent_ids.txt", "".join(f"{i}\n" for i in ids))

    out = pd.DataFrame({c: table[c] for c in measures._LEADING if c in table.columns})
    for col in result.table.columns[1:]:
        out[col] = result.table[col].to_numpy()
    exposure = measures._exposure_losses(run)
    if exposure is not None:
        out["recon_exposure"] = table["image_id"].map(exposure["loss"]).astype(float).to_numpy()
        if "order" in exposure.columns:  # the model changes along the stream: the loss depends on the position
            out["exposure_order"] = table["image_id"].map(exposure["order"]).astype("Int64").array  # 28, not 28.0
        # which images the single-exposure analysis is about (analyze leaves the visual-experience ones out)
        exp_file = run / "experience_ids.txt"
        held = ({ln.strip() for ln in exp_file.read_text(encoding="utf-8").splitlines() if ln.strip()}
                if exp_file.is_file() else set())
        exposed = table["image_id"].isin(exposure.index).to_numpy()
        out["role"] = np.where(exposed, "exposed",
                               np.where(table["image_id"].isin(held).to_numpy(), "experience", "not exposed"))
    dist_kw = {"k": distinct_k, "metric": distinct_metric, **job.ref_args}
    opts = dict(index_options or {})
    reports: dict[str, Any] = {}
    for col, mat in (("distinctiveness", result.latents), ("distinctiveness_features", result.features)):
        values, report = distinctiveness_index(mat, index=index, **dist_kw, **opts)
        out[col] = values
        reports[col] = report.to_dict()
    passthrough = [c for c in table.columns if c not in out.columns]
    clashes = [c for c in table.columns if c in out.columns and c not in measures._LEADING]
    if clashes:
        log.warning("source columns replaced by computed ones: %s", ", ".join(clashes))
    for c in passthrough:
        out[c] = table[c].to_numpy()
    with atomic_path(run / "per_image.csv") as tmp:
        out.to_csv(tmp, index=False)

    halves = getattr(ds, "halves", None)
    root_halves = Path(getattr(ds, "root", "")) / "split_halves.npz" if getattr(ds, "root", None) else None
    if halves is not None:
        measures._write_npz(run / "split_halves.npz", {"image": np.array(halves.image_ids, dtype=str),
                                                        "half1": np.asarray(halves.half1),
                                                        "half2": np.asarray(halves.half2)})
    elif root_halves is not None and root_halves.is_file():
        atomic_write_bytes(run / "split_halves.npz", root_halves.read_bytes())

    info = dict(result.info)
    record = {
        "data": str(getattr(ds, "source", None) or getattr(ds, "root", "")), "metrics": job.metrics,
        "layer": layer, "pool": pool, "latent_dtype": latent_dtype,
        "latent_shape": list(result.latent_shape), "latent_dim": int(result.latents.shape[1]),
        "image_size": info.get("image_size"), "feature_size": feature_size,
        "features": "efficientnet_lite0 head, average-pooled",
        "distinct_k": int(distinct_k), "distinct_metric": distinct_metric, "distinct_reference": distinct_reference,
        "batch_size": int(batch_size), "before": job.before_checkpoint is not None,
        "exposure": exposure is not None, "precision": info.get("precision", "float32"), "index": index,
    }
    if record["precision"] == "int8":
        record["int8"] = {k[5:]: info[k] for k in ("int8_calibration_images", "int8_engine", "int8_activation_bits",
                                                   "int8_calibration_max_rel_mse", "int8_calibration_median_rel_mse")
                          if k in info}
    if index != "exact":
        record["index_recall"] = {c: r.get("recall") for c, r in reports.items()}
        atomic_write_json(run / "index.json", reports)
        for col, r in reports.items():
            if r.get("recall") is not None:
                log.info("%s: %s index (%s), recall@%d = %.4f on %d sampled queries", col, index,
                         r.get("encoding"), r.get("recall_k"), r["recall"], r.get("recall_sample"))
    record.update(settings or {})
    measures._record_settings(run, record)
    log.info("wrote %s (%d images, %d columns)", run / "per_image.csv", len(out), out.shape[1])
    info["index_reports"] = reports
    out.attrs["info"] = info
    return out


def score_run(
    run: str | os.PathLike,
    data: Any = None,
    *,
    engine: str = "local",
    index: str = "exact",
    index_options: dict[str, Any] | None = None,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1,
    shard_size: int | None = None,
    keep_shards: bool = False,
    metrics: Sequence[str] | None = None,
    batch_size: int = 32,
    layer: str | None = None,
    pool: str = "none",
    latent_dtype: str = "float32",
    distinct_k: int = 1,
    distinct_metric: str = "euclidean",
    distinct_reference: str = "all",
    num_workers: int = 0,
    device: str = "auto",
    cache: Any = None,
    feature_size: int | None = 224,
    progress: Callable[[int], Any] | None = None,
    precision: str = "float32",
    _inject: Any = None,
) -> Any:
    """Score a run with a chosen engine and neighbour index (see the module docstring).

    Parameters
    ----------
    engine : ``"local"`` or ``"ray"``.
    index : ``"exact"``, ``"flat"``, ``"ivf"`` or ``"hnsw"`` (the last three need the ``faiss`` extra).
    index_options : keyword arguments of :func:`memlens.index.distinctiveness_index` (``memory_budget_mb``,
        ``recall_sample``, ``nlist``, ``nprobe``, ``hnsw_m``, ``ef_search``, ``seed``, ...).
    address, workers, gpus_per_worker, cpus_per_worker, shard_size, keep_shards : Ray engine settings
        (:func:`memlens.engines.ray_engine.score_run_ray`); ignored by the local engine.
    Other parameters as in :func:`memlens.measures.score_run`.

    Returns
    -------
    DataFrame
        The per-image table as written to ``RUN/per_image.csv``.
    """
    from ..errors import ConfigError

    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if index not in INDEXES:
        raise ConfigError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
    if index != "exact":  # before minutes of scoring, not after
        from ..index import require_faiss

        require_faiss()
    common = {"metrics": metrics, "batch_size": batch_size, "layer": layer, "pool": pool,
              "latent_dtype": latent_dtype, "distinct_k": distinct_k, "distinct_metric": distinct_metric,
              "distinct_reference": distinct_reference, "feature_size": feature_size, "progress": progress,
              "precision": precision}
    if engine == "ray":
        from .ray_engine import score_run_ray

        return score_run_ray(run, data, address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                             cpus_per_worker=cpus_per_worker, shard_size=shard_size, keep_shards=keep_shards,
                             index=index, index_options=index_options, device=device, decode_workers=num_workers,
                             _inject=_inject, **common)
    return _score_local(run, data, index=index, index_options=index_options, num_workers=num_workers,
                        device=device, cache=cache, **common)


def _score_local(run: Any, data: Any, *, index: str, index_options: dict[str, Any] | None, metrics: Any,
                 batch_size: int, layer: str | None, pool: str, latent_dtype: str, distinct_k: int,
                 distinct_metric: str, distinct_reference: str, feature_size: int | None, progress: Any,
                 precision: str, num_workers: int, device: str, cache: Any) -> Any:
    """The local engine: :func:`prepare_run` + :func:`memlens.measures.score_images` + :func:`finish_run`."""
    from ..measures import score_images
    from ..models import load_autoencoder

    job = prepare_run(run, data, metrics=metrics, distinct_reference=distinct_reference, device=device,
                      distinct_k=distinct_k)
    model = load_autoencoder(job.checkpoint)
    before = load_autoencoder(job.before_checkpoint) if job.before_checkpoint is not None else None
    result = score_images(
        model, job.dataset, metrics=job.metrics, before_model=before, batch_size=batch_size, device=job.device,
        pool=pool, latent_dtype=latent_dtype, latents_path=job.run / "latents.npy", features=True,
        features_path=job.run / "features.npy", feature_size=feature_size, layer=layer, num_workers=num_workers,
        cache=cache, progress=progress, precision=precision,
    )
    result.info["engine"] = "local"
    return finish_run(job, result, layer=layer, pool=pool, latent_dtype=latent_dtype, feature_size=feature_size,
                      batch_size=batch_size, distinct_k=distinct_k, distinct_metric=distinct_metric,
                      distinct_reference=distinct_reference, index=index, index_options=index_options,
                      settings={"engine": "local"})
