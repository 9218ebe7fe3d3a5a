"""memlens's defaults on real data: lnsim-dev (1,974 outdoor scenes with human memorability scores).

Usage::

    python benchmarks/lnsim.py                       # both parts, ../shared/data/lnsim-dev, temporary folders
    python benchmarks/lnsim.py --part predictor      # the predictor only (about 10 minutes on 2 cores)
    python benchmarks/lnsim.py --part pipeline --out RUN

Part ``predictor`` -- what ``memlens fit-predictor`` does with its defaults, through the same library
functions, without an autoencoder: the ``lite01`` feature set extracted from every image, then 5-fold
cross-validation of the default model (``svr``), the MLP and the ridge baseline on the same folds, for fold
seeds 0, 1 and 2 (``--seeds``), with the noise ceiling of the split halves. Timed: feature extraction and
the seed-0 cross-validation (the extra seeds are reported apart).

Part ``pipeline`` -- the stages of ``memlens run`` that produce numbers, with their default options: train
(visual experience on a held-out 25 % + single exposure), score, analyze and fit-predictor; prints the
correlations of reconstruction error and distinctiveness with memorability (95 % bootstrap CIs) and every
stage's wall time.

Goals (issue 6): predictor Spearman >= 0.60 with the default configuration, in under 20 minutes on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def _stage(name: str, argv: list[str], times: dict[str, float]) -> None:
    from memlens.cli import main

    t0 = time.perf_counter()
    rc = main(argv)
    times[name] = time.perf_counter() - t0
    print(f"[{name}] {times[name]:.1f} s", flush=True)
    if rc != 0:
        raise SystemExit(f"stage {name} failed with exit code {rc}")


def _predictor_part(data: Path, seeds: list[int]) -> None:
    import numpy as np

    from memlens.data import load_dataset
    from memlens.features import DEFAULT_FEATURE_SET, FEATURE_SETS, extract_feature_set
    from memlens.predict import (
        MemorabilityRegressor,
        MemorabilitySVR,
        cross_validate,
        make_splits,
        strata_labels,
        summarize_cv,
    )
    from memlens.stats import split_half_reliability

    ds = load_dataset(data)
    table = ds.table
    y = table["score"].to_numpy(dtype=float)
    print(f"\n== predictor: {len(y)} images, feature set {DEFAULT_FEATURE_SET} ==", flush=True)
    t0 = time.perf_counter()
    X = extract_feature_set(table["path"].tolist(), DEFAULT_FEATURE_SET)
    t_feat = time.perf_counter() - t0
    print(f"features {X.shape} in {t_feat:.0f} s", flush=True)
    rel = split_half_reliability(ds.halves) if ds.halves is not None else None
    rows = {}
    t_cv = {}
    for seed in seeds:
        t0 = time.perf_counter()
        splits = make_splits(strata_labels(y, None), split="kfold", n_splits=5, seed=seed)
        res = cross_validate(X, y, splits, regressor=MemorabilityRegressor(random_state=seed),
                             svr=MemorabilitySVR(blocks=FEATURE_SETS[DEFAULT_FEATURE_SET].blocks()))
        t_cv[seed] = time.perf_counter() - t0
        m = summarize_cv(res.table)
        m = m[m["fold"] == "mean"].set_index("model")
        rows[seed] = {k: float(m.loc[k, "spearman"]) for k in ("svr", "mlp", "ridge")}
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[seed].items())
              + f"  ({t_cv[seed]:.0f} s)", flush=True)
    print("\n5-fold CV Spearman (mean over folds)")
    print("seed  " + "".join(f"{m:>8}" for m in ("svr", "mlp", "ridge")))
    for seed, r in rows.items():
        print(f"{seed:<6}" + "".join(f"{r[m]:8.3f}" for m in ("svr", "mlp", "ridge")))
    print("mean  " + "".join(f"{np.mean([r[m] for r in rows.values()]):8.3f}" for m in ("svr", "mlp", "ridge")))
    if rel is not None:
        print(f"noise ceiling: human split-half Spearman {rel['spearman_mean']:.3f} "
              f"(Spearman-Brown {rel['spearman_brown']:.3f})")
    first = seeds[0]
    total = t_feat + t_cv[first]
    print(f"wall time: features {t_feat:.0f} s + CV (seed {first}, three models) {t_cv[first]:.0f} s = "
          f"{total:.0f} s ({total / 60:.1f} min; goal < 20 min)")
    print(f"default predictor (svr on {DEFAULT_FEATURE_SET}), seed {first}: {rows[first]['svr']:.3f}; "
          f"mean over seeds {np.mean([r['svr'] for r in rows.values()]):.3f} (goal >= 0.60)", flush=True)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=here.parent.parent / "shared" / "data" / "lnsim-dev")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary folder)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="fold seeds for the predictor CV (the first is the pipeline's)")
    ap.add_argument("--part", choices=["both", "predictor", "pipeline"], default="both")
    args = ap.parse_args(argv)
    if not (args.data / "scores.csv").is_file():
        print(f"no lnsim-dev data at {args.data} (see ../shared/data/lnsim-dev/README.md)", file=sys.stderr)
        return 2
    import pandas as pd

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="memlens-lnsim-")
        run = Path(tmp.name) / "run"
    else:
        run = args.out
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average before: {load}")
    if args.part in ("both", "predictor"):
        _predictor_part(args.data, args.seeds)
    if args.part == "predictor":
        return 0
    print("\n== pipeline: train, score, analyze, fit-predictor with default options ==", flush=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    data = str(args.data / "scores.csv")
    _stage("train", ["train", data, "--out", str(run)], times)
    _stage("score", ["score", "--run", str(run)], times)
    _stage("analyze", ["analyze", str(run)], times)
    _stage("fit-predictor", ["fit-predictor", str(run), "--seed", str(args.seeds[0])], times)
    total = time.perf_counter() - t_all

    cv = pd.read_csv(run / "predictor_cv.csv")
    means = cv[cv["fold"] == "mean"].set_index("model")
    print(f"\nfit-predictor (seed {args.seeds[0]}): "
          + ", ".join(f"{m} {v:.3f}" for m, v in means["spearman"].items()))
    ceil = means.get("human_consistency")
    if ceil is not None:
        hc = float(ceil.iloc[0])
        nc = float(means["spearman_brown" if "spearman_brown" in means else "noise_ceiling"].iloc[0])
        print(f"noise ceiling: human split-half Spearman {hc:.3f} (Spearman-Brown {nc:.3f})")

    corr = pd.read_csv(run / "correlations.csv")
    pooled = corr[(corr["scope"] == "pooled") & corr["control"].isna()]
    print("\ncorrelation with memorability (Spearman, 95 % bootstrap CI, all exposed images)")
    for _, r in pooled.iterrows():
        print(f"  {r['x']:<28} {r['r']:+.3f}  [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]  n={int(r['n'])}")

    print("\nwall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; pipeline {total:.0f} s ({total / 60:.1f} min)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
