"""The stages of the Ray scoring pipeline (:mod:`memlens.scoring.ray_engine`), each a Ray Data ``map_batches``
function or callable class:

``read_units``   (CPU tasks)   a unit of work (a run of Parquet row groups, or a slice of the image table) ->
                               rows ``row, unit, image_id, image`` (encoded bytes or a path/URL) + source columns
``decode_batch`` (CPU tasks)   ``image`` -> ``x`` (uint8, (B, S, S, 3), the model's size) and ``fx`` (the feature
                               size, when it differs): the pixels :func:`memlens.data.load_image` gives
``ModelStage``   (actor pool)  ``x``/``fx`` -> ``recon_*``, ``latent``, ``feature`` through the single-process
                               :class:`~memlens.scoring.batch.BatchScorer` (:func:`~memlens.scoring.execute.scoring_session`)
``write_parts``  (CPU tasks)   rows -> ``RUN/per_image/part-A-B.parquet``, ``RUN/latents/part-A-B.npy``,
                               ``RUN/features/part-A-B.npy`` for each run of consecutive rows ``A..B-1`` of one unit;
                               returns one small summary row per file to the driver

Images travel between the stages as uint8 (a quarter of float32); every file is written atomically and the
Parquet file last, so a part counts once its ``.parquet`` exists.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["ShardRetry", "read_units", "decode_batch", "ModelStage", "write_parts", "part_name", "parse_part",
           "OUTPUT_DIRS", "META_FILE"]

#: what the model replicas report once (latent shape, int8 calibration), in ``RUN/latents/``
META_FILE = "_meta.json"
#: the output folders of a run scored on Ray (per-image table, latents, pretrained features)
OUTPUT_DIRS = ("per_image", "latents", "features")


class ShardRetry(OSError):
    """A transient failure inside a stage; Ray retries the task (an :class:`OSError`)."""


def part_name(a: int, b: int) -> str:
    """``part-AAAAAAAAAAAA-BBBBBBBBBBBB`` for rows ``a..b-1`` (zero-padded: names sort in row order)."""
    return f"part-{a:012d}-{b:012d}"


def parse_part(name: str) -> tuple[int, int] | None:
    """``(a, b)`` of a part file name, or None."""
    stem = name.split(".", 1)[0]
    bits = stem.split("-")
    if len(bits) != 3 or bits[0] != "part" or not (bits[1].isdigit() and bits[2].isdigit()):
        return None
    return int(bits[1]), int(bits[2])


def maybe_fail(inject: list[dict[str, Any]], stage: str, units: Any) -> None:
    """Test hook: for each ``{"stage", "unit", "kind", "marker"}`` of ``inject`` whose stage is ``stage`` (default
    ``"model"``) and whose unit is among ``units``, fail once (the ``marker`` file records it) or, without a marker,
    every time. Kinds: ``exit`` (the process dies), ``raise`` (a retried :class:`ShardRetry`), anything else (a
    permanent :class:`DataError`)."""
    present = {int(u) for u in np.unique(np.asarray(units))}
    for inj in inject:
        unit = int(inj.get("unit", inj.get("shard", -1)))
        if inj.get("stage", "model") != stage or unit not in present:
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
            raise ShardRetry(f"injected transient failure in the {stage} stage on unit {unit}")
        raise DataError(f"injected permanent failure in the {stage} stage on unit {unit}")


# --------------------------------------------------------------------------------------------------------
# read


def _column(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def read_units(batch: dict[str, Any], *, source: Any, read_rows: int) -> Any:
    """Rows of the units in ``batch`` (one unit per input row): a generator of numpy batches.

    ``source`` is a :class:`memlens.data.layouts.parquet.ParquetSource` (units hold row groups) or None (units
    carry their rows as JSON: ``image_id``, ``image`` and the source's leading columns).
    """
    for k in range(len(batch["unit"])):
        unit_index, start = int(batch["unit"][k]), int(batch["start"][k])
        if source is None:
            rows = json.loads(str(batch["rows"][k]))
            n = len(rows["image_id"])
            out = {"row": np.arange(start, start + n, dtype=np.int64),
                   "unit": np.full(n, unit_index, dtype=np.int64)}
            for key, values in rows.items():
                out[key] = (np.array([np.nan if v is None else v for v in values], dtype=np.float64)
                            if key == "score" else _column(values))
            yield out
            continue
        from ..data.layouts.parquet import Unit

        unit = Unit(unit_index, int(batch["file"][k]), tuple(json.loads(str(batch["groups"][k]))), start,
                    int(batch["n"][k]), int(batch["file_row"][k]))
        for pos, frame in source.read_unit(unit, read_rows):
            n = len(frame)
            out = {"row": np.arange(start + pos - unit.file_row, start + pos - unit.file_row + n, dtype=np.int64),
                   "unit": np.full(n, unit_index, dtype=np.int64)}
            for col in frame.columns:
                values = frame[col]
                out[col] = values.to_numpy() if values.dtype.kind in "biuf" else _column(values.tolist())
            yield out


# --------------------------------------------------------------------------------------------------------
# decode


def decode_batch(batch: dict[str, Any], *, size: int, feature_size: int | None, inject: Any = None
                 ) -> dict[str, Any]:
    """CPU decode-and-resize: ``image`` (bytes, path or URL) -> uint8 pixels ``x`` at the model's size and ``fx``
    at the feature size (when it differs), as :func:`memlens.data.load_image` prepares a file."""
    from ..data.image_bytes import load_image_ref

    t0 = time.perf_counter()
    maybe_fail(list(inject or []), "decode", batch["unit"])
    images, ids = batch.pop("image"), batch["image_id"]
    sizes = [int(size)] + ([int(feature_size)] if feature_size and feature_size != size else [])
    for key, side in zip(("x", "fx"), sizes, strict=False):
        out = np.empty((len(images), side, side, 3), dtype=np.uint8)
        for i, ref in enumerate(images):
            out[i] = load_image_ref(ref, side, str(ids[i]))
        batch[key] = out
    batch["decode_s"] = np.full(len(images), (time.perf_counter() - t0) / max(1, len(images)))
    return batch


# --------------------------------------------------------------------------------------------------------
# model


class ModelStage:
    """Ray Data callable class: one actor = one model replica (autoencoder, weights before exposure, perceptual
    and pretrained-feature networks), loaded once, on the actor's GPU when it has one."""

    def __init__(self, checkpoint: str, before_checkpoint: str | None, metrics: list[str], options: dict[str, Any],
                 threads: int, inject: Any = None, active: str | None = None):
        import contextlib

        import torch

        if active is not None:  # see _watch: a replica of a run that has ended does not start again
            if not os.path.exists(active):
                raise DataError("the scoring run that started this model actor has ended")
            import threading

            threading.Thread(target=_watch, args=(active,), daemon=True).start()

        from ..metrics import get_metric
        from ..models import load_autoencoder
        from .batch import pretrained_features, resolve_device
        from .execute import scoring_session
        from .precision import PRECISIONS

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        device = options.get("device") or "auto"
        if device == "auto":
            import ray

            device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.device = resolve_device(device)
        model = load_autoencoder(checkpoint)
        before = load_autoencoder(before_checkpoint) if before_checkpoint else None
        run_model, run_before = model, before
        int8 = options.get("int8")
        if int8:  # one int8 copy per actor, calibrated on the images the driver chose (as a local run would)
            from ..quantize import quantize_autoencoder
            from .sources import uint8_batch

            cal = uint8_batch(np.asarray(int8["calibration"]))
            run_model, run_before = (None if m is None else quantize_autoencoder(m, cal, engine=int8["engine"],
                                                                                 bits=int8["bits"])
                                     for m in (model, before))
        #: what the run records about this replica (the same for every replica): the int8 calibration's effect
        self.meta: dict[str, Any] = {}
        if int8:
            err = run_model.calibration_error
            self.meta = {"int8_calibration_images": int(run_model.calibration_images),
                         "int8_calibration_max_rel_mse": float(err.get("max_rel_mse", float("nan"))),
                         "int8_calibration_median_rel_mse": float(err.get("median_rel_mse", float("nan")))}
        self.latent_dtype = np.dtype(options["latent_dtype"])
        self.inject = list(inject or [])
        self.pid = os.getpid()
        self._stack = contextlib.ExitStack()
        self.scorer = self._stack.enter_context(scoring_session(
            run_model, [get_metric(m) for m in metrics], device=self.device, before_model=run_before,
            feature_model=pretrained_features(self.device), pool=options["pool"], layer=options["layer"],
            layer_model=model, amp_dtype=PRECISIONS[options.get("precision", "float32")],
            feature_size=options["feature_size"], int8=bool(int8)))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        from .sources import uint8_batch

        t0 = time.perf_counter()
        maybe_fail(self.inject, "model", batch["unit"])
        x = uint8_batch(batch.pop("x"))
        fx = batch.pop("fx", None)
        with torch.inference_mode(), self.scorer.hooked():
            numbers = self.scorer(x, uint8_batch(fx) if fx is not None else None)
        batch.update(numbers.columns)
        batch["latent"] = numbers.latents.astype(self.latent_dtype, copy=False)
        batch["feature"] = numbers.features
        n = len(x)
        batch["meta"] = _column([json.dumps({"latent_shape": list(numbers.latent_shape), **self.meta})] * n)
        batch["pid"] = np.full(n, self.pid, dtype=np.int64)
        batch["device"] = _column([str(self.device)] * n)
        batch["model_s"] = np.full(n, (time.perf_counter() - t0) / max(1, n))
        return batch


def _watch(active: str, period: float = 1.0) -> None:
    """End this actor's process once the driver's ``active`` marker is gone (the run ended, failed or was
    interrupted). Ray Data drops a failed pipeline's actors without killing them; left alive, they would hold
    their CPUs/GPUs and starve the rerun in the same Ray instance."""
    while os.path.exists(active):
        time.sleep(period)
    os._exit(0)


# --------------------------------------------------------------------------------------------------------
# write


_META = ("unit", "latent", "feature", "meta", "pid", "device", "decode_s", "model_s")


def write_parts(batch: dict[str, Any], *, out: str) -> dict[str, Any]:
    """Write each run of consecutive rows of one unit as a part (see the module docstring); a summary per part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .._io import atomic_path, atomic_write_json

    run = Path(out)
    order = np.argsort(batch["row"], kind="stable")
    rows, units = batch["row"][order], batch["unit"][order]
    cut = np.flatnonzero((np.diff(rows) != 1) | (np.diff(units) != 0)) + 1
    info = run / "latents" / META_FILE
    if not info.is_file():  # every replica writes the same
        atomic_write_json(info, json.loads(str(batch["meta"][0])))
    summary: dict[str, list[Any]] = {"n": [], "part": [], "pids": [], "devices": [], "decode_s": [], "model_s": []}
    for piece in np.split(np.arange(len(rows)), cut):
        sel = order[piece]
        name = part_name(int(rows[piece[0]]), int(rows[piece[-1]]) + 1)
        for folder, key in (("latents", "latent"), ("features", "feature")):
            with atomic_path(run / folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(batch[key][sel]), allow_pickle=False)
        columns = {k: v[sel] for k, v in batch.items() if k not in _META}
        table = pa.table({k: pa.array(list(v) if v.dtype == object else v) for k, v in columns.items()})
        with atomic_path(run / "per_image" / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)
        summary["n"].append(len(sel))
        summary["part"].append(name)
        summary["pids"].append(json.dumps(sorted({int(p) for p in batch["pid"][sel]})))
        summary["devices"].append(json.dumps(sorted({str(d) for d in batch["device"][sel]})))
        summary["decode_s"].append(float(np.sum(batch["decode_s"][sel])))
        summary["model_s"].append(float(np.sum(batch["model_s"][sel])))
    return {k: np.asarray(v) for k, v in summary.items()}
