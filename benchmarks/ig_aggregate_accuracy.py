"""How accurate explain's aggregate-only maps and sanity check are at fewer Integrated Gradients steps.

Usage::

    python benchmarks/ig_aggregate_accuracy.py RUN                 # 4 + 4 images, reference 64 steps
    python benchmarks/ig_aggregate_accuracy.py RUN --per 8 --ref-steps 128

RUN holds a ``predictor.pt`` (e.g. ``memlens fit-predictor``'s default) and its ``per_image.csv``. ``--per``
images are drawn (seed 1) from the run's top and from its bottom score quartile; their maps are computed with
16, 32 and ``--ref-steps`` steps through the run's predictor (the final model, channels-last). Printed, against
the reference maps: the L1 error of each normalised map (median, max), of the aggregate map of each group and
of their difference (the maps explain writes; :func:`memlens.explain.aggregate_maps`), and the sanity check's
Spearman correlations (trained map at 32 steps vs the randomised model's at 16 and 32 steps) on 2 + 2 images.
The last line is every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import pandas as pd
    import torch

    from memlens.data import load_image
    from memlens.explain.gradients import integrated_gradients
    from memlens.explain.maps import aggregate_maps, normalize_maps, quartile_groups
    from memlens.explain.sanity import randomization_check
    from memlens.explain.stage import load_predictor, load_run_data, predictor_input_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--per", type=int, default=4, help="images per quartile (default 4)")
    ap.add_argument("--ref-steps", type=int, default=64)
    args = ap.parse_args(argv)
    run, per = args.run, args.per
    model = load_predictor(run / "predictor.pt", torch.device("cpu")).to(memory_format=torch.channels_last)
    size = predictor_input_size(model, run)
    table = pd.read_csv(run / "per_image.csv")
    ids, s = table["image_id"].astype(str).tolist(), table["score"].to_numpy(float)
    tq, bq, hi, lo = quartile_groups(s)
    rng = np.random.default_rng(1)
    sel = list(rng.choice(np.flatnonzero(tq), per, replace=False)) + \
        list(rng.choice(np.flatnonzero(bq), per, replace=False))
    ds = load_run_data(run)
    paths = dict(zip(ds.table["image_id"].astype(str), ds.table["path"].astype(str), strict=True))
    x = torch.from_numpy(np.stack([load_image(paths[ids[k]], size) for k in sel]).transpose(0, 3, 1, 2)
                         .astype(np.float32) / 255).contiguous(memory_format=torch.channels_last)
    out: dict = {"n": len(sel), "ref_steps": args.ref_steps}
    maps = {}
    for steps in (16, 32, args.ref_steps):
        t0 = time.perf_counter()
        maps[steps] = integrated_gradients(model, x, n_steps=steps, error_check=False).maps
        out[f"time_{steps}"] = round(time.perf_counter() - t0, 1)
        print(f"{steps} steps: {out[f'time_{steps}']} s", flush=True)
    sc = s[sel]
    ref = aggregate_maps(maps[args.ref_steps], sc, thresholds=(hi, lo))
    nref = normalize_maps(maps[args.ref_steps])

    def err(a, b):
        return float(np.abs(a - b).sum() / np.abs(b).sum())

    for steps in (16, 32):
        a, n = aggregate_maps(maps[steps], sc, thresholds=(hi, lo)), normalize_maps(maps[steps])
        per_map = [err(n[i], nref[i]) for i in range(len(sel))]
        out[str(steps)] = {"agg_top_err": err(a.top, ref.top), "agg_bottom_err": err(a.bottom, ref.bottom),
                           "agg_diff_err": err(a.difference, ref.difference),
                           "per_map_err_median": float(np.median(per_map)), "per_map_err_max": float(np.max(per_map))}
        print(f"{steps} steps: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in out[str(steps)].items()), flush=True)
    rows = [0, per, 1, per + 1][: min(4, len(sel))]
    module = "head+tails" if getattr(model, "tails", None) is not None else "head"
    for steps in (16, 32):
        rc = randomization_check(model, x[rows], module=module, maps=maps[32][rows], n_steps=steps,
                                 delta_tolerance=float("inf"))
        out[f"sanity_{steps}"] = [round(float(v), 4) for v in rc.spearman]
        print(f"sanity check, randomised maps at {steps} steps: {out[f'sanity_{steps}']}", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
