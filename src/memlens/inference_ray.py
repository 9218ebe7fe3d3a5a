"""``memlens predict --engine ray``: :func:`memlens.inference.predict_images` on a pool of Ray actors."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError
from .ray_cluster import (
    actor_pool_size,
    memlens_cause,
    ray_data_context,
    ray_session,
    require_ray,
    shard_plan,
)

__all__ = ["predict_images_ray", "DEFAULT_SHARD_SIZE"]

#: images per shard (one actor call)
DEFAULT_SHARD_SIZE = 1024


class _ShardPredictor:
    """Ray Data callable class: one actor = one replica of a run's MemorabilityModel."""

    def __init__(self, predictor: str, batch_size: int, device: str, threads: int):
        import torch

        from .predict import load_memorability_model

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        if device == "auto":
            import ray

            device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.device = device
        self.model = load_memorability_model(predictor, map_location=device)
        self.batch_size = int(batch_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from .inference import predict_images

        shards, labels, scores, problems = [], [], [], []
        for shard, lab, paths in zip(batch["shard"], batch["label"], batch["path"], strict=True):
            by_path = {str(p): str(x) for x, p in zip(lab, paths, strict=True)}
            res = predict_images([str(p) for p in paths], model=self.model, batch_size=self.batch_size,
                                 device=self.device)
            shards.append(int(shard))
            labels.append(json.dumps([by_path[str(i)] for i in res.table["image"]]))
            scores.append(json.dumps([float(v) for v in res.table["predicted_score"]]))
            problems.append(json.dumps([[by_path.get(p.where, p.where), p.reason] for p in res.problems]))
        return {"shard": np.array(shards), "labels": np.array(labels), "scores": np.array(scores),
                "problems": np.array(problems)}


def predict_images_ray(sources: Sequence[str | os.PathLike], run: str | os.PathLike, *, address: str | None = None,
                       workers: int | None = None, gpus_per_worker: float | None = None, cpus_per_worker: float = 1,
                       shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 32, device: str = "auto",
                       progress: Callable[[int], Any] | None = None) -> Any:
    """:func:`memlens.inference.predict_images` on a Ray actor pool: the same table, in the same order.

    The images are collected on the driver (files and folders, as the local engine does), cut into shards of
    ``shard_size``, scored by actors holding the run's predictor (``RUN/predictor.pt``; GPU actors when
    ``gpus_per_worker > 0``), and the results are put back in input order. Unreadable files are listed in
    ``problems`` exactly as locally. ``address``, ``workers``, ``gpus_per_worker``, ``cpus_per_worker``:
    as in
    :func:`memlens.scoring.ray_engine.score_run_ray`.

    Returns
    -------
    memlens.inference.PredictResult
    """
    import pandas as pd

    from .errors import Problem, RunDirError
    from .inference import PredictResult, collect_images

    require_ray(local=address is None)
    predictor = Path(run) / "predictor.pt"
    if not predictor.is_file():
        raise RunDirError(f"{predictor}: missing; fit a predictor first: memlens fit-predictor {run}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    items, problems = collect_images(sources)
    labels_all = [lab for lab, _ in items]
    paths_all = [str(p) for _, p in items]
    plan = shard_plan(len(items), int(shard_size))
    results: dict[int, tuple[list[str], list[float], list[list[str]]]] = {}
    if plan:
        with ray_session(address) as ray:
            from ray.data import ActorPoolStrategy

            workers, gpw = actor_pool_size(ray.cluster_resources(), workers=workers, gpus_per_worker=gpus_per_worker,
                                           cpus_per_worker=cpus_per_worker, device=device, n_tasks=len(plan))
            frames = [pd.DataFrame({"shard": [k], "label": [labels_all[a:b]], "path": [paths_all[a:b]]})
                      for k, (a, b) in enumerate(plan)]
            failure = None
            try:
                with ray_data_context():
                    _run(ray, ActorPoolStrategy, frames, results, workers, gpw, predictor, batch_size, device,
                         cpus_per_worker, progress)
            except Exception as exc:  # from the actors, wrapped by Ray
                cause = memlens_cause(exc)
                failure = cause if cause is not None else f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            gc.collect()
            if failure is not None:
                raise DataError(f"Ray prediction failed: {failure}")
    labels: list[str] = []
    scores: list[float] = []
    for k in range(len(plan)):
        labs, vals, probs = results[k]
        labels.extend(labs)
        scores.extend(vals)
        problems.extend(Problem(where, reason) for where, reason in probs)
    table = pd.DataFrame({"image": labels, "predicted_score": np.asarray(scores, dtype=float)})
    return PredictResult(table=table, problems=problems)


def _run(ray: Any, pool_strategy: Any, frames: list[Any], results: dict[int, Any], workers: int, gpw: float,
         predictor: Path, batch_size: int, device: str, cpus_per_worker: float,
         progress: Callable[[int], Any] | None) -> None:
    """Stream the shards through a pool of :class:`_ShardPredictor` actors; results by shard into ``results``."""
    ds = ray.data.from_pandas(frames).map_batches(
        _ShardPredictor, batch_size=1, batch_format="numpy",
        compute=pool_strategy(size=workers, max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs={"predictor": str(predictor), "batch_size": int(batch_size),
                               "device": "cpu" if device == "cpu" else "auto",
                               "threads": max(1, int(cpus_per_worker))},
        num_cpus=cpus_per_worker, num_gpus=gpw or None)
    for row in ds.iter_rows():
        labs, vals = json.loads(row["labels"]), json.loads(row["scores"])
        results[int(row["shard"])] = (labs, vals, json.loads(row["problems"]))
        if progress is not None:
            progress(len(labs))

