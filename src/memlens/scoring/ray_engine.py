"""Score a run on a Ray cluster: a streaming Ray Data pipeline read -> decode -> model -> write.

How it works
------------
1. **Plan** (driver). The images are cut into *units*, the unit of work, retry and resumption: runs of row groups
   of a Parquet data set (``--layout parquet``; planned from the files' footers, no row is read) or slices of
   ``shard_size`` rows of the image table (the other layouts). A unit is complete when the parts written for it
   cover its rows; a rerun skips complete units (resume by completed output files).
2. **Stream** (:mod:`memlens.scoring.ray_stages`): ``read_units`` (CPU tasks: rows with the image bytes or
   paths) -> ``decode_batch`` (CPU tasks, ``decoders`` at a time with ``cpus_per_decoder`` each: decode and
   resize) -> ``ModelStage`` (an actor pool of ``workers`` model replicas, ``gpus_per_worker`` GPUs each,
   batches of ``batch_size``: the single-process :class:`~memlens.scoring.batch.BatchScorer`, so every number
   is the same) -> ``write_parts`` (CPU tasks: ``RUN/per_image/part-A-B.parquet``, ``RUN/latents/part-A-B.npy``,
   ``RUN/features/part-A-B.npy``). Ray Data's streaming executor bounds the data in flight; the driver only
   counts the summaries of written parts.
3. **Failures.** A dead decode task is retried; a dead model actor is restarted and its batches retried, up to
   :data:`MAX_RESTARTS` times; an ``OSError`` raised in a stage (a storage hiccup) is retried too. A permanent
   error stops the run, names the image, and leaves the complete units for the rerun.
4. **Finish** (driver). ``merge=True`` (default below :data:`MERGE_BELOW` images): the parts are concatenated in
   order into the standard run files (``per_image.csv``, ``latents.npy``, ``features.npy``, ``latent_ids.txt``)
   by :func:`memlens.scoring.finish_run`, and removed unless ``keep_shards``. ``merge=False``: the parts stay
   the run's outputs; distinctiveness is computed from the latent parts (:class:`memlens.index.ShardedLatents`,
   memory-mapped) and added to each per-image part (:func:`memlens.scoring.write.finish_parts`). Without the
   merge the driver's memory does not grow with the number of images (apart from 16 bytes per image for the two
   distinctiveness columns).

Every process must see the run directory under the same path (a shared file system on a real cluster); images
are read wherever they are (local paths on every node, or object storage through ``pyarrow.fs``/fsspec).
Without ``address`` a local Ray instance is started, bound to the loopback interface.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, RunDirError
from ..ray_cluster import (
    actor_pool_size,
    memlens_cause,
    ray_data_context,
    ray_session,
    require_ray,
    shard_plan,
)
from .batch import check_batch_settings, find_layer
from .plan import ScoreJob, prepare_run, reference_args, resolve_metrics
from .ray_stages import (
    META_FILE,
    OUTPUT_DIRS,
    ModelStage,
    ShardRetry,
    decode_batch,
    parse_part,
    read_units,
    write_parts,
)
from .sources import model_input_size
from .write import finish_parts, finish_run

__all__ = ["score_run_ray", "shard_plan", "DEFAULT_SHARD_SIZE", "MAX_RESTARTS", "MERGE_BELOW", "ShardRetry",
           "read_parts"]

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1024
#: restarts of a dead actor and retries of a task
MAX_RESTARTS = 3
#: ``merge=None`` merges the parts into the standard run files below this many images
MERGE_BELOW = 1_000_000
PLAN_FILE = "_memlens_plan.json"


@dataclass
class _Plan:
    """What the driver knows before streaming: the units (``(start, n)``), how to read them, the fingerprint."""

    n: int
    units: list[tuple[int, int]]
    items: list[dict[str, Any]]
    source: Any = None  # a ParquetSource, or None for a table
    job: ScoreJob | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""


def _is_parquet(data: Any, layout: str, run: Path) -> bool:
    from ..data.layouts import detect_layout
    from ..data.layouts.parquet import ParquetSource
    from ..data.uris import has_glob, is_uri

    if isinstance(data, ParquetSource) or layout == "parquet":
        return True
    if data is None:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((run / "dataset.json").read_text(encoding="utf-8")).get("layout") == "parquet"
        return False
    if hasattr(data, "table") or layout != "auto":
        return False
    text = os.fspath(data)
    if is_uri(text) or (has_glob(text) and not Path(text).exists()):
        return True
    with contextlib.suppress(Exception):
        return detect_layout(text) == "parquet"
    return False


def _parquet_source(data: Any, run: Path) -> Any:
    from ..data.layouts.parquet import ParquetSource, open_parquet_source

    if isinstance(data, ParquetSource):
        return data
    options: dict[str, Any] = {}
    if data is None:
        rec = json.loads((run / "dataset.json").read_text(encoding="utf-8"))
        data, options = rec.get("source"), dict(rec.get("options") or {})
    return open_parquet_source(os.fspath(data), **{k: v for k, v in options.items()
                                                  if k in ("image_col", "score_col", "category_col",
                                                           "subcategory_col")})


def _plan(run: Path, data: Any, layout: str, merge: bool | None, shard_size: int, metrics: Any,
          distinct_reference: str, distinct_k: int) -> tuple[_Plan, bool]:
    """The units and the job (with the table only when it is needed: a table layout, or a merge)."""
    from ..data import load_dataset

    if _is_parquet(data, layout, run):
        source = _parquet_source(data, run)
        n = len(source)
        merge = n < MERGE_BELOW if merge is None else bool(merge)
        if n == 0:
            raise DataError(f"{source.source}: no images to score")
        units = source.units(shard_size)
        items = [{"unit": u.index, "start": u.start, "n": u.n, "file": u.file, "groups": json.dumps(u.row_groups),
                  "file_row": u.file_row} for u in units]
        job = None
        if merge:
            ds = data if hasattr(data, "table") else load_dataset(source.source, "parquet")
            job = prepare_run(run, ds, metrics=metrics, distinct_reference=distinct_reference, device="cpu",
                              distinct_k=distinct_k)
            if len(job.table) != n:
                raise DataError(f"{source.source}: {len(job.table)} rows in the table but {n} in the files")
        return _Plan(n, [(u.start, u.n) for u in units], items, source, job), merge
    if data is not None and not hasattr(data, "table") and layout != "auto":
        data = load_dataset(data, layout)
    job = prepare_run(run, data, metrics=metrics, distinct_reference=distinct_reference, device="cpu",
                      distinct_k=distinct_k)
    table = job.table
    n = len(table)
    merge = n < MERGE_BELOW if merge is None else bool(merge)
    cols = [c for c in ("score", "category", "subcategory") if c in table.columns]
    items = []
    units = shard_plan(n, shard_size)
    for k, (a, b) in enumerate(units):
        part = table.iloc[a:b]
        rows = {"image_id": part["image_id"].astype(str).tolist(), "image": part["path"].astype(str).tolist()}
        for c in cols:
            rows[c] = [None if v != v else v for v in part[c].tolist()]  # NaN -> null
        items.append({"unit": k, "start": a, "n": b - a, "rows": json.dumps(rows)})
    return _Plan(n, [(a, b - a) for a, b in units], items, None, job), merge


def _fingerprint(plan: _Plan, checkpoint: Path, before: Path | None, settings: dict[str, Any]) -> str:
    from .._io import file_sha256

    h = hashlib.sha256()
    h.update(file_sha256(checkpoint).encode())
    if before is not None:
        h.update(file_sha256(before).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    if plan.source is not None:
        h.update(json.dumps([plan.source.files, plan.source.group_rows, plan.source.image_col,
                             plan.source.id_col]).encode())
    else:
        import pandas as pd

        assert plan.job is not None
        rows = pd.util.hash_pandas_object(plan.job.table[["image_id", "path"]].astype(str), index=False)
        h.update(rows.to_numpy().tobytes())
    h.update(str(plan.n).encode())
    return h.hexdigest()


def list_parts(run: Path) -> list[tuple[int, int, str]]:
    """``(a, b, name)`` of every complete part of ``run`` (its Parquet file and both ``.npy`` files exist), sorted."""
    folder = run / "per_image"
    if not folder.is_dir():
        return []
    npy = {name: {e.name for e in os.scandir(run / name)} if (run / name).is_dir() else set()
           for name in ("latents", "features")}
    out = []
    for entry in os.scandir(folder):
        if not entry.name.endswith(".parquet"):
            continue
        ab = parse_part(entry.name)
        stem = entry.name[: -len(".parquet")]
        if ab is not None and all(f"{stem}.npy" in names for names in npy.values()):
            out.append((ab[0], ab[1], stem))
    return sorted(out)


def _pending_units(run: Path, units: list[tuple[int, int]]) -> list[int]:
    """Units whose rows the complete parts do not tile exactly; their stray files are removed."""
    import bisect

    starts = [a for a, _ in units]
    covered: dict[int, list[tuple[int, int, str]]] = {}
    for a, b, stem in list_parts(run):
        k = bisect.bisect_right(starts, a) - 1
        if k >= 0 and b <= units[k][0] + units[k][1]:
            covered.setdefault(k, []).append((a, b, stem))
    pending = []
    for k, (start, n) in enumerate(units):
        pos = start
        for a, b, _ in covered.get(k, []):
            if a != pos:
                break
            pos = b
        if pos != start + n:
            pending.append(k)
    # remove every file of a pending unit (partial parts of an interrupted run), so the rerun writes it anew
    doomed = set(pending)
    for name in OUTPUT_DIRS:
        folder = run / name
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            ab = parse_part(entry.name)
            if ab is not None:
                k = bisect.bisect_right(starts, ab[0]) - 1
                if k in doomed or k < 0:
                    os.unlink(entry.path)
    return pending


def _reset_if_other(run: Path, fingerprint: str, record: dict[str, Any]) -> None:
    """Outputs of an earlier run with other settings or data are removed, never mixed; then the plan is recorded."""
    from .._io import atomic_write_json

    plan_file = run / "per_image" / PLAN_FILE
    old = None
    if plan_file.is_file():
        with contextlib.suppress(ValueError):
            old = json.loads(plan_file.read_text(encoding="utf-8")).get("fingerprint")
    if old != fingerprint and any((run / d).is_dir() for d in OUTPUT_DIRS):
        if old is not None:
            log.info("%s: parts of an earlier run with other settings or data; starting again", run / "per_image")
        for d in OUTPUT_DIRS:
            folder = run / d
            if folder.is_dir():
                for entry in os.scandir(folder):
                    if parse_part(entry.name) is not None or entry.name.startswith("_"):
                        os.unlink(entry.path)
    atomic_write_json(plan_file, {"fingerprint": fingerprint, **record})


def _int8_plan(plan: _Plan, image_size: int, layer: str | None, device: str) -> dict[str, Any]:
    """The int8 settings every actor uses: kernel engine, activation bits and the calibration images (decoded
    here: the :func:`memlens.quantize.calibration_indices` of the collection, as a local run picks them)."""
    from ..quantize import activation_bits, calibration_indices, check_int8_settings, int8_engine

    check_int8_settings(layer=layer, device=device)
    engine = int8_engine()
    rows = calibration_indices(plan.n)
    if plan.job is not None:
        from ..data.layouts.parquet import load_located

        paths = plan.job.table["path"].astype(str).tolist()
        cal = load_located([paths[i] for i in rows], image_size)
    else:
        cal = _source_rows(plan.source, rows, image_size)
    return {"calibration": cal, "engine": engine, "bits": activation_bits(engine)}


def _source_rows(source: Any, rows: Sequence[int], size: int) -> np.ndarray:
    """Rows of a Parquet data set decoded at ``size`` (uint8), reading only the row groups that hold them."""
    from ..data.image_bytes import load_image_ref

    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    for k, r in enumerate(rows):
        for unit in source.units(1):
            if unit.start <= r < unit.start + unit.n:
                for _, frame in source.read_unit(unit, unit.n, columns=[]):  # one batch: the whole unit
                    out[k] = load_image_ref(frame["image"].iloc[r - unit.start], size,
                                            str(frame["image_id"].iloc[r - unit.start]))
                break
    return out


# --------------------------------------------------------------------------------------------------------
# entry point


def score_run_ray(
    run: str | os.PathLike,
    data: Any = None,
    *,
    layout: str = "auto",
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1,
    decoders: int | None = None,
    cpus_per_decoder: float = 1,
    shard_size: int | None = None,
    merge: bool | None = None,
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
    """Score a run on Ray (see the module docstring).

    Parameters
    ----------
    run, data, metrics, batch_size, layer, pool, latent_dtype, distinct_*, feature_size, progress :
        as in :func:`memlens.scoring.score_run` (progress is called per written part). ``data`` may also be a
        Parquet data set (a folder, a glob or a URI; :mod:`memlens.data.layouts.parquet`) or a
        :class:`~memlens.data.layouts.parquet.ParquetSource`.
    layout : the data's layout (``"auto"``: detected; ``"parquet"`` for a glob or URI is implied).
    address : a Ray cluster (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``); None starts a local
        instance on 127.0.0.1 (or uses the one this process initialised).
    workers : model actors (default: one per GPU when ``gpus_per_worker > 0``, else one per
        ``cpus_per_worker`` CPUs of the cluster).
    gpus_per_worker : GPUs per actor (default 1 when the cluster has GPUs, else 0); fractions share a GPU.
    cpus_per_worker : CPUs reserved per model actor (also its torch threads).
    decoders, cpus_per_decoder : concurrent decode tasks (default: the cluster's CPUs left by the model actors,
        at least 1) and the CPUs each reserves.
    shard_size : rows per unit (default 1024; Parquet: row groups grouped up to this many rows).
    merge : write the standard run files (``per_image.csv``, ``latents.npy``, ``features.npy``) from the parts;
        None: when there are fewer than :data:`MERGE_BELOW` images. ``False`` leaves ``RUN/per_image/``,
        ``RUN/latents/``, ``RUN/features/`` as the outputs (distinctiveness added to the per-image parts).
    keep_shards : with ``merge``, keep the parts after merging (default: removed).
    index, index_options : neighbour index for distinctiveness (:func:`memlens.index.distinctiveness_index`).
    device : ``"auto"`` (an actor's GPU when it has one, else CPU), ``"cpu"`` or ``"cuda"``.
    precision : ``"float32"``, ``"bfloat16"`` or ``"int8"`` (CPU; the driver decodes the calibration images,
        spread over the collection as in a local run, and picks the kernel engine and activation bits; each
        actor makes its int8 copy once, so every image is scored by the same int8 model).
    decode_workers : ignored (the decode stage replaces DataLoader workers); kept for the engine contract.

    Returns
    -------
    DataFrame
        With ``merge``: the per-image table as written. Without: an empty table with the columns of the parts;
        ``attrs["info"]`` has the counts, timings (``decode_seconds``/``model_seconds``: summed over workers) and
        where the outputs are.
    """

    from ..metrics import get_metric
    from ..models import load_autoencoder

    t_start = time.perf_counter()
    require_ray(local=address is None)
    check_batch_settings(pool, latent_dtype, batch_size)
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if decoders is not None and int(decoders) < 1:
        raise ConfigError(f"decoders must be at least 1, got {decoders}")
    if not cpus_per_decoder > 0:
        raise ConfigError(f"cpus_per_decoder must be positive, got {cpus_per_decoder}")
    if index != "exact":
        from ..index import require_faiss

        require_faiss()
    shard_size = int(shard_size or DEFAULT_SHARD_SIZE)
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    run_dir = Path(run)
    ckpt = run_dir / "autoencoder.pt"
    if not ckpt.is_file():
        raise RunDirError(f"{run_dir}: no autoencoder.pt (train first: memlens train DATA --out {run_dir})")
    plan, merge = _plan(run_dir, data, layout, merge, shard_size, metrics, distinct_reference, distinct_k)
    names = plan.job.metrics if plan.job is not None else resolve_metrics(metrics, "cpu")
    if len(set(names)) != len(names):
        raise ConfigError(f"metrics listed twice: {', '.join(names)}")
    for m in names:
        get_metric(m)
    before_ckpt = run_dir / "autoencoder_before.pt"
    before_ckpt = before_ckpt if before_ckpt.is_file() else None
    model = load_autoencoder(ckpt)  # fail here, not in every actor, on a bad checkpoint
    if layer:
        find_layer(model, layer)
    image_size = model_input_size(model)
    if image_size is None:
        raise ConfigError("the model declares no input size")
    del model
    int8 = _int8_plan(plan, image_size, layer, device) if precision == "int8" else None
    if int8 is not None:
        device = "cpu"
    settings = {"metrics": names, "layer": layer, "pool": pool, "latent_dtype": latent_dtype,
                "feature_size": feature_size, "image_size": image_size, "shard_size": shard_size,
                "precision": precision}
    if int8 is not None:
        settings["int8"] = {"engine": int8["engine"], "bits": int8["bits"]}
    fingerprint = _fingerprint(plan, ckpt, before_ckpt, settings)
    _reset_if_other(run_dir, fingerprint, {"n_images": plan.n, "n_units": len(plan.units), "settings": settings})
    pending = _pending_units(run_dir, plan.units)
    skipped = len(plan.units) - len(pending)
    if skipped:
        log.info("%d of %d units already complete; scoring the other %d", skipped, len(plan.units), len(pending))
        if progress is not None:
            done = set(range(len(plan.units))) - set(pending)
            progress(sum(plan.units[k][1] for k in done))

    info: dict[str, Any] = {"engine": "ray", "shards": len(plan.units), "shards_skipped": skipped,
                            "shards_run": len(pending), "shard_size": shard_size, "merge": merge}
    stats: dict[str, Any] = {"pids": set(), "devices": set(), "decode_s": 0.0, "model_s": 0.0, "parts": 0}
    t_score = 0.0
    if pending:
        with ray_session(address) as ray:
            resources = ray.cluster_resources()
            workers, gpw = actor_pool_size(resources, workers=workers, gpus_per_worker=gpus_per_worker,
                                           cpus_per_worker=cpus_per_worker, device=device, n_tasks=len(pending))
            # the decoders get the CPUs the model actors leave (of those free now: actors of an earlier run in this
            # Ray instance may still hold some); where that is less than one decoder's share (e.g. --workers = the
            # cluster's CPUs), decode tasks run unreserved beside the actors rather than wait for a CPU forever
            free_cpus = float(ray.available_resources().get("CPU", 0.0))
            spare = min(float(resources.get("CPU", 1)), free_cpus) - workers * cpus_per_worker
            if decoders is None:
                decoders = max(1, int(spare // cpus_per_decoder))
            if spare < cpus_per_decoder:
                log.info("the model actors reserve every CPU: the decode tasks share them unreserved")
                cpus_per_decoder = 0
            info.update(decoders=decoders, cpus_per_decoder=cpus_per_decoder)
            info.update(workers=workers, gpus_per_worker=gpw, cpus_per_worker=cpus_per_worker, decoders=decoders,
                        cpus_per_decoder=cpus_per_decoder, cluster=dict(resources), address=address or "local")
            log.info("scoring %d units (%d images) with %d decoders (%g CPU each) and %d model actors (%g CPU, "
                     "%g GPU each)", len(pending), sum(plan.units[k][1] for k in pending), decoders,
                     cpus_per_decoder, workers, cpus_per_worker, gpw)
            options = {"pool": pool, "latent_dtype": latent_dtype, "feature_size": feature_size, "layer": layer,
                       "device": "cpu" if device == "cpu" else ("auto" if device == "auto" else device),
                       "precision": precision, "int8": int8}
            stages = {"checkpoint": str(ckpt), "before_checkpoint": str(before_ckpt) if before_ckpt else None,
                      "metrics": names, "options": options, "threads": max(1, int(cpus_per_worker)),
                      "inject": _inject if isinstance(_inject, list) else ([_inject] if _inject else [])}
            # the model actors live while this marker does (ray_stages._watch): removed when this run ends
            active = run_dir / "per_image" / f".active-{os.getpid()}-{time.time_ns()}"
            active.parent.mkdir(parents=True, exist_ok=True)
            active.touch()
            stages["active"] = str(active)
            t0 = time.perf_counter()
            failure = None
            try:
                _run_pipeline(ray, [plan.items[k] for k in pending], plan.source, stages, run_dir, image_size,
                              feature_size, batch_size, shard_size, workers, gpw, cpus_per_worker, decoders,
                              cpus_per_decoder, progress, stats)
            except Exception as exc:  # from the stages, wrapped by Ray
                cause = memlens_cause(exc)
                failure = cause if cause is not None else f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            finally:
                active.unlink(missing_ok=True)
            if failure is not None:
                gc.collect()  # the traceback is gone now: release the failed pool's actors
                _wait_for_cpus(ray, free_cpus)
                left = _pending_units(run_dir, plan.units)
                raise DataError(f"Ray scoring failed ({len(plan.units) - len(left)} of {len(plan.units)} units "
                                f"complete in {run_dir / 'per_image'}; run again to continue): {failure}")
            t_score = time.perf_counter() - t0
    missing = _pending_units(run_dir, plan.units)
    if missing:
        raise DataError(f"{run_dir / 'per_image'}: units {missing[:5]} did not complete; run again to continue")
    n_run = sum(plan.units[k][1] for k in pending)
    info.update({"n_images": plan.n, "seconds": t_score,
                 "images_per_s": n_run / t_score if t_score > 0 else float("nan"),
                 "decode_seconds": stats["decode_s"], "model_seconds": stats["model_s"],
                 "worker_pids": sorted(stats["pids"]), "devices": sorted(stats["devices"]),
                 "device": ",".join(sorted(stats["devices"])) or "cpu", "metrics": names, "pool": pool,
                 "layer": layer or "bottleneck", "feature_size": feature_size, "image_size": image_size,
                 "latent_dtype": latent_dtype, "precision": precision})
    if int8 is not None:
        info.update({"int8_engine": int8["engine"], "int8_activation_bits": int8["bits"],
                     "int8_calibration_images": len(int8["calibration"])})
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((run_dir / "latents" / META_FILE).read_text(encoding="utf-8"))
        info.update({k: v for k, v in meta.items() if k.startswith("int8_")})
    ray_settings = {"engine": "ray", "shard_size": shard_size, "merge": merge}
    t0 = time.perf_counter()
    if merge:
        assert plan.job is not None
        result = _merge(run_dir, plan.job, latent_dtype, info)
        out = finish_run(plan.job, result, layer=layer, pool=pool, latent_dtype=latent_dtype,
                         feature_size=feature_size, batch_size=batch_size, distinct_k=distinct_k,
                         distinct_metric=distinct_metric, distinct_reference=distinct_reference, index=index,
                         index_options=index_options, settings=ray_settings)
        if not keep_shards:
            for d in OUTPUT_DIRS:
                shutil.rmtree(run_dir / d, ignore_errors=True)
    else:
        ref = plan.job.ref_args if plan.job is not None else _source_reference(plan.source, distinct_reference)
        out = finish_parts(run_dir, [p[2] for p in list_parts(run_dir)], n=plan.n, ref_args=ref,
                           source=str(getattr(plan.source, "source", "")) or None,
                           metrics=names, layer=layer, pool=pool, latent_dtype=latent_dtype,
                           feature_size=feature_size, batch_size=batch_size, distinct_k=distinct_k,
                           distinct_metric=distinct_metric, distinct_reference=distinct_reference, index=index,
                           index_options=index_options, before=before_ckpt is not None, info=info,
                           settings=ray_settings)
        # merged files of an earlier scoring would now describe other numbers than the parts: remove them
        stale = [run_dir / n for n in ("per_image.csv", "latents.npy", "latent_ids.txt", "features.npy")
                 if (run_dir / n).exists()]
        for f in stale:
            f.unlink()
        if stale:
            log.info("removed %s of an earlier scoring (the parts are this run's outputs)",
                     ", ".join(f.name for f in stale))
    out.attrs.setdefault("info", info)
    out.attrs["info"].update({k: v for k, v in info.items() if k not in out.attrs["info"]})
    out.attrs["info"]["finish_seconds"] = time.perf_counter() - t0
    out.attrs["info"]["total_seconds"] = time.perf_counter() - t_start
    log.info("Ray scoring: %d images (%d units run, %d skipped) in %.1f s (%.1f images/s); decode %.1f s, "
             "model %.1f s (summed over workers)", plan.n, len(pending), skipped, t_score, info["images_per_s"],
             stats["decode_s"], stats["model_s"])
    return out


def _wait_for_cpus(ray: Any, free: float, timeout: float = 15.0) -> None:
    """Wait (at most ``timeout`` s) until the CPUs free before a failed run are free again: its actors are torn
    down asynchronously, and a rerun in the same Ray instance should not find them holding CPUs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and float(ray.available_resources().get("CPU", 0.0)) < free - 1e-6:
        time.sleep(0.2)


def _source_reference(source: Any, reference: str) -> dict[str, Any]:
    """The neighbour references of a Parquet data set (reads the category or split column only)."""
    if reference == "all":
        return {}
    import pandas as pd

    col = {"category": source.category_col, "split": "split" if "split" in source.columns else None}[reference]
    if col is None:
        return reference_args(pd.DataFrame(index=range(0)), reference)  # the ConfigError naming the column
    parts = []
    for f in range(len(source.files)):
        with source.open(f) as pf:
            parts.append(pf.read(columns=[col]).to_pandas()[col])
    values = pd.concat(parts, ignore_index=True)
    return reference_args(pd.DataFrame({reference: values}), reference)


def read_parts(run: str | os.PathLike, columns: Sequence[str] | None = None) -> Any:
    """The per-image table of a run scored on Ray without ``merge``: its Parquet parts, in order."""
    import pandas as pd

    run = Path(run)
    parts = list_parts(run)
    if not parts:
        raise RunDirError(f"{run}: no per_image.csv and no per_image/part-*.parquet (score first: memlens score "
                          f"DATA --run {run})")
    frames = [pd.read_parquet(run / "per_image" / f"{stem}.parquet", columns=list(columns) if columns else None)
              for _, _, stem in parts]
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------------------
# merge


def _merge(run: Path, job: ScoreJob, latent_dtype: str, info: dict[str, Any]) -> Any:
    """Concatenate the parts in order into ``RUN/latents.npy`` and ``RUN/features.npy``; return a ScoreResult."""
    from .._io import atomic_path, reserve_disk
    from .execute import ScoreResult

    parts = list_parts(run)
    n = len(job.table)
    table = read_parts(run)
    ids = job.table["image_id"].astype(str).tolist()
    if len(table) != n or not np.array_equal(table["row"].to_numpy(), np.arange(n)) \
            or table["image_id"].astype(str).tolist() != ids:
        raise DataError(f"{run / 'per_image'}: the parts do not cover the image table in order; delete the "
                        "per_image, latents and features folders and rerun")
    recon = [c for c in table.columns if c.startswith("recon_")]
    table = table[["image_id", *recon]]
    for name in ("latents", "features"):
        arrays = [np.load(run / name / f"{stem}.npy", mmap_mode="r") for _, _, stem in parts]
        widths = {a.shape[1] for a in arrays}
        if len(widths) != 1:
            raise DataError(f"{run / name}: parts have different widths {sorted(widths)}")
        with atomic_path(run / f"{name}.npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=arrays[0].dtype, shape=(n, widths.pop()))
            reserve_disk(tmp, run / f"{name}.npy")
            for (a, b, _), arr in zip(parts, arrays, strict=True):
                out[a:b] = arr
            out.flush()
            del out
        del arrays
    shape = json.loads((run / "latents" / META_FILE).read_text(encoding="utf-8"))["latent_shape"]
    return ScoreResult(table, np.load(run / "latents.npy", mmap_mode="r"), run / "latents.npy", tuple(shape),
                       np.load(run / "features.npy", mmap_mode="r"), run / "features.npy", dict(info))


# --------------------------------------------------------------------------------------------------------
# the pipeline


def _run_pipeline(ray: Any, items: list[dict[str, Any]], source: Any, stages: dict[str, Any], run: Path,
                  image_size: int, feature_size: int | None, batch_size: int, shard_size: int, workers: int,
                  gpw: float, cpus: float, decoders: int, cpus_per_decoder: float,
                  progress: Callable[[int], Any] | None, stats: dict[str, Any]) -> None:
    from ray.data import ActorPoolStrategy

    try:
        with ray_data_context():
            ds = _build(ray, ActorPoolStrategy, items, source, stages, run, image_size, feature_size, batch_size,
                        shard_size, workers, gpw, cpus, decoders, cpus_per_decoder)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for k in range(len(batch["n"])):
                    stats["pids"].update(json.loads(str(batch["pids"][k])))
                    stats["devices"].update(json.loads(str(batch["devices"][k])))
                    stats["decode_s"] += float(batch["decode_s"][k])
                    stats["model_s"] += float(batch["model_s"][k])
                    stats["parts"] += 1
                    if progress is not None:
                        progress(int(batch["n"][k]))
    finally:
        # the executor's actor handles can sit in reference cycles (exception tracebacks); collect them now so
        # that the actors, and the CPUs/GPUs they hold, are released before the next run asks for them
        gc.collect()


def _build(ray: Any, pool_strategy: Any, items: list[dict[str, Any]], source: Any, stages: dict[str, Any],
           run: Path, image_size: int, feature_size: int | None, batch_size: int, shard_size: int, workers: int,
           gpw: float, cpus: float, decoders: int, cpus_per_decoder: float) -> Any:
    from ray.data import TaskPoolStrategy

    # bounded fault tolerance: a dead task or actor is retried a few times (Ray Data's own default for actors is
    # to retry forever, which would loop on an image that always kills its worker)
    # (reading and writing are light I/O: unreserved CPU, so they never wait behind the model actors)
    retry = {"max_retries": MAX_RESTARTS, "retry_exceptions": [OSError]}
    # unreserved tasks still need a cap: without one Ray starts a reader (a worker process) for every unit at
    # once -- 490 units of a million images started 70 processes on 2 cores before the first model batch
    io_tasks = max(2, int(decoders))
    inject = stages.pop("inject")
    read_rows = max(1, min(int(batch_size), 256))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(read_units, batch_size=1, batch_format="numpy", num_cpus=0,
                            compute=TaskPoolStrategy(size=io_tasks), fn_kwargs={"source": source, "read_rows": read_rows}, **retry)
        ds = ds.map_batches(decode_batch, batch_size=read_rows, batch_format="numpy", num_cpus=cpus_per_decoder,
                            compute=TaskPoolStrategy(size=decoders),
                            fn_kwargs={"size": image_size, "feature_size": feature_size, "inject": inject}, **retry)
        ds = ds.map_batches(ModelStage, batch_size=int(batch_size), batch_format="numpy",
                            compute=pool_strategy(size=workers), fn_constructor_kwargs={**stages, "inject": inject},
                            num_cpus=cpus, num_gpus=gpw or None, max_restarts=MAX_RESTARTS,
                            max_task_retries=MAX_RESTARTS)
        return ds.map_batches(write_parts, batch_size=min(shard_size, 4096), batch_format="numpy", num_cpus=0,
                              compute=TaskPoolStrategy(size=io_tasks), fn_kwargs={"out": str(run)}, **retry)
