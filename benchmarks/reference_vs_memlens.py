"""The reference approach versus memlens on the same images and model, timed side by side in one run.

Usage::

    python benchmarks/reference_vs_memlens.py                    # 500 lnsim-dev images, vgg16 at 224 px, CPU
    python benchmarks/reference_vs_memlens.py --n 100 --threads 1
    python benchmarks/reference_vs_memlens.py --backbone efficientnet_lite0 --precision float32
    python benchmarks/reference_vs_memlens.py --device cuda --n 2000
    python benchmarks/reference_vs_memlens.py --n 100 --precision float32 --unfolded   # folded vs unfolded BN

The reference approach, re-implemented plainly as the published scripts work:

1. one image at a time (batch 1, NCHW, float32, ``torch.no_grad``): decode, ``encode`` + ``decode``, the
   per-image MSE, and the latent code written to its own ``.npy`` file (``--reference-passes 2``: the
   reconstruction errors and the latents in two separate loops, the encoder running twice);
2. every ``.npy`` file read back and stacked into one (N, D) matrix;
3. scikit-learn ``NearestNeighbors(algorithm="ball_tree")`` on the flattened latents (1-NN, ``n_jobs=-1``).

memlens's path: ``memlens.scoring.score_images`` (batched, ``torch.inference_mode``, channels-last, a cold
decode cache, the latent rows streamed into one memory-mapped ``.npy`` matrix) then
``memlens.neighbors.distinctiveness(k=1)`` on that matrix; once per ``--precision`` (float32, bfloat16
autocast where the hardware runs it natively, and int8 on the CPU: an int8 copy of the model made by
``memlens.quantize.quantize_autoencoder`` from the 8 images ``memlens score`` would pick (spread over the
collection), once per run, inside the timed score stage).

The paths run interleaved, block by block (``--block`` images, default 50; each block one ``score_images``
call), in rotating order, so that on a shared machine every path sees the same load; ``--block 0`` runs
each path over all images in one go. Each stage's wall time and CPU (process) time are accumulated.

Both paths decode with the same pixel pipeline (``memlens.data`` read/resize/crop), so their per-image
numbers can be compared exactly: the float32 path must agree with the reference within ``--rtol`` (MSE and
1-NN distance), the bf16 path within ``--rtol-bf16``, the int8 path within ``--rtol-int8``; the exit status
is 1 when a check fails.

The model: ``--checkpoint`` (a memlens ``autoencoder.pt``), else ``create_autoencoder(backbone, init,
seed)``; a model built from scratch gets its batch-norm statistics set from ``--calibrate`` of the images
(one train-mode pass, not timed) so that its latents spread like a trained model's (an untrained VGG's
latents are nearly identical for all images, which makes nearest-neighbour distances ill-conditioned).
Timings exclude model construction, calibration and a warm-up forward pass of each path.

Prints a table (wall seconds per stage, CPU seconds, ratios) and, last, one JSON line with every number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

UNFOLDED = "float32-unfolded"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lnsim-dev"


# --------------------------------------------------------------------------------------------------------
# machine facts
# --------------------------------------------------------------------------------------------------------
def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not available everywhere
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or platform.machine()


class Timer:
    """Accumulates wall and CPU (process) seconds per stage name."""

    def __init__(self, sync=None):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.sync = sync or (lambda: None)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.sync()
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0


# --------------------------------------------------------------------------------------------------------
# the two paths
# --------------------------------------------------------------------------------------------------------
def image_paths(data: Path, n: int) -> list[str]:
    table = data / "scores.csv"
    if table.is_file():
        import csv

        with open(table, newline="", encoding="utf-8") as fh:
            rows = [r["image"] for r in csv.DictReader(fh)]
        paths = [str(data / r) for r in rows]
    else:
        paths = sorted(str(p) for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(paths) < n:
        raise SystemExit(f"reference_vs_memlens.py: {data} has {len(paths)} images, fewer than --n {n}")
    return paths[:n]


class ReferencePath:
    """Batch-1 loop(s), one .npy per latent, reload, ball tree; run block by block, then ``finish()``."""

    def __init__(self, model, size: int, device, workdir: Path, passes: int):
        import torch

        self.model, self.size, self.device, self.passes = model, size, device, passes
        self.timer = Timer(torch.cuda.synchronize if device.type == "cuda" else None)
        self.latent_dir = workdir / "reference_latents"
        self.latent_dir.mkdir(parents=True, exist_ok=True)
        self.mse: list[float] = []
        self.files: list[Path] = []

    def _decode(self, path: str):
        import torch

        from memlens.data.images import prepare_image, read_image

        arr = prepare_image(read_image(path), self.size)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float().div(255.0).unsqueeze(0).to(self.device)

    def _save(self, z) -> None:
        f = self.latent_dir / f"{len(self.files):06d}.npy"
        np.save(f, z.cpu().numpy())
        self.files.append(f)

    def run_block(self, paths: list[str]) -> None:
        import torch

        timer, model = self.timer, self.model
        with torch.no_grad():
            for path in paths:
                with timer("decode"):
                    x = self._decode(path)
                with timer("forward"):
                    z = model.encode(x)
                    x_hat = model.decode(z)
                with timer("metric"):
                    self.mse.append(float(((x - x_hat) ** 2).mean()))
                if self.passes == 1:
                    with timer("latent files write"):
                        self._save(z)
            if self.passes == 2:  # the latent script: decode and encode every image again
                for path in paths:
                    with timer("decode"):
                        x = self._decode(path)
                    with timer("forward"):
                        z = model.encode(x)
                    with timer("latent files write"):
                        self._save(z)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Reload the latent files and run the ball tree: (MSE, 1-NN distance)."""
        from sklearn.neighbors import NearestNeighbors

        with self.timer("latent files reload"):
            latents = np.stack([np.load(f).ravel() for f in self.files])
        with self.timer("nearest neighbours"):
            nn = NearestNeighbors(n_neighbors=1, algorithm="ball_tree", n_jobs=-1).fit(latents)
            dist, _ = nn.kneighbors()  # X=None: each row's nearest other row
        return np.asarray(self.mse), dist[:, 0].astype(np.float64)


SCORE = "score (decode + forward + metric + latent matrix)"


class MemlensPath:
    """``score_images`` (cold decode cache; latent rows streamed into one .npy matrix) + ``distinctiveness``.

    Run block by block (each block one ``score_images`` call whose latent rows are written into the one
    memory-mapped matrix at their offset), then ``finish()``.
    """

    def __init__(self, model, n: int, size: int, device, workdir: Path, batch_size: int, num_workers: int,
                 precision: str, calibration: list[str] | None = None):
        import torch

        from memlens.data import ImageCache

        self.model, self.n, self.size, self.device = model, n, size, device
        # "float32-unfolded": float32 with the batch norms left as they are (memlens before folding them)
        self.fold = precision != UNFOLDED
        precision = "float32" if precision == UNFOLDED else precision
        self.batch_size, self.num_workers, self.precision = batch_size, num_workers, precision
        self.timer = Timer(torch.cuda.synchronize if device.type == "cuda" else None)
        out = workdir / f"memlens_{precision}{'' if self.fold else '_unfolded'}"
        shutil.rmtree(out, ignore_errors=True)  # cold cache: every image is decoded (and cached) in the run
        out.mkdir(parents=True)
        self.cache = ImageCache(out / "cache")
        self.latents_path = out / "latents.npy"
        self.latents = None
        self.rows = 0
        self.mse: list[np.ndarray] = []
        self.info: dict = {}
        self.calibration = calibration

    def run_block(self, paths: list[str]) -> None:
        import memlens.scoring.batch as scoring_batch

        folding = scoring_batch.FOLD_BATCHNORM
        scoring_batch.FOLD_BATCHNORM = self.fold
        try:
            self._run_block(paths)
        finally:
            scoring_batch.FOLD_BATCHNORM = folding

    def _run_block(self, paths: list[str]) -> None:
        from memlens.quantize import Int8Autoencoder, quantize_autoencoder
        from memlens.scoring import score_images

        with self.timer(SCORE):
            if self.precision == "int8" and not isinstance(self.model, Int8Autoencoder):
                # one int8 copy for the whole run (as one `memlens score` call makes), its cost timed here
                from memlens.data import image_batch

                self.model = quantize_autoencoder(self.model, image_batch(self.calibration, self.size))
            res = score_images(self.model, paths, metrics=("mse",), features=False, batch_size=self.batch_size,
                               device=self.device, cache=self.cache, image_size=self.size,
                               num_workers=self.num_workers, precision=self.precision)
            if self.latents is None:
                self.latents = np.lib.format.open_memmap(self.latents_path, mode="w+", dtype=np.float32,
                                                         shape=(self.n, res.latents.shape[1]))
            self.latents[self.rows:self.rows + len(paths)] = res.latents
            self.rows += len(paths)
        self.mse.append(res.table["recon_mse"].to_numpy(dtype=np.float64))
        self.info = res.info

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        from memlens.neighbors import distinctiveness

        with self.timer(SCORE):
            self.latents.flush()
        with self.timer("nearest neighbours"):
            d = distinctiveness(np.load(self.latents_path, mmap_mode="r"), k=1,
                                device="cuda" if self.device.type == "cuda" else "cpu")
        return np.concatenate(self.mse), d


def int8_available(model, size: int) -> str | None:
    """None when an int8 copy of ``model`` can be made here, else the reason (one line)."""
    import torch

    from memlens.errors import ConfigError
    from memlens.quantize import check_int8_settings, quantize_autoencoder

    try:
        check_int8_settings()  # refuses CPUs whose int8 kernels run without VNNI
        quantize_autoencoder(model, torch.rand(1, 3, size, size))
    except ConfigError as e:
        return str(e)
    return None


def decode_side_measurement(paths: list[str], size: int, workdir: Path) -> dict[str, float]:
    """Decoding alone: the reference's plain decode, memlens's cold cache (decode + store) and warm cache."""
    from memlens.data import ImageCache, load_image
    from memlens.data.images import prepare_image, read_image

    cache = ImageCache(workdir / "decode_cache")
    t0 = time.perf_counter()
    for p in paths:
        prepare_image(read_image(p), size)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in paths:
        load_image(p, size, cache=cache)
    cold = time.perf_counter() - t0
    warm_cache = ImageCache(workdir / "decode_cache")  # a new object: nothing memoised in this process
    t0 = time.perf_counter()
    for p in paths:
        load_image(p, size, cache=warm_cache)
    warm = time.perf_counter() - t0
    return {"plain_s": plain, "cache_cold_s": cold, "cache_warm_s": warm}


# --------------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------------
def build_model(args, paths: list[str], size: int, device):
    import torch

    from memlens.data import load_image
    from memlens.models import create_autoencoder, get_spec, load_autoencoder

    if args.checkpoint:
        return load_autoencoder(args.checkpoint).to(device).eval(), f"checkpoint {args.checkpoint}"
    init = args.init or get_spec(args.backbone).default_init
    model = create_autoencoder(args.backbone, init, input_size=size, seed=args.seed).to(device)
    how = f"{args.backbone} init={init} seed={args.seed}"
    n_cal = min(args.calibrate, len(paths)) if init == "scratch" else 0
    if n_cal:
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        model.train()
        with torch.no_grad():
            for a in range(0, n_cal, 8):
                x = torch.stack([torch.from_numpy(load_image(p, size).transpose(2, 0, 1).copy())
                                 for p in paths[a:a + 8]]).float().div(255.0).to(device)
                model(x)
        for bn in bns:
            bn.momentum = 0.1
        how += f", batch-norm statistics from {n_cal} images"
    return model.eval(), how


def warm_up(model, size: int, device, batch_size: int, precision: str) -> None:
    """One forward at batch 1 (NCHW) and one at the memlens batch (channels-last, autocast): oneDNN/cuDNN setup."""
    import torch

    with torch.inference_mode():
        model(torch.rand(1, 3, size, size, device=device))
        x = torch.rand(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        model.to(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            model(x)
        model.to(memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------
def agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    rel = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)
    return {"max_rel_diff": float(rel.max()), "median_rel_diff": float(np.median(rel)),
            "spearman": float(spearmanr(ref, got)[0]) if len(ref) > 2 else float("nan")}


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b > 0 else "   n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="a folder with scores.csv (column 'image') or with images (default: lnsim-dev)")
    ap.add_argument("--n", type=int, default=500, help="images (default 500)")
    ap.add_argument("--backbone", default="vgg16", help="registered backbone (default vgg16)")
    ap.add_argument("--init", default=None, help="scratch or imagenet (default: the backbone's default)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a memlens autoencoder.pt instead")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    ap.add_argument("--image-size", type=int, default=None, help="pixels (default: the backbone's, 224 for vgg16)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores)")
    ap.add_argument("--batch-size", type=int, default=16, help="memlens batch size (default 16)")
    ap.add_argument("--num-workers", type=int, default=0, help="memlens DataLoader workers (default 0)")
    ap.add_argument("--precision", choices=("auto", "float32", "bfloat16", "int8", "both", "all"), default="auto",
                    help="memlens path(s): auto = float32, plus bfloat16 where the hardware has native bf16 "
                         "(CUDA, or a CPU with AVX512-BF16/AMX), plus int8 on the CPU where the backbone can be "
                         "quantized; both = float32 and bfloat16; all = the three")
    ap.add_argument("--unfolded", action="store_true",
                    help="also run memlens float32 without folding the batch norms (as before), in the same blocks")
    ap.add_argument("--reference-passes", type=int, choices=(1, 2), default=1,
                    help="1: one loop computes MSE and saves latents (default, the cheaper reference); "
                         "2: separate loops (scoring script, then latent script)")
    ap.add_argument("--block", type=int, default=50,
                    help="interleave the paths in blocks of this many images, in rotating order, so that both "
                         "see the same machine load (default 50; 0: each path over all images in one go)")
    ap.add_argument("--calibrate", type=int, default=32,
                    help="images used to set a scratch model's batch-norm statistics (default 32; 0: none)")
    ap.add_argument("--rtol", type=float, default=1e-4, help="float32 agreement tolerance (default 1e-4)")
    ap.add_argument("--rtol-bf16", type=float, default=2e-2, help="bf16 agreement tolerance (default 2e-2)")
    ap.add_argument("--rtol-int8", type=float, default=5e-2, help="int8 agreement tolerance (default 5e-2)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n < 3:
        ap.error("--n must be at least 3")

    import torch

    from memlens.models import get_spec
    from memlens.quantize import calibration_indices
    from memlens.scoring import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    size = args.image_size or get_spec(args.backbone).input_size
    if not args.data.exists():
        print(f"reference_vs_memlens.py: data folder {args.data} not found (--data)", file=sys.stderr)
        return 2
    paths = image_paths(args.data, args.n)
    if args.precision == "auto":
        from memlens.scoring.precision import cpu_has_bf16

        native_bf16 = device.type == "cuda" or cpu_has_bf16()  # oneDNN's view: honours ONEDNN_MAX_CPU_ISA
        precisions = ["float32", "bfloat16"] if native_bf16 else ["float32"]
        if device.type == "cpu":
            precisions.append("int8")
    elif args.precision == "both":
        precisions = ["float32", "bfloat16"]
    elif args.precision == "all":
        precisions = ["float32", "bfloat16", "int8"]
    else:
        precisions = [args.precision]
    if args.unfolded:
        precisions.insert(precisions.index("float32") + 1 if "float32" in precisions else 0, UNFOLDED)

    facts = {
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "python": platform.python_version(), "load_average_start": load_average(),
    }
    print(f"machine: {facts['cpu']}, nproc {facts['nproc']}, torch threads {facts['torch_threads']}, "
          f"device {device}{' (' + facts['gpu'] + ')' if facts['gpu'] else ''}, torch {torch.__version__}")
    print(f"load average at start: {facts['load_average_start']}")

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="memlens-bench-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        model, how = build_model(args, paths, size, device)
        print(f"data: {len(paths)} images from {args.data}, {size} px; model: {how}")
        if "int8" in precisions:
            why = "int8 runs on the CPU only" if device.type != "cpu" else int8_available(model, size)
            if why is not None:
                if args.precision != "auto":
                    print(f"reference_vs_memlens.py: {why}", file=sys.stderr)
                    return 2
                print(f"int8 left out: {why}")
                precisions.remove("int8")
        print(f"reference: batch 1, {args.reference_passes} pass(es); memlens: batch {args.batch_size}, "
              f"workers {args.num_workers}, precision {', '.join(precisions)}; interleaved in blocks of "
              f"{args.block or len(paths)} images")
        for p in dict.fromkeys("float32" if p == UNFOLDED else p for p in precisions):
            warm_up(model, size, device, args.batch_size, p)

        ref = ReferencePath(model, size, device, workdir, args.reference_passes)
        mls = {p: MemlensPath(model, len(paths), size, device, workdir, args.batch_size, args.num_workers, p,
                              calibration=[paths[i] for i in calibration_indices(len(paths))])
               for p in precisions}
        runners = {"reference": ref, **mls}
        names = list(runners)
        block = args.block if args.block > 0 else len(paths)
        blocks = [paths[a:a + block] for a in range(0, len(paths), block)]
        loads = []
        t_start = time.perf_counter()
        for b, chunk in enumerate(blocks):
            order = names[b % len(names):] + names[:b % len(names)]  # rotate: no path always runs first
            for name in order:
                runners[name].run_block(chunk)
            loads.append(load_average())
            done = sum(len(c) for c in blocks[:b + 1])
            print(f"  {done}/{len(paths)} images, {time.perf_counter() - t_start:.0f} s, load average "
                  f"{loads[-1]}", flush=True)
        ref_mse, ref_nn = ref.finish()
        ref_t = ref.timer
        runs = {}
        for p in precisions:
            mse, d = mls[p].finish()
            runs[p] = (mse, d, mls[p].timer, mls[p].info)
        decode = decode_side_measurement(paths, size, workdir)
    finally:
        if tmp is not None:
            tmp.cleanup()
    facts["load_average_end"] = load_average()
    one_min = [la[0] for la in loads if la]
    if one_min:
        facts["load_average_1min_during"] = {"min": min(one_min), "mean": round(sum(one_min) / len(one_min), 2),
                                             "max": max(one_min)}

    # -- the table ------------------------------------------------------------------------------------
    ref_score = sum(ref_t.wall[k] for k in ("decode", "forward", "metric", "latent files write"))
    ref_score_cpu = sum(ref_t.cpu[k] for k in ("decode", "forward", "metric", "latent files write"))
    ref_rows = {
        "scoring + latents": (ref_score, ref_score_cpu),
        "latent files reload": (ref_t.wall["latent files reload"], ref_t.cpu["latent files reload"]),
        "nearest neighbours": (ref_t.wall["nearest neighbours"], ref_t.cpu["nearest neighbours"]),
    }
    ref_total = sum(w for w, _ in ref_rows.values())
    ref_total_cpu = sum(c for _, c in ref_rows.values())
    score_key = "score (decode + forward + metric + latent matrix)"
    header = f"{'stage':<34}{'reference s':>12}"
    for p in precisions:
        header += f"{'memlens ' + p + ' s':>22}{'ratio':>9}"
    print()
    print(header)
    lines = []
    for name, (w, _) in ref_rows.items():
        line = f"{name:<34}{w:12.2f}"
        for p in precisions:
            t = runs[p][2]
            mw = {"scoring + latents": t.wall[score_key], "latent files reload": 0.0,
                  "nearest neighbours": t.wall["nearest neighbours"]}[name]
            line += f"{mw:22.2f}{fmt_ratio(w, mw) if mw > 0 else '  (none)':>9}"
        lines.append(line)
    for sub in ("decode", "forward", "metric", "latent files write"):
        lines.append(f"  {'ref. ' + sub:<32}{ref_t.wall[sub]:12.2f}")
    for line in lines:
        print(line)
    total_line = f"{'end to end (wall)':<34}{ref_total:12.2f}"
    cpu_line = f"{'end to end (CPU time)':<34}{ref_total_cpu:12.2f}"
    results: dict[str, dict] = {}
    ok = True
    for p in precisions:
        mse, nn_d, t, info = runs[p]
        tot, tot_cpu = sum(t.wall.values()), sum(t.cpu.values())
        total_line += f"{tot:22.2f}{fmt_ratio(ref_total, tot):>9}"
        cpu_line += f"{tot_cpu:22.2f}{fmt_ratio(ref_total_cpu, tot_cpu):>9}"
        a_mse, a_nn = agreement(ref_mse, mse), agreement(ref_nn, nn_d)
        tol = {"float32": args.rtol, UNFOLDED: args.rtol, "bfloat16": args.rtol_bf16, "int8": args.rtol_int8}[p]
        passed = a_mse["max_rel_diff"] <= tol and a_nn["max_rel_diff"] <= tol
        ok &= passed
        results[p] = {
            "score_s": round(t.wall[score_key], 3), "neighbours_s": round(t.wall["nearest neighbours"], 3),
            "total_s": round(tot, 3), "total_cpu_s": round(tot_cpu, 3),
            "ratio_scoring": round(ref_score / t.wall[score_key], 3),
            "ratio_scoring_plus_reload": round((ref_score + ref_rows["latent files reload"][0]) / t.wall[score_key], 3),
            "ratio_neighbours": round(ref_rows["nearest neighbours"][0] / t.wall["nearest neighbours"], 3),
            "ratio_end_to_end": round(ref_total / tot, 3),
            "ratio_end_to_end_cpu": round(ref_total_cpu / tot_cpu, 3),
            "images_per_s": round(len(paths) / t.wall[score_key], 3),
            "agreement_mse": a_mse, "agreement_nn_distance": a_nn, "tolerance": tol, "agrees": bool(passed),
        }
    print(total_line)
    print(cpu_line)
    print(f"decoding alone ({len(paths)} images): plain {decode['plain_s']:.2f} s, memlens cache cold "
          f"{decode['cache_cold_s']:.2f} s, warm {decode['cache_warm_s']:.2f} s "
          f"({decode['plain_s'] / max(decode['cache_warm_s'], 1e-9):.1f}x faster warm)")
    for p in precisions:
        r = results[p]
        print(f"agreement {p}: MSE max rel. diff {r['agreement_mse']['max_rel_diff']:.2e} (Spearman "
              f"{r['agreement_mse']['spearman']:.6f}), 1-NN distance max rel. diff "
              f"{r['agreement_nn_distance']['max_rel_diff']:.2e} (Spearman {r['agreement_nn_distance']['spearman']:.6f})"
              f" -> {'OK' if r['agrees'] else 'FAILED'} (tolerance {r['tolerance']:g})")
    measured = ", ".join(f"{p} {results[p]['ratio_end_to_end']:.2f}x" for p in precisions)
    print(f"goal: end to end >= 3x; measured {measured}")
    print(f"load average at end: {facts['load_average_end']}")
    line = {
        "benchmark": "reference_vs_memlens", **facts, "n_images": len(paths), "backbone": args.backbone,
        "image_size": size, "model": how, "batch_size": args.batch_size, "num_workers": args.num_workers,
        "reference_passes": args.reference_passes, "block": args.block,
        "reference": {k: round(v, 3) for k, v in ref_t.wall.items()} | {"total_s": round(ref_total, 3),
                                                                       "total_cpu_s": round(ref_total_cpu, 3)},
        "memlens": results, "decode": {k: round(v, 3) for k, v in decode.items()},
    }
    print(json.dumps(line))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
