"""FAISS neighbour search at scale: IVF-PQ (and HNSW) on 1M and 10M synthetic latents, measured.

Usage::

    python benchmarks/scale_index.py generate --n 10000000            # latents on disk (memory-mapped)
    python benchmarks/scale_index.py curve --n 1000000                # recall/time vs nlist, nprobe, pq bytes
    python benchmarks/scale_index.py defaults --n 1000000 10000000    # the library defaults at each size
    python benchmarks/scale_index.py search --n 10000000 --save DIR   # a saved index again (no rebuild)
    python benchmarks/scale_index.py real --real RUN/latents.npy      # the same curve on real latents
    python benchmarks/scale_index.py smoke                            # seconds: checks the script

Data: ``--dim`` (512) float32 rows from a Gaussian mixture shaped like real autoencoder latents: 1,024
clusters, per-dimension spread decaying as a power law (about 90% of the variance in the first 17
principal directions, as measured on the demo run's latents), randomly rotated, so neither the clusters
nor the axes are aligned with FAISS's sub-vectors. Rows are generated in chunks straight into a ``.npy``
memory map (``--data``, default ``/tmp/memlens_scale_index/latents.npy``); the first n rows of the file are
the n-row data set (rows are i.i.d.). Queries are ``--queries`` random rows (seed 0); the truth is their
exact nearest other row (brute force over all n rows, float64 re-measured). Every timing is wall-clock on
whatever cores the machine has (FAISS's OpenMP threads); peak RSS is the process's high-water mark
(memory-mapped latent pages included); the index's own memory is the growth of anonymous RSS while
building and the size of the saved index file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path("/tmp/memlens_scale_index/latents.npy")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _anon_rss_mib() -> float:
    """Resident anonymous memory (the index, arrays), without the memory-mapped latents' file pages."""
    try:
        with open("/proc/self/status") as fh:
            line = next(ln for ln in fh if ln.startswith("RssAnon:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):  # pragma: no cover - not Linux
        return float("nan")


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
        if "avx512_vnni" in text:
            model += " (AVX-512 VNNI)"
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} CPUs, load average {load}"


def generate(path: Path, n: int, dim: int = 512, *, clusters: int = 1024, seed: int = 0,
             chunk: int = 200_000) -> Path:
    """Write ``n`` x ``dim`` float32 mixture latents to ``path`` (``.npy``) in chunks; atomic (temp + rename).

    An existing file with at least ``n`` rows of width ``dim`` is kept (its first ``n`` rows are the data).
    """
    if path.is_file():
        old = np.load(path, mmap_mode="r")
        if old.shape[0] >= n and old.shape[1] == dim:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    spread = (np.arange(1, dim + 1, dtype=np.float64) ** -0.9).astype(np.float32)
    centres = (rng.standard_normal((clusters, dim), dtype=np.float32) * spread * 0.8).astype(np.float32)
    within = rng.uniform(0.3, 0.8, size=clusters).astype(np.float32)   # each cluster its own width
    weights = rng.dirichlet(np.full(clusters, 2.0))
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    rotation = rotation.astype(np.float32)
    tmp = path.with_name(f".{path.name}.tmp")
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        c = rng.choice(clusters, size=b - a, p=weights)
        z = rng.standard_normal((b - a, dim), dtype=np.float32)
        z *= spread
        z *= within[c, None]
        z += centres[c]
        mm[a:b] = z @ rotation
    mm.flush()
    del mm
    os.replace(tmp, path)
    return path


def load(path: Path, n: int) -> np.ndarray:
    arr = np.load(path, mmap_mode="r")
    if arr.shape[0] < n:
        raise SystemExit(f"{path} has {arr.shape[0]} rows, fewer than --n {n}: run generate first")
    return arr[:n]


def truth(x: np.ndarray, queries: np.ndarray, cache: Path | None) -> np.ndarray:
    """Exact nearest-other-row distances (float64) of ``queries``; cached next to the data."""
    if cache is not None and cache.is_file():
        return np.load(cache)
    from memlens.index import exact_knn

    t0 = time.perf_counter()
    d, _ = exact_knn(x, 1, queries=queries, chunk_mb=512)
    print(f"  exact truth for {len(queries)} queries over {len(x):,} rows: {time.perf_counter() - t0:.1f} s",
          flush=True)
    if cache is not None:
        np.save(cache, d)
    return d


def measure(x: np.ndarray, queries: np.ndarray, true_d: np.ndarray, *, kind: str = "ivf",
            nprobes: tuple[int | None, ...] = (None,), extras: tuple[int | None, ...] = (None,),
            save: Path | None = None, **opts) -> list[dict]:
    """Build one index with the library (:class:`memlens.index.ApproxIndex`), search at each nprobe."""
    from memlens.index import ApproxIndex, recall_at_k

    rss0 = _anon_rss_mib()
    t0 = time.perf_counter()
    index = ApproxIndex(x, kind, seed=0, **{"memory_budget_mb": 1e9, **opts})
    build = time.perf_counter() - t0
    rss1 = _anon_rss_mib()
    rows = []
    for nprobe, extra in [(p, e) for p in nprobes for e in extras]:
        if nprobe is not None:
            index.set_search(nprobe=nprobe)
        index.extra_candidates = extra
        index.search(queries[:50], 1)  # warm the pages and threads
        t1 = time.perf_counter()
        d, _ = index.search(queries, 1)
        secs = time.perf_counter() - t1
        row = {"n": len(x), "dim": x.shape[1], "kind": kind, "encoding": index.encoding_name,
               **{k: v for k, v in index.params.items() if k in ("nlist", "nprobe", "hnsw_m", "ef_search",
                                                                  "candidates")},
               "train_s": round(index.train_seconds, 1), "add_s": round(index.add_seconds, 1),
               "build_s": round(build, 1), "query_ms": round(1000 * secs / len(queries), 3),
               "recall@1": round(recall_at_k(d, true_d), 4), "index_mib": round(index.memory_bytes / 2**20, 1),
               "anon_rss_growth_mib": round(rss1 - rss0, 1), "peak_rss_mib": round(_rss_mib(), 1)}
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
    if save is not None:
        t2 = time.perf_counter()
        index.save(save)
        size = (save / "index.faiss").stat().st_size
        print(f"  saved to {save} in {time.perf_counter() - t2:.1f} s: index.faiss {size / 2**20:.1f} MiB "
              f"({size / len(x):.1f} bytes per vector)", flush=True)
        for r in rows:
            r["file_mib"] = round(size / 2**20, 1)
    return rows


def search_saved(x: np.ndarray, queries: np.ndarray, true_d: np.ndarray, folder: Path,
                 nprobes: tuple[int, ...]) -> list[dict]:
    """Load an index saved by ``defaults --save`` and search the same queries at each nprobe."""
    from memlens.index import load_index, recall_at_k

    t0 = time.perf_counter()
    index = load_index(folder, x)
    print(f"  loaded {folder} in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    xq = np.ascontiguousarray(x[queries], dtype=np.float32)
    for nprobe in nprobes:
        index.set_search(nprobe=nprobe)
        t1 = time.perf_counter()
        d, _ = index.search(queries, 1)
        secs = time.perf_counter() - t1
        t2 = time.perf_counter()  # FAISS alone (the same candidates, no exact re-ranking from the latents)
        index.index.search(xq, index.params["candidates"])
        faiss_secs = time.perf_counter() - t2
        row = {"n": len(x), "kind": index.kind, "encoding": index.encoding_name, **{
            k: index.params.get(k) for k in ("nlist", "nprobe", "candidates")},
            "query_ms": round(1000 * secs / len(queries), 3), "faiss_ms": round(1000 * faiss_secs / len(queries), 3),
            "recall@1": round(recall_at_k(d, true_d), 4), "peak_rss_mib": round(_rss_mib(), 1)}
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    cols = ["n", "kind", "encoding", "nlist", "nprobe", "candidates", "train_s", "add_s", "build_s", "query_ms",
            "faiss_ms",
            "recall@1", "index_mib", "file_mib", "anon_rss_growth_mib", "peak_rss_mib"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["generate", "curve", "defaults", "search", "real", "smoke"])
    ap.add_argument("--real", type=Path, nargs="+", default=[],
                    help="real: .npy matrices (rows = images); every query is a row (the truth is brute force)")
    ap.add_argument("--width", type=int, default=None, help="real: keep the first WIDTH columns")
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--nlist", type=int, nargs="+", default=[1024])
    ap.add_argument("--pq-bytes", type=int, nargs="+", default=[64])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--extra", type=int, nargs="+", default=[None],
                    help="candidates re-ranked beyond k+1 (default: the library's, max(8, 2k))")
    ap.add_argument("--nprobe-defaults", type=int, nargs="*", default=[],
                    help="defaults: also search the default index at these nprobe")
    ap.add_argument("--hnsw", action="store_true", help="curve: also HNSW-PQ (slow to build on few cores)")
    ap.add_argument("--save", type=Path, default=None, help="defaults: save the index here (per n)")
    ap.add_argument("--json", type=Path, default=None, help="append the rows as JSON lines")
    args = ap.parse_args(argv)

    print(f"machine: {_machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    if args.part == "smoke":
        args.data = Path(os.environ.get("TMPDIR", "/tmp")) / "memlens_scale_index_smoke.npy"
        args.n, args.dim, args.queries, args.nlist, args.nprobe = [20_000], 64, 100, [64], [4, 16]
        args.pq_bytes = [16]
        args.part = "curve"
    if args.part == "real":
        rows = []
        for path in args.real:
            x = np.ascontiguousarray(np.load(path)[:, :args.width], dtype=np.float32)
            print(f"{path}: {x.shape[0]:,} x {x.shape[1]}", flush=True)
            queries = np.arange(len(x))
            true_d = truth(x, queries, None)
            for m in args.pq_bytes:
                enc = {"encoding": "pq", "pq_bytes": m} if m else {"encoding": "flat"}
                for r in measure(x, queries, true_d, nprobes=tuple(args.nprobe), extras=tuple(args.extra),
                                 nlist=args.nlist[0] if args.nlist[0] else None, **enc):
                    rows.append({"data": path.name, **r})
        print(table(rows))
        return 0
    n_max = max(args.n)
    t0 = time.perf_counter()
    generate(args.data, n_max, args.dim)
    print(f"data: {args.data} ({n_max:,} x {args.dim}; ready in {time.perf_counter() - t0:.1f} s)", flush=True)
    if args.part == "generate":
        return 0
    rows: list[dict] = []
    for n in args.n:
        x = load(args.data, n)
        queries = np.sort(np.random.default_rng(0).choice(n, size=min(args.queries, n), replace=False))
        cache = args.data.with_name(f"{args.data.stem}.truth-{n}-{len(queries)}.npy")
        true_d = truth(x, queries, cache)
        if args.part == "curve":
            for nlist in args.nlist:
                for m in args.pq_bytes:
                    rows += measure(x, queries, true_d, nlist=nlist, encoding="pq", pq_bytes=m,
                                    nprobes=tuple(args.nprobe), extras=tuple(args.extra))
            if args.hnsw:
                rows += measure(x, queries, true_d, kind="hnsw", encoding="pq", pq_bytes=args.pq_bytes[0],
                                hnsw_m=16)
        elif args.part == "search":
            rows += search_saved(x, queries, true_d, args.save / f"n{n}", tuple(args.nprobe))
        else:  # the library's defaults at this size (then --nprobe on the same index, if given)
            save = args.save / f"n{n}" if args.save is not None else None
            rows += measure(x, queries, true_d, save=save, nprobes=(None, *args.nprobe_defaults),
                            memory_budget_mb=2048)  # memlens score's --index-memory-mb default
    print(table(rows))
    if args.json is not None:
        with args.json.open("a") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
