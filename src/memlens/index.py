"""Nearest-neighbour search at scale: exact, FAISS flat, and FAISS approximate (IVF, HNSW) with measured recall.

:func:`distinctiveness_index` is :func:`memlens.neighbors.distinctiveness` with a choice of index:

``exact``
    :func:`memlens.neighbors.distinctiveness` (tiled exact search, certified against float64).
``flat``
    FAISS's exact flat index through :func:`memlens.neighbors.distinctiveness` (``index="faiss-flat"``) when
    the reference vectors fit in ``memory_budget_mb``; otherwise the tiled exact search (same answer).
``ivf``
    ``IndexIVF*``: k-means into ``nlist`` lists (default ``sqrt(N)``), each query scans ``nprobe`` lists
    (default 32: docs/scale.md has the measured recall/time curve behind it).
``hnsw``
    ``IndexHNSW*``: a navigable small-world graph with ``hnsw_m`` links per vector, ``ef_search`` beam.

:class:`ApproxIndex` builds one FAISS index (``flat``, ``ivf`` or ``hnsw``; on a GPU when faiss-gpu sees one),
searches rows or new vectors, and saves/loads itself (:meth:`ApproxIndex.save`, :func:`load_index`; a saved
index checks it is given the latents it was built on). :class:`ShardedIndex` builds one index per shard of
the rows and merges the k best of every shard, so no node needs the whole matrix.

Approximate indexes store the vectors as float32 (``flat``), 8-bit scalar-quantised (``sq8``, 4x smaller)
or product-quantised codes (``pq<m>``, ``m`` bytes per vector), whichever first fits ``memory_budget_mb``
(``encoding="auto"``), or codes of ``pq_bytes`` bytes when given. Vectors are added in chunks read from a
(memory-mapped, possibly sharded: :class:`ShardedLatents`) matrix, so the latents themselves never need to
fit in memory. Every candidate returned by an approximate index is re-measured exactly (float64) before the
``k`` nearest are kept, so a reported distance is always a true distance -- an approximate search can only
miss the true nearest neighbour, never under-state the distance. Compressed encodings fetch 32 extra
candidates for this re-ranking.

What an approximate index traded is measured, not guessed: on ``recall_sample`` random queries (``seed``)
the exact neighbours are computed by brute force and the report gives ``recall`` (recall@k: the fraction of
the true k nearest neighbours found, ties counted as found) and the relative error of the distinctiveness
values on that sample.

Distances: ``euclidean`` ``||a - b||``; ``cosine`` ``1 - a.b / (|a| |b|)`` (searched as euclidean on
unit-normalised vectors, which ranks identically). A row is never its own neighbour.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError
from .neighbors import group_codes, reference_mask

__all__ = ["INDEX_KINDS", "ApproxIndex", "IndexReport", "ShardedIndex", "ShardedLatents", "distinctiveness_index",
           "nearest_index", "exact_knn", "estimate_index_bytes", "choose_encoding", "recall_at_k", "require_faiss",
           "load_index", "default_nlist", "default_nprobe", "pq_bytes_for", "faiss_gpus", "latents_fingerprint",
           "merge_neighbours", "shard_bounds"]

log = logging.getLogger(__name__)

INDEX_KINDS = ("exact", "flat", "ivf", "hnsw")
_ENCODINGS = ("auto", "flat", "sq8", "pq")
DEFAULT_NPROBE = 32  # lists scanned per query (docs/scale.md: the measured recall/time curve)
MAX_AUTO_PQ_BYTES = 64  # the largest PQ code encoding="auto" picks (--pq-bytes may ask for more)
DEFAULT_EXTRA_CANDIDATES = 32  # compressed codes: candidates re-ranked exactly beyond k (+ self); same curve
#: seconds between the progress lines of a long neighbour search (INFO: shown by the CLI unless -q)
_PROGRESS_EVERY_S = 30.0
_CHUNK_BYTES = 128 << 20  # working memory of one chunk of vectors (added, searched or re-measured)


def require_faiss() -> Any:
    """Import FAISS or raise a :class:`ConfigError` naming the ``faiss`` extra."""
    try:
        import faiss
    except ImportError:
        raise ConfigError("FAISS indexes (--index flat|ivf|hnsw) need the faiss extra: "
                          "pip install 'memlens[faiss]' (or faiss-cpu / faiss-gpu)") from None
    return faiss


# --------------------------------------------------------------------------------------------------------
# latents: one matrix or several shards


class ShardedLatents:
    """Several ``(n_i, D)`` matrices (arrays or ``.npy`` files, memory-mapped) seen as one ``(N, D)`` matrix.

    Parameters
    ----------
    parts : sequence of arrays or ``.npy`` paths, in row order; all with the same number of columns.

    Attributes
    ----------
    shape, dtype, offsets (start row of each part, plus N at the end).
    """

    def __init__(self, parts: Sequence[Any]):
        arrays = []
        for p in parts:
            if isinstance(p, (str, os.PathLike)):
                if not Path(p).is_file():
                    raise DataError(f"latent shard not found: {p}")
                p = np.load(p, mmap_mode="r")
            a = np.asarray(p) if not isinstance(p, np.ndarray) else p
            if a.ndim != 2:
                a = a.reshape(a.shape[0], -1)
            arrays.append(a)
        if not arrays:
            raise DataError("no latent shards given")
        widths = {a.shape[1] for a in arrays}
        if len(widths) != 1:
            raise DataError(f"latent shards have different widths: {sorted(widths)}")
        self.parts = arrays
        self.offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrays])]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), int(arrays[0].shape[1]))
        self.dtype = np.result_type(*[a.dtype for a in arrays])
        self.ndim = 2

    @classmethod
    def from_run(cls, run: str | os.PathLike, name: str = "latents") -> ShardedLatents:
        """``RUN/<name>.npy``, or the parts ``RUN/<name>/part-A-B.npy`` of a Ray run scored with ``--no-merge`` (or
        kept with its parts; zero-padded row ranges, so sorted by name = in row order)."""
        run = Path(run)
        whole = run / f"{name}.npy"
        if whole.is_file():
            return cls([whole])
        parts = sorted((run / name).glob("part-*.npy"))
        if not parts:
            raise DataError(f"{run}: no {name}.npy and no {name}/part-*.npy")
        return cls(parts)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int, dtype: Any = np.float32) -> np.ndarray:
        """Rows ``start:stop`` as a contiguous array of ``dtype``."""
        stop = min(stop, self.shape[0])
        out = np.empty((max(0, stop - start), self.shape[1]), dtype=dtype)
        p = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos = start
        while pos < stop:
            a0, a1 = self.offsets[p], self.offsets[p + 1]
            take = min(stop, a1) - pos
            out[pos - start: pos - start + take] = self.parts[p][pos - a0: pos - a0 + take]
            pos += take
            p += 1
        return out

    def take(self, idx: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """Rows at integer positions ``idx`` (any order, repeats allowed)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.shape[1]), dtype=dtype)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        for p in np.unique(part):
            sel = np.nonzero(part == p)[0]
            local = idx[sel] - self.offsets[p]
            order = np.argsort(local, kind="stable")  # sorted reads are kinder to memory maps
            sparse = len(local) and (local.max() - local.min() + 1) > 8 * len(local)
            with _no_readahead(self.parts[p] if sparse else None):
                out[sel[order]] = self.parts[p][local[order]]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                return self.rows(start, stop, self.dtype)
            key = np.arange(start, stop, step)
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([key]), self.dtype)[0]
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.nonzero(key)[0]
        return self.take(key, self.dtype)

    def slice(self, start: int, stop: int) -> ShardedLatents:
        """Rows ``start:stop`` as a :class:`ShardedLatents` of views of the parts (nothing is read)."""
        start, stop = max(0, int(start)), min(self.shape[0], int(stop))
        views = [a[max(start, s) - s: min(stop, e) - s]
                 for a, s, e in zip(self.parts, self.offsets[:-1], self.offsets[1:], strict=True)
                 if min(stop, e) > max(start, s)]
        return ShardedLatents(views or [self.parts[0][:0]])

    def as_array(self, tmp_dir: str | os.PathLike | None = None) -> np.ndarray:
        """One ndarray: the single part itself, or the parts concatenated (in a temporary memory map when
        ``tmp_dir`` is given, else in memory)."""
        if len(self.parts) == 1:
            return self.parts[0]
        if tmp_dir is None:
            return np.concatenate(self.parts, axis=0).astype(self.dtype, copy=False)
        import tempfile

        fd, name = tempfile.mkstemp(prefix=".latents-concat.", suffix=".npy", dir=tmp_dir)
        os.close(fd)
        mm = np.lib.format.open_memmap(name, mode="w+", dtype=self.dtype, shape=self.shape)
        for a, (s, e) in zip(self.parts, zip(self.offsets[:-1], self.offsets[1:], strict=True), strict=True):
            mm[s:e] = a
        mm.flush()
        os.unlink(name)  # the mapping stays valid; the space is freed when it is dropped
        return mm


@contextlib.contextmanager
def _no_readahead(arr: Any) -> Iterator[None]:
    """Scattered rows of a memory map: tell the kernel not to read ahead around each (a 2 KB row would
    otherwise fault in ~128 KB of the file: re-ranking candidates at 10M rows read 60x more than needed)."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_RANDOM"):
        yield
        return
    try:
        mm.madvise(mmap.MADV_RANDOM)
    except (OSError, ValueError):  # pragma: no cover - a mapping that refuses advice
        yield
        return
    try:
        yield
    finally:
        mm.madvise(mmap.MADV_NORMAL)


def _as_rows(latents: Any) -> ShardedLatents:
    if isinstance(latents, ShardedLatents):
        return latents
    if hasattr(latents, "detach"):  # torch tensor
        latents = latents.detach().cpu().numpy()
    if isinstance(latents, (list, tuple)) and latents and isinstance(latents[0], (str, os.PathLike, np.ndarray)):
        return ShardedLatents(latents)
    arr = latents if isinstance(latents, np.ndarray) else np.asarray(latents)
    if arr.ndim < 2:
        raise ValueError(f"latents must have shape (N, D) or (N, ...), got shape {arr.shape}")
    return ShardedLatents([arr])


# --------------------------------------------------------------------------------------------------------
# reports and sizing


@dataclass
class IndexReport:
    """What a search did and what it traded.

    Attributes
    ----------
    kind : exact, flat, ivf or hnsw.
    metric, k : the search.
    n, dim : vectors searched (queries) and their width.
    encoding : how the index stores vectors (``flat``, ``sq8``, ``pq<m>``; ``exact`` for exact kinds).
    params : index parameters (nlist, nprobe, hnsw_m, ef_search, ef_construction, candidates).
    memory_bytes : estimated memory of the index structures (summed over groups).
    memory_budget_bytes : the budget it had to fit.
    build_seconds, search_seconds : wall-clock times (all groups).
    recall : recall@k on the sample (None for exact kinds).
    recall_k, recall_sample : k and the number of sampled queries.
    rel_error_mean, rel_error_max : relative error of the distinctiveness values on the sample.
    exact_seconds : time of the brute-force reference on the sample.
    seed : seed of the sample (and of the training subsample).
    query_seconds_per_image : search time per query (the wall time of all queries / N).
    shards : index shards searched and merged (1: one index).
    gpu : whether FAISS ran on a GPU.
    saved_to : where the trained index was saved (None: not saved); latents_fingerprint: of its latents.
    memlens_version : the version that built it.
    """

    kind: str
    metric: str
    k: int
    n: int
    dim: int
    encoding: str = "exact"
    params: dict[str, Any] = field(default_factory=dict)
    memory_bytes: int = 0
    memory_budget_bytes: int = 0
    build_seconds: float = 0.0
    search_seconds: float = 0.0
    recall: float | None = None
    recall_k: int = 1
    recall_sample: int = 0
    rel_error_mean: float | None = None
    rel_error_max: float | None = None
    exact_seconds: float | None = None
    seed: int = 0
    query_seconds_per_image: float | None = None
    shards: int = 1
    gpu: bool = False
    saved_to: str | None = None
    latents_fingerprint: str | None = None
    memlens_version: str = field(default_factory=lambda: _version())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _code_size(encoding: str, dim: int, pq_m: int | None) -> int:
    if encoding == "flat":
        return 4 * dim
    if encoding == "sq8":
        return dim
    return int(pq_m or 1)


def estimate_index_bytes(kind: str, n: int, dim: int, encoding: str = "flat", *, nlist: int | None = None,
                         hnsw_m: int = 32, pq_m: int | None = None) -> int:
    """Estimated memory (bytes) of a FAISS index over ``n`` vectors of width ``dim``.

    ``flat``: 4*D per vector. ``ivf``: code + 8-byte id per vector, plus the ``nlist`` float32 centroids
    (and the PQ codebooks). ``hnsw``: code + ``2*M`` int32 links on level 0 per vector (+ ~5% upper levels).
    """
    code = _code_size(encoding, dim, pq_m)
    extra = 256 * dim * 4 if encoding == "pq" else (2 * dim * 4 if encoding == "sq8" else 0)
    if kind in ("flat", "exact"):
        return int(n) * 4 * dim
    if kind == "ivf":
        nl = nlist or default_nlist(n)
        return int(n) * (code + 8) + nl * dim * 4 + extra
    if kind == "hnsw":
        return int(int(n) * (code + 2 * hnsw_m * 4 * 1.05 + 16)) + extra
    raise ConfigError(f"index must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")


def default_nprobe(nlist: int) -> int:
    """IVF lists scanned per query: DEFAULT_NPROBE (chosen from the measured recall/time curve in
    docs/scale.md), at most ``nlist``."""
    return int(max(1, min(int(nlist), DEFAULT_NPROBE)))


def default_nlist(n: int) -> int:
    """IVF lists: ``round(sqrt(n))``, at most ``n // 39`` (FAISS wants >= 39 training points per list)."""
    return int(max(1, min(round(math.sqrt(max(n, 1))), max(1, n // 39))))


def _pq_choices(dim: int) -> list[int]:
    """PQ sizes ``encoding="auto"`` tries, largest first: at most :data:`MAX_AUTO_PQ_BYTES` (docs/scale.md: 64
    bytes with exact re-ranking already find ~99.7% of true neighbours; more only costs memory and scan time)."""
    return [m for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1) if dim % m == 0 and m <= min(dim, MAX_AUTO_PQ_BYTES)]


def pq_bytes_for(dim: int, pq_bytes: int) -> int:
    """The PQ code size used for ``pq_bytes`` requested at width ``dim``: the largest divisor of ``dim`` not
    above ``pq_bytes`` (FAISS splits a vector into equal sub-vectors; one byte each)."""
    if isinstance(pq_bytes, bool) or int(pq_bytes) < 1:
        raise ConfigError(f"pq_bytes must be a positive integer, got {pq_bytes!r}")
    m = max(d for d in range(1, min(int(pq_bytes), dim) + 1) if dim % d == 0)
    if m != int(pq_bytes):
        log.warning("pq_bytes=%d does not divide the width %d; using %d bytes per vector", pq_bytes, dim, m)
    return m


def choose_encoding(kind: str, n: int, dim: int, memory_budget_mb: float, encoding: str = "auto", *,
                    nlist: int | None = None, hnsw_m: int = 32, pq_bytes: int | None = None
                    ) -> tuple[str, int | None]:
    """The first of flat, sq8, pq<m> (largest m first, m <= 64) whose estimated index fits the budget.

    ``pq_bytes`` fixes the encoding to ``pq`` with that many bytes per vector (see :func:`pq_bytes_for`);
    ``encoding`` must then be ``"auto"`` or ``"pq"``.

    Raises
    ------
    ConfigError
        When even the smallest encoding does not fit (names the budget needed).
    """
    if encoding not in _ENCODINGS:
        raise ConfigError(f"encoding must be one of {', '.join(_ENCODINGS)}, got {encoding!r}")
    budget = float(memory_budget_mb) * 2**20
    options: list[tuple[str, int | None]] = []
    if pq_bytes is not None:
        if encoding not in ("auto", "pq"):
            raise ConfigError(f"pq_bytes goes with encoding 'pq', not {encoding!r}")
        encoding = "pq"
        options.append(("pq", pq_bytes_for(dim, pq_bytes)))
    elif encoding in ("auto", "flat"):
        options.append(("flat", None))
    if encoding in ("auto", "sq8"):
        options.append(("sq8", None))
    if encoding in ("auto", "pq") and pq_bytes is None:
        options.extend(("pq", m) for m in _pq_choices(dim))
    smallest = None
    for enc, m in options:
        need = estimate_index_bytes(kind, n, dim, enc, nlist=nlist, hnsw_m=hnsw_m, pq_m=m)
        smallest = need if smallest is None else min(smallest, need)
        if need <= budget:
            if enc == "pq" and pq_bytes is None and (m or 0) < 32:
                log.warning("the %g MB budget leaves %d-byte PQ codes for %d vectors of width %d, which find "
                            "fewer true neighbours (docs/scale.md); raise --index-memory-mb or set --pq-bytes",
                            memory_budget_mb, m, n, dim)
            return enc, m
    raise ConfigError(f"a {kind} index over {n} vectors of width {dim} needs at least "
                      f"{(smallest or 0) / 2**20:.0f} MB with encoding {encoding!r}; the memory budget is "
                      f"{memory_budget_mb:g} MB (raise memory_budget_mb / --index-memory-mb)")


# --------------------------------------------------------------------------------------------------------
# exact distances


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _exact_distances(src: ShardedLatents, queries: np.ndarray, cand: np.ndarray, metric: str) -> np.ndarray:
    """Float64 distances from each query to its candidate rows ``cand[i]`` (-1: inf). ``queries``: row indices
    of ``src`` (1-D) or the query vectors themselves (2-D)."""
    nq, kk = cand.shape
    out = np.full((nq, kk), np.inf)
    if nq == 0 or kk == 0:
        return out
    step = max(1, _CHUNK_BYTES // max(1, (kk + 1) * src.shape[1] * 8))
    for a in range(0, nq, step):
        qs = queries[a:a + step]
        cs = cand[a:a + step]
        valid = cs >= 0
        q = src.take(qs, np.float64) if qs.ndim == 1 else np.asarray(qs, dtype=np.float64)
        c = src.take(np.where(valid, cs, 0).ravel(), np.float64).reshape(len(qs), kk, -1)
        if metric == "cosine":
            qn = np.linalg.norm(q, axis=1)
            cn = np.linalg.norm(c, axis=2)
            dot = np.einsum("qd,qkd->qk", q, c)
            denom = qn[:, None] * cn
            d = np.where(denom > 0, 1.0 - dot / np.where(denom > 0, denom, 1.0), 1.0)
        else:
            d = np.sqrt(np.square(c - q[:, None, :]).sum(axis=2))
        out[a:a + step] = np.where(valid, d, np.inf)
    return out


def _finalise(src: ShardedLatents, queries: np.ndarray, cand: np.ndarray, k: int, metric: str,
              exclude_self: bool, self_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-measure candidates exactly, drop self matches and duplicates, keep the k nearest (sorted).

    ``queries``: row indices (1-D; then a row is its own self) or query vectors (2-D; ``self_ids`` names the
    row each query is, -1 for none)."""
    d = _exact_distances(src, queries, cand, metric)
    if exclude_self:
        own = queries if queries.ndim == 1 else self_ids
        if own is not None:
            d[cand == np.asarray(own, dtype=np.int64)[:, None]] = np.inf
    # a candidate listed twice (can happen across merged chunks) counts once
    srt = np.argsort(cand, axis=1, kind="stable")
    cs = np.take_along_axis(cand, srt, axis=1)
    dup = np.zeros_like(cs, dtype=bool)
    dup[:, 1:] = (cs[:, 1:] == cs[:, :-1]) & (cs[:, 1:] >= 0)
    d_sorted = np.take_along_axis(d, srt, axis=1)
    d_sorted[dup] = np.inf
    d = np.empty_like(d)
    np.put_along_axis(d, srt, d_sorted, axis=1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(d, order, axis=1)
    idx = np.take_along_axis(cand, order, axis=1)
    missing = ~np.isfinite(dist)
    idx[missing] = -1
    dist[missing] = np.nan
    if dist.shape[1] < k:  # fewer candidates than k
        pad = k - dist.shape[1]
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.nan)
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
    return dist, idx


def _vectors(src: ShardedLatents, idx: np.ndarray, metric: str) -> np.ndarray:
    x = src.take(idx, np.float32)
    return _normalise(x) if metric == "cosine" else x


def exact_knn(latents: Any, k: int = 1, metric: str = "euclidean", *, queries: np.ndarray | None = None,
              reference: np.ndarray | None = None, exclude_self: bool = True,
              chunk_mb: float = 128, query_vectors: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force neighbours of ``queries`` among ``reference`` rows with FAISS, in memory-bounded chunks.

    The reference rows are streamed in chunks of ``chunk_mb``; FAISS ranks them in float32 (``k + 8``
    candidates per query), and the candidates are re-measured in float64. Returns distances (nq, k)
    float64 and row indices (nq, k) int64 (NaN / -1 where fewer than k candidates exist).
    ``query_vectors`` (nq, D): new vectors to search instead of rows ``queries`` (none of them is a row).
    """
    faiss = require_faiss()
    src = _as_rows(latents)
    n, dim = src.shape
    q_final: np.ndarray
    if query_vectors is not None:
        q_final = np.asarray(query_vectors, dtype=np.float32).reshape(len(query_vectors), -1)
        if q_final.shape[1] != dim:
            raise ValueError(f"query vectors have width {q_final.shape[1]}, the latents {dim}")
        q_src, q_idx = _as_rows(q_final), np.arange(len(q_final))
    else:
        q_idx = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
        q_src, q_final = src, q_idx
    r_idx = np.arange(n) if reference is None else np.asarray(reference, dtype=np.int64)
    kk = min(len(r_idx), k + int(exclude_self) + 8)
    nq = len(q_idx)
    best_d = np.full((nq, kk), np.inf, dtype=np.float32)
    best_i = np.full((nq, kk), -1, dtype=np.int64)
    if kk == 0 or nq == 0:
        return _finalise(src, q_final, best_i[:, :0], k, metric, exclude_self)
    step_r = max(1, int(chunk_mb * 2**20) // (dim * 4))
    step_q = max(1, int(chunk_mb * 2**20) // (dim * 4))
    queries_f = [(_vectors(q_src, q_idx[a:a + step_q], metric), a) for a in range(0, nq, step_q)] \
        if nq * dim * 4 <= 4 * chunk_mb * 2**20 else None
    for b in range(0, len(r_idx), step_r):
        rb = r_idx[b:b + step_r]
        xb = _vectors(src, rb, metric)
        kb = min(kk, len(rb))
        qiter = queries_f if queries_f is not None else (
            (_vectors(q_src, q_idx[a:a + step_q], metric), a) for a in range(0, nq, step_q))
        for xq, a in qiter:
            d, pos = faiss.knn(xq, xb, kb, metric=faiss.METRIC_L2)
            gi = np.where(pos >= 0, rb[np.maximum(pos, 0)], -1)
            d = np.where(pos >= 0, d, np.inf)
            cd = np.concatenate([best_d[a:a + len(xq)], d], axis=1)
            ci = np.concatenate([best_i[a:a + len(xq)], gi], axis=1)
            sel = np.argsort(cd, axis=1, kind="stable")[:, :kk]
            best_d[a:a + len(xq)] = np.take_along_axis(cd, sel, axis=1)
            best_i[a:a + len(xq)] = np.take_along_axis(ci, sel, axis=1)
    return _finalise(src, q_final, best_i, k, metric, exclude_self)


# --------------------------------------------------------------------------------------------------------
# approximate indexes


def _build(faiss: Any, kind: str, encoding: str, pq_m: int | None, dim: int, n_ref: int, opts: dict[str, Any]
           ) -> tuple[Any, dict[str, Any]]:
    params: dict[str, Any] = {}
    if kind == "flat":
        return faiss.IndexFlatL2(dim), params
    if kind == "ivf":
        nlist = int(opts.get("nlist") or default_nlist(n_ref))
        nlist = max(1, min(nlist, n_ref))
        quantizer = faiss.IndexFlatL2(dim)
        if encoding == "flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
        elif encoding == "sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_L2)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, int(pq_m), 8)
        params["_quantizer"] = quantizer  # keeps the coarse quantizer alive as long as the index
        params["nlist"] = nlist
    else:
        m = int(opts.get("hnsw_m") or 32)
        if encoding == "flat":
            index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_L2)
        elif encoding == "sq8":
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, m, faiss.METRIC_L2)
        else:
            index = faiss.IndexHNSWPQ(dim, int(pq_m), m)
        index.hnsw.efConstruction = int(opts.get("ef_construction") or 40)
        params.update(hnsw_m=m, ef_construction=int(index.hnsw.efConstruction))
    return index, params


def faiss_gpus() -> int:
    """GPUs FAISS can use (0 without faiss-gpu)."""
    faiss = require_faiss()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _maybe_gpu(faiss: Any, index: Any, kind: str, gpu: bool | None) -> tuple[Any, Any]:
    """``(index, resources)``: the index moved to GPU 0 when ``gpu`` is True, or None and FAISS sees a GPU
    (faiss-gpu); ``resources`` is None on the CPU. HNSW has no GPU version in FAISS and stays on the CPU."""
    if gpu is False or kind == "hnsw":
        return index, None
    if faiss_gpus() < 1:
        if gpu:
            raise ConfigError("a GPU index was asked for, but FAISS sees no GPU (install faiss-gpu; check CUDA)")
        return index, None
    try:
        res = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(res, 0, index), res
    except (RuntimeError, AttributeError) as exc:  # e.g. a PQ size the GPU kernels do not support
        if gpu:
            raise ConfigError(f"this {kind} index cannot run on the GPU: {exc}") from None
        log.warning("FAISS GPU index not available for this %s index (%s); using the CPU", kind, exc)
        return index, None


def latents_fingerprint(latents: Any) -> str:
    """A short hash of the shape and 16 evenly spaced rows: tells a saved index's latents from others."""
    import hashlib

    src = _as_rows(latents)
    n = src.shape[0]
    h = hashlib.sha256(f"{src.shape}".encode())
    rows = np.unique(np.linspace(0, max(n - 1, 0), num=min(n, 16)).round().astype(np.int64)) if n else []
    h.update(np.ascontiguousarray(src.take(np.asarray(rows, dtype=np.int64), np.float32)).tobytes())
    return h.hexdigest()[:20]


def _version() -> str:
    from ._version import __version__

    return __version__


class _Searchable:
    """What :class:`ApproxIndex` and :class:`ShardedIndex` share: searching rows or new vectors in chunks
    (through the subclass's ``_search_block``), and the start of loading a saved index."""

    src: ShardedLatents
    kind: str
    metric: str

    def _search_block(self, xq: np.ndarray, k: int, self_ids: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def search(self, queries: Any, k: int = 1, exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed rows of rows ``queries``: exact distances (nq, k) float64, row indices
        (nq, k) int64 (NaN / -1 where fewer than k are found)."""
        q_idx = np.asarray(queries, dtype=np.int64)
        return _search_chunks(self, lambda a, b: self.src.take(q_idx[a:b], np.float32), len(q_idx), k,
                              q_idx if exclude_self else None)

    def search_vectors(self, vectors: Any, k: int = 1, self_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed rows of new vectors (nq, D): exact distances (nq, k) float64, row indices.

        ``self_ids``: the row each vector is (never its own neighbour; -1: none), or None.
        """
        x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        if x.shape[1] != self.src.shape[1]:
            raise DataError(f"query vectors have width {x.shape[1]}, the indexed latents {self.src.shape[1]}")
        own = None if self_ids is None else np.asarray(self_ids, dtype=np.int64)
        return _search_chunks(self, lambda a, b: x[a:b], len(x), k, own)

    @classmethod
    def _start_load(cls, directory: str | os.PathLike, latents: Any) -> tuple[Any, dict[str, Any], Path]:
        """An empty instance over ``latents`` (checked against the saved ``meta.json``), the meta, the folder."""
        folder = Path(directory)
        meta = _read_meta(folder)
        self = cls.__new__(cls)
        self.src = _as_rows(latents)
        _check_same_latents(self.src, meta, folder)
        self.kind, self.metric = meta["kind"], meta["metric"]
        return self, meta, folder


class ApproxIndex(_Searchable):
    """A FAISS ``flat``, ``ivf`` or ``hnsw`` index over (some rows of) a latent matrix, searched with exact
    re-ranking.

    Parameters
    ----------
    latents : (N, D) array, memory map, list of ``.npy`` shards, or :class:`ShardedLatents`.
    kind : ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"``.
    metric : ``"euclidean"`` or ``"cosine"``.
    reference : row indices to index (default: all rows).
    memory_budget_mb, encoding, nlist, nprobe, pq_bytes, hnsw_m, ef_search, ef_construction, extra_candidates :
        see :func:`nearest_index`.
    gpu : None: on GPU 0 when FAISS sees one (faiss-gpu; ``flat`` and ``ivf`` only); True: required; False: CPU.
    seed : seed of the training subsample (IVF centroids, quantisers).

    Attributes
    ----------
    encoding, pq_m, params, memory_bytes (estimated), build_seconds (train_seconds + add_seconds), gpu.
    """

    def __init__(self, latents: Any, kind: str = "ivf", metric: str = "euclidean", *, reference: Any = None,
                 memory_budget_mb: float = 2048, encoding: str = "auto", nlist: int | None = None,
                 nprobe: int | None = None, pq_bytes: int | None = None, hnsw_m: int = 32,
                 ef_search: int | None = None, ef_construction: int | None = None,
                 extra_candidates: int | None = None, gpu: bool | None = None, seed: int = 0):
        faiss = require_faiss()
        if kind not in ("flat", "ivf", "hnsw"):
            raise ConfigError(f"a FAISS index is flat, ivf or hnsw, got {kind!r}")
        _check_metric(metric)
        self.src = _as_rows(latents)
        self.kind, self.metric = kind, metric
        self.r_idx = np.arange(self.src.shape[0]) if reference is None else np.asarray(reference, dtype=np.int64)
        n_ref, dim = len(self.r_idx), self.src.shape[1]
        if n_ref == 0:
            raise DataError("no reference rows to index")
        self.hnsw_m = int(hnsw_m or 32)
        if kind == "flat":
            if pq_bytes is not None:
                raise ConfigError("pq_bytes is for ivf and hnsw indexes, not flat")
            self.encoding, self.pq_m = "flat", None
        else:
            self.encoding, self.pq_m = choose_encoding(kind, n_ref, dim, memory_budget_mb, encoding, nlist=nlist,
                                                       hnsw_m=self.hnsw_m, pq_bytes=pq_bytes)
        opts = {"nlist": nlist, "hnsw_m": self.hnsw_m, "ef_construction": ef_construction}
        self.extra_candidates = extra_candidates
        t0 = time.perf_counter()
        index, self.params = _build(faiss, kind, self.encoding, self.pq_m, dim, n_ref, opts)
        self._quantizer = self.params.pop("_quantizer", None)  # keeps IVF's coarse quantizer alive
        self.index, self._gpu_res = _maybe_gpu(faiss, index, kind, gpu)
        if not self.index.is_trained:
            n_train = min(n_ref, max(40 * self.params.get("nlist", 1), 10_000 if self.encoding != "flat" else 0,
                                     1000))
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(self.r_idx, size=n_train, replace=False)) if n_train < n_ref else self.r_idx
            self.index.train(_vectors(self.src, rows, metric))
            self.params["train_rows"] = int(len(rows))
        self.train_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        step = max(1, _CHUNK_BYTES // (dim * 4))
        for a in range(0, n_ref, step):
            self.index.add(_vectors(self.src, self.r_idx[a:a + step], metric))
        self.add_seconds = time.perf_counter() - t1
        self.build_seconds = self.train_seconds + self.add_seconds
        self.memory_bytes = estimate_index_bytes(kind, n_ref, dim, self.encoding, nlist=self.params.get("nlist"),
                                                 hnsw_m=self.hnsw_m, pq_m=self.pq_m)
        self.set_search(nprobe=nprobe, ef_search=ef_search)

    @property
    def gpu(self) -> bool:
        return self._gpu_res is not None

    @property
    def encoding_name(self) -> str:
        return f"pq{self.pq_m}" if self.encoding == "pq" else self.encoding

    def set_search(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Search settings (no rebuild): IVF lists scanned per query (default :func:`default_nprobe`), HNSW beam
        (default ``max(64, 2 * candidates)``)."""
        if self.kind == "ivf":
            nlist = self.params["nlist"]
            self.index.nprobe = int(min(nlist, nprobe or default_nprobe(nlist)))
            self.params["nprobe"] = int(self.index.nprobe)
        self.ef_search = ef_search

    def _candidates(self, k: int, exclude_self: bool) -> int:
        refine = 0 if self.encoding == "flat" else max(DEFAULT_EXTRA_CANDIDATES, 2 * k)
        extra = refine if self.extra_candidates is None else int(self.extra_candidates)
        return min(len(self.r_idx), k + int(exclude_self) + extra)

    def _search_block(self, xq: np.ndarray, k: int, self_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        kk = self._candidates(k, self_ids is not None)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(self.ef_search or max(64, 2 * kk))
            self.params["ef_search"] = int(self.index.hnsw.efSearch)
        self.params["candidates"] = int(kk)
        _, pos = self.index.search(_normalise(xq) if self.metric == "cosine" else xq, kk)
        cand = np.where(pos >= 0, self.r_idx[np.maximum(pos, 0)], -1)
        return _finalise(self.src, xq, cand, k, self.metric, self_ids is not None, self_ids)

    def describe(self) -> dict[str, Any]:
        """What :meth:`save` records in ``meta.json`` (and :meth:`load` checks)."""
        return {"format": 1, "kind": self.kind, "metric": self.metric, "encoding": self.encoding_name,
                "pq_bytes": self.pq_m, "params": dict(self.params), "ef_search": self.ef_search,
                "extra_candidates": self.extra_candidates, "n_indexed": int(len(self.r_idx)),
                "n_rows": int(self.src.shape[0]), "dim": int(self.src.shape[1]),
                "latents_fingerprint": latents_fingerprint(self.src), "memory_bytes": int(self.memory_bytes),
                "train_seconds": self.train_seconds, "add_seconds": self.add_seconds, "gpu": self.gpu,
                "memlens_version": _version()}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``index.faiss`` (+ ``rows.npy`` when only some rows are indexed) and ``meta.json`` into
        ``directory``, each atomically (``meta.json`` last: a folder without it holds no index)."""
        from ._io import atomic_path, atomic_write_json

        faiss = require_faiss()
        out = Path(directory)
        cpu = faiss.index_gpu_to_cpu(self.index) if self.gpu else self.index
        with atomic_path(out / "index.faiss") as tmp:
            faiss.write_index(cpu, str(tmp))
        meta = self.describe()
        meta["rows_file"] = None
        if not np.array_equal(self.r_idx, np.arange(self.src.shape[0])):
            with atomic_path(out / "rows.npy") as tmp:
                np.save(tmp, self.r_idx)
            meta["rows_file"] = "rows.npy"
        atomic_write_json(out / "meta.json", meta)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, latents: Any, *, gpu: bool | None = None) -> ApproxIndex:
        """An index written by :meth:`save`, searching ``latents`` (the same matrix it was built on: checked
        by shape and fingerprint)."""
        faiss = require_faiss()
        self, meta, folder = cls._start_load(directory, latents)
        enc = str(meta["encoding"])
        self.encoding, self.pq_m = ("pq", int(meta["pq_bytes"])) if enc.startswith("pq") else (enc, None)
        self.params = dict(meta.get("params") or {})
        self.hnsw_m = int(self.params.get("hnsw_m", 32))
        self.extra_candidates = meta.get("extra_candidates")
        self.r_idx = (np.load(folder / meta["rows_file"]) if meta.get("rows_file")
                      else np.arange(self.src.shape[0], dtype=np.int64))
        self._quantizer = None
        try:
            index = faiss.read_index(str(folder / "index.faiss"))
        except RuntimeError as exc:
            raise DataError(f"{folder / 'index.faiss'}: not a readable FAISS index ({str(exc).splitlines()[0]})"
                            ) from None
        if index.ntotal != len(self.r_idx):
            raise DataError(f"{folder}: the index holds {index.ntotal} vectors, meta.json says {len(self.r_idx)}")
        self.index, self._gpu_res = _maybe_gpu(faiss, index, self.kind, gpu)
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        self.add_seconds = float(meta.get("add_seconds", 0.0))
        self.build_seconds = 0.0  # nothing was built
        self.memory_bytes = int(meta.get("memory_bytes", 0))
        self.set_search(nprobe=self.params.get("nprobe"), ef_search=meta.get("ef_search"))
        return self


def _check_metric(metric: str) -> None:
    if metric not in ("euclidean", "cosine"):
        raise ConfigError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")


def _read_meta(folder: Path) -> dict[str, Any]:
    import json

    path = folder / "meta.json"
    if not path.is_file():
        raise DataError(f"{folder}: no saved index here (meta.json missing)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != 1:
        raise DataError(f"{path}: not a memlens index description (format 1)")
    return meta


def _check_same_latents(src: ShardedLatents, meta: dict[str, Any], folder: Path) -> None:
    if [int(meta.get("n_rows", -1)), int(meta.get("dim", -1))] != list(src.shape):
        raise DataError(f"{folder}: the index was built on {meta.get('n_rows')} x {meta.get('dim')} latents, "
                        f"these are {src.shape[0]} x {src.shape[1]}; rebuild it (memlens score --index ...)")
    if meta.get("latents_fingerprint") != latents_fingerprint(src):
        raise DataError(f"{folder}: the latents changed since the index was built; rebuild it "
                        "(memlens score --index ...)")


def _search_chunks(index: Any, block: Any, nq: int, k: int, self_ids: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Search ``nq`` queries (``block(a, b)`` gives vectors a..b) in memory-bounded chunks."""
    dist = np.full((nq, k), np.nan)
    idx = np.full((nq, k), -1, dtype=np.int64)
    step = max(1, _CHUNK_BYTES // (index.src.shape[1] * 4))
    t0 = last = time.perf_counter()
    for a in range(0, nq, step):
        b = min(nq, a + step)
        own = None if self_ids is None else self_ids[a:b]
        dist[a:b], idx[a:b] = index._search_block(block(a, b), k, own)
        now = time.perf_counter()
        if b < nq and now - last >= _PROGRESS_EVERY_S:  # a long search says how far it is (a million queries of
            last = now                                  # 1,280-d features took half an hour on 2 cores)
            rate = b / (now - t0)
            log.info("neighbour search (%d-d): %s of %s queries, %.0f/s, about %.0f min left", index.src.shape[1],
                     f"{b:,}", f"{nq:,}", rate, (nq - b) / rate / 60)
    return dist, idx


def shard_bounds(n: int, shards: int | Sequence[int]) -> list[tuple[int, int]]:
    """Row ranges of the index shards: ``shards`` equal parts (an int), or the given start rows."""
    if isinstance(shards, (int, np.integer)) and not isinstance(shards, bool):
        if int(shards) < 1:
            raise ConfigError(f"index shards must be >= 1, got {shards}")
        edges = np.linspace(0, n, min(int(shards), max(n, 1)) + 1).round().astype(np.int64)
    else:
        edges = np.unique(np.concatenate([[0], np.asarray(shards, dtype=np.int64), [n]]))
        if edges[0] < 0 or edges[-1] > n:
            raise ConfigError(f"shard start rows must lie in 0..{n}")
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


class ShardedIndex(_Searchable):
    """One FAISS index per shard of the rows (each over its own rows only), searched shard by shard and
    merged: the ``k`` best across shards, a row never its own neighbour.

    Each shard's index is built, searched and re-ranked against that shard's rows alone, so a node holding
    one shard (its latents and its index) answers for it from the query vectors; only the k best per shard
    travel to be merged. With ``kind="flat"`` the merged answer is the exact one.

    Parameters
    ----------
    latents : as :class:`ApproxIndex`.
    kind, metric : as :class:`ApproxIndex`.
    shards : number of equal row ranges, or their start rows (default: the parts of a
        :class:`ShardedLatents`, e.g. a Ray run's ``shards/part-*.latents.npy``).
    reference : row indices to index (default all).
    seed : shard ``i`` trains with ``seed + i``.
    options : the other :class:`ApproxIndex` keywords (``memory_budget_mb`` is per shard).
    """

    def __init__(self, latents: Any, kind: str = "ivf", metric: str = "euclidean", *,
                 shards: int | Sequence[int] | None = None, reference: Any = None, seed: int = 0, **options: Any):
        self.src = _as_rows(latents)
        self.kind, self.metric = kind, metric
        n = self.src.shape[0]
        self.bounds = shard_bounds(n, self.src.offsets[1:-1] if shards is None else shards)
        ref = None if reference is None else np.asarray(reference, dtype=np.int64)
        self.shards: list[tuple[int, ApproxIndex]] = []
        for i, (a, b) in enumerate(self.bounds):
            local = None if ref is None else ref[(ref >= a) & (ref < b)] - a
            if local is not None and len(local) == 0:
                continue
            self.shards.append((a, ApproxIndex(self.src.slice(a, b), kind, metric, reference=local, seed=seed + i,
                                               **options)))
        if not self.shards:
            raise DataError("no reference rows to index")

    @property
    def first(self) -> ApproxIndex:
        return self.shards[0][1]

    encoding_name = property(lambda self: self.first.encoding_name)
    gpu = property(lambda self: self.first.gpu)
    build_seconds = property(lambda self: sum(ix.build_seconds for _, ix in self.shards))
    train_seconds = property(lambda self: sum(ix.train_seconds for _, ix in self.shards))
    add_seconds = property(lambda self: sum(ix.add_seconds for _, ix in self.shards))
    memory_bytes = property(lambda self: sum(ix.memory_bytes for _, ix in self.shards))

    @property
    def params(self) -> dict[str, Any]:
        return {**self.first.params, "shards": len(self.shards)}

    def set_search(self, **kw: Any) -> None:
        for _, ix in self.shards:
            ix.set_search(**kw)

    def _search_block(self, xq: np.ndarray, k: int, self_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        dists, idxs = [], []
        for a, ix in self.shards:
            n_local = ix.src.shape[0]
            local = None if self_ids is None else np.where((self_ids >= a) & (self_ids < a + n_local),
                                                           self_ids - a, -1)
            d, i = ix._search_block(xq, k, local)
            dists.append(d)
            idxs.append(np.where(i >= 0, i + a, -1))
        return merge_neighbours(np.concatenate(dists, axis=1), np.concatenate(idxs, axis=1), k)

    def save(self, directory: str | os.PathLike) -> Path:
        """One folder per shard (``shard-00000`` ...) and a ``meta.json`` naming them."""
        from ._io import atomic_write_json

        out = Path(directory)
        names = []
        for i, (_, ix) in enumerate(self.shards):
            names.append(f"shard-{i:05d}")
            ix.save(out / names[-1])
        meta = {**self.first.describe(), "sharded": True, "shard_dirs": names,
                "shard_starts": [a for a, _ in self.shards], "bounds": [list(b) for b in self.bounds],
                "n_rows": int(self.src.shape[0]), "latents_fingerprint": latents_fingerprint(self.src),
                "memory_bytes": int(self.memory_bytes), "train_seconds": self.train_seconds,
                "add_seconds": self.add_seconds}
        atomic_write_json(out / "meta.json", meta)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, latents: Any, *, gpu: bool | None = None) -> ShardedIndex:
        """An index written by :meth:`save` over the same ``latents``."""
        self, meta, folder = cls._start_load(directory, latents)
        self.bounds = [(int(a), int(b)) for a, b in meta["bounds"]]
        ends = dict(self.bounds)
        self.shards = [(int(a), ApproxIndex.load(folder / name, self.src.slice(int(a), ends[int(a)]), gpu=gpu))
                       for a, name in zip(meta["shard_starts"], meta["shard_dirs"], strict=True)]
        return self


def load_index(directory: str | os.PathLike, latents: Any, *, gpu: bool | None = None) -> ApproxIndex | ShardedIndex:
    """An :class:`ApproxIndex` or :class:`ShardedIndex` saved in ``directory``, over ``latents``."""
    meta = _read_meta(Path(directory))
    cls = ShardedIndex if meta.get("sharded") else ApproxIndex
    return cls.load(directory, latents, gpu=gpu)


def merge_neighbours(dist: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of several candidate lists side by side (nq, m): by distance, then row index."""
    d = np.where(np.isfinite(dist) & (idx >= 0), dist, np.inf)
    order = np.lexsort((np.where(idx >= 0, idx, np.iinfo(np.int64).max), d), axis=-1)[:, :k]
    out_d = np.take_along_axis(d, order, axis=1)
    out_i = np.take_along_axis(idx, order, axis=1)
    missing = ~np.isfinite(out_d)
    out_d[missing], out_i[missing] = np.nan, -1
    if out_d.shape[1] < k:
        pad = k - out_d.shape[1]
        out_d = np.pad(out_d, ((0, 0), (0, pad)), constant_values=np.nan)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_d, out_i


def _approx_group(src: ShardedLatents, q_idx: np.ndarray, r_idx: np.ndarray, k: int, metric: str, kind: str,
                  budget_mb: float, opts: dict[str, Any], exclude_self: bool, seed: int,
                  report: IndexReport, shards: Any = None, save_dir: Any = None) -> tuple[np.ndarray, np.ndarray]:
    if len(r_idx) == 0:
        return np.full((len(q_idx), k), np.nan), np.full((len(q_idx), k), -1, dtype=np.int64)
    index: ApproxIndex | ShardedIndex
    if shards is not None:
        index = ShardedIndex(src, kind, metric, shards=shards, reference=r_idx, memory_budget_mb=budget_mb,
                             seed=seed, **opts)
    else:
        index = ApproxIndex(src, kind, metric, reference=r_idx, memory_budget_mb=budget_mb, seed=seed, **opts)
    t1 = time.perf_counter()
    dist, idx = index.search(q_idx, k, exclude_self)
    report.search_seconds += time.perf_counter() - t1
    report.build_seconds += index.build_seconds
    report.memory_bytes += index.memory_bytes
    report.gpu = report.gpu or index.gpu
    enc_name = index.encoding_name
    if report.encoding not in ("exact", enc_name):
        enc_name = "mixed"
    report.encoding = enc_name
    if not report.params:  # the first group's parameters (groups differ only in size)
        report.params = {**index.params, "train_seconds": round(index.train_seconds, 3),
                         "add_seconds": round(index.add_seconds, 3)}
    if save_dir is not None:
        index.save(save_dir)
        report.saved_to = str(save_dir)
        report.latents_fingerprint = latents_fingerprint(src)
    return dist, idx


def recall_at_k(found_dist: np.ndarray, true_dist: np.ndarray, rtol: float = 1e-9) -> float:
    """Recall@k with ties: the fraction of the true k nearest found, where a found neighbour counts when its
    exact distance is within the true k-th distance (so an equally near substitute is not a miss).

    ``found_dist``/``true_dist``: (nq, k) exact distances, sorted per row, NaN where missing.
    """
    kth = np.nanmax(np.where(np.isfinite(true_dist), true_dist, -np.inf), axis=1)
    n_true = np.isfinite(true_dist).sum(axis=1)
    ok = n_true > 0
    if not ok.any():
        return float("nan")
    tol = rtol * np.maximum(np.abs(kth), 1.0)
    hits = (np.where(np.isfinite(found_dist), found_dist, np.inf) <= (kth + tol)[:, None]).sum(axis=1)
    return float(np.mean(np.minimum(hits[ok], n_true[ok]) / n_true[ok]))


# --------------------------------------------------------------------------------------------------------
# public entry points





def nearest_index(
    latents: Any,
    k: int = 1,
    metric: str = "euclidean",
    *,
    index: str = "ivf",
    reference: Any = None,
    groups: Any = None,
    exclude_self: bool = True,
    memory_budget_mb: float = 2048,
    recall_sample: int = 1000,
    seed: int = 0,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int | None = None,
    ef_construction: int | None = None,
    encoding: str = "auto",
    extra_candidates: int | None = None,
    threads: int | None = None,
    pq_bytes: int | None = None,
    gpu: bool | None = None,
    shards: int | Sequence[int] | None = None,
    save_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, IndexReport]:
    """The ``k`` nearest other rows of every row with a FAISS ``ivf``, ``hnsw`` (or ``flat``) index.

    Parameters
    ----------
    latents : (N, D) array, memory map, list of ``.npy`` shards, or :class:`ShardedLatents`.
    k, metric, reference, groups, exclude_self : as in :func:`memlens.neighbors.nearest_neighbors`.
    index : ``"ivf"``, ``"hnsw"`` or ``"flat"`` (FAISS's exact index; useful with ``shards``).
    memory_budget_mb : memory the index may take (per group and shard); picks the encoding (flat > sq8 > pq).
    recall_sample : queries sampled (``seed``) to measure recall@k against brute force; 0 skips it.
    nlist, nprobe : IVF lists and lists scanned per query (defaults :func:`default_nlist`, ``sqrt(N)``, and
        :func:`default_nprobe`, 32).
    pq_bytes : product-quantised codes of this many bytes per vector (the largest divisor of the width not
        above it) instead of the budget's choice.
    hnsw_m, ef_search, ef_construction : HNSW links per vector, search beam (default ``max(64, 2*cand)``),
        construction beam (40).
    encoding : ``"auto"``, ``"flat"``, ``"sq8"`` or ``"pq"``.
    extra_candidates : candidates fetched beyond ``k`` for exact re-ranking (default 0 for flat storage,
        ``max(32, 2k)`` for compressed codes: docs/scale.md's curve).
    threads : FAISS OpenMP threads (None: FAISS's default).
    gpu : None: FAISS's GPU 0 when faiss-gpu sees one (ivf, flat); True: required; False: the CPU.
    shards : one index per shard of the rows (an int: equal row ranges; a sequence: their start rows), each
        searched and re-ranked on its own rows, the k best merged (:class:`ShardedIndex`).
    save_dir : save the trained index there (:meth:`ApproxIndex.save`; one group only), for
        :func:`load_index`.

    Returns
    -------
    distances (N, k) float64 exact, indices (N, k) int64, :class:`IndexReport`.
    """
    faiss = require_faiss()
    if index not in ("ivf", "hnsw", "flat"):
        raise ConfigError(f"nearest_index builds flat, ivf or hnsw indexes, got {index!r}")
    _check_metric(metric)
    if isinstance(k, bool) or int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    src = _as_rows(latents)
    n, dim = src.shape
    _check_finite(src)
    if threads:
        faiss.omp_set_num_threads(int(threads))
    opts: dict[str, Any] = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search,
                            "ef_construction": ef_construction, "encoding": encoding,
                            "extra_candidates": extra_candidates, "pq_bytes": pq_bytes, "gpu": gpu}
    if index == "flat":
        opts = {"gpu": gpu, **({"pq_bytes": pq_bytes} if pq_bytes is not None else {})}
    ref_mask = reference_mask(reference, n)
    codes = group_codes(groups, n)
    n_groups = int(codes.max()) + 1 if n else 0
    if save_dir is not None and n_groups > 1:
        log.info("distinctiveness within %d groups: one index per group, none saved", n_groups)
        save_dir = None
    report = IndexReport(kind=index, metric=metric, k=k, n=n, dim=dim, memory_budget_bytes=int(memory_budget_mb * 2**20),
                         recall_k=k, seed=int(seed), shards=1 if shards is None else len(shard_bounds(n, shards)))
    dist = np.full((n, k), np.nan)
    idx = np.full((n, k), -1, dtype=np.int64)
    rows = np.arange(n)
    for g in range(n_groups):
        q_idx = rows[codes == g]
        r_idx = q_idx[ref_mask[q_idx]]
        if len(q_idx):
            dist[q_idx], idx[q_idx] = _approx_group(src, q_idx, r_idx, k, metric, index, memory_budget_mb, opts,
                                                    exclude_self, seed + g, report, shards, save_dir)
    report.query_seconds_per_image = report.search_seconds / n if n else None

    if recall_sample and n:
        t0 = time.perf_counter()
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(int(recall_sample), n), replace=False))
        true_d = np.full((len(sample), k), np.nan)
        for g in np.unique(codes[sample]):
            sel = codes[sample] == g
            members = rows[codes == g]
            true_d[sel], _ = exact_knn(src, k, metric, queries=sample[sel], reference=members[ref_mask[members]],
                                       exclude_self=exclude_self)
        report.exact_seconds = time.perf_counter() - t0
        report.recall = recall_at_k(dist[sample], true_d)
        report.recall_sample = int(len(sample))
        with np.errstate(invalid="ignore", divide="ignore"):
            approx_v, exact_v = np.nanmean(dist[sample], axis=1), np.nanmean(true_d, axis=1)
            rel = np.abs(approx_v - exact_v) / np.where(exact_v > 0, exact_v, np.nan)
        rel = rel[np.isfinite(rel)]
        report.rel_error_mean = float(rel.mean()) if rel.size else 0.0
        report.rel_error_max = float(rel.max()) if rel.size else 0.0
        log.info("%s index (%s): recall@%d = %.4f on %d sampled queries (mean relative error of the "
                 "distinctiveness %.2e)", index, report.encoding, k, report.recall, report.recall_sample,
                 report.rel_error_mean)
    return dist, idx, report


def _check_finite(src: ShardedLatents) -> None:
    step = max(1, _CHUNK_BYTES // (src.shape[1] * 4))
    for a in range(0, src.shape[0], step):
        block = src.rows(a, a + step, np.float32)
        if not np.isfinite(block).all():
            bad = a + int(np.argwhere(~np.isfinite(block))[0][0])
            raise ValueError(f"latents contain NaN or infinite values (first in row {bad})")


def _exact_report_time(report: IndexReport) -> IndexReport:
    report.query_seconds_per_image = report.search_seconds / report.n if report.n else None
    return report


def distinctiveness_index(
    latents: Any,
    k: int = 1,
    metric: str = "euclidean",
    *,
    index: str = "exact",
    reference: Any = None,
    groups: Any = None,
    standardize: bool = False,
    memory_budget_mb: float = 2048,
    recall_sample: int = 1000,
    seed: int = 0,
    tmp_dir: str | os.PathLike | None = None,
    **options: Any,
) -> tuple[np.ndarray, IndexReport]:
    """Distinctiveness (mean distance to the ``k`` nearest other rows) through the chosen index.

    Parameters
    ----------
    latents : (N, D) array, memory map, list of ``.npy`` shards, or :class:`ShardedLatents`.
    k, metric, reference, groups, standardize : as in :func:`memlens.neighbors.distinctiveness`.
    index : ``"exact"``, ``"flat"``, ``"ivf"`` or ``"hnsw"`` (see the module docstring).
    memory_budget_mb : memory for the index (flat: the reference vectors; ivf/hnsw: the index structures).
    recall_sample, seed : approximate kinds: queries sampled to measure recall@k against brute force.
    tmp_dir : where sharded latents are concatenated (memory-mapped) for the exact kinds; None: in memory.
    options : passed to :func:`nearest_index` (``nlist``, ``nprobe``, ``hnsw_m``, ``ef_search``, ...).

    Returns
    -------
    values (N,) float64, :class:`IndexReport`
    """
    if index not in INDEX_KINDS:
        raise ConfigError(f"index must be one of {', '.join(INDEX_KINDS)}, got {index!r}")
    src = _as_rows(latents)
    n, dim = src.shape
    if index == "exact" and options.get("shards") is not None:
        raise ConfigError("index shards go with a FAISS index (flat, ivf, hnsw), not exact")
    if index == "exact" or (index == "flat" and options.get("shards") is None):
        options.pop("save_dir", None)  # nothing trained to save
        from .neighbors import distinctiveness

        arr = src.as_array(tmp_dir)
        kind = "exact"
        n_ref = int(reference_mask(reference, n).sum())
        if index == "flat":
            require_faiss()
            kind = "faiss-flat" if n_ref * dim * 4 <= memory_budget_mb * 2**20 else "exact"
            if kind == "exact":
                log.info("flat index: %d x %d float32 exceeds the %g MB budget; using the tiled exact search",
                         n_ref, dim, memory_budget_mb)
        if kind == "faiss-flat" and metric == "cosine":
            # neighbors' faiss-flat path normalises the rows it reads in place, and those can be views of
            # ``arr`` (a read-only memory map in a run): hand it a private copy (it fits the budget)
            arr = np.array(arr, dtype=np.float32, copy=True)
        t0 = time.perf_counter()
        values = distinctiveness(arr, k=k, metric=metric, reference=reference, groups=groups,
                                 standardize=standardize, index=kind)
        report = IndexReport(kind=index, metric=metric, k=int(k), n=n, dim=dim, encoding="exact",
                             params={"search": kind}, memory_bytes=n_ref * dim * 4 if kind == "faiss-flat" else 0,
                             memory_budget_bytes=int(memory_budget_mb * 2**20),
                             search_seconds=time.perf_counter() - t0, recall_k=int(k), seed=int(seed))
        return values, _exact_report_time(report)
    dist, _, report = nearest_index(src, k, metric, index=index, reference=reference, groups=groups,
                                    memory_budget_mb=memory_budget_mb, recall_sample=recall_sample, seed=seed,
                                    **options)
    with np.errstate(invalid="ignore"):
        values = np.mean(dist, axis=1)
    short = int(np.isnan(values).sum())
    if short:
        log.warning("%d of %d rows have fewer than k=%d neighbour candidates; their distinctiveness is NaN",
                    short, n, k)
    if standardize:
        finite = np.isfinite(values)
        if finite.sum() >= 2:
            mu, sd = values[finite].mean(), values[finite].std()
            values = (values - mu) / sd if sd > 0 else values - mu
    return values, report
