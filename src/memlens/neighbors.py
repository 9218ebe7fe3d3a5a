"""Latent distinctiveness: the mean distance from each image to its k nearest *other* images.

The search is exact. Distances are computed in memory-bounded tiles with matrix products
(``||a||^2 + ||b||^2 - 2 a.b``) on the CPU (numpy/BLAS) or on a GPU (torch), keeping the best
``k + margin`` candidates of every row in float32. The candidates are then re-measured exactly in float64
(direct differences), and every row is certified against a floating-point error bound of the tiled
products: a row whose ranking could have been changed by rounding (near-duplicates, ties) is searched again
in float64 and, if still uncertain, by brute force in float64. The answer therefore equals a float64
brute-force reference (e.g. ``scipy.spatial.distance.cdist``) up to float64 rounding.

Definitions
-----------
* ``euclidean``: ``||a - b||``.
* ``cosine``: ``1 - a.b / (||a|| ||b||)`` (a zero vector is at distance 1 from everything).
* A row is never its own neighbour (``exclude_self=True``); a distinct row with identical values is a
  neighbour at distance 0.
* ``reference`` restricts the neighbour *candidates* (e.g. the training split, to avoid leakage); every row
  still gets a value. ``groups`` restricts candidates to rows with the same label.
* A row with fewer than ``k`` candidates gets NaN (a warning is logged).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["distinctiveness", "nearest_neighbors", "reference_mask", "group_codes"]

logger = logging.getLogger(__name__)

_METRICS = ("euclidean", "cosine")
_INDEXES = ("exact", "faiss-flat")
_MARGIN = 8  # extra float32 candidates kept per row beyond k
_TOL_FACTOR = 4.0  # safety factor on the sqrt(D) * eps rounding model of a tiled dot product


# --------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------
def distinctiveness(
    latents: Any,
    k: int = 1,
    metric: str = "euclidean",
    reference: Any = None,
    standardize: bool = False,
    groups: Any = None,
    memory_budget_mb: float = 1024,
    device: str = "cpu",
    exclude_self: bool = True,
    index: str = "exact",
    backend: str = "auto",
    dtype: str = "float32",
) -> np.ndarray:
    """Mean distance from each image to its ``k`` nearest other images.

    Parameters
    ----------
    latents : array-like or np.memmap, shape (N, D) or (N, ...)
        One row per image (float32/float16/float64); dimensions after the first are flattened.
        A memory-mapped array is read in chunks and never loaded whole.
    k : int
        Number of neighbours averaged (``k=1`` reproduces the paper).
    metric : {"euclidean", "cosine"}
    reference : None, boolean mask (N,) or integer indices
        Rows that may serve as neighbours. ``None``: the whole collection. A query that is itself in the
        reference never counts itself.
    standardize : bool
        Z-score the result (mean 0, SD 1 over finite values; a monotone transform).
    groups : array-like (N,), optional
        Labels; neighbours are searched only among rows with the same label.
    memory_budget_mb : float
        Working memory for one tile of the search (the latent matrix itself is not counted).
    device : {"cpu", "cuda", "auto"}
        Where the matrix products run (``cuda`` uses torch).
    exclude_self : bool
        Exclude each row from its own neighbours (by index; duplicates still count).
    index : {"exact", "faiss-flat"}
        ``faiss-flat`` uses FAISS's exact flat index for the candidate search (needs the ``faiss`` extra);
        candidates are re-measured and certified in float64 as on the default path.
    backend : {"auto", "numpy", "torch"}
        Matrix-product library; ``auto`` is numpy on the CPU and torch on a GPU.
    dtype : {"float32", "float64"}
        Precision of the tiled products (the final distances are always float64).

    Returns
    -------
    np.ndarray, shape (N,), float64

    Examples
    --------
    >>> import numpy as np, memlens
    >>> latents = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    >>> memlens.distinctiveness(latents, k=1).tolist()     # distance to the nearest other image
    [1.0, 1.0, 4.0]
    """
    dist, _ = nearest_neighbors(
        latents, k=k, metric=metric, reference=reference, groups=groups,
        memory_budget_mb=memory_budget_mb, device=device, exclude_self=exclude_self, index=index,
        backend=backend, dtype=dtype,
    )
    with np.errstate(invalid="ignore"):
        out = np.mean(dist, axis=1)
    if standardize:
        finite = np.isfinite(out)
        if finite.sum() >= 2:
            mu, sd = out[finite].mean(), out[finite].std()
            out = (out - mu) / sd if sd > 0 else out - mu
    return out


def nearest_neighbors(
    latents: Any,
    k: int = 1,
    metric: str = "euclidean",
    reference: Any = None,
    groups: Any = None,
    memory_budget_mb: float = 1024,
    device: str = "cpu",
    exclude_self: bool = True,
    index: str = "exact",
    backend: str = "auto",
    dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every row: distances (N, k) float64 and indices (N, k) int64.

    Same parameters as :func:`distinctiveness`. Neighbours are sorted by distance; missing neighbours (a
    row with fewer than ``k`` candidates) are NaN with index -1.
    """
    src = _Source(latents)
    n = src.n
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    if index not in _INDEXES:
        raise ValueError(f"index must be one of {_INDEXES}, got {index!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if not memory_budget_mb or memory_budget_mb <= 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb!r}")
    ref_mask = reference_mask(reference, n)
    codes = group_codes(groups, n)
    ops = _make_ops(backend, device)
    budget = int(memory_budget_mb * 2**20)

    t0 = time.perf_counter()
    preps: dict[str, _Prep] = {}

    def get_prep(dt: np.dtype) -> _Prep:
        if dt.name not in preps:
            preps[dt.name] = _prepare(src, metric, ref_mask, budget, dt)
        return preps[dt.name]

    out_d = np.full((n, k), np.nan)
    out_i = np.full((n, k), -1, dtype=np.int64)
    all_idx = np.arange(n)
    for g in range(int(codes.max()) + 1 if n else 0):
        q_idx = all_idx[codes == g]
        r_idx = q_idx[ref_mask[q_idx]]
        if len(q_idx) == 0:
            continue
        d, i = _search(src, get_prep, q_idx, r_idx, k, metric, ops, budget, exclude_self, index, dtype)
        out_d[q_idx], out_i[q_idx] = d, i
    short = int(np.isnan(out_d[:, -1]).sum()) if n else 0
    if short:
        logger.warning("%d of %d rows have fewer than k=%d neighbour candidates; their distinctiveness is NaN",
                       short, n, k)
    logger.info("nearest neighbours of %d rows (D=%d, k=%d, %s) in %.2f s", n, src.dim, k, metric,
                time.perf_counter() - t0)
    return out_d, out_i


# --------------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------------
class _Source:
    """Row access to a (possibly memory-mapped) matrix, flattened to (N, D)."""

    def __init__(self, latents: Any):
        if hasattr(latents, "detach"):  # torch tensor
            latents = latents.detach().cpu().numpy()
        arr = latents if isinstance(latents, np.ndarray) else np.asarray(latents)
        if arr.ndim < 2:
            raise ValueError(f"latents must have shape (N, D) or (N, ...), got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"latents must be numeric, got dtype {arr.dtype}")
        if arr.ndim > 2:
            arr = arr.reshape(arr.shape[0], -1)
        self.arr = arr
        self.n, self.dim = int(arr.shape[0]), int(arr.shape[1])
        # float16/integers are widened to float32 exactly enough; float64 input stays float64
        self.work_dtype = np.dtype(np.float64 if arr.dtype == np.float64 else np.float32)
        if self.dim == 0:
            raise ValueError("latents have zero columns")

    def rows(self, idx: np.ndarray | slice, dtype: Any) -> np.ndarray:
        """Rows as a C-contiguous array of ``dtype`` (a view when no conversion is needed)."""
        block = self.arr[idx]
        return np.ascontiguousarray(block, dtype=dtype)


def reference_mask(reference: Any, n: int) -> np.ndarray:
    """The rows that may be neighbours, as a boolean mask (n,): all for None, else a mask or row indices."""
    if reference is None:
        return np.ones(n, dtype=bool)
    ref = np.asarray(reference)
    if ref.dtype == bool:
        if ref.shape != (n,):
            raise ValueError(f"a boolean reference mask must have shape ({n},), got {ref.shape}")
        return ref.copy()
    if ref.ndim != 1 or not np.issubdtype(ref.dtype, np.integer):
        raise ValueError("reference must be None, a boolean mask or a 1-d array of row indices")
    if ref.size and (ref.min() < -n or ref.max() >= n):
        raise ValueError(f"reference indices must lie in [0, {n}), got range [{ref.min()}, {ref.max()}]")
    mask = np.zeros(n, dtype=bool)
    mask[ref] = True
    return mask


def group_codes(groups: Any, n: int) -> np.ndarray:
    """Integer codes (n,) of per-row group labels in order of first appearance (all 0 for None; NaNs one group)."""
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    labels = list(groups)
    if len(labels) != n:
        raise ValueError(f"groups must have one label per row ({n}), got {len(labels)}")
    codes: dict[Any, int] = {}
    out = np.empty(n, dtype=np.int64)
    for j, lab in enumerate(labels):
        key = "<nan>" if isinstance(lab, float) and math.isnan(lab) else lab
        out[j] = codes.setdefault(key, len(codes))
    return out


@dataclass
class _Prep:
    center: np.ndarray | None  # subtracted from every row before products (euclidean only)
    sqnorm: np.ndarray  # (N,) float64 squared norms of the rows exactly as used in the products
    dtype: np.dtype  # precision of the products


def _prepare(src: _Source, metric: str, ref_mask: np.ndarray, budget: int, dtype: np.dtype) -> _Prep:
    """One or two streaming passes: finiteness check, the centre (euclidean), squared norms."""
    n, dim = src.n, src.dim
    work = np.dtype(np.float64) if dtype == np.float64 else src.work_dtype
    step = max(1, budget // (dim * 8 * 2))
    total = np.zeros(dim)
    sq_raw = np.empty(n)
    for a in range(0, n, step):
        block = src.rows(slice(a, a + step), work)
        sq = np.square(block).sum(axis=1, dtype=np.float64)
        bad_rows = np.flatnonzero(~np.isfinite(sq))
        for r in bad_rows:  # a NaN/inf element makes its row's norm non-finite (overflow is checked below)
            if not np.isfinite(block[r]).all():
                raise ValueError(f"latents contain NaN or infinite values (first in row {a + int(r)})")
        sq_raw[a:a + step] = sq
        in_ref = ref_mask[a:a + step]
        # the centre only shifts every row alike (distances do not change), so float32 sums are enough
        total += in_ref.astype(work) @ block
    if not np.isfinite(sq_raw).all():
        raise ValueError("latents are too large: squared norms overflow float32 (rescale them)")
    if metric == "cosine" or n == 0 or not ref_mask.any():
        return _Prep(None, sq_raw, dtype)
    mu = total / ref_mask.sum()
    # centring removes a common offset (e.g. non-negative ReLU codes) that would otherwise dominate the
    # norms and cost float32 precision in the products; skip it when the offset is negligible
    if float(mu @ mu) <= 0.01 * float(sq_raw.mean()):
        return _Prep(None, sq_raw, dtype)
    center = mu.astype(dtype)
    sq = np.empty(n)
    for a in range(0, n, step):
        block = src.rows(slice(a, a + step), dtype) - center
        sq[a:a + step] = np.square(block).sum(axis=1, dtype=np.float64)
    return _Prep(center, sq, dtype)


# --------------------------------------------------------------------------------------------------------
# matrix-product backends
# --------------------------------------------------------------------------------------------------------
class _NumpyOps:
    name = "numpy"

    def to(self, a: np.ndarray) -> np.ndarray:
        return a

    def numpy(self, a: Any) -> np.ndarray:
        return a

    def gram(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a @ b.T

    def set_inf(self, g: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
        g[rows, cols] = np.inf

    def merge(self, best_d: np.ndarray, best_i: np.ndarray, new_d: np.ndarray, new_i: np.ndarray,
              m: int) -> tuple[np.ndarray, np.ndarray]:
        """Keep the m smallest of [best | new] per row (new_i: (r,) global indices of new's columns)."""
        import torch  # its top-k is several times faster than numpy's argpartition here

        cand = np.concatenate([best_d, new_d], axis=1)
        d_t, sel_t = torch.topk(torch.from_numpy(cand), m, dim=1, largest=False, sorted=False)
        d, sel = d_t.numpy(), sel_t.numpy()
        from_best = sel < best_d.shape[1]
        i_best = np.take_along_axis(best_i, np.minimum(sel, best_d.shape[1] - 1), axis=1)
        i_new = new_i[np.maximum(sel - best_d.shape[1], 0)]
        return d, np.where(from_best, i_best, i_new)


class _TorchOps:
    name = "torch"

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def to(self, a: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def numpy(self, a: Any) -> np.ndarray:
        return a.cpu().numpy()

    def gram(self, a: Any, b: Any) -> Any:
        if self.device.type != "cuda":
            return a @ b.T
        # the rounding bound that certifies the results assumes float32 products: never TF32 or bf16, whatever
        # the caller set globally (restored afterwards)
        with _ieee_fp32_matmul(self.torch):
            return a @ b.T

    def set_inf(self, g: Any, rows: np.ndarray, cols: np.ndarray) -> None:
        g[self.to(rows.astype(np.int64)), self.to(cols.astype(np.int64))] = float("inf")

    def merge(self, best_d: Any, best_i: Any, new_d: Any, new_i: Any, m: int) -> tuple[Any, Any]:
        torch = self.torch
        cand = torch.cat([best_d, new_d], dim=1)
        d, sel = torch.topk(cand, m, dim=1, largest=False, sorted=False)
        nb = best_d.shape[1]
        from_best = sel < nb
        i_best = torch.gather(best_i, 1, sel.clamp(max=nb - 1))
        i_new = new_i[(sel - nb).clamp(min=0)]
        return d, torch.where(from_best, i_best, i_new)


@contextlib.contextmanager
def _ieee_fp32_matmul(torch: Any) -> Iterator[None]:
    """CUDA float32 matrix products in full float32 inside the block; the caller's setting is restored.

    torch 2.9+ has ``torch.backends.cuda.matmul.fp32_precision`` (reading it never raises, and setting it back
    restores a setting made with either API); older releases only the legacy precision functions.
    """
    mm = torch.backends.cuda.matmul
    if hasattr(mm, "fp32_precision"):
        prev = mm.fp32_precision
        if prev == "ieee":
            yield
            return
        mm.fp32_precision = "ieee"
        try:
            yield
        finally:
            mm.fp32_precision = prev
        return
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)


def _make_ops(backend: str, device: str) -> Any:
    if device == "auto":
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:  # pragma: no cover
            device = "cpu"
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if device != "cpu" and backend == "numpy":
        raise ValueError(f"the numpy backend runs on the CPU only, got device={device!r}")
    if backend == "numpy" or (backend == "auto" and device == "cpu"):
        return _NumpyOps()
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device='cuda' requested but torch sees no CUDA device")
    return _TorchOps(device)


# --------------------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------------------
def _tile_rows(budget: int, dim: int, itemsize: int, m: int) -> int:
    """Rows per tile so that two row blocks plus the tile's distance and merge arrays fit the budget."""
    a2 = 4 * itemsize + 32  # product, distances, merge candidates and their indices per tile cell
    a1 = 2 * dim * itemsize + 2 * m * 16
    b = (-a1 + math.sqrt(a1 * a1 + 4 * a2 * budget)) / (2 * a2)
    return max(16, int(b))


def _rounding_tol(dim: int, dtype: Any, metric: str, sq_q: np.ndarray, sq_r_max: float) -> np.ndarray:
    """Bound on the rounding error of one tiled distance (squared-euclidean or cosine units), per query."""
    eps = float(np.finfo(dtype).eps)
    c = (_TOL_FACTOR * math.sqrt(dim) + 8.0) * eps
    if metric == "cosine":
        return np.full(len(sq_q), 2.0 * c)
    return c * (sq_q + sq_r_max)


def _search(src: _Source, get_prep: Any, q_idx: np.ndarray, r_idx: np.ndarray, k: int, metric: str, ops: Any,
            budget: int, exclude_self: bool, index: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of rows ``q_idx`` among rows ``r_idx`` (both sorted global indices)."""
    nq = len(q_idx)
    n_cand = len(r_idx) - (np.isin(q_idx, r_idx) if exclude_self else np.zeros(nq, dtype=bool))
    if len(r_idx) == 0:
        return np.full((nq, k), np.nan), np.full((nq, k), -1, dtype=np.int64)
    m = min(k + _MARGIN, len(r_idx))
    np_dtype = np.dtype(dtype)
    if index == "faiss-flat":
        np_dtype = np.dtype(np.float32)
        prep = get_prep(np_dtype)
        cand_d, cand_i = _faiss_candidates(src, prep, q_idx, r_idx, m, metric, exclude_self, budget)
    else:
        prep = get_prep(np_dtype)
        cand_d, cand_i = _tiled_candidates(src, prep, q_idx, r_idx, m, metric, ops, budget, exclude_self,
                                           np_dtype)
    d, i, certified = _refine(src, prep, q_idx, r_idx, cand_d, cand_i, k, metric, budget, n_cand, np_dtype)
    todo = np.flatnonzero(~certified)
    if len(todo) and np_dtype != np.float64:
        logger.info("%d rows with near-ties re-searched in float64", len(todo))
        m2 = min(k + 4 * _MARGIN, len(r_idx))
        prep64 = get_prep(np.dtype(np.float64))
        cd, ci = _tiled_candidates(src, prep64, q_idx[todo], r_idx, m2, metric, _NumpyOps(), budget,
                                   exclude_self, np.dtype(np.float64))
        d2, i2, ok2 = _refine(src, prep64, q_idx[todo], r_idx, cd, ci, k, metric, budget, n_cand[todo],
                              np.dtype(np.float64))
        d[todo], i[todo] = d2, i2
        todo = todo[~ok2]
    if len(todo):
        logger.info("%d rows with exact ties beyond the candidates searched by brute force", len(todo))
        d3, i3 = _brute_force(src, q_idx[todo], r_idx, k, metric, budget, exclude_self)
        d[todo], i[todo] = d3, i3
    return d, i


def _load(src: _Source, prep: _Prep, idx: np.ndarray, dtype: Any) -> np.ndarray:
    contiguous = len(idx) > 0 and idx[-1] - idx[0] + 1 == len(idx)
    block = src.rows(slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx, dtype)
    if prep.center is not None:
        block = block - prep.center
    return block


def _tiled_candidates(src: _Source, prep: _Prep, q_idx: np.ndarray, r_idx: np.ndarray, m: int, metric: str,
                      ops: Any, budget: int, exclude_self: bool, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The m best candidates per query by tiled matrix products (approximate values, float32/64)."""
    nq = len(q_idx)
    rows = _tile_rows(budget, src.dim, dtype.itemsize, m)
    symmetric = nq == len(r_idx) and np.array_equal(q_idx, r_idx)
    best_d = [ops.to(np.full((min(rows, nq - a), m), np.inf, dtype=dtype)) for a in range(0, nq, rows)]
    best_i = [ops.to(np.full((min(rows, nq - a), m), -1, dtype=np.int64)) for a in range(0, nq, rows)]
    q_blocks = [q_idx[a:a + rows] for a in range(0, nq, rows)]
    r_blocks = q_blocks if symmetric else [r_idx[a:a + rows] for a in range(0, len(r_idx), rows)]
    q_pos = {}  # symmetric: block number of each r block in the query list
    if symmetric:
        q_pos = {j: j for j in range(len(r_blocks))}

    def norms(idx: np.ndarray) -> np.ndarray:
        s = prep.sqnorm[idx]
        return np.sqrt(s) if metric == "cosine" else s

    for bi, qb in enumerate(q_blocks):
        xq = ops.to(_load(src, prep, qb, dtype))
        nq_ = ops.to(norms(qb).astype(dtype))
        start = bi if symmetric else 0
        for bj in range(start, len(r_blocks)):
            rb = r_blocks[bj]
            xr = xq if (symmetric and bj == bi) else ops.to(_load(src, prep, rb, dtype))
            nr_ = nq_ if (symmetric and bj == bi) else ops.to(norms(rb).astype(dtype))
            g = ops.gram(xq, xr)
            _to_distance(g, nq_, nr_, metric)
            if exclude_self:
                if symmetric and bj == bi:
                    ii = np.arange(len(qb))
                    ops.set_inf(g, ii, ii)
                elif not symmetric:
                    _, a_pos, b_pos = np.intersect1d(qb, rb, assume_unique=True, return_indices=True)
                    if len(a_pos):
                        ops.set_inf(g, a_pos, b_pos)
            rb_t = ops.to(rb.astype(np.int64))
            best_d[bi], best_i[bi] = ops.merge(best_d[bi], best_i[bi], g, rb_t, m)
            if symmetric and bj != bi:
                pj = q_pos[bj]
                qb_t = ops.to(qb.astype(np.int64))
                best_d[pj], best_i[pj] = ops.merge(best_d[pj], best_i[pj], g.T, qb_t, m)
    d = np.concatenate([ops.numpy(x) for x in best_d]) if best_d else np.empty((0, m))
    i = np.concatenate([ops.numpy(x) for x in best_i]) if best_i else np.empty((0, m), dtype=np.int64)
    return d.astype(np.float64), i


def _to_distance(g: Any, nq: Any, nr: Any, metric: str) -> None:
    """In place: Gram tile -> squared euclidean (clamped at 0) or cosine distance (in [0, 2])."""
    if metric == "euclidean":
        g *= -2
        g += nq[:, None]
        g += nr[None, :]
        if isinstance(g, np.ndarray):
            np.maximum(g, 0, out=g)
        else:
            g.clamp_(min=0)
    else:
        if isinstance(nq, np.ndarray):
            with np.errstate(divide="ignore"):
                inv_q, inv_r = 1 / nq, 1 / nr
        else:
            inv_q, inv_r = 1 / nq, 1 / nr
        inv_q[nq == 0] = 0  # a zero vector: cos := 0, distance 1
        inv_r[nr == 0] = 0
        g *= inv_q[:, None]
        g *= inv_r[None, :]
        g *= -1
        g += 1
        if isinstance(g, np.ndarray):
            np.clip(g, 0, 2, out=g)
        else:
            g.clamp_(0, 2)


def _exact_pairs(a_rows: np.ndarray, b_rows: np.ndarray, metric: str) -> np.ndarray:
    """Float64 distances between paired rows (n, D) by direct differences (exact for float32 input)."""
    if metric == "cosine":
        a_rows = np.asarray(a_rows, dtype=np.float64)
        b_rows = np.asarray(b_rows, dtype=np.float64)
        an = np.linalg.norm(a_rows, axis=1, keepdims=True)
        bn = np.linalg.norm(b_rows, axis=1, keepdims=True)
        diff = np.divide(a_rows, an, out=np.zeros_like(a_rows), where=an > 0)
        diff -= np.divide(b_rows, bn, out=np.zeros_like(b_rows), where=bn > 0)
        out = 0.5 * np.einsum("nd,nd->n", diff, diff)
        out[(an[:, 0] == 0) | (bn[:, 0] == 0)] = 1.0  # a zero vector is at distance 1 from everything
        return out
    diff = np.subtract(a_rows, b_rows, dtype=np.float64)
    return np.sqrt(np.einsum("nd,nd->n", diff, diff))


def _refine(src: _Source, prep: _Prep, q_idx: np.ndarray, r_idx: np.ndarray, cand_d: np.ndarray,
            cand_i: np.ndarray, k: int, metric: str, budget: int, n_cand: np.ndarray,
            dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-measure candidates exactly in float64, keep the k best and certify each row.

    With ``tol`` the rounding bound of the tiled distances and ``t_k`` a row's k-th smallest tiled value,
    only candidates with tiled value <= ``t_k + 2 tol`` can belong to the true k nearest, so only they are
    re-measured. The row is certified when no row outside them can be closer than the exact k-th:
    some kept candidate was left out (its tiled value exceeds ``t_k + 2 tol``), or ``worst kept - tol >=
    exact k-th``, or the exact k-th is 0 (ties at 0 do not change the mean), or the row kept all its
    candidates.
    """
    nq, m = cand_i.shape
    out_d = np.full((nq, k), np.nan)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0:
        return out_d, out_i, np.ones(0, dtype=bool)
    sq_r_max = float(prep.sqnorm[r_idx].max()) if len(r_idx) else 0.0
    tol = _rounding_tol(src.dim, dtype, metric, prep.sqnorm[q_idx], sq_r_max)
    valid = (cand_i >= 0) & np.isfinite(cand_d)
    n_valid = valid.sum(axis=1)
    vals = np.where(valid, cand_d, np.inf)
    kk = min(k, m) - 1
    t_k = np.partition(vals, kk, axis=1)[:, kk]
    sel = valid & (vals <= (t_k + 2 * tol)[:, None])
    rows_p, cols_p = np.nonzero(sel)  # pairs (query position, candidate slot), sorted by query
    exact = np.full((nq, m), np.inf)
    step = max(1, budget // (src.dim * 8 * 4))
    order = np.argsort(cand_i[rows_p, cols_p], kind="stable")  # sorted reads are kinder to memory maps
    rows_p, cols_p = rows_p[order], cols_p[order]
    for a in range(0, len(rows_p), step):
        rp, cp = rows_p[a:a + step], cols_p[a:a + step]
        exact[rp, cp] = _exact_pairs(src.arr[q_idx[rp]], src.arr[cand_i[rp, cp]], metric)
    srt = np.argsort(exact, axis=1, kind="stable")[:, :k]
    ek = np.take_along_axis(exact, srt, axis=1)
    ik = np.take_along_axis(cand_i, srt, axis=1)
    if ek.shape[1] < k:
        ek = np.pad(ek, ((0, 0), (0, k - ek.shape[1])), constant_values=np.inf)
        ik = np.pad(ik, ((0, 0), (0, k - ik.shape[1])), constant_values=-1)
    missing = ~np.isfinite(ek)
    ek[missing], ik[missing] = np.nan, -1
    out_d[:], out_i[:] = ek, ik
    kth = ek[:, -1] ** 2 if metric == "euclidean" else ek[:, -1]
    worst = np.max(np.where(valid, cand_d, -np.inf), axis=1)
    some_left_out = (valid & ~sel).any(axis=1)
    certified = some_left_out | (worst - tol >= kth) | (kth == 0) | (n_cand <= n_valid) | np.isnan(kth)
    return out_d, out_i, certified


def _brute_force(src: _Source, q_idx: np.ndarray, r_idx: np.ndarray, k: int, metric: str, budget: int,
                 exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Float64 direct differences against every reference row (slow; for the rare uncertified rows)."""
    nq = len(q_idx)
    out_d = np.full((nq, k), np.nan)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    step = max(1, budget // (src.dim * 8 * 3))
    for a, q in enumerate(q_idx):
        q_row = src.arr[q:q + 1]
        dist = np.empty(len(r_idx))
        for b in range(0, len(r_idx), step):
            c_rows = src.arr[r_idx[b:b + step]]
            dist[b:b + step] = _exact_pairs(np.broadcast_to(q_row, c_rows.shape), c_rows, metric)
        if exclude_self:
            dist[r_idx == q] = np.inf
        srt = np.argsort(dist, kind="stable")[:k]
        dd = dist[srt]
        good = np.isfinite(dd)
        out_d[a, : good.sum()] = dd[good]
        out_i[a, : good.sum()] = r_idx[srt[good]]
    return out_d, out_i


def _faiss_candidates(src: _Source, prep: _Prep, q_idx: np.ndarray, r_idx: np.ndarray, m: int, metric: str,
                      exclude_self: bool, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from FAISS's exact flat index (float32); self matches removed by index."""
    try:
        import faiss
    except ImportError:
        from .errors import ConfigError

        raise ConfigError("index='faiss-flat' needs FAISS: pip install 'memlens[faiss]' (or faiss-cpu)") from None
    ref = _load(src, prep, r_idx, np.float32)
    if metric == "cosine":
        faiss.normalize_L2(ref)
        idx = faiss.IndexFlatIP(src.dim)
    else:
        idx = faiss.IndexFlatL2(src.dim)
    idx.add(ref)
    extra = 1 if exclude_self else 0
    kk = min(m + extra, len(r_idx))
    nq = len(q_idx)
    out_d = np.full((nq, m), np.inf)
    out_i = np.full((nq, m), -1, dtype=np.int64)
    step = max(1, budget // (src.dim * 4 * 2))
    for a in range(0, nq, step):
        qb = q_idx[a:a + step]
        xq = _load(src, prep, qb, np.float32)
        if metric == "cosine":
            faiss.normalize_L2(xq)
        d, pos = idx.search(xq, kk)
        gi = np.where(pos >= 0, r_idx[np.maximum(pos, 0)], -1)
        d = 1.0 - d if metric == "cosine" else np.maximum(d, 0)
        for row in range(len(qb)):
            keep = gi[row] >= 0
            if exclude_self:
                keep &= gi[row] != qb[row]
            di, ii = d[row][keep][:m], gi[row][keep][:m]
            out_d[a + row, : len(di)], out_i[a + row, : len(ii)] = di, ii
    return out_d, out_i
