"""One short GPU benchmark: exposure training, batched scoring and distinctiveness; prints one JSON line.

Usage::

    python benchmarks/gpu.py                 # on a CUDA machine; about two minutes on an H100/H200
    python benchmarks/gpu.py --smoke         # anywhere: every part on the CPU with tiny sizes, in seconds

Parts (in this order; a part that would not fit the time budget is skipped and says why):

1. ``exposure``: single-exposure training images/s, eager batch-1 steps versus memlens's CUDA-graph fast
   path, by running ``benchmarks/gpu_exposure.py`` (imported; its JSON line is embedded as is).
   Goal: fast >= 2.5x eager.
2. ``scoring``: ``memlens.scoring.score_images`` images/s on synthetic images already on the GPU (the model
   alone: MSE, latents copied back to host memory, no pretrained features), bf16 autocast and float32;
   goal >= 3,000 images/s for vgg16 at 224 px in bf16. Then ``with_decoding``: the same from JPEG files
   (lnsim-dev when present, else synthetic JPEGs) through DataLoader workers, with a cold and a warm
   decode cache.
3. ``distinctiveness``: ``memlens.neighbors.distinctiveness(k=1, device="cuda")`` wall time for 10,000 and
   100,000 random latents of 1,280 and 25,088 dimensions (input in host memory, as ``latents.npy`` is),
   where host and GPU memory allow.
4. ``explain``: the Integrated Gradients work of ``memlens explain RUN --top 3 --bottom 3`` with the default
   predictor's networks (the ``lite01`` feature set, EfficientNet-Lite0 at 224 px and Lite1 at 240 px, and an
   SVR head fitted on random images): 6 maps at 32 steps with the half-step error check, 26 aggregate-only
   maps at 16 steps and the 4-image randomisation check at 16 steps. Goal: under 5 s.

Without CUDA (and without ``--smoke``) it prints a message to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "lnsim-dev"

try:
    import memlens  # noqa: F401
except ImportError:  # a bare checkout (e.g. a lent GPU machine with its own torch): use the source tree
    sys.path.insert(0, str(HERE.parent / "src"))

#: per-part settings: the full run and the CPU smoke run
FULL = {"backbone": "vgg16", "size": 224, "exposure_n": 300, "score_n": 4096, "score_batch": 256,
        "decode_n": 2048, "dist_n": (10_000, 100_000), "dist_dims": (1280, 25088), "budget_s": 170.0,
        "dist_budget_mb": 8192}
SMOKE = {"backbone": "small", "size": 32, "exposure_n": 4, "score_n": 24, "score_batch": 8,
         "decode_n": 8, "dist_n": (300, 600), "dist_dims": (8, 32), "budget_s": 60.0, "dist_budget_mb": 64}
GOALS = {"exposure_speedup": 2.5, "scoring_bf16_images_per_s": 3000.0, "explain_ig_s": 5.0}
#: explain's Integrated Gradients work with --top 3 --bottom 3 (full run; the smoke run does a token amount)
EXPLAIN = {"full": {"shown": 6, "steps": 32, "aggregate_only": 26, "aggregate_steps": 16, "sanity": 4},
           "smoke": {"shown": 1, "steps": 2, "aggregate_only": 1, "aggregate_steps": 2, "sanity": 1}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--smoke`` swaps in the tiny CPU sizes for every option left unset."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="run every part on the CPU with tiny sizes (seconds)")
    ap.add_argument("--backbone", default=None, help="registered backbone (default vgg16; smoke: small)")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 224; smoke: 32)")
    ap.add_argument("--exposure-n", type=int, default=None, help="images per exposure run (default 300)")
    ap.add_argument("--score-n", type=int, default=None, help="synthetic images scored (default 4096)")
    ap.add_argument("--score-batch", type=int, default=None, help="scoring batch size (default 256)")
    ap.add_argument("--decode-n", type=int, default=None, help="JPEG files scored with decoding (default 2048; 0 skips)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers for decoding (default: CPUs, max 16)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JPEG folder with scores.csv (default lnsim-dev)")
    ap.add_argument("--dist-n", default=None, help="comma-separated row counts (default 10000,100000)")
    ap.add_argument("--dist-dims", default=None, help="comma-separated dimensions (default 1280,25088)")
    ap.add_argument("--dist-budget-mb", type=float, default=None, help="distinctiveness tile memory (default 8192)")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget; later parts are skipped past it")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    base = SMOKE if args.smoke else FULL
    for key, value in base.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("dist_n", "dist_dims"):
        value = getattr(args, key)
        if isinstance(value, str):
            try:
                value = tuple(int(v) for v in value.split(",") if v.strip())
            except ValueError:
                ap.error(f"--{key.replace('_', '-')} must be comma-separated integers, got {value!r}")
        setattr(args, key, tuple(value))
    if args.workers is None:
        args.workers = 0 if args.smoke else min(16, os.cpu_count() or 1)
    return args


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------
def mem_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Clock:
    """Elapsed time against the run's budget."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def image_files(data: Path, n: int, tmp: Path, size: int, seed: int) -> tuple[list[str], str]:
    """Up to ``n`` JPEG paths: from ``data`` (scores.csv or *.jpg) when present, else synthetic ones in ``tmp``."""
    import numpy as np

    if data.is_dir():
        table = data / "scores.csv"
        if table.is_file():
            import csv

            with open(table, newline="", encoding="utf-8") as fh:
                paths = [str(data / r["image"]) for r in csv.DictReader(fh)]
        else:
            paths = sorted(str(p) for p in data.rglob("*.jpg"))
        if paths:
            return paths[:n], f"{data} ({min(n, len(paths))} files)"
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    h, w = int(size * 1.07) + 1, int(size * 1.6) + 1  # landscape, a bit larger than the model input
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    for i in range(n):
        small = np.roll(base, i, axis=1) ^ np.uint8(i % 256)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        path = tmp / f"{i:06d}.jpg"
        img.save(path, quality=87)
        out.append(str(path))
    return out, f"synthetic JPEGs {w}x{h} ({n} files)"


# --------------------------------------------------------------------------------------------------------
# parts
# --------------------------------------------------------------------------------------------------------
def part_exposure(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """benchmarks/gpu_exposure.py imported and run; in smoke mode the eager CPU path only."""
    if args.smoke:
        import torch

        from memlens.models import create_autoencoder
        from memlens.train import fit_autoencoder

        g = torch.Generator().manual_seed(args.seed)
        images = torch.rand(args.exposure_n, 3, args.size, args.size, generator=g)
        model = create_autoencoder(args.backbone, input_size=args.size, seed=args.seed)
        res = fit_autoencoder(model, images, device="cpu", fast=False, seed=args.seed)
        return {"eager_images_per_s": round(res.images_per_s, 1), "fast_images_per_s": None, "speedup": None,
                "n_images": args.exposure_n, "note": "smoke: eager CPU path only (the fast path needs CUDA graphs)"}
    sys.path.insert(0, str(HERE))
    try:
        import gpu_exposure
    finally:
        sys.path.remove(str(HERE))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = gpu_exposure.main(["--backbone", args.backbone, "--size", str(args.size), "--n", str(args.exposure_n),
                                "--seed", str(args.seed)])
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("{")]
    if rc != 0 or not lines:
        return {"error": f"gpu_exposure.py exited with status {rc} (see stderr)"}
    out = json.loads(lines[-1])
    out.pop("benchmark", None)
    return out


def part_scoring(args: argparse.Namespace, device: Any, clock: Clock) -> dict[str, Any]:
    """score_images images/s on synthetic images on the device (bf16 and float32), then from JPEG files."""
    import torch

    from memlens.data import ImageCache
    from memlens.models import create_autoencoder
    from memlens.scoring import score_images

    model = create_autoencoder(args.backbone, input_size=args.size, seed=args.seed).to(device).eval()
    g = torch.Generator(device=device).manual_seed(args.seed)
    images = torch.rand(args.score_n, 3, args.size, args.size, device=device, generator=g)
    kw = {"metrics": ("mse",), "features": False, "batch_size": args.score_batch, "device": device}
    out: dict[str, Any] = {"n_images": args.score_n, "batch_size": args.score_batch, "metrics": ["mse"],
                           "latents": "flattened, copied to host memory"}
    for precision in ("bfloat16", "float32"):
        # warm-up: cuDNN autotuning (cudnn.benchmark) for the full and the last batch shapes
        warm = min(len(images), 2 * args.score_batch + (len(images) % args.score_batch))
        score_images(model, images[:warm], precision=precision, **kw)
        sync(device)
        t0 = time.perf_counter()
        res = score_images(model, images, precision=precision, **kw)
        sync(device)
        seconds = time.perf_counter() - t0
        out[f"{precision}_images_per_s"] = round(args.score_n / seconds, 1)
        out[f"{precision}_seconds"] = round(seconds, 3)
        del res
    if device.type == "cuda":
        # PyTorch's default, which memlens keeps: cuDNN convolutions in TF32 when the precision is float32
        out["float32_note"] = (f"cuDNN TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'} "
                               "(torch.backends.cudnn.allow_tf32)")
    goal = GOALS["scoring_bf16_images_per_s"]
    out["goal_bf16_images_per_s"] = goal
    out["goal_met"] = bool(out["bfloat16_images_per_s"] >= goal) if not args.smoke else None
    # the decoding runs below use smaller batches: autotune that shape too, so cold_cache does not pay for it
    dec_batch = min(args.score_batch, 64)
    score_images(model, images[:2 * dec_batch], precision="bfloat16", **dict(kw, batch_size=dec_batch))
    sync(device)
    del images

    if args.decode_n <= 0:
        out["with_decoding"] = {"skipped": "--decode-n 0"}
    elif clock.left() < 30 and not args.smoke:
        out["with_decoding"] = {"skipped": f"time budget: {clock.left():.0f} s left"}
    else:
        with tempfile.TemporaryDirectory(prefix="memlens-gpu-") as tmp:
            paths, source = image_files(args.data, args.decode_n, Path(tmp), args.size, args.seed)
            cache = ImageCache(Path(tmp) / "cache")
            # smaller batches than above so that every worker has batches to decode from the start
            dec_kw = dict(kw, batch_size=dec_batch)
            dec: dict[str, Any] = {"source": source, "n_images": len(paths), "num_workers": args.workers,
                                   "batch_size": dec_kw["batch_size"], "precision": "bfloat16"}
            for label in ("cold_cache", "warm_cache"):
                sync(device)
                t0 = time.perf_counter()
                score_images(model, paths, image_size=args.size, num_workers=args.workers, cache=cache,
                             precision="bfloat16", **dec_kw)
                sync(device)
                seconds = time.perf_counter() - t0
                dec[f"{label}_images_per_s"] = round(len(paths) / seconds, 1)
            out["with_decoding"] = dec
    return out


def part_distinctiveness(args: argparse.Namespace, device: Any, clock: Clock) -> list[dict[str, Any]]:
    """distinctiveness(k=1) on random float32 latents in host memory; the largest case last."""
    import numpy as np
    import torch

    from memlens.neighbors import distinctiveness

    dev_name = "cuda" if device.type == "cuda" else "cpu"
    # float32 products: the certification bound assumes float32 rounding, never TF32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    distinctiveness(np.random.default_rng(0).standard_normal((64, 32), dtype=np.float32), device=dev_name)
    cases = sorted(((n, d) for n in args.dist_n for d in args.dist_dims), key=lambda c: c[0] * c[1])
    results: list[dict[str, Any]] = []
    timed: dict[tuple[int, int], float] = {}
    for n, d in cases:
        row: dict[str, Any] = {"n": n, "dim": d}
        nbytes = n * d * 4
        avail = mem_available_bytes()
        # smaller cases bound this one from above: quadratic in n at the same dimension, linear in the
        # dimension at the same n (fixed overheads make both pessimistic; the smaller bound is used)
        bounds = [t * (n / pn) ** 2 for (pn, pd), t in timed.items() if pd == d]
        bounds += [t * (d / pd) for (pn, pd), t in timed.items() if pn == n]
        predicted = min(bounds, default=None)
        if avail is not None and nbytes * 2.5 > avail:
            row["skipped"] = f"host memory: needs about {2.5 * nbytes / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"
        elif device.type == "cuda" and torch.cuda.mem_get_info(device)[0] < args.dist_budget_mb * 2**20 * 1.5:
            row["skipped"] = f"GPU memory: less than {1.5 * args.dist_budget_mb:.0f} MiB free"
        elif not args.smoke and clock.left() <= 0:
            row["skipped"] = f"time budget of {args.budget_s:g} s spent"
        elif not args.smoke and predicted is not None and predicted > clock.left():
            row["skipped"] = f"time budget: predicted {predicted:.0f} s, {clock.left():.0f} s left"
        elif not args.smoke and predicted is None and any("time budget" in r.get("skipped", "") for r in results):
            row["skipped"] = "time budget: a smaller case was already skipped"
        if "skipped" in row:
            results.append(row)
            continue
        # the data: standard-normal rows generated on the device in chunks, kept in host memory
        t0 = time.perf_counter()
        x = np.empty((n, d), dtype=np.float32)
        g = torch.Generator(device=device).manual_seed(args.seed + n + d)
        step = max(1, (256 << 20) // (d * 4))
        for a in range(0, n, step):
            b = min(n, a + step)
            x[a:b] = torch.randn(b - a, d, device=device, generator=g).cpu().numpy()
        row["data_s"] = round(time.perf_counter() - t0, 2)
        sync(device)
        t0 = time.perf_counter()
        dist = distinctiveness(x, k=1, device=dev_name, memory_budget_mb=args.dist_budget_mb)
        sync(device)
        seconds = time.perf_counter() - t0
        row["seconds"] = round(seconds, 3)
        row["finite"] = int(np.isfinite(dist).sum())
        timed[(n, d)] = seconds
        results.append(row)
        del x, dist
    return results


# --------------------------------------------------------------------------------------------------------
def part_explain(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Seconds of explain's IG work (overlays with the error check, aggregate-only maps, sanity check)."""
    import numpy as np
    import torch

    from memlens.explain.gradients import integrated_gradients
    from memlens.explain.sanity import randomization_check
    from memlens.features import FeatureSetExtractor
    from memlens.predict import MemorabilitySVR
    from memlens.predict.model import MemorabilityModel

    plan = EXPLAIN["smoke" if args.smoke else "full"]
    side = 64 if args.smoke else 240  # images at the predictor's input size (Lite1's 240 px)
    extractor = FeatureSetExtractor("lite01").to(device)
    g = torch.Generator().manual_seed(args.seed)
    fit = torch.rand(24, 3, side, side, generator=g)
    with torch.no_grad():
        cols = torch.cat([extractor(fit[a:a + 8].to(device)).cpu() for a in range(0, len(fit), 8)]).numpy()
    head = MemorabilitySVR().fit(cols, np.random.default_rng(args.seed).random(len(cols)))
    model = MemorabilityModel(extractor, head).to(device).eval()
    n = plan["shown"] + plan["aggregate_only"]
    x = torch.rand(n, 3, side, side, generator=g).to(device)
    out: dict[str, Any] = {"plan": plan, "image_side": side}
    sync(device)
    t0 = time.perf_counter()
    ibs = 8 if args.smoke else 32  # explain's internal batch on a CPU / a GPU
    shown = integrated_gradients(model, x[:plan["shown"]], n_steps=plan["steps"], error_check=True,
                                 internal_batch_size=ibs)
    sync(device)
    out["overlays_s"] = round(time.perf_counter() - t0, 2)
    t1 = time.perf_counter()
    integrated_gradients(model, x[plan["shown"]:], n_steps=plan["aggregate_steps"], error_check=False,
                         internal_batch_size=ibs)
    sync(device)
    out["aggregate_only_s"] = round(time.perf_counter() - t1, 2)
    t2 = time.perf_counter()
    randomization_check(model, x[:plan["sanity"]], module="head", maps=shown.maps[:plan["sanity"]],
                        n_steps=plan["aggregate_steps"], delta_tolerance=float("inf"), internal_batch_size=ibs)
    sync(device)
    out["sanity_s"] = round(time.perf_counter() - t2, 2)
    out["total_ig_s"] = round(time.perf_counter() - t0, 2)
    out["goal_met"] = bool(out["total_ig_s"] <= GOALS["explain_ig_s"]) if not args.smoke else None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu.py: no CUDA device available (torch.cuda.is_available() is False); run it on a GPU machine, "
              "or use --smoke to check the script on the CPU with tiny sizes", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.smoke else torch.device("cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    clock = Clock(args.budget_s)
    line: dict[str, Any] = {
        "benchmark": "gpu",
        "smoke": bool(args.smoke),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backbone": args.backbone,
        "image_size": args.size,
        "goals": GOALS,
    }
    parts = (("exposure", lambda: part_exposure(args, device)),
             ("scoring", lambda: part_scoring(args, device, clock)),
             ("distinctiveness", lambda: part_distinctiveness(args, device, clock)),
             ("explain", lambda: part_explain(args, device)))
    seconds: dict[str, float] = {}
    status = 0
    for name, fn in parts:
        if clock.left() <= 0:
            line[name] = {"skipped": f"time budget of {args.budget_s:g} s spent"}
            continue
        t0 = time.perf_counter()
        try:
            line[name] = fn()
        except Exception as exc:  # one failing part must not hide the others' numbers
            line[name] = {"error": f"{type(exc).__name__}: {exc}"}
            status = 1
        seconds[name] = round(time.perf_counter() - t0, 1)
        # each part's numbers as soon as they exist: a run cut short by a time limit still reports them
        print(json.dumps({"part": name, "seconds": seconds[name], "result": line[name]}), file=sys.stderr,
              flush=True)
    exp = line.get("exposure")
    if isinstance(exp, dict) and "error" in exp:
        status = 1
    if isinstance(exp, dict) and exp.get("speedup") is not None:
        exp["goal_met"] = bool(exp["speedup"] >= GOALS["exposure_speedup"])
    line["part_seconds"] = seconds
    line["total_seconds"] = round(clock.elapsed(), 1)
    print(json.dumps(line))
    return status


if __name__ == "__main__":
    sys.exit(main())
