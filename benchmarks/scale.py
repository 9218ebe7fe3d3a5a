"""Scale-out: images/s through the Ray streaming pipeline (1, 2, 4 model actors), the driver's memory without
merging, and FAISS on 1,000,000 synthetic 1,280-d latents.

Usage::

    python benchmarks/scale.py ray    [--images DIR] [--n-images 192] [--workers 1,2,4] [--backbone efficientnet_lite0]
    python benchmarks/scale.py memory [--sizes 10000,100000] [--memory-index ivf]
    python benchmarks/scale.py faiss  [--n 1000000] [--dim 1280] [--queries 10000] [--workdir DIR]
                                      [--configs ivf-flat,ivf-sq8,hnsw-flat] [--hnsw-n 200000]
    python benchmarks/scale.py index  ARGS...   # benchmarks/scale_index.py's main(ARGS), when the file exists
    python benchmarks/scale.py all    ... [--json results.json]

ray
    ``--n-images`` real JPEGs (default: the first of lnsim-dev, sorted by name) are written as a Parquet data set
    of encoded bytes and scored with an autoencoder of ``--backbone`` (ImageNet encoder; default metrics;
    pretrained features at 224 px): in one process (1 torch thread), then through the Ray streaming pipeline
    (read -> decode tasks -> model actor pool -> Parquet parts, ``merge=False``) with 1, 2 and 4 model actors (1
    CPU and 1 torch thread each) on a local Ray instance bound to 127.0.0.1 with ``--ray-cpus`` logical CPUs.
    Reported: images/s of the scoring phase (actor start-up included) and the decode and model CPU time per
    image (wall time inside each stage, summed over its workers).
memory
    For each of ``--sizes``, that many tiny random JPEGs (32 px) in a Parquet file are scored with a tiny
    autoencoder (``small``, width 4) with ``merge=False``; the driver's (this process's) resident memory is
    sampled every 0.2 s, its peak reported separately for the streaming phase and for the finish
    (distinctiveness with ``--memory-index`` from the memory-mapped parts).
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


def write_image_parquet(folder: Path, files: list[Path], rows_per_group: int = 32) -> Path:
    """The image files as a Parquet data set of encoded bytes (``image_id``, ``image``), one file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"image_id": [f.name for f in files], "image": [f.read_bytes() for f in files]})
    pq.write_table(table, folder / "images.parquet", row_group_size=rows_per_group)
    return folder


def _ray_init(cpus: int) -> Any:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on 127.0.0.1 only
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    return ray


def bench_ray(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s through the streaming pipeline (Parquet of real JPEG bytes -> decode -> model -> Parquet parts)
    with 1, 2 and 4 model actors, and the decode and model time per image; the single-process engine on the
    same Parquet data set for reference."""
    import torch

    from memlens import models
    from memlens.scoring import score_run
    from memlens.scoring.ray_engine import score_run_ray

    work = Path(args.workdir) / "ray"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files = sorted(Path(args.images).glob("*.jpg"))[: args.n_images]
    if len(files) < args.n_images:
        raise SystemExit(f"{args.images}: {len(files)} JPEGs, {args.n_images} asked for")
    data = write_image_parquet(work / "data", files)
    model = models.create_autoencoder(args.backbone, init="imagenet")
    metrics = args.metrics.split(",") if args.metrics else None
    out: dict[str, Any] = {"machine": _machine(), "n_images": len(files), "images": str(args.images),
                           "backbone": args.backbone, "image_size": int(model.spec.input_size),
                           "metrics": metrics or "default", "batch_size": args.batch_size,
                           "shard_size": args.shard_size, "ray_cpus": args.ray_cpus,
                           "mean_jpeg_kb": sum(f.stat().st_size for f in files) / len(files) / 1024}

    def new_run(name: str) -> Path:
        run = work / name
        run.mkdir()
        models.save_autoencoder(run / "autoencoder.pt", model)
        return run

    if not args.no_local:
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        info = score_run(new_run("local"), data, metrics=metrics, batch_size=args.batch_size,
                         device="cpu").attrs["info"]
        out["local_1_thread"] = {"images_per_s": info["images_per_s"], "scoring_s": info["seconds"],
                                 "wall_s": time.perf_counter() - t0}
        print(f"local, 1 thread: {info['images_per_s']:6.2f} images/s (scoring {info['seconds']:.1f} s, decode "
              "and model in one process)", flush=True)

    t0 = time.perf_counter()
    ray = _ray_init(args.ray_cpus)
    out["ray_init_s"] = time.perf_counter() - t0
    try:
        for workers in [int(w) for w in args.workers.split(",")]:
            t0 = time.perf_counter()
            info = score_run_ray(new_run(f"ray{workers}"), data, workers=workers, cpus_per_worker=1,
                                 cpus_per_decoder=1, merge=False, shard_size=args.shard_size,
                                 batch_size=args.batch_size, metrics=metrics, device="cpu").attrs["info"]
            n = len(files)
            res = {"images_per_s": info["images_per_s"], "scoring_s": info["seconds"],
                   "wall_s": time.perf_counter() - t0, "decoders": info["decoders"],
                   "cpus_per_decoder": info["cpus_per_decoder"],
                   "decode_ms_per_image": 1000 * info["decode_seconds"] / n,
                   "model_ms_per_image": 1000 * info["model_seconds"] / n, "actors_used": len(info["worker_pids"])}
            out[f"ray_{workers}_workers"] = res
            print(f"ray, {workers} model actor(s), {info['decoders']} decoder(s): {res['images_per_s']:6.2f} images/s "
                  f"(scoring phase {res['scoring_s']:.1f} s incl. actor start); per image: decode "
                  f"{res['decode_ms_per_image']:.1f} ms, model {res['model_ms_per_image']:.1f} ms (time inside the "
                  "stages, summed over their workers)", flush=True)
    finally:
        ray.shutdown()
    out["machine"]["load_after"] = _load()
    print(f"load average before {out['machine']['load_before']}, after {out['machine']['load_after']}")
    return out


# --------------------------------------------------------------------------------------------------------
# driver memory


def tiny_jpeg_parquet(folder: Path, n: int, side: int = 32, seed: int = 0, rows_per_group: int = 2048) -> Path:
    """``n`` tiny random JPEGs (``side`` px) as encoded bytes in one Parquet file, written group by group."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "images.parquet"
    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == n:
        return folder
    rng = np.random.default_rng(seed)
    base = [rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8) for _ in range(64)]
    schema = pa.schema([("image_id", pa.string()), ("image", pa.binary())])
    with pq.ParquetWriter(path, schema) as writer:
        for a in range(0, n, rows_per_group):
            ids, blobs = [], []
            for i in range(a, min(n, a + rows_per_group)):
                buf = io.BytesIO()
                img = np.roll(base[i % 64], i // 64, axis=1)
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
                ids.append(f"img{i:08d}")
                blobs.append(buf.getvalue())
            writer.write_table(pa.table({"image_id": ids, "image": blobs}, schema=schema))
    return folder


class _RssSampler:
    """Resident memory of this process (the driver), sampled every ``period`` seconds in a thread; ``mark()``
    starts a new phase."""

    def __init__(self, period: float = 0.2):
        import threading

        self.period, self.peaks, self.phase = period, {}, "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), self._rss())

    def mark(self, phase: str) -> None:
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), self._rss())
        self.phase = phase

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak resident memory of the driver with ``merge=False`` for growing numbers of tiny images: the
    streaming phase (read -> decode -> model -> write, driven from this process) and the finish
    (distinctiveness from the memory-mapped parts, added to each part)."""
    from memlens import models
    from memlens.scoring import ray_engine

    work = Path(args.workdir) / "memory"
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"machine": _machine(), "image_side": 32, "model": "small (width 4, 4 latent channels)",
                           "metrics": ["mse"], "feature_size": 32, "index": args.memory_index, "runs": {}}
    ray = _ray_init(args.ray_cpus)
    try:
        with _RssSampler() as rss:
            original = ray_engine.finish_parts

            def finish(*a: Any, **k: Any) -> Any:
                rss.mark("finish")
                return original(*a, **k)

            ray_engine.finish_parts = finish
            try:
                rss.mark("idle")
                out["driver_rss_mb_after_ray_init"] = rss._rss()
                for n in [int(x) for x in args.sizes.split(",")]:
                    data = tiny_jpeg_parquet(work / f"data{n}", n)
                    run = work / f"run{n}"
                    shutil.rmtree(run, ignore_errors=True)
                    run.mkdir()
                    models.save_autoencoder(run / "autoencoder.pt", models.create_autoencoder(
                        "small", input_size=32, width=4, latent_channels=4, seed=0))
                    rss.peaks.pop("stream", None), rss.peaks.pop("finish", None)
                    rss.mark("stream")
                    t0 = time.perf_counter()
                    info = ray_engine.score_run_ray(run, data, workers=args.memory_workers, merge=False,
                                                    metrics=["mse"], feature_size=32, batch_size=256,
                                                    shard_size=4096, index=args.memory_index,
                                                    device="cpu").attrs["info"]
                    rss.mark("idle")
                    res = {"images_per_s": info["images_per_s"], "scoring_s": info["seconds"],
                           "total_s": time.perf_counter() - t0, "parts": info["outputs"]["parts"],
                           "driver_peak_rss_mb_stream": rss.peaks.get("stream"),
                           "driver_peak_rss_mb_finish": rss.peaks.get("finish")}
                    out["runs"][n] = res
                    print(f"{n:>9,} images: {res['images_per_s']:7.1f} images/s, {res['parts']} parts; driver peak "
                          f"RSS {res['driver_peak_rss_mb_stream']:.0f} MiB while streaming, "
                          f"{res['driver_peak_rss_mb_finish']:.0f} MiB in the finish (distinctiveness, "
                          f"{args.memory_index}); total {res['total_s']:.0f} s", flush=True)
                    shutil.rmtree(run, ignore_errors=True)
            finally:
                ray_engine.finish_parts = original
    finally:
        ray.shutdown()
    out["machine"]["load_after"] = _load()
    return out


# --------------------------------------------------------------------------------------------------------
# the index benchmark of the FAISS work (benchmarks/scale_index.py), when present


def run_index_part(argv: list[str]) -> int:
    """``benchmarks/scale_index.py``'s ``main(argv)``, when the file exists."""
    import importlib.util

    path = Path(__file__).with_name("scale_index.py")
    if not path.is_file():
        print(f"{path} not found: no index benchmark to run", file=sys.stderr)
        return 1
    spec = importlib.util.spec_from_file_location("scale_index", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return int(module.main(argv) or 0)


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["index"] or argv[:2] == ["--part", "index"]:  # the FAISS engineer's benchmark, arguments passed on
        return run_index_part(argv[1 if argv[0] == "index" else 2:])
    if argv[:1] == ["--part"]:
        argv = argv[1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["ray", "memory", "faiss", "index", "all"])
    ap.add_argument("--workdir", default="/tmp/memlens-scale-bench", help="scratch folder (latents, runs)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", default="/work/shared/data/lnsim-dev/images", help="ray: a folder of JPEGs")
    ap.add_argument("--n-images", type=int, default=192, help="ray: JPEGs scored (the first, sorted by name)")
    ap.add_argument("--backbone", default="efficientnet_lite0", help="ray: autoencoder backbone")
    ap.add_argument("--metrics", default="", help="ray: comma-separated metrics (default: memlens's default)")
    ap.add_argument("--workers", default="1,2,4", help="ray: model actors, comma-separated")
    ap.add_argument("--ray-cpus", type=int, default=4, help="ray, memory: logical CPUs of the local Ray instance")
    ap.add_argument("--no-local", action="store_true", help="ray: skip the single-process reference")
    ap.add_argument("--shard-size", type=int, default=32, help="ray: images per unit")
    ap.add_argument("--batch-size", type=int, default=16, help="ray: images per forward pass")
    ap.add_argument("--sizes", default="10000,100000", help="memory: numbers of tiny images, comma-separated")
    ap.add_argument("--memory-workers", type=int, default=2, help="memory: model actors")
    ap.add_argument("--memory-index", default="ivf", help="memory: the distinctiveness index of the finish")
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
    if args.part == "index":
        return run_index_part([])
    if args.part in ("ray", "all"):
        results["ray"] = bench_ray(args)
    if args.part in ("memory", "all"):
        results["memory"] = bench_memory(args)
    if args.part in ("faiss", "all"):
        results["faiss"] = bench_faiss(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
