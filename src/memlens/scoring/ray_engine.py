"""Score a run on a Ray cluster: Ray Data feeds shards of the image table to a pool of model actors.

How it works
------------
1. The image table (dataset order) is cut into contiguous *shards* of ``shard_size`` images. A shard is the
   unit of work, of retry and of resumption.
2. Ray Data reads the table of pending shards (one block per shard) and maps it through an actor pool
   (``ActorPoolStrategy(size=workers)``); each actor loads the autoencoder (and the weights before exposure,
   the perceptual extractor and the pretrained-feature model) once, on its GPU when it was given one.
3. Within a shard, images stream in batches: decode -> model -> per-image numbers, through exactly the code
   of the single-process engine (:func:`memlens.scoring.score_images`, whose per-batch function is
   :class:`memlens.scoring.batch.BatchScorer`), so every number is the same.
4. The actor writes the shard to ``RUN/shards/``: ``part-NNNNN.latents.npy``, ``part-NNNNN.features.npy``,
   ``part-NNNNN.parquet`` (``row, image_id, recon_*``) and finally ``part-NNNNN.done.json``; every file is
   written atomically, and a shard counts as complete only once its ``done.json`` exists with the run's
   fingerprint (checkpoint hashes, metrics, sizes, the image list). A rerun skips complete shards.
5. An actor that dies mid-shard is restarted by Ray (``max_restarts``) and its shard is retried
   (``max_task_retries``); an ``OSError`` raised while scoring (e.g. a storage hiccup) is retried as well.
6. The driver merges the shards in dataset order into the standard run files (``latents.npy``,
   ``features.npy``, ``latent_ids.txt``, ``per_image.csv`` ...) via :func:`memlens.scoring.finish_run`.

Every process must see the run directory and the image files under the same paths (a shared file system
on a real cluster). Without ``address`` a local Ray instance is started, bound to the loopback interface.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..ray_cluster import (
    actor_pool_size,
    memlens_cause,
    ray_data_context,
    ray_session,
    require_ray,
    shard_plan,
)
from .batch import check_batch_settings, find_layer, pretrained_features, resolve_device
from .execute import ScoreResult, score_images
from .plan import prepare_run
from .sources import model_input_size
from .write import finish_run

__all__ = ["score_run_ray", "shard_plan", "DEFAULT_SHARD_SIZE", "MAX_RESTARTS", "ShardRetry"]

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1024
#: restarts of a dead actor and retries of its shard
MAX_RESTARTS = 3


class ShardRetry(OSError):
    """A transient failure inside an actor; Ray retries the shard (an :class:`OSError`)."""


# --------------------------------------------------------------------------------------------------------
# shards


def _shard_name(k: int) -> str:
    return f"part-{k:05d}"


def _fingerprint(job: Any, settings: dict[str, Any]) -> str:
    from .._io import file_sha256

    h = hashlib.sha256()
    h.update(file_sha256(job.checkpoint).encode())
    if job.before_checkpoint is not None:
        h.update(file_sha256(job.before_checkpoint).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    import pandas as pd

    # the image list, in order (vectorised row hashes: fast for millions of rows)
    rows = pd.util.hash_pandas_object(job.table[["image_id", "path"]].astype(str), index=False)
    h.update(rows.to_numpy().tobytes())
    h.update(str(len(job.table)).encode())
    return h.hexdigest()


def _shard_complete(folder: Path, k: int, fingerprint: str, n_rows: int) -> bool:
    name = _shard_name(k)
    done = folder / f"{name}.done.json"
    if not done.is_file():
        return False
    try:
        meta = json.loads(done.read_text(encoding="utf-8"))
    except ValueError:
        return False
    files = [folder / f"{name}{s}" for s in (".parquet", ".latents.npy", ".features.npy")]
    return (meta.get("fingerprint") == fingerprint and int(meta.get("n", -1)) == n_rows
            and all(f.is_file() for f in files))


# --------------------------------------------------------------------------------------------------------
# the actor


class _ShardScorer:
    """Ray Data callable class: one actor = one model replica; ``__call__`` scores whole shards."""

    def __init__(self, checkpoint: str, before_checkpoint: str | None, metrics: list[str], options: dict[str, Any],
                 out_dir: str, fingerprint: str, threads: int, inject: Any = None):
        import torch

        from ..models import load_autoencoder

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        device = options.get("device") or "auto"
        if device == "auto":
            try:
                import ray

                has_gpu = bool(ray.get_gpu_ids())
            except Exception:  # pragma: no cover - outside Ray
                has_gpu = False
            device = "cuda" if has_gpu and torch.cuda.is_available() else "cpu"
        self.device = resolve_device(device)
        self.model = load_autoencoder(checkpoint)
        self.before = load_autoencoder(before_checkpoint) if before_checkpoint else None
        self.fmodel = pretrained_features(self.device)
        self.metrics = metrics
        self.options = options
        self.out_dir = Path(out_dir)
        self.fingerprint = fingerprint
        self.inject = [inject] if isinstance(inject, dict) else list(inject or [])
        self.pid = os.getpid()
        self._int8: tuple[Any, Any] | None = None

    def _int8_models(self, opts: dict[str, Any]) -> tuple[Any, Any]:
        """The int8 copies of the models, made on this actor's first shard and kept for the others."""
        if self._int8 is None:
            from ..data import image_batch
            from ..quantize import quantize_autoencoder

            spec = opts["int8"]
            cal = image_batch(spec["calibration"], opts.get("image_size") or model_input_size(self.model))
            self._int8 = tuple(None if m is None else quantize_autoencoder(m, cal, engine=spec["engine"],
                                                                           bits=spec["bits"])
                               for m in (self.model, self.before))
        return self._int8

    def _maybe_fail(self, shard: int) -> None:
        """Test hook: for each ``{"shard", "kind", "marker"}`` of ``inject`` matching ``shard``, fail once (the
        ``marker`` file records it) or, without a marker, every time. Kinds: ``exit`` (the process dies),
        ``raise`` (a retried :class:`ShardRetry`), anything else (a permanent :class:`DataError`)."""
        for inj in self.inject:
            if int(inj.get("shard", -1)) != shard:
                continue
            marker = inj.get("marker")
            if marker:
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    continue  # failed once already
                os.close(fd)
            if inj.get("kind") == "exit":
                os._exit(17)  # the worker process dies without cleanup, as on a crash
            if inj.get("kind") == "raise":
                raise ShardRetry(f"injected transient failure on shard {shard}")
            raise DataError(f"injected permanent failure on shard {shard}")

    def _score_shard(self, shard: int, start: int, image_ids: Sequence[str], paths: Sequence[str]) -> dict[str, Any]:
        import pandas as pd

        from .._io import atomic_path, atomic_write_json

        t0 = time.perf_counter()
        self._maybe_fail(shard)
        name = _shard_name(shard)
        opts = self.options
        frame = pd.DataFrame({"image_id": [str(i) for i in image_ids], "path": [str(p) for p in paths]})
        model, before = self.model, self.before
        if opts.get("int8"):
            model, before = self._int8_models(opts)
        result = score_images(
            model, frame, metrics=self.metrics, before_model=before, batch_size=opts["batch_size"],
            device=self.device, pool=opts["pool"], latent_dtype=opts["latent_dtype"],
            latents_path=self.out_dir / f"{name}.latents.npy", features=True,
            features_path=self.out_dir / f"{name}.features.npy", feature_size=opts["feature_size"],
            feature_model=self.fmodel, layer=opts["layer"], image_size=opts["image_size"],
            num_workers=opts.get("decode_workers", 0), precision=opts.get("precision", "float32"),
        )
        table = result.table
        table.insert(0, "row", np.arange(start, start + len(table), dtype=np.int64))
        with atomic_path(self.out_dir / f"{name}.parquet") as tmp:
            table.to_parquet(tmp, index=False)
        seconds = time.perf_counter() - t0
        atomic_write_json(self.out_dir / f"{name}.done.json", {
            "fingerprint": self.fingerprint, "shard": shard, "start": start, "n": len(table),
            "latent_shape": list(result.latent_shape), "image_size": result.info["image_size"],
            "device": str(self.device), "pid": self.pid, "seconds": seconds,
            "precision": result.info.get("precision", "float32"),
            **{k: v for k, v in result.info.items() if k.startswith("int8_")},
        })
        return {"shard": shard, "n": len(table), "seconds": seconds, "pid": self.pid, "device": str(self.device)}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = [self._score_shard(int(s), int(a), list(i), list(p)) for s, a, i, p in
                zip(batch["shard"], batch["start"], batch["image_id"], batch["path"], strict=True)]
        return {key: np.array([r[key] for r in rows]) for key in ("shard", "n", "seconds", "pid", "device")}


# --------------------------------------------------------------------------------------------------------
# merge


def _merge(folder: Path, run: Path, plan: list[tuple[int, int]], ids: list[str], latent_dtype: str) -> Any:
    """Concatenate the shards in order into ``RUN/latents.npy`` and ``RUN/features.npy``; return a ScoreResult."""
    import pandas as pd

    from .._io import atomic_path, reserve_disk

    parts = [pd.read_parquet(folder / f"{_shard_name(k)}.parquet") for k in range(len(plan))]
    table = pd.concat(parts, ignore_index=True)
    n = len(ids)
    if len(table) != n or not np.array_equal(table["row"].to_numpy(), np.arange(n)) \
            or table["image_id"].astype(str).tolist() != ids:
        raise DataError(f"{folder}: the shards do not cover the image table in order; delete the folder and rerun")
    table = table.drop(columns="row")
    metas = [json.loads((folder / f"{_shard_name(k)}.done.json").read_text(encoding="utf-8")) for k in range(len(plan))]
    for name in ("latents", "features"):
        arrays = [np.load(folder / f"{_shard_name(k)}.{name}.npy", mmap_mode="r") for k in range(len(plan))]
        width = {a.shape[1] for a in arrays}
        if len(width) != 1:
            raise DataError(f"{folder}: {name} shards have different widths {sorted(width)}")
        dtype = arrays[0].dtype
        with atomic_path(run / f"{name}.npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, width.pop()))
            reserve_disk(tmp, run / f"{name}.npy")
            for (a, b), arr in zip(plan, arrays, strict=True):
                if arr.shape[0] != b - a:
                    raise DataError(f"{folder}: {name} shard rows {a}:{b} hold {arr.shape[0]} rows")
                out[a:b] = arr
            out.flush()
            del out
        del arrays
    latents = np.load(run / "latents.npy", mmap_mode="r")
    features = np.load(run / "features.npy", mmap_mode="r")
    info = {"image_size": metas[0].get("image_size"), "latent_dtype": latent_dtype,
            "precision": metas[0].get("precision", "float32"),
            **{k: v for k, v in metas[0].items() if k.startswith("int8_")},
            "devices": sorted({m.get("device") for m in metas}), "worker_pids": sorted({m.get("pid") for m in metas})}
    return ScoreResult(table, latents, run / "latents.npy", tuple(metas[0]["latent_shape"]), features,
                       run / "features.npy", info)


# --------------------------------------------------------------------------------------------------------
# entry point


def score_run_ray(
    run: str | os.PathLike,
    data: Any = None,
    *,
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
    index: str = "exact",
    index_options: dict[str, Any] | None = None,
    device: str = "auto",
    decode_workers: int = 0,
    feature_size: int | None = 224,
    progress: Callable[[int], Any] | None = None,
    precision: str = "float32",
    _inject: Any = None,
) -> Any:
    """Score a run on Ray and write the standard run files (see the module docstring).

    Parameters
    ----------
    run, data, metrics, batch_size, layer, pool, latent_dtype, distinct_*, feature_size, progress :
        as in :func:`memlens.scoring.score_run` (progress is called per finished shard).
    address : a Ray cluster (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``); None starts a local
        instance on 127.0.0.1 (or uses the one this process initialised).
    workers : model actors (default: one per GPU when ``gpus_per_worker > 0``, else one per
        ``cpus_per_worker`` CPUs of the cluster).
    gpus_per_worker : GPUs per actor (default 1 when the cluster has GPUs, else 0); fractions share a GPU.
    cpus_per_worker : CPUs reserved per actor (also its torch threads).
    shard_size : images per shard (default 1024); the unit of retry and of resumption.
    keep_shards : keep ``RUN/shards/`` after the merge (default: removed once the run files are written).
    index, index_options : neighbour index for distinctiveness (:func:`memlens.index.distinctiveness_index`).
    device : ``"auto"`` (an actor's GPU when it has one, else CPU), ``"cpu"`` or ``"cuda"``.
    precision : ``"float32"``, ``"bfloat16"`` or ``"int8"`` (CPU; the driver picks the calibration images, spread
        over the collection as in a local run, and the kernel engine and activation bits; each actor makes its
        int8 copy once, so all shards use the same int8 model); see :func:`memlens.scoring.score_images`.
    decode_workers : DataLoader decode processes inside each actor.

    Returns
    -------
    DataFrame
        The per-image table as written; ``attrs["info"]`` has the timings and shard counts.
    """
    import pandas as pd

    from .._io import atomic_write_json
    from ..metrics import get_metric
    from ..models import load_autoencoder

    t_start = time.perf_counter()
    require_ray(local=address is None)
    check_batch_settings(pool, latent_dtype, batch_size)
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    shard_size = int(shard_size or DEFAULT_SHARD_SIZE)
    # the driver only plans and merges: CPU here, whatever device the actors use
    job = prepare_run(run, data, metrics=metrics, distinct_reference=distinct_reference, device="cpu",
                      distinct_k=distinct_k)
    names = job.metrics
    if len(set(names)) != len(names):
        raise ConfigError(f"metrics listed twice: {', '.join(names)}")
    for m in names:
        get_metric(m)
    if "path" not in job.table.columns:
        raise DataError("the image table has no 'path' column (the Ray engine reads images from files)")
    model = load_autoencoder(job.checkpoint)  # fail here, not in every actor, on a bad checkpoint
    if layer:
        find_layer(model, layer)
    image_size = model_input_size(model)
    if image_size is None:
        raise ConfigError("the model declares no input size")
    int8: dict[str, Any] | None = None
    if precision == "int8":  # decided here once: every actor makes the same int8 model
        from ..quantize import activation_bits, calibration_indices, check_int8_settings, int8_engine

        check_int8_settings(layer=layer, device=device)
        engine = int8_engine()
        paths_all = job.table["path"].astype(str).tolist()
        int8 = {"calibration": [paths_all[i] for i in calibration_indices(len(paths_all))], "engine": engine,
                "bits": activation_bits(engine)}
        device = "cpu"
    del model

    run_dir = job.run
    folder = run_dir / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    table = job.table
    ids = table["image_id"].astype(str).tolist()
    plan = shard_plan(len(table), shard_size)
    settings = {"metrics": names, "layer": layer, "pool": pool, "latent_dtype": latent_dtype,
                "feature_size": feature_size, "image_size": image_size, "shard_size": shard_size,
                "precision": precision}
    if int8 is not None:
        settings["int8"] = {"engine": int8["engine"], "bits": int8["bits"]}
    fingerprint = _fingerprint(job, settings)
    plan_file = folder / "plan.json"
    old = None
    if plan_file.is_file():
        with contextlib.suppress(ValueError):
            old = json.loads(plan_file.read_text(encoding="utf-8")).get("fingerprint")
    if old is not None and old != fingerprint:
        log.info("%s: shards of an earlier run with other settings or data; starting again", folder)
        for f in folder.glob("part-*"):
            f.unlink()
    atomic_write_json(plan_file, {"fingerprint": fingerprint, "n_images": len(table), "n_shards": len(plan),
                                  "settings": settings})
    pending = [k for k, (a, b) in enumerate(plan) if not _shard_complete(folder, k, fingerprint, b - a)]
    skipped = len(plan) - len(pending)
    if skipped:
        log.info("%d of %d shards already complete; scoring the other %d", skipped, len(plan), len(pending))
        if progress is not None:
            pending_set = set(pending)
            progress(sum(b - a for k, (a, b) in enumerate(plan) if k not in pending_set))

    info: dict[str, Any] = {"engine": "ray", "shards": len(plan), "shards_skipped": skipped,
                            "shards_run": len(pending), "shard_size": shard_size}
    t_score = 0.0
    if pending:
        with ray_session(address) as ray:
            resources = ray.cluster_resources()
            workers, gpw = actor_pool_size(resources, workers=workers, gpus_per_worker=gpus_per_worker,
                                           cpus_per_worker=cpus_per_worker, device=device, n_tasks=len(pending))
            info.update(workers=workers, gpus_per_worker=gpw, cpus_per_worker=cpus_per_worker,
                        cluster=dict(resources), address=address or "local")
            log.info("scoring %d shards of up to %d images on %d Ray actors (%g CPU, %g GPU each)",
                     len(pending), shard_size, workers, cpus_per_worker, gpw)
            options = {"batch_size": int(batch_size), "pool": pool, "latent_dtype": latent_dtype,
                       "feature_size": feature_size, "layer": layer, "image_size": image_size,
                       "device": "cpu" if device == "cpu" else ("auto" if device == "auto" else device),
                       "decode_workers": int(decode_workers), "precision": precision}
            if int8 is not None:  # calibrated on the images a local run would use, with the driver's engine/bits
                options["int8"] = int8
            paths = table["path"].astype(str).tolist()
            frames = [pd.DataFrame({"shard": [k], "start": [plan[k][0]], "image_id": [ids[plan[k][0]:plan[k][1]]],
                                    "path": [paths[plan[k][0]:plan[k][1]]]}) for k in pending]
            t0 = time.perf_counter()
            failure = None
            try:
                _run_pipeline(ray, frames, job, names, options, folder, fingerprint, workers, gpw,
                              cpus_per_worker, progress, _inject)
            except Exception as exc:  # from the actors, wrapped by Ray
                cause = memlens_cause(exc)
                failure = cause if cause is not None else f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            if failure is not None:
                gc.collect()  # the traceback is gone now: release the failed pool's actors
                done = sum(_shard_complete(folder, k, fingerprint, b - a) for k, (a, b) in enumerate(plan))
                raise DataError(f"Ray scoring failed ({done} of {len(plan)} shards complete in {folder}; "
                                f"run again to continue): {failure}")
            t_score = time.perf_counter() - t0
    missing = [k for k, (a, b) in enumerate(plan) if not _shard_complete(folder, k, fingerprint, b - a)]
    if missing:
        raise DataError(f"{folder}: shards {missing[:5]} did not complete; run again to continue")

    t0 = time.perf_counter()
    result = _merge(folder, run_dir, plan, ids, latent_dtype)
    t_merge = time.perf_counter() - t0
    n_run = sum(plan[k][1] - plan[k][0] for k in pending)
    info.update(result.info)
    info.update({"device": ",".join(result.info["devices"]), "n_images": len(ids), "seconds": t_score,
                 "images_per_s": n_run / t_score if t_score > 0 else float("nan"), "merge_seconds": t_merge,
                 "metrics": names, "pool": pool, "layer": layer or "bottleneck", "feature_size": feature_size})
    result.info = info
    out = finish_run(job, result, layer=layer, pool=pool, latent_dtype=latent_dtype, feature_size=feature_size,
                     batch_size=batch_size, distinct_k=distinct_k, distinct_metric=distinct_metric,
                     distinct_reference=distinct_reference, index=index, index_options=index_options,
                     settings={"engine": "ray", "shard_size": shard_size})
    if not keep_shards:
        shutil.rmtree(folder, ignore_errors=True)
    out.attrs["info"]["total_seconds"] = time.perf_counter() - t_start
    log.info("Ray scoring: %d images (%d shards run, %d skipped) in %.1f s (%.1f images/s), merge %.1f s",
             len(ids), len(pending), skipped, t_score, info["images_per_s"], t_merge)
    return out


def _run_pipeline(ray: Any, frames: list[Any], job: Any, names: list[str], options: dict[str, Any], folder: Path,
                  fingerprint: str, workers: int, gpw: float, cpus: float, progress: Callable[[int], Any] | None,
                  inject: Any) -> None:
    from ray.data import ActorPoolStrategy

    try:
        with ray_data_context():
            _stream(ray, ActorPoolStrategy, frames, job, names, options, folder, fingerprint, workers, gpw, cpus,
                    progress, inject)
    finally:
        # the executor's actor handles can sit in reference cycles (exception tracebacks); collect them now so
        # that the actors, and the CPUs/GPUs they hold, are released before the next run asks for them
        gc.collect()


def _stream(ray: Any, pool_strategy: Any, frames: list[Any], job: Any, names: list[str], options: dict[str, Any],
            folder: Path, fingerprint: str, workers: int, gpw: float, cpus: float,
            progress: Callable[[int], Any] | None, inject: Any) -> None:
    ds = ray.data.from_pandas(frames)
    kwargs: dict[str, Any] = dict(
        batch_size=1,
        batch_format="numpy",
        compute=pool_strategy(size=workers, max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs={
            "checkpoint": str(job.checkpoint),
            "before_checkpoint": str(job.before_checkpoint) if job.before_checkpoint else None,
            "metrics": names, "options": options, "out_dir": str(folder), "fingerprint": fingerprint,
            "threads": max(1, int(cpus)), "inject": inject,
        },
        num_cpus=cpus,
        num_gpus=gpw or None,
    )
    # bounded fault tolerance: a dead actor is restarted and its shard retried a few times (Ray Data's own
    # default is to retry forever, which would loop on a shard that always kills its worker)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            scored = ds.map_batches(_ShardScorer, **kwargs, max_restarts=MAX_RESTARTS,
                                    max_task_retries=MAX_RESTARTS)
    except TypeError:  # pragma: no cover - a Ray without extra remote arguments: its defaults retry
        scored = ds.map_batches(_ShardScorer, **kwargs)
    for row in scored.iter_rows():
        log.debug("shard %d: %d images in %.1f s on %s (pid %d)", row["shard"], row["n"], row["seconds"],
                  row["device"], row["pid"])
        if progress is not None:
            progress(int(row["n"]))
