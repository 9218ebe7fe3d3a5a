"""Scale-out: images/s through Ray with 1 and 2 workers, and FAISS on 1,000,000 synthetic 1,280-d latents.

Usage::

    python benchmarks/scale.py ray   [--n-images 192] [--backbone efficientnet_lite0] [--workdir DIR]
    python benchmarks/scale.py faiss [--n 1000000] [--dim 1280] [--queries 10000] [--workdir DIR]
                                     [--configs ivf-flat,ivf-sq8,hnsw-flat] [--hnsw-n 200000]
    python benchmarks/scale.py all   ... [--json results.json]

ray
    The demo set (``memlens.data.make_demo_set``, 96-px images resized to the model's input) is scored with an
    autoencoder of ``--backbone`` (ImageNet encoder, default metrics, pretrained features at 224 px) three
    ways, side by side in one run on this machine: the single-process engine (1 torch thread), and Ray with 1
    and 2 actors (1 CPU and 1 torch thread each) on a local Ray instance bound to 127.0.0.1. Reported:
    wall-clock images/s of the scoring phase (actor start-up included) and steady-state images/s (images /
    the busiest actor's shard-seconds, start-up excluded).
faiss
    ``--n`` synthetic latents shaped like pooled CNN features (non-negative; 1,000 clusters in a 64-d subspace
    embedded in ``--dim`` dimensions plus noise), written to a memory-mapped ``.npy`` in ``--workdir``.
    ``--queries`` rows are drawn at random; their exact nearest other row (brute force, FAISS in 512 MB
    reference chunks, exact float64 re-ranking) is the reference. Each approximate configuration is built
    over all rows (HNSW over the first ``--hnsw-n`` rows when given: its build is the slow part on a few
    cores), searched for the same queries, and reported with build and search time, estimated index memory,
    the process's resident-memory growth, and recall@1 against exact search. From the search rate the time
    to compute distinctiveness for every row is projected (marked as projected). Memory growth counts
    anonymous resident pages only (the memory-mapped latents are not counted).

Every result carries the load average before and after (the machine may be shared) and the CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def _rss_mb() -> float:
    """Anonymous resident memory of this process (MiB; pages of memory-mapped files such as the latents are not
    counted), from /proc (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover
        pass
    return 0.0


def _machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "load_before": _load()}


# --------------------------------------------------------------------------------------------------------
# Ray


def bench_ray(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on 127.0.0.1 only
    import ray
    import torch

    from memlens import models
    from memlens.data import make_demo_set
    from memlens.scoring import score_run
    from memlens.scoring import score_run as local_score_run

    work = Path(args.workdir) / "ray"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out: dict[str, Any] = {"machine": _machine(), "n_images": args.n_images, "backbone": args.backbone,
                           "shard_size": args.shard_size, "batch_size": args.batch_size}
    demo = make_demo_set(work / "demo", n_images=args.n_images, image_size=96, n_experience=0, n_observers=20,
                         n_splits=3)
    model = models.create_autoencoder(args.backbone, init="imagenet")
    out["image_size"] = int(model.spec.input_size)

    def new_run(name: str) -> Path:
        run = work / name
        run.mkdir()
        models.save_autoencoder(run / "autoencoder.pt", model)
        return run

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    table = local_score_run(new_run("local"), demo, batch_size=args.batch_size, device="cpu")
    wall = time.perf_counter() - t0
    info = table.attrs["info"]
    out["local_1_thread"] = {"images_per_s": info["images_per_s"], "scoring_s": info["seconds"], "wall_s": wall}
    print(f"local, 1 thread:   {info['images_per_s']:6.2f} images/s (scoring {info['seconds']:.1f} s, "
          f"wall {wall:.1f} s incl. model loading and distinctiveness)", flush=True)

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    out["ray_init_s"] = time.perf_counter() - t0
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        for workers in (1, 2):
            run = new_run(f"ray{workers}")
            t0 = time.perf_counter()
            table = score_run(run, demo, engine="ray", workers=workers, cpus_per_worker=1,
                              shard_size=args.shard_size, batch_size=args.batch_size, keep_shards=True,
                              device="cpu")
            wall = time.perf_counter() - t0
            info = table.attrs["info"]
            busy: dict[int, float] = {}
            for done in (run / "shards").glob("*.done.json"):
                meta = json.loads(done.read_text())
                busy[meta["pid"]] = busy.get(meta["pid"], 0.0) + meta["seconds"]
            steady = args.n_images / max(busy.values())
            out[f"ray_{workers}_workers"] = {"images_per_s": info["images_per_s"], "steady_images_per_s": steady,
                                              "scoring_s": info["seconds"], "wall_s": wall,
                                              "actor_busy_s": sorted(busy.values())}
            print(f"ray, {workers} worker(s): {info['images_per_s']:6.2f} images/s wall (scoring phase "
                  f"{info['seconds']:.1f} s incl. actor start), {steady:6.2f} images/s steady state "
                  f"(busiest actor {max(busy.values()):.1f} s)", flush=True)
            shutil.rmtree(run / "shards", ignore_errors=True)
    finally:
        ray.shutdown()
    base = out["ray_1_workers"]["steady_images_per_s"]
    out["speedup_2_vs_1_steady"] = out["ray_2_workers"]["steady_images_per_s"] / base
    out["speedup_2_vs_1_wall"] = out["ray_2_workers"]["images_per_s"] / out["ray_1_workers"]["images_per_s"]
    out["machine"]["load_after"] = _load()
    print(f"2 vs 1 worker: x{out['speedup_2_vs_1_steady']:.2f} steady state, x{out['speedup_2_vs_1_wall']:.2f} "
          f"wall; load average before {out['machine']['load_before']}, after {out['machine']['load_after']}")
    return out


# --------------------------------------------------------------------------------------------------------
# FAISS


def make_latents(path: Path, n: int, dim: int, seed: int = 0, chunk: int = 50_000) -> np.ndarray:
    """Synthetic latents like pooled CNN features, written block by block into a memory-mapped ``.npy``."""
    rng = np.random.default_rng(seed)
    sub = 64
    centers = rng.normal(size=(1000, sub)).astype(np.float32) * 2.0
    basis = (rng.normal(size=(sub, dim)) / np.sqrt(sub)).astype(np.float32)
    offset = rng.uniform(0.0, 0.5, size=dim).astype(np.float32)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        z = centers[rng.integers(0, len(centers), m)] + rng.normal(size=(m, sub)).astype(np.float32)
        x = z @ basis + offset + 0.25 * rng.standard_normal((m, dim), dtype=np.float32)
        mm[a:a + m] = np.maximum(x, 0.0)
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r")


def bench_faiss(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from memlens.index import ApproxIndex, ShardedLatents, exact_knn, recall_at_k

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"latents_{args.n}x{args.dim}.npy"
    out: dict[str, Any] = {"machine": _machine(), "n": args.n, "dim": args.dim, "queries": args.queries,
                           "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads()}
    t0 = time.perf_counter()
    if path.is_file() and np.load(path, mmap_mode="r").shape == (args.n, args.dim):
        x = np.load(path, mmap_mode="r")
        out["generate_s"] = None
    else:
        x = make_latents(path, args.n, args.dim, seed=args.seed)
        out["generate_s"] = time.perf_counter() - t0
    out["matrix_gb"] = x.nbytes / 1e9
    print(f"latents: {args.n} x {args.dim} float32 = {x.nbytes / 1e9:.2f} GB at {path} "
          f"(generated in {out['generate_s'] or 0:.0f} s); load average {out['machine']['load_before']}", flush=True)
    src = ShardedLatents([x])
    rng = np.random.default_rng(args.seed + 1)
    queries = np.sort(rng.choice(args.n, size=args.queries, replace=False))

    # exact reference for the queries
    exact_file = work / f"exact_{args.n}x{args.dim}_q{args.queries}_s{args.seed}.npz"
    if exact_file.is_file():
        ref = np.load(exact_file)
        true_d, true_i, exact_s = ref["d"], ref["i"], float(ref["seconds"])
        out["exact_cached"] = True
    else:
        rss0, t0 = _rss_mb(), time.perf_counter()
        true_d, true_i = exact_knn(src, 1, "euclidean", queries=queries, chunk_mb=512)
        exact_s = time.perf_counter() - t0
        np.savez(exact_file, d=true_d, i=true_i, seconds=exact_s)
        out["exact_rss_growth_mb"] = _rss_mb() - rss0
    out["exact"] = {"seconds": exact_s, "queries_per_s": args.queries / exact_s,
                    "projected_all_rows_h": args.n / (args.queries / exact_s) / 3600}
    print(f"exact (brute force, {args.queries} queries): {exact_s:.0f} s = {args.queries / exact_s:.1f} queries/s; "
          f"all {args.n} rows would take {out['exact']['projected_all_rows_h']:.1f} h (projected)", flush=True)

    configs = {
        "ivf-flat": dict(kind="ivf", encoding="flat", nlist=args.nlist, nprobe=args.nprobe),
        "ivf-sq8": dict(kind="ivf", encoding="sq8", nlist=args.nlist, nprobe=args.nprobe),
        "hnsw-flat": dict(kind="hnsw", encoding="flat", hnsw_m=args.hnsw_m, ef_search=args.ef_search),
        "hnsw-sq8": dict(kind="hnsw", encoding="sq8", hnsw_m=args.hnsw_m, ef_search=args.ef_search),
    }
    for name in args.configs.split(","):
        cfg = dict(configs[name])
        kind = cfg.pop("kind")
        n_index = args.n if kind != "hnsw" or not args.hnsw_n else min(args.hnsw_n, args.n)
        q = queries if n_index == args.n else queries[queries < n_index]
        if n_index == args.n:
            t_d = true_d
        else:  # exact reference within the indexed prefix
            t_d, _ = exact_knn(src.rows(0, n_index), 1, "euclidean", queries=q, chunk_mb=512)
        rss0 = _rss_mb()
        index = ApproxIndex(src if n_index == args.n else src.rows(0, n_index), kind, "euclidean",
                            memory_budget_mb=args.memory_budget_mb, seed=args.seed, **cfg)
        rss_build = _rss_mb() - rss0
        t0 = time.perf_counter()
        d, _ = index.search(q, 1)
        search_s = time.perf_counter() - t0
        recall = recall_at_k(d, t_d)
        rate = len(q) / search_s
        res = {"n_indexed": n_index, "queries": int(len(q)), "encoding": index.encoding_name,
               "params": dict(index.params), "build_s": index.build_seconds,
               "build_vectors_per_s": n_index / index.build_seconds,
               "search_s": search_s, "queries_per_s": rate, "recall_at_1": recall,
               "index_memory_mb_estimated": index.memory_bytes / 2**20, "rss_growth_mb": rss_build,
               "projected_all_rows_s": n_index / rate, "speedup_vs_exact_search": rate / (args.queries / exact_s)}
        # the speed/recall trade-off of the search-time knob, on the same index
        sweep = [int(v) for v in (args.nprobe_sweep if kind == "ivf" else args.ef_sweep).split(",") if v]
        res["sweep"] = []
        for v in sweep:
            if kind == "ivf":
                index.index.nprobe = v
            else:
                index.ef_search = v
            t0 = time.perf_counter()
            d, _ = index.search(q, 1)
            sec = time.perf_counter() - t0
            res["sweep"].append({"nprobe" if kind == "ivf" else "ef_search": v, "search_s": sec,
                                 "queries_per_s": len(q) / sec, "recall_at_1": recall_at_k(d, t_d)})
            print(f"    {'nprobe' if kind == 'ivf' else 'ef_search'}={v}: {len(q) / sec:,.0f} queries/s, "
                  f"recall@1 {res['sweep'][-1]['recall_at_1']:.4f}", flush=True)
        if n_index != args.n:
            res["projected_build_s_at_n"] = index.build_seconds * (args.n / n_index) * np.log(args.n) / np.log(n_index)
        out[name] = res
        print(f"{name:9s} over {n_index} rows: build {index.build_seconds:6.0f} s "
              f"({n_index / index.build_seconds:,.0f} vectors/s), search {len(q)} queries {search_s:6.1f} s "
              f"({rate:,.0f}/s), recall@1 {recall:.4f}, index ~{index.memory_bytes / 2**20:,.0f} MiB "
              f"(anonymous RSS +{rss_build:,.0f} MiB), all rows ~{n_index / rate / 60:.1f} min (projected)", flush=True)
        del index
    out["machine"]["load_after"] = _load()
    print(f"load average before {out['machine']['load_before']}, after {out['machine']['load_after']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["ray", "faiss", "all"])
    ap.add_argument("--workdir", default="/tmp/memlens-scale-bench", help="scratch folder (latents, runs)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=192, help="ray: demo images scored")
    ap.add_argument("--backbone", default="efficientnet_lite0", help="ray: autoencoder backbone")
    ap.add_argument("--shard-size", type=int, default=16, help="ray: images per shard")
    ap.add_argument("--batch-size", type=int, default=16, help="ray: images per forward pass")
    ap.add_argument("--n", type=int, default=1_000_000, help="faiss: latent rows")
    ap.add_argument("--dim", type=int, default=1280, help="faiss: latent width")
    ap.add_argument("--queries", type=int, default=10_000, help="faiss: sampled queries")
    ap.add_argument("--configs", default="ivf-flat,ivf-sq8,hnsw-flat", help="faiss: comma-separated configs")
    ap.add_argument("--nlist", type=int, default=1000)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-search", type=int, default=64)
    ap.add_argument("--hnsw-n", type=int, default=0, help="faiss: index only the first rows for HNSW (0: all)")
    ap.add_argument("--memory-budget-mb", type=float, default=8192)
    ap.add_argument("--nprobe-sweep", default="", help="faiss: extra IVF nprobe values searched, e.g. 1,4,64")
    ap.add_argument("--ef-sweep", default="", help="faiss: extra HNSW efSearch values searched, e.g. 16,128")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    if args.part in ("ray", "all"):
        results["ray"] = bench_ray(args)
    if args.part in ("faiss", "all"):
        results["faiss"] = bench_faiss(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
