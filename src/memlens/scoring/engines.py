"""Engines: score a whole run directory in this process (``local``) or on a Ray cluster (``ray``).

The flow is one direction: :func:`~memlens.scoring.plan.prepare_run` (plan) -> an engine (execute:
:func:`~memlens.scoring.execute.score_images` here, the same function on shards in Ray actors,
:mod:`memlens.scoring.ray_engine`) -> :func:`~memlens.scoring.write.finish_run` (write). Both engines give the
same per-image numbers (to float tolerance).

``index`` chooses the neighbour search behind ``distinctiveness`` / ``distinctiveness_features``: ``exact``
(:func:`memlens.neighbors.distinctiveness`), ``flat`` (FAISS exact), ``ivf`` or ``hnsw`` (FAISS approximate;
their recall against exact search is measured on a random sample and recorded in ``RUN/index.json`` and
``RUN/config.json``). See :mod:`memlens.index`.

A new engine plugs in here: a function with :func:`score_local`'s contract (plan with ``prepare_run``, score
the planned table in order, hand a ``ScoreResult`` to ``finish_run``), added with :func:`register_engine`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from ..errors import ConfigError
from .batch import FEATURE_SIZE
from .execute import score_images
from .plan import prepare_run
from .write import finish_run

__all__ = ["ENGINES", "INDEXES", "register_engine", "score_run", "score_local", "score_ray"]

log = logging.getLogger(__name__)

#: an engine: see :func:`register_engine`
EngineFn = Callable[..., pd.DataFrame]
#: engine name -> function (``local`` and ``ray`` built in; :func:`register_engine` adds one)
ENGINES: dict[str, EngineFn] = {}
INDEXES = ("exact", "flat", "ivf", "hnsw")


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
    layout: str = "auto",
    decoders: int | None = None,
    cpus_per_decoder: float = 1,
    merge: bool | None = None,
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
    feature_size: int | None = FEATURE_SIZE,
    progress: Callable[[int], Any] | None = None,
    precision: str = "float32",
    _inject: Any = None,
) -> pd.DataFrame:
    """Score a run: write ``per_image.csv``, ``latents.npy`` + ``latent_ids.txt``, ``features.npy``.

    Parameters
    ----------
    run : the run directory; it must hold ``autoencoder.pt`` (``autoencoder_before.pt`` adds
        ``recon_<m>_before`` columns, ``exposure.csv`` the ``recon_exposure`` column).
    data : a folder/table for :func:`memlens.data.load_dataset`, a loaded ``Dataset``, or None to reload the
        data described by ``RUN/dataset.json``.
    engine : a registered engine (:data:`ENGINES`: ``"local"``, ``"ray"``; :func:`register_engine` adds one).
    index : ``"exact"``, ``"flat"``, ``"ivf"`` or ``"hnsw"`` (the last three need the ``faiss`` extra).
    index_options : keyword arguments of :func:`memlens.index.distinctiveness_index` (``memory_budget_mb``,
        ``recall_sample``, ``nlist``, ``nprobe``, ``hnsw_m``, ``ef_search``, ``seed``, ...).
    address, workers, gpus_per_worker, cpus_per_worker, shard_size, keep_shards, decoders, cpus_per_decoder,
    merge : Ray engine settings (:func:`memlens.scoring.ray_engine.score_run_ray`); ignored by the local engine,
        except ``merge=False``, which it refuses (it always writes ``per_image.csv``).
    layout : the data layout of ``data`` (``"auto"``, ``"parquet"``, ...: :data:`memlens.data.layouts.LAYOUTS`).
    metrics : metric names (default :func:`default_metrics`; an optional metric that cannot be built, e.g.
        lpips without its weights offline, is then skipped with a warning).
    distinct_k, distinct_metric, distinct_reference : neighbours for ``distinctiveness`` (latents) and
        ``distinctiveness_features`` (pretrained features); reference ``all``, ``category`` (within each
        category) or ``split`` (neighbours among the rows whose ``split`` starts with ``train``).
    precision : ``"float32"``, ``"bfloat16"`` or ``"int8"`` (CPU) for the autoencoders (see :func:`score_images`).
    Other parameters as in :func:`score_images`.

    Returns
    -------
    DataFrame
        The per-image table as written to ``RUN/per_image.csv``.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if index not in INDEXES:
        raise ConfigError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
    if index != "exact":  # before minutes of scoring, not after
        from ..index import require_faiss

        require_faiss()
    if engine == "local":
        if merge is False:
            raise ConfigError("merge=False is for the Ray engine (the local engine writes per_image.csv)")
        if layout != "auto" and isinstance(data, (str, os.PathLike)):
            from ..data import load_dataset

            data = load_dataset(data, layout)
    cluster = {"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker,
               "cpus_per_worker": cpus_per_worker, "shard_size": shard_size, "keep_shards": keep_shards,
               "_inject": _inject}
    if engine != "local":
        cluster.update(layout=layout, decoders=decoders, cpus_per_decoder=cpus_per_decoder, merge=merge)
    return ENGINES[engine](run, data, index=index, index_options=index_options, cluster=cluster,
                           num_workers=num_workers, device=device, cache=cache, metrics=metrics,
                           batch_size=batch_size, layer=layer, pool=pool, latent_dtype=latent_dtype,
                           distinct_k=distinct_k, distinct_metric=distinct_metric,
                           distinct_reference=distinct_reference, feature_size=feature_size, progress=progress,
                           precision=precision)


def score_local(run: Any, data: Any, *, index: str, index_options: dict[str, Any] | None, metrics: Any,
                batch_size: int, layer: str | None, pool: str, latent_dtype: str, distinct_k: int,
                distinct_metric: str, distinct_reference: str, feature_size: int | None, progress: Any,
                precision: str, num_workers: int, device: str, cache: Any,
                cluster: dict[str, Any] | None = None) -> pd.DataFrame:
    """The local engine: :func:`prepare_run` + :func:`score_images` + :func:`finish_run` (``cluster`` unused)."""
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


def score_ray(run: Any, data: Any, *, index: str, index_options: dict[str, Any] | None, cluster: dict[str, Any],
              num_workers: int, device: str, cache: Any, **settings: Any) -> pd.DataFrame:
    """The Ray engine (:func:`memlens.scoring.ray_engine.score_run_ray`; ``num_workers`` decode in each actor;
    ``cache`` unused: every actor decodes its own shard)."""
    from .ray_engine import score_run_ray

    return score_run_ray(run, data, index=index, index_options=index_options, device=device,
                         decode_workers=num_workers, **cluster, **settings)


def register_engine(name: str, fn: EngineFn) -> EngineFn:
    """Add an engine to :data:`ENGINES` (``memlens score --engine NAME``, ``score_run(engine=NAME)``).

    ``fn(run, data, *, index, index_options, cluster, num_workers, device, cache, **settings) -> DataFrame``
    with ``settings`` = ``metrics, batch_size, layer, pool, latent_dtype, distinct_k, distinct_metric,
    distinct_reference, feature_size, progress, precision``; it plans with :func:`prepare_run`, scores the
    planned table in order through :func:`score_images` (or its :class:`~memlens.scoring.batch.BatchScorer`)
    and writes with :func:`finish_run`, as :func:`score_local` does.
    """
    if name in ENGINES:
        raise ConfigError(f"engine {name!r} is registered already")
    ENGINES[name] = fn
    return fn


register_engine("local", score_local)
register_engine("ray", score_ray)
