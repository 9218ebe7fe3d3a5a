"""A Parquet table of image bytes in S3-compatible object storage, scored on Ray with one command.

Usage::

    pip install "moto[server]"                   # a local S3 server (127.0.0.1 only), not a memlens dependency
    python benchmarks/scale_s3.py                # a million tiny JPEGs, about an hour on 2 cores
    python benchmarks/scale_s3.py --n 20000 --files 2

What it does, as a user with a bucket would see it:

1. starts ``moto_server`` on 127.0.0.1 (an S3 API in one process; nothing else is reachable from here) and
   creates a bucket;
2. writes ``--n`` tiny random JPEGs (32 px) as encoded bytes into ``--files`` Parquet files (row groups of 2,048
   rows) and uploads them to ``s3://BUCKET/images/``;
3. runs the one command, with the S3 endpoint and credentials in the environment as for any S3 service::

       memlens score s3://BUCKET/images/ --layout parquet --run RUN --engine ray --workers 2 --no-merge
                     --index ivf --metrics mse --feature-size 32 --batch-size 256

   on the demo's small autoencoder at 32 px (tiny images and model on purpose: the machine has 2 cores; per-image
   cost of real models is in docs/scale.md);
4. prints wall time, images/s, the output parts, the saved indexes with their recall@1, and the peak resident
   memory of the driver process, as one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _wait_port(port: int, timeout: float = 30.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"moto_server did not open 127.0.0.1:{port} within {timeout:.0f} s")


def _peak_rss(pid: int, stop: threading.Event, out: dict) -> None:
    """Sample the resident memory of one process (the driver) every 0.5 s."""
    peak = 0.0
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            break
        stop.wait(0.5)
    out["driver_peak_rss_mb"] = round(peak, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="images (default 1,000,000)")
    ap.add_argument("--files", type=int, default=10, help="Parquet files the images are spread over")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/memlens-scale-s3"))
    ap.add_argument("--port", type=int, default=5055)
    ap.add_argument("--bucket", default="memlens-bench")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if shutil.which("moto_server") is None:
        print('moto_server not found: pip install "moto[server]"', file=sys.stderr)
        return 2
    import pyarrow.fs as pafs
    from scale import tiny_jpeg_parquet

    from memlens import models

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{args.port}",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(args.port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    out: dict = {"n": args.n, "files": args.files, "workers": args.workers, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                 time.gmtime()), "cpus": os.cpu_count()}
    try:
        _wait_port(args.port)
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
        fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{args.port}", allow_bucket_creation=True)
        fs.create_dir(args.bucket)
        t0 = time.perf_counter()
        per = [args.n // args.files + (1 if k < args.n % args.files else 0) for k in range(args.files)]
        for k, n in enumerate(per):
            folder = tiny_jpeg_parquet(work / f"local{k}", n, seed=k)
            (local,) = sorted(Path(folder).glob("*.parquet"))
            pafs.copy_files(str(local), f"{args.bucket}/images/part-{k:03d}.parquet", destination_filesystem=fs)
            shutil.rmtree(folder)
        out["upload_s"] = round(time.perf_counter() - t0, 1)
        out["bytes_in_bucket"] = sum(i.size for i in fs.get_file_info(pafs.FileSelector(f"{args.bucket}/images")))
        print(f"{args.n:,} images in s3://{args.bucket}/images/ ({out['bytes_in_bucket'] / 1e6:.0f} MB, "
              f"{out['upload_s']:.0f} s to make and upload)", flush=True)

        run = work / "run"
        run.mkdir()
        models.save_autoencoder(run / "autoencoder.pt", models.create_autoencoder(
            "small", input_size=32, width=4, latent_channels=4, seed=0))
        cmd = ["memlens", "score", f"s3://{args.bucket}/images/", "--layout", "parquet", "--run", str(run),
               "--engine", "ray", "--workers", str(args.workers), "--no-merge", "--index", "ivf",
               "--metrics", "mse", "--feature-size", "32", "--batch-size", "256"]
        out["command"] = " ".join(cmd)
        print("$ " + out["command"], flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stop = threading.Event()
        sampler = threading.Thread(target=_peak_rss, args=(proc.pid, stop, out), daemon=True)
        sampler.start()
        log = []
        for line in proc.stdout:
            log.append(line)
            if not line.startswith(("(", "[", "20")):  # memlens's own lines, not Ray's
                print("  " + line.rstrip(), flush=True)
        rc = proc.wait()
        stop.set()
        sampler.join()
        out["rc"] = rc
        out["wall_s"] = round(time.perf_counter() - t0, 1)
        (work / "score.log").write_text("".join(log))
        if rc != 0:
            print(f"memlens score exited {rc}; log in {work / 'score.log'}", file=sys.stderr)
            return 1
        rate = [m.group(1) for line in log if (m := re.search(r"scored \d+ images on \w+ \(([\d.]+) images/s", line))]
        out["images_per_s_scoring"] = float(rate[-1]) if rate else None
        out["parts"] = len(list((run / "per_image").glob("part-*.parquet")))
        index = json.loads((run / "index.json").read_text())
        out["index"] = {k: {f: v.get(f) for f in ("kind", "encoding", "n", "dim", "recall", "recall_sample",
                                                   "query_seconds_per_image", "build_seconds", "saved_to")}
                        for k, v in index.items()}
        out["images_per_s_end_to_end"] = round(args.n / out["wall_s"], 1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
