"""The blend of the frozen-feature SVR and fine-tuned tails: weights and seed counts compared on the same fits.

Usage::

    python benchmarks/finetune_blend.py RUN [--folds 5] [--seeds 3] [--save DIR]

RUN is a run of tuning images only, with the default feature set and Lite0's trunk activations cached, e.g. the
run that ``benchmarks/lnsim.py --part predictor --out RUN`` leaves (1,474 lnsim-dev tuning images). Reuse such a
run: running lnsim.py again just to make one would also score the 500 untouched images, another look at them.

For each fold of a k-fold split (seed 0, stratified by category x above/below-median score, as fit-predictor's
folds) of RUN's scored images, it fits the feature set's default SVR and
``FineTunedLiteRegressor(n_seeds=SEEDS)`` on the training images (the feature set and trunk activations cached
in RUN, read by fit-predictor's loader, which extracts them again only where the cache is missing or stale),
predicts the test images, and prints the
Spearman of ``(1 - w) * SVR + w * tails`` per fold for several weights ``w``, with one seed (seed 0's tail:
exactly fit-predictor's one-seed tail) and with all of them. Every number comes from RUN's images only: run it
on tuning images, never on images kept for the final test. About 6 minutes per fold on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

WEIGHTS = (0.0, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--features", default="lite01")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--save", type=Path, default=None, help="keep each fold's predictions here (.npz)")
    args = ap.parse_args(argv)

    from scipy.stats import spearmanr

    from memlens.features import FEATURE_SETS
    from memlens.predict import MemorabilitySVR
    from memlens.predict.evaluation import make_splits, strata_labels
    from memlens.predict.finetune import TRUNK_STAGE, FineTunedLiteRegressor
    from memlens.predict.inputs import load_run_inputs

    run = args.run
    # fit-predictor's own loader: the cached feature set and Lite0 trunk activations, rows aligned by image id
    data = load_run_inputs(run, args.features, need_recipe=False, trunk={"efficientnet_lite0": TRUNK_STAGE})
    X, y, acts = data.X, np.asarray(data.y, dtype=float), data.trunk["efficientnet_lite0"]
    splits = make_splits(strata_labels(y, data.categories), n_splits=args.folds, seed=0)
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
    per_fold: list[dict[tuple[float, int], float]] = []
    for j, sp in enumerate(splits):
        tr, te = np.asarray(sp["train"]), np.asarray(sp["test"])
        t0 = time.perf_counter()
        svr = MemorabilitySVR(blocks=FEATURE_SETS[args.features].blocks()).fit(X[tr], y[tr])
        ps = svr.predict(X[te])
        reg = FineTunedLiteRegressor(n_seeds=args.seeds, random_state=0).fit(acts[tr], y[tr])
        tails, per = reg.tails_, []
        for t in tails:  # each seed's tail alone
            reg.tails_ = [t]
            per.append(reg.predict(acts[te]))
        reg.tails_ = tails
        pt = np.asarray(per)
        if args.save is not None:
            np.savez(args.save / f"fold{j}.npz", test=te, y=y[te], svr=ps, tails=pt)
        got = {(w, k): float(spearmanr((1 - w) * ps + w * pt[:k].mean(0), y[te])[0])
               for w in WEIGHTS for k in sorted({1, args.seeds})}
        per_fold.append(got)
        print(json.dumps({"fold": j + 1, "seconds": round(time.perf_counter() - t0),
                          **{f"w{w:g}_seeds{k}": round(v, 4) for (w, k), v in got.items()}}), flush=True)
    print(f"\nSpearman of (1 - w) * SVR + w * tails, {args.folds} folds of the {len(y)} images of {run}.")
    print("These are selection figures: a weight chosen on them is chosen on these images, so its figure here is "
          "optimistic;\nits honest figure comes from images no choice saw (benchmarks/lnsim.py --part predictor: "
          "the 500 untouched images).")
    print(f"{'w':>5} {'seeds':>5} " + " ".join(f"{'fold ' + str(j + 1):>7}" for j in range(len(per_fold)))
          + f" {'mean':>7}  ahead of the SVR alone")
    for k in sorted({1, args.seeds}):
        for w in WEIGHTS:
            v = np.array([f[(w, k)] for f in per_fold])
            d = v - np.array([f[(0.0, k)] for f in per_fold])
            print(f"{w:>5g} {k:>5} " + " ".join(f"{x:>7.3f}" for x in v) + f" {v.mean():>7.3f}  "
                  + ("" if w == 0 else f"{d.mean():+.4f} in {int((d > 0).sum())} of {len(d)} folds"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
