"""What scoring's shared EfficientNet pass and folded batch norms buy, side by side in one run.

Usage::

    python benchmarks/score_passes.py                       # 96 lnsim-dev images, efficientnet_lite0 at 224 px
    python benchmarks/score_passes.py --backbone vgg16 --n 64 --rounds 3

The per-batch function of ``memlens score`` (:class:`memlens.scoring.BatchScorer`) with its default metrics
(``mse, l1, dssim, ms-dssim, perceptual``), the weights before exposure (``recon_*_before``) and the pretrained
features -- every pass ``memlens score`` makes on a batch -- run two ways on the same decoded images, in
alternating order, ``--rounds`` times:

* ``today``: one EfficientNet pass over the images serves the perceptual metric after and before exposure and
  the pretrained features; the autoencoders run with their batch norms folded into the convolutions;
* ``before``: the perceptual metric runs the extractor on the image and its reconstruction for each
  comparison, the pretrained features are a pass of their own, the batch norms are separate layers
  (memlens before issue 20).

Decoding is left out (the images are decoded once, first). Prints each way's seconds per image (the median
over rounds), the ratio, and the largest relative difference of every column and of the features (float
rounding). The "before" weights are a second copy of the model with its weights perturbed by 1 %, so that the
two reconstructions differ as they do after an exposure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lnsim-dev"


def main(argv: list[str] | None = None) -> int:
    import copy

    import pandas as pd
    import torch

    import memlens
    from memlens.data import load_image
    from memlens.metrics import get_metric
    from memlens.scoring import BatchScorer, pretrained_features
    from memlens.scoring.plan import DEFAULT_METRICS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    table = args.data / "scores.csv"
    if not table.is_file():
        print(f"no lnsim-dev data at {args.data}")
        return 2
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    torch.manual_seed(0)
    model = memlens.create_autoencoder(args.backbone).eval()
    size = int(model.config.get("input_size") or 224)
    before = copy.deepcopy(model)
    with torch.no_grad():
        for p in before.parameters():
            p.mul_(1 + 0.01 * torch.randn_like(p))
    names = pd.read_csv(table)["image"].astype(str).head(args.n).tolist()
    x = torch.from_numpy(np.stack([load_image(args.data / "images" / n if (args.data / "images" / n).is_file()
                                              else args.data / n, size) for n in names])
                         .transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    metrics = [get_metric(m) for m in DEFAULT_METRICS]
    dev = torch.device("cpu")
    feats = pretrained_features(dev)
    scorers = {"today": BatchScorer(model, metrics, device=dev, before_model=before, feature_model=feats),
               "before": BatchScorer(model, metrics, device=dev, before_model=before, feature_model=feats,
                                     fold_bn=False)}
    scorers["before"]._perceptual = False  # the metric's own two passes per comparison, features on their own
    times: dict[str, list[float]] = {k: [] for k in scorers}
    out: dict[str, list] = {}
    with torch.inference_mode():
        for s in scorers.values():  # warm-up
            s(x[:2])
        for r in range(args.rounds):
            for name in (list(scorers) if r % 2 == 0 else list(scorers)[::-1]):
                t0 = time.perf_counter()
                out[name] = [scorers[name](x[a:a + args.batch_size]) for a in range(0, len(x), args.batch_size)]
                times[name].append((time.perf_counter() - t0) / len(x))
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s/image" for k, v in times.items()), flush=True)
    worst = {}
    for col in out["today"][0].columns:
        a = np.concatenate([b.columns[col] for b in out["today"]])
        b = np.concatenate([b.columns[col] for b in out["before"]])
        worst[col] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))
    fa = np.concatenate([b.features for b in out["today"]])
    fb = np.concatenate([b.features for b in out["before"]])
    worst["features"] = float(np.max(np.abs(fa - fb)) / np.max(np.abs(fb)))
    t, b = statistics.median(times["today"]), statistics.median(times["before"])
    print(f"\n{args.backbone} at {size} px, {len(x)} images, batch {args.batch_size}, metrics "
          f"{', '.join(DEFAULT_METRICS)} after and before exposure + pretrained features:")
    print(f"  before (separate passes, batch norms as layers): {b:.3f} s/image")
    print(f"  today (shared pass, folded batch norms):         {t:.3f} s/image  -> {b / t:.2f}x")
    print("  largest relative difference: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
