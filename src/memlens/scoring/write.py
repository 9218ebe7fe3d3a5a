"""Write a scored run: ``per_image.csv``, ``latent_ids.txt``, ``split_halves.npz``, the ``score`` settings.

:func:`finish_run` is the last step of every engine: it takes a :class:`~memlens.scoring.execute.ScoreResult`
whose rows follow the planned image table, adds the columns that come from the run directory
(``recon_exposure`` and ``exposure_order`` from ``exposure.csv``, ``role``) and the neighbour measures
(``distinctiveness``, ``distinctiveness_features``, via :func:`memlens.index.distinctiveness_index`), passes
the source table's other columns through, and records how the run was scored in ``RUN/config.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from ..errors import DataError
from .arrays import write_npz
from .plan import ScoreJob

__all__ = ["LEADING", "finish_run", "finish_parts", "exposure_losses", "record_settings"]

log = logging.getLogger(__name__)

#: ``per_image.csv`` columns that lead the table, in this order (when present)
LEADING = ("image_id", "score", "category", "subcategory", "split")


def exposure_losses(run: Path) -> pd.DataFrame | None:
    """``exposure.csv`` by image id: ``loss`` (the loss at the single exposure) and ``order`` (its position in
    the exposure stream, when recorded); None without the file."""
    path = run / "exposure.csv"
    if not path.is_file():
        return None
    exp = pd.read_csv(path, dtype={"image_id": str})
    if "image_id" not in exp.columns or "loss" not in exp.columns:
        raise DataError(f"{path}: expected columns image_id, order, loss (found {', '.join(exp.columns)})")
    # an image exposed more than once keeps its first exposure
    if "order" in exp.columns:
        exp = exp.sort_values("order", kind="stable")
    exp = exp.drop_duplicates("image_id", keep="first").set_index("image_id")
    return exp[[c for c in ("loss", "order") if c in exp.columns]].astype(float)


def record_settings(run: Path, settings: dict[str, Any]) -> None:
    """Record how the run was scored as the ``score`` section of ``RUN/config.json`` (other sections kept)."""
    import json

    path = run / "config.json"
    config: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            log.warning("%s is not valid JSON; rewriting it with the score settings only", path)
    config["score"] = settings
    atomic_write_json(path, config)


def finish_run(job: ScoreJob, result: Any, *, layer: str | None = None, pool: str = "none",
               latent_dtype: str = "float32", feature_size: int | None = 224, batch_size: int = 32,
               distinct_k: int = 1, distinct_metric: str = "euclidean", distinct_reference: str = "all",
               index: str = "exact", index_options: dict[str, Any] | None = None,
               settings: dict[str, Any] | None = None) -> Any:
    """Write ``latent_ids.txt``, ``per_image.csv``, ``split_halves.npz``, ``config.json`` (and ``index.json``).

    ``result`` is a :class:`memlens.scoring.ScoreResult` whose rows follow ``job.table`` (its latents and
    features already written to ``RUN/latents.npy`` and ``RUN/features.npy``). The columns and their order
    are those of :func:`memlens.scoring.score_run`; ``layer`` ... ``batch_size`` are the scoring
    settings to record (as given to
    :func:`memlens.scoring.score_images`); ``settings`` adds keys to the ``score`` section of ``RUN/config.json``.

    Returns
    -------
    DataFrame
        The per-image table as written (``attrs["info"]`` holds timings and, for FAISS indexes, the
        index reports).
    """
    from ..index import distinctiveness_index
    from ..index_store import prepare_saved_index, report_for_run

    run, table, ds = job.run, job.table, job.dataset
    ids = result.table["image_id"].tolist()
    if ids != table["image_id"].astype(str).tolist():
        raise DataError(f"{run}: the scored images are not the data set's images in order "
                        f"({len(ids)} scored, {len(table)} in the table)")
    if any("\n" in i for i in ids):  # pragma: no cover - ids are file paths
        raise DataError("an image id contains a line break; latent_ids.txt cannot hold it")
    # at once: latents.npy and features.npy are already in place, and their rows are these images
    atomic_write_text(run / "latent_ids.txt", "".join(f"{i}\n" for i in ids))

    out = pd.DataFrame({c: table[c] for c in LEADING if c in table.columns})
    for col in result.table.columns[1:]:
        out[col] = result.table[col].to_numpy()
    exposure = exposure_losses(run)
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
        save = prepare_saved_index(run, col, index, job.ref_args)  # RUN/index/<col>/: the trained index
        values, report = distinctiveness_index(mat, index=index, **dist_kw, **opts, **save)
        out[col] = values
        reports[col] = report_for_run(run, report)
    passthrough = [c for c in table.columns if c not in out.columns]
    clashes = [c for c in table.columns if c in out.columns and c not in LEADING]
    if clashes:
        log.warning("source columns replaced by computed ones: %s", ", ".join(clashes))
    for c in passthrough:
        out[c] = table[c].to_numpy()
    with atomic_path(run / "per_image.csv") as tmp:
        out.to_csv(tmp, index=False)

    halves = getattr(ds, "halves", None)
    root_halves = Path(getattr(ds, "root", "")) / "split_halves.npz" if getattr(ds, "root", None) else None
    if halves is not None:
        write_npz(run / "split_halves.npz", halves.npz_arrays())
    elif root_halves is not None and root_halves.is_file():
        atomic_write_bytes(run / "split_halves.npz", root_halves.read_bytes())

    info = dict(result.info)
    record = _record(run, info, reports, data=str(getattr(ds, "source", None) or getattr(ds, "root", "")),
                     metrics=job.metrics, layer=layer, pool=pool, latent_dtype=latent_dtype,
                     latent_shape=result.latent_shape, latent_dim=int(result.latents.shape[1]),
                     feature_size=feature_size, distinct_k=distinct_k, distinct_metric=distinct_metric,
                     distinct_reference=distinct_reference, batch_size=batch_size,
                     before=job.before_checkpoint is not None, exposure=exposure is not None, index=index)
    record.update(settings or {})
    record_settings(run, record)
    log.info("wrote %s (%d images, %d columns)", run / "per_image.csv", len(out), out.shape[1])
    info["index_reports"] = reports
    out.attrs["info"] = info
    return out


def _record(run: Path, info: dict[str, Any], reports: dict[str, Any], *, data: str, metrics: list[str],
            layer: str | None, pool: str, latent_dtype: str, latent_shape: Any, latent_dim: int,
            feature_size: int | None, distinct_k: int, distinct_metric: str, distinct_reference: str,
            batch_size: int, before: bool, exposure: bool, index: str) -> dict[str, Any]:
    """The ``score`` section of ``RUN/config.json`` (and ``RUN/index.json`` for a FAISS index)."""
    record = {
        "data": data, "metrics": metrics, "layer": layer, "pool": pool, "latent_dtype": latent_dtype,
        "latent_shape": list(latent_shape), "latent_dim": int(latent_dim),
        "image_size": info.get("image_size"), "feature_size": feature_size,
        "features": "efficientnet_lite0 head, average-pooled",
        "distinct_k": int(distinct_k), "distinct_metric": distinct_metric, "distinct_reference": distinct_reference,
        "batch_size": int(batch_size), "before": before, "exposure": exposure,
        "precision": info.get("precision", "float32"), "index": index,
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
    return record


def finish_parts(run: Path, parts: list[str], *, n: int, ref_args: dict[str, Any], source: str | None,
                 metrics: list[str], layer: str | None, pool: str, latent_dtype: str,
                 feature_size: int | None, batch_size: int, distinct_k: int, distinct_metric: str,
                 distinct_reference: str, index: str, index_options: dict[str, Any] | None, before: bool,
                 info: dict[str, Any], settings: dict[str, Any] | None = None) -> pd.DataFrame:
    """Finish a run whose outputs stay in parts (a Ray run without merge): distinctiveness from the latent and
    feature parts (:class:`memlens.index.ShardedLatents`, memory-mapped; exact search concatenates them into a
    temporary memory map in the run directory), added to every ``RUN/per_image/PART.parquet`` (rewritten
    atomically, one part at a time, with ``recon_exposure``/``exposure_order`` when the run has
    ``exposure.csv``); the ``score`` settings recorded in ``RUN/config.json``.

    ``parts``: the part names in row order (they must tile ``0..n-1``). Returns an empty table with the parts'
    columns (``attrs["info"]``: ``info``, the index reports, ``outputs``)."""
    import json

    import pyarrow.parquet as pq

    from ..index import ShardedLatents, distinctiveness_index
    from ..index_store import prepare_saved_index, report_for_run
    from .ray_stages import META_FILE

    bounds = [tuple(int(x) for x in p.split("-")[1:3]) for p in parts]
    if [a for a, _ in bounds] != [0] + [b for _, b in bounds[:-1]] or (bounds and bounds[-1][1] != n):
        raise DataError(f"{run / 'per_image'}: the parts do not tile the {n} images; rerun memlens score")
    dist_kw = {"k": distinct_k, "metric": distinct_metric, **ref_args}
    opts = {"tmp_dir": run, **(index_options or {})}
    values: dict[str, np.ndarray] = {}
    reports: dict[str, Any] = {}
    for col, folder in (("distinctiveness", "latents"), ("distinctiveness_features", "features")):
        mat = ShardedLatents([run / folder / f"{p}.npy" for p in parts])
        save = prepare_saved_index(run, col, index, ref_args)  # RUN/index/<col>/: the trained index, as merged
        values[col], report = distinctiveness_index(mat, index=index, **dist_kw, **opts, **save)
        reports[col] = report_for_run(run, report)
    exposure = exposure_losses(run)
    columns: list[str] = []
    for p, (a, b) in zip(parts, bounds, strict=True):
        path = run / "per_image" / f"{p}.parquet"
        frame = pq.read_table(path).to_pandas()
        if exposure is not None:
            frame["recon_exposure"] = frame["image_id"].astype(str).map(exposure["loss"]).astype(float).to_numpy()
            if "order" in exposure.columns:
                frame["exposure_order"] = frame["image_id"].astype(str).map(exposure["order"]).astype("Int64").array
        for col, v in values.items():
            frame[col] = v[a:b]
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
        columns = list(frame.columns)
    shape = json.loads((run / "latents" / META_FILE).read_text(encoding="utf-8"))["latent_shape"]
    width = ShardedLatents([run / "latents" / f"{parts[0]}.npy"]).shape[1]
    record = _record(run, info, reports, data=source or "", metrics=metrics, layer=layer, pool=pool,
                     latent_dtype=latent_dtype, latent_shape=shape, latent_dim=width, feature_size=feature_size,
                     distinct_k=distinct_k, distinct_metric=distinct_metric, distinct_reference=distinct_reference,
                     batch_size=batch_size, before=before, exposure=exposure is not None, index=index)
    record.update(settings or {})
    record["outputs"] = {"per_image": "per_image/part-*.parquet", "latents": "latents/part-*.npy",
                         "features": "features/part-*.npy", "parts": len(parts)}
    record_settings(run, record)
    log.info("wrote %d parts of %d images to %s (+ latents/, features/)", len(parts), n, run / "per_image")
    out = pd.DataFrame(columns=columns)
    out.attrs["info"] = {**info, "index_reports": reports, "outputs": record["outputs"]}
    return out
