"""How long ``memlens explain RUN --top 3 --bottom 3`` takes with the default predictor, and what each saving buys.

Usage::

    python benchmarks/explain_speed.py                  # a run of 300 lnsim-dev images, made in a temporary folder
    python benchmarks/explain_speed.py --run RUN        # an existing run with a predictor.pt
    python benchmarks/explain_speed.py --n 300 --repeat 1
    python benchmarks/explain_speed.py --run RUN --subset 300   # RUN's predictor on the first 300 of its images

Without ``--run`` it makes a run from the first ``--n`` lnsim-dev images (``per_image.csv`` + ``dataset.json``)
and fits the default predictor on it (``memlens fit-predictor RUN``: feature set ``lite01``, ``--model auto``).
Then, in this one process and in alternating order, ``explain_run(top=3, bottom=3)`` with:

* ``before``: the settings before issue 20 (every map error-checked, 16 images per aggregate quartile, every
  map and the randomisation check at the full 32 steps, 16 path points per pass, the model in the default
  memory format);
* ``after``: today's defaults (the error check on the six overlays only, which use the Gauss-Kronrod rule with
  the check built in, channels-last on the CPU, the maps that only enter the aggregates and the randomisation
  check at 16 steps, 8 path points per pass; the aggregate quartiles as given by ``--aggregate-max``, default 16);
* ``after-gausslegendre`` (with ``--configs``): ``after`` with captum's Gauss-Legendre rule and a second pass for
  the check, as before the Gauss-Kronrod rule.

Savings that are not settings (the convergence delta from the forward passes IG already made, symmetric padding
inside the convolutions, descriptors on threads) apply to both, so the ratio understates the gain since the
issue's 366 s. Every image is explained by the final model (``--model-for final``; the default ``oof`` would
refit fold models for a run whose predictor.pt stores no holdout model, which is not what is timed here).

It prints each configuration's wall time (the minimum over ``--repeat``), the number of maps, the ratio, and the
largest relative L1 difference between the two settings' overlay maps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def _make_run(data: Path, n: int, root: Path) -> Path:
    import pandas as pd

    from memlens.cli import main as cli

    run = root / "run"
    run.mkdir(parents=True)
    table = pd.read_csv(data / "scores.csv").head(n)
    table.rename(columns={"image": "image_id"})[["image_id", "score"]].to_csv(run / "per_image.csv", index=False)
    (run / "dataset.json").write_text(json.dumps({"source": str((data / "scores.csv").resolve()), "layout": "csv"}))
    t0 = time.perf_counter()
    if cli(["fit-predictor", str(run)]) != 0:
        raise SystemExit("fit-predictor failed")
    print(f"fit-predictor on {n} images: {time.perf_counter() - t0:.0f} s", flush=True)
    return run


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from memlens.explain import explain_run

    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=here.parent.parent / "shared" / "data" / "lnsim-dev")
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--aggregate-max", type=int, default=16)
    ap.add_argument("--model-for", choices=("final", "oof"), default="final")
    ap.add_argument("--configs", default="before,after",
                    help="the two settings compared: before, after-gausslegendre (today's with captum's rule and "
                         "its second pass for the check), after")
    ap.add_argument("--subset", type=int, default=0,
                    help="with --run: explain in a copy of RUN (predictor.pt, dataset.json) holding its first N "
                         "images (descriptors are computed for every image of the run)")
    args = ap.parse_args(argv)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    tmp = None
    run = args.run
    if run is not None and args.subset:
        import shutil

        import pandas as pd

        tmp = tempfile.TemporaryDirectory(prefix="memlens-explain-")
        sub = Path(tmp.name) / "run"
        sub.mkdir()
        for name in ("predictor.pt", "dataset.json", "split_halves.npz", "predictor_oof.csv"):
            if (run / name).is_file():
                shutil.copy(run / name, sub / name)
        pd.read_csv(run / "per_image.csv").head(args.subset).to_csv(sub / "per_image.csv", index=False)
        run = sub
    if run is None:
        if not (args.data / "scores.csv").is_file():
            print(f"no lnsim-dev data at {args.data}")
            return 2
        tmp = tempfile.TemporaryDirectory(prefix="memlens-explain-")
        run = _make_run(args.data, args.n, Path(tmp.name))
    all_configs = {
        "before": {"check_aggregates": True, "aggregate_max": 16, "channels_last": False, "aggregate_steps": 32,
                   "sanity_steps": 32, "internal_batch_size": 16, "rule": "gausslegendre"},
        "after-gausslegendre": {"check_aggregates": False, "aggregate_max": args.aggregate_max,
                                "rule": "gausslegendre"},
        "after": {"check_aggregates": False, "aggregate_max": args.aggregate_max},
    }
    unknown = set(args.configs.split(",")) - set(all_configs)
    if unknown or len(args.configs.split(",")) != 2:
        ap.error(f"--configs: two of {', '.join(all_configs)}")
    configs = {k: all_configs[k] for k in args.configs.split(",")}
    times: dict[str, list[float]] = {k: [] for k in configs}
    maps: dict[str, dict] = {}
    for r in range(args.repeat):
        for name in (list(configs) if r % 2 == 0 else list(configs)[::-1]):
            t0 = time.perf_counter()
            summary = explain_run(run, top=3, bottom=3, device="cpu", model_for=args.model_for, **configs[name])
            times[name].append(time.perf_counter() - t0)
            with np.load(run / "attributions" / "attributions.npz") as z:
                maps[name] = {i: z["maps"][k] for k, i in enumerate(z["image_ids"].tolist())}
            ig = summary["integrated_gradients"]
            print(f"{name}: {times[name][-1]:.1f} s, {ig['n_images']} maps ({ig.get('n_error_checked')} error-checked,"
                  f" max error {100 * (ig.get('max_map_error') or float('nan')):.1f} %), sanity "
                  f"{summary['timings_s'].get('sanity_check', float('nan')):.1f} s, IG {summary['timings_s'].get('integrated_gradients', float('nan')):.1f} s, "
                  f"descriptors {summary['timings_s'].get('descriptors', float('nan')):.1f} s", flush=True)
    shown = [e["image_id"] for g in ("top", "bottom") for e in summary["explained"][g]]
    first, second = configs
    # the relative L1 distance between the two settings' overlay maps (the rules differ: not float rounding)
    diff = max(float(np.abs(maps[first][i] - maps[second][i]).sum() / max(np.abs(maps[first][i]).sum(), 1e-30))
               for i in shown)
    b, a = min(times[first]), min(times[second])
    print(f"\nexplain --top 3 --bottom 3: {first} {b:.1f} s, {second} {a:.1f} s: {b / a:.2f}x "
          f"(goal: <= 60 s on 2 cores); largest relative L1 difference of the 6 overlay maps: {diff:.2e}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
