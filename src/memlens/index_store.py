"""A run's saved neighbour index, and the distinctiveness of new images against a run's latents.

``memlens score --index ivf|hnsw`` saves the trained index of each neighbour measure in the run:
``RUN/index/distinctiveness/`` (the autoencoder latents) and ``RUN/index/distinctiveness_features/``
(``index.faiss``, ``rows.npy`` when only the reference rows are indexed, ``meta.json``), next to
``RUN/index.json`` (one :class:`memlens.index.IndexReport` per column: kind, encoding, nlist, nprobe, pq bytes,
n, dim, metric, build and query times, recall@k on a seeded sample, memlens version, ``saved_to``).
Distinctiveness within categories builds one index per category and saves none.

:func:`distinctiveness_of_images` (``memlens predict --distinctiveness``) encodes new images with the run's
autoencoder exactly as ``memlens score`` did (same layer, pooling, image size; float32) and finds their
``k`` nearest latents of the run: through the saved index when there is one and it was built on these
latents (the fingerprint in ``meta.json`` is checked), else by an exact search. New images are never part
of the reference, so none is its own neighbour; an image that was scored in the run finds itself at
distance 0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, RunDirError

__all__ = ["INDEX_DIR", "prepare_saved_index", "report_for_run", "saved_index_dir", "distinctiveness_of_images",
           "distinctiveness_of_latents", "image_latents", "index_options"]

log = logging.getLogger(__name__)

INDEX_DIR = "index"
_APPROX = ("ivf", "hnsw")


def saved_index_dir(run: str | os.PathLike, column: str = "distinctiveness") -> Path:
    """``RUN/index/<column>``: where the trained index behind ``column`` is saved."""
    return Path(run) / INDEX_DIR / column


def prepare_saved_index(run: str | os.PathLike, column: str, index: str, ref_args: dict[str, Any]
                        ) -> dict[str, Any]:
    """The :func:`memlens.index.distinctiveness_index` keywords that save ``column``'s trained index in the
    run (approximate kinds, one group), after removing an index an earlier scoring left there."""
    folder = saved_index_dir(run, column)
    if folder.exists():  # never reuse an index of earlier latents
        shutil.rmtree(folder)
    if index in _APPROX and ref_args.get("groups") is None:
        return {"save_dir": folder}
    return {}


def report_for_run(run: str | os.PathLike, report: Any) -> dict[str, Any]:
    """An :class:`~memlens.index.IndexReport` as ``RUN/index.json`` holds it (``saved_to`` relative to the run)."""
    out = report.to_dict()
    if out.get("saved_to"):
        out["saved_to"] = os.path.relpath(out["saved_to"], run)
    return out


# --------------------------------------------------------------------------------------------------------
# new images


def _score_settings(run: Path) -> dict[str, Any]:
    path = run / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        raise RunDirError(f"{path}: not valid JSON") from None
    settings = config.get("score") if isinstance(config, dict) else None
    if not isinstance(settings, dict):
        raise RunDirError(f"{run}: not scored yet (no score settings in config.json); run memlens score first")
    return settings


def image_latents(run: str | os.PathLike, paths: list[Path], *, batch_size: int = 32, device: str = "auto",
                  progress: Callable[[int], Any] | None = None) -> np.ndarray:
    """Latents (N, D) float32 of image files, made as ``memlens score`` made the run's ``latents.npy`` (its
    autoencoder, layer, pooling and image size; float32 arithmetic)."""
    from .models import load_autoencoder
    from .scoring import score_images

    run = Path(run)
    settings = _score_settings(run)
    ckpt = run / "autoencoder.pt"
    if not ckpt.is_file():
        raise RunDirError(f"{ckpt}: missing; distinctiveness of new images needs the run's autoencoder")
    model = load_autoencoder(ckpt)
    res = score_images(model, [str(p) for p in paths], metrics=["mse"], batch_size=batch_size, device=device,
                       pool=settings.get("pool") or "none", layer=settings.get("layer"), features=False,
                       image_size=settings.get("image_size"), progress=progress)
    return np.asarray(res.latents, dtype=np.float32)


def _reference_rows(run: Path, settings: dict[str, Any], n: int) -> np.ndarray | None:
    reference = settings.get("distinct_reference", "all")
    if reference == "all":
        return None
    import pandas as pd

    from .scoring.plan import reference_args

    table = pd.read_csv(run / "per_image.csv", dtype={"image_id": str})
    if len(table) != n:
        raise DataError(f"{run}: per_image.csv has {len(table)} rows, latents.npy {n}; rescore the run")
    args = reference_args(table, reference)
    if "groups" in args:
        log.warning("the run's distinctiveness is within categories; new images have none, so they are compared "
                    "with every image of the run")
        return None
    return np.flatnonzero(np.asarray(args["reference"], dtype=bool))


def distinctiveness_of_latents(run: str | os.PathLike, latents: Any, *, use_saved: bool = True
                               ) -> tuple[np.ndarray, dict[str, Any]]:
    """Distinctiveness (mean distance to the ``k`` nearest run latents, the run's ``k``, metric and reference)
    of new latents (n, D). Returns the values and what searched them (``search``: ``saved <kind> index`` or
    ``exact``, with the index parameters)."""
    from .index import ShardedLatents, load_index

    run = Path(run)
    settings = _score_settings(run)
    k, metric = int(settings.get("distinct_k", 1)), settings.get("distinct_metric", "euclidean")
    src = ShardedLatents.from_run(run)
    q = np.asarray(latents, dtype=np.float32).reshape(len(latents), -1)
    if q.shape[1] != src.shape[1]:
        raise DataError(f"new latents have width {q.shape[1]}, the run's {src.shape[1]}; rescore the run")
    ref = _reference_rows(run, settings, src.shape[0])
    folder = saved_index_dir(run)
    info: dict[str, Any] = {"k": k, "metric": metric, "search": "exact"}
    dist = None
    if use_saved and (folder / "meta.json").is_file():
        try:
            index = load_index(folder, src)
        except DataError as exc:
            log.warning("not using the saved index: %s; searching exactly", exc)
        else:
            dist, _ = index.search_vectors(q, k)
            info.update(search=f"saved {index.kind} index", encoding=index.encoding_name, params=index.params)
    if dist is None:
        if settings.get("index", "exact") in _APPROX and use_saved:
            log.info("%s: no saved index; searching exactly", folder)
        dist = _exact(src, q, k, metric, ref)
    with np.errstate(invalid="ignore"):
        return np.mean(dist, axis=1), info


def _exact(src: Any, q: np.ndarray, k: int, metric: str, ref: np.ndarray | None) -> np.ndarray:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return _exact_numpy(src, q, k, metric, ref)
    from .index import exact_knn

    return exact_knn(src, k, metric, reference=ref, exclude_self=False, query_vectors=q)[0]


def _exact_numpy(src: Any, q: np.ndarray, k: int, metric: str, ref: np.ndarray | None,
                 chunk_bytes: int = 128 << 20) -> np.ndarray:
    """Exact k nearest distances of a few new vectors without FAISS: float64 candidates per chunk of reference
    rows, re-measured exactly (:func:`memlens.index._finalise`)."""
    from .index import _finalise, _normalise

    r_idx = np.arange(src.shape[0]) if ref is None else ref
    qf = _normalise(q.astype(np.float64)) if metric == "cosine" else q.astype(np.float64)
    kk = min(len(r_idx), k + 8)
    best_d = np.full((len(q), kk), np.inf)
    best_i = np.full((len(q), kk), -1, dtype=np.int64)
    step = max(1, chunk_bytes // (8 * src.shape[1] * max(1, len(q))))
    for a in range(0, len(r_idx), step):
        rows = r_idx[a:a + step]
        r = src.take(rows, np.float64)
        if metric == "cosine":
            r = _normalise(r)
        d = (qf**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2 * qf @ r.T
        take = min(kk, len(rows))
        part = np.argpartition(d, take - 1, axis=1)[:, :take]
        cd = np.concatenate([best_d, np.take_along_axis(d, part, axis=1)], axis=1)
        ci = np.concatenate([best_i, rows[part]], axis=1)
        sel = np.argsort(cd, axis=1, kind="stable")[:, :kk]
        best_d, best_i = np.take_along_axis(cd, sel, axis=1), np.take_along_axis(ci, sel, axis=1)
    return _finalise(src, q, best_i, k, metric, False)[0]


def distinctiveness_of_images(run: str | os.PathLike, paths: list[Path], *, batch_size: int = 32,
                              device: str = "auto", progress: Callable[[int], Any] | None = None,
                              use_saved: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Distinctiveness of image files against the run's latents (:func:`image_latents`, then
    :func:`distinctiveness_of_latents`)."""
    run = Path(run)
    if not (run / "latents.npy").is_file() and not (run / "shards").is_dir():
        raise RunDirError(f"{run / 'latents.npy'}: missing; score the run first (memlens score DATA --run {run})")
    if not paths:
        return np.zeros(0), {"search": "none"}
    lat = image_latents(run, paths, batch_size=batch_size, device=device, progress=progress)
    return distinctiveness_of_latents(run, lat, use_saved=use_saved)


def index_options(index: str, memory_budget_mb: float, *, nlist: int | None = None, nprobe: int | None = None,
                  pq_bytes: int | None = None, hnsw_m: int | None = None, ef_search: int | None = None,
                  shards: int | None = None) -> dict[str, Any]:
    """The ``index_options`` of :func:`memlens.scoring.score_run` from ``memlens score``'s index flags.

    Raises
    ------
    ConfigError
        A flag given to an index kind that does not use it (``--nlist`` with ``--index hnsw``...), or
        ``nprobe`` above ``nlist``: one line naming the flag.
    """
    from .errors import ConfigError

    given = {"--nlist": nlist, "--nprobe": nprobe, "--pq-bytes": pq_bytes, "--hnsw-m": hnsw_m,
             "--ef-search": ef_search, "--index-shards": shards}
    allowed = {"exact": (), "flat": ("--index-shards",), "ivf": ("--nlist", "--nprobe", "--pq-bytes", "--index-shards"),
               "hnsw": ("--pq-bytes", "--hnsw-m", "--ef-search", "--index-shards")}[index]
    wrong = [flag for flag, v in given.items() if v is not None and flag not in allowed]
    if wrong:
        uses = {"--nlist": "ivf", "--nprobe": "ivf", "--pq-bytes": "ivf or hnsw", "--hnsw-m": "hnsw",
                "--ef-search": "hnsw", "--index-shards": "flat, ivf or hnsw"}
        raise ConfigError(f"{wrong[0]} applies to --index {uses[wrong[0]]}, not --index {index}")
    if nlist is not None and nprobe is not None and nprobe > nlist:
        raise ConfigError(f"--nprobe {nprobe} exceeds --nlist {nlist} (a query cannot scan more lists than exist)")
    if index == "exact":
        return {}
    opts: dict[str, Any] = {"memory_budget_mb": memory_budget_mb}
    names = {"nlist": nlist, "nprobe": nprobe, "pq_bytes": pq_bytes, "hnsw_m": hnsw_m, "ef_search": ef_search,
             "shards": shards}
    opts.update({k: v for k, v in names.items() if v is not None})
    return opts


def add_distinctiveness(table: Any, sources: Any, run: str | os.PathLike, *, batch_size: int = 32,
                        device: str = "auto", progress: Callable[[int], Any] | None = None) -> str:
    """Add a ``distinctiveness`` column to a :func:`memlens.inference.predict_images` table (its ``image``
    labels name files of ``sources``); return one line saying how the neighbours were searched."""
    from .inference import collect_images

    items, _ = collect_images(sources)
    path_of = dict(items)
    labels = [lab for lab in table["image"] if lab in path_of]
    if len(labels) != len(table):
        raise DataError("--distinctiveness works on image files and folders")
    values, info = distinctiveness_of_images(run, [path_of[lab] for lab in labels], batch_size=batch_size,
                                             device=device, progress=progress)
    table["distinctiveness"] = values
    how = info["search"] + (f" ({info['encoding']}, {_params_line(info['params'])})" if "params" in info else "")
    return f"k={info['k']} {info['metric']} nearest latents of {Path(run)}, {how}"


def _params_line(params: dict[str, Any]) -> str:
    keep = ("nlist", "nprobe", "hnsw_m", "ef_search", "shards")
    return ", ".join(f"{k} {params[k]}" for k in keep if k in params)
