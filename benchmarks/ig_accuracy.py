"""How accurate are a run's Integrated Gradients maps, and which flag tells? (docs/explain.md, "Accuracy of a map")

Usage::

    python benchmarks/ig_accuracy.py memlens-demo/run                    # 48 images, reference 1,024 steps
    python benchmarks/ig_accuracy.py runs/lnsim --n 4 --reference 256    # 224-px models are slow on a CPU

For ``--n`` images of the run (a seeded sample), the maps at each of ``--steps`` are compared with a map of
``--reference`` steps: the "true" error is the L1 distance relative to the reference map's mass. Printed per
step count: the true error (median, max); memlens's estimate ``map_error`` (from a second pass at half the
steps: a second pass for Gauss-Legendre, the embedded Gauss rule for Gauss-Kronrod) as a ratio to the true
error; for a tolerance T (``--tolerance``, memlens's default 0.10): how many maps
are really above T, and for each flag (``map_error > T``; the completeness delta's ``relative_delta > 0.05``,
memlens's old flag) how many of those it catches and how many it flags wrongly; and the Spearman correlation of
each criterion with the true error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    import memlens  # noqa: F401
except ImportError:  # a bare checkout: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import torch
from scipy.stats import spearmanr

from memlens.data import load_image
from memlens.explain import integrated_gradients
from memlens.explain.stage import load_predictor as _load_predictor
from memlens.explain.stage import load_run_data as _load_run_dataset
from memlens.explain.stage import predictor_input_size as _input_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run directory with predictor.pt (memlens run / fit-predictor)")
    ap.add_argument("--n", type=int, default=48, help="images (a seeded sample of the run's)")
    ap.add_argument("--reference", type=int, default=1024, help="steps of the reference maps")
    ap.add_argument("--steps", default="8,16,32,64,128", help="step counts to assess, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="gausslegendre,gausskronrod",
                    help="integration rules to assess, comma-separated (gausskronrod: the map from "
                         "2 (steps // 2) + 1 points, checked against its embedded steps // 2 Gauss rule)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=0.1, help="what counts as an inaccurate map (true error)")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the flags' warnings are what this script counts
    torch.set_num_threads(args.threads)
    model = _load_predictor(args.run / "predictor.pt", torch.device("cpu"))
    size = _input_size(model, args.run)
    ds = _load_run_dataset(args.run)
    pick = np.random.default_rng(args.seed).choice(len(ds.paths), min(args.n, len(ds.paths)), replace=False)
    x = torch.stack([torch.from_numpy(np.array(load_image(ds.paths[i], size)).transpose(2, 0, 1)) for i in pick])
    x = x.float() / 255.0
    ref = integrated_gradients(model, x, n_steps=args.reference, internal_batch_size=64, error_check=False)
    ref_a = ref.attributions.reshape(len(x), -1).astype(np.float64)
    print(f"{args.run}: {len(x)} images at {size} px, reference {args.reference} steps")
    t = args.tolerance
    print(f"inaccurate = true error > {100 * t:g} %; a flag's 'caught/wrong' = inaccurate maps it flags / accurate "
          "maps it flags")
    print("rule           points  steps  true error median (max)  map_error/true  inaccurate  map_error flag  "
          "delta flag  rho(map_error)  rho(rel. delta)")
    for method, steps in ((m, int(s)) for m in args.methods.split(",") for s in args.steps.split(",")):
        res = integrated_gradients(model, x, n_steps=steps, internal_batch_size=64, error_tolerance=t,
                                   method=method)
        a = res.attributions.reshape(len(x), -1).astype(np.float64)
        true = np.abs(a - ref_a).sum(1) / np.abs(ref_a).sum(1)
        bad = true > t
        new, old = res.map_error > t, res.relative_delta > 0.05
        ratio = res.map_error / true
        rho_e = spearmanr(true, res.map_error)[0] if len(x) > 2 else float("nan")
        rho_d = spearmanr(true, res.relative_delta)[0] if len(x) > 2 else float("nan")
        print(f"{method:<14} {res.settings['points_per_checked_map']:6d}  {steps:5d}  "
              f"{100 * np.median(true):6.1f} % ({100 * true.max():5.1f} %)        "
              f"{ratio.min():.2f}-{ratio.max():.2f}  {int(bad.sum()):10d}  "
              f"{int((new & bad).sum()):8d}/{int((new & ~bad).sum()):<5d}  {int((old & bad).sum()):6d}/"
              f"{int((old & ~bad).sum()):<4d}  {rho_e:14.2f}  {rho_d:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
