"""Single-exposure throughput on CUDA: eager batch-1 steps versus the CUDA-graph fast path, side by side.

Usage::

    python benchmarks/gpu_exposure.py                      # vgg16 at 224 px, 300 images, bf16 autocast
    python benchmarks/gpu_exposure.py --backbone efficientnet_lite0 --n 500
    python benchmarks/gpu_exposure.py --no-amp             # float32

Both runs train the same freshly initialised model (same seed) on the same random images already on the GPU
(so image decoding is not measured), batch size 1, Adam, BN frozen -- exactly ``fit_autoencoder(mode=
"exposure")``. Images/s excludes the one-off CUDA-graph warm-up and capture (reported as ``capture_s``).
The per-image losses of the two runs are compared too (``max_rel_loss_diff``).

Prints one JSON line. Without CUDA it prints a message to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

try:
    import memlens  # noqa: F401
except ImportError:  # a bare checkout (e.g. a lent GPU machine with its own torch): use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vgg16", help="registered backbone (default vgg16)")
    ap.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    ap.add_argument("--n", type=int, default=300, help="images exposed per run (default 300)")
    ap.add_argument("--no-amp", action="store_true", help="float32 instead of bf16 autocast")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    if not torch.cuda.is_available():
        print("gpu_exposure.py: no CUDA device available (torch.cuda.is_available() is False); this benchmark "
              "compares GPU execution paths and has nothing to measure on a CPU", file=sys.stderr)
        return 2

    from memlens.models import create_autoencoder
    from memlens.train import fit_autoencoder

    torch.backends.cudnn.benchmark = True
    g = torch.Generator(device="cuda").manual_seed(args.seed)
    images = torch.rand(args.n, 3, args.size, args.size, device="cuda", generator=g)
    amp = not args.no_amp
    # warm the CUDA context, cuDNN and the allocator once so that neither run pays for it
    fit_autoencoder(create_autoencoder(args.backbone, input_size=args.size, seed=args.seed), images[:8],
                    device="cuda", fast=False, amp=amp)

    results = {}
    for name, fast in (("eager", False), ("fast", True)):
        model = create_autoencoder(args.backbone, input_size=args.size, seed=args.seed)
        res = fit_autoencoder(model, images, device="cuda", fast=fast, amp=amp, seed=args.seed)
        if fast and not res.fast_path:
            print("gpu_exposure.py: the CUDA-graph capture failed (see the warning above)", file=sys.stderr)
            return 1
        results[name] = res
    eager, fast = results["eager"], results["fast"]
    a, b = eager.exposure_loss, fast.exposure_loss
    line = {
        "benchmark": "gpu_exposure",
        "backbone": args.backbone,
        "image_size": args.size,
        "n_images": args.n,
        "precision": "bf16-autocast" if amp else "float32",
        "eager_images_per_s": round(eager.images_per_s, 1),
        "fast_images_per_s": round(fast.images_per_s, 1),
        "speedup": round(fast.images_per_s / eager.images_per_s, 2),
        "capture_s": round(fast.setup_seconds, 2),
        "max_rel_loss_diff": float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12))),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
