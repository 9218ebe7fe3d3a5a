"""memlens's defaults on real data: lnsim-dev (1,974 outdoor scenes with human memorability scores).

Usage::

    python benchmarks/lnsim.py                       # both parts, ../shared/data/lnsim-dev, temporary folders
    python benchmarks/lnsim.py --part predictor      # the predictor only (about 15 minutes on 2 cores)
    python benchmarks/lnsim.py --part predictor --out RUN [--reuse]   # keep the run; --reuse: apply its predictor
    python benchmarks/lnsim.py --part pipeline --out RUN

Part ``predictor`` -- the predictor measured on images that no choice saw. lnsim-dev is split once (seed 0,
stratified by above/below-median score; :func:`memlens.predict.holdout_split`) into 1,474 *tuning* images and
500 *untouched* images, listed in ``benchmarks/lnsim_untouched_500.txt`` (the script checks that the split it
makes is that list). Every choice -- memlens's defaults and what ``fit-predictor`` chooses inside -- is made on
the tuning images: ``memlens fit-predictor`` runs with its default options on a run holding only them (it sets
its own 20 % holdout aside inside them and prints its estimate), and the saved predictor is then applied with
``memlens predict``'s code to the 500 untouched images. Beside it, on the same images and fitted on the same
1,474: ridge on EfficientNet-Lite0 multi-stage features (``lite0-crop``), and the paper's MLP on autoencoder latents (the
latent codes of ``--latents-run RUN`` -- a run of the pipeline part -- or, by default, of memlens's default
autoencoder with its ImageNet encoder before visual experience and exposure). Spearman with paired bootstrap
95 % CIs; the default's gain over each other model as a paired difference (both models' Spearman recomputed on
the same bootstrap resamples of the 500, so the CI accounts for their shared images); the gap between the run's own
estimate and its score on the untouched images. With ``--out RUN`` the predictions of the 500 are kept in
``RUN/untouched_predictions.csv``, so that a later question about this look needs no new look.

Part ``pipeline`` -- the stages of ``memlens run`` that produce numbers, with their default options: train
(visual experience on a held-out 25 % + single exposure), score, analyze and fit-predictor; prints the
correlations of reconstruction error and distinctiveness with memorability (95 % bootstrap CIs) and every
stage's wall time.

Goals (issue 19): on the untouched images Spearman >= 0.62 (bar), 0.65 (goal); the run's own estimate within
0.03 of it; fit-predictor under 30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

UNTOUCHED = Path(__file__).resolve().parent / "lnsim_untouched_500.txt"
N_UNTOUCHED = 500


def _stage(name: str, argv: list[str], times: dict[str, float]) -> None:
    from memlens.cli import main

    t0 = time.perf_counter()
    rc = main(argv)
    times[name] = time.perf_counter() - t0
    print(f"[{name}] {times[name]:.1f} s", flush=True)
    if rc != 0:
        raise SystemExit(f"stage {name} failed with exit code {rc}")


def untouched_split(table, seed: int = 0):
    """(tuning rows, untouched rows) of lnsim-dev: the split every predictor choice stays out of."""
    import numpy as np

    from memlens.predict import holdout_split, strata_labels

    y = table["score"].to_numpy(dtype=float)
    hs = holdout_split(strata_labels(y), N_UNTOUCHED / len(y), seed=seed)
    return hs["select"], hs["holdout"], np.asarray(table["image_id"].astype(str))


def _latents(paths: list, latents_run: Path | None, ids: list[str]):
    """Flattened latent codes: of a trained run (``latents.npy``), or of the default autoencoder at init."""
    import numpy as np
    import torch

    if latents_run is not None:
        order = {i: k for k, i in enumerate((latents_run / "latent_ids.txt").read_text().split())}
        mat = np.load(latents_run / "latents.npy", mmap_mode="r")
        return np.asarray(mat[[order[i] for i in ids]], dtype=np.float32), f"latents of {latents_run}"
    from memlens.data.images import load_image
    from memlens.models import create_autoencoder

    ae = create_autoencoder("efficientnet_lite0", init="imagenet").eval()
    out = []
    with torch.inference_mode():
        for a in range(0, len(paths), 32):
            x = torch.from_numpy(np.stack([load_image(p, 224) for p in paths[a:a + 32]])).permute(0, 3, 1, 2)
            out.append(ae.encode(x.float() / 255.0).flatten(1).numpy())
    return np.concatenate(out), "latents of the default autoencoder (ImageNet encoder, before training)"


def _predictor_part(data: Path, seed: int, latents_run: Path | None, keep: Path | None,
                    reuse: bool = False) -> None:
    import json
    import shutil

    import numpy as np
    import pandas as pd

    from memlens.cli import main as cli
    from memlens.data import load_dataset
    from memlens.features import FEATURE_SETS, extract_feature_set
    from memlens.inference import predict_images
    from memlens.predict import (
        MemorabilityRegressor,
        MemorabilitySVR,
        prediction_metrics,
        read_predictor,
        ridge_baseline,
    )
    from memlens.predict.selection import estimate, paired_gains

    ds = load_dataset(data)
    table = ds.table.reset_index(drop=True)
    y = table["score"].to_numpy(dtype=float)
    tune, test, ids = untouched_split(table)
    listed = [line.strip() for line in UNTOUCHED.read_text().splitlines() if line.strip()] if UNTOUCHED.is_file() \
        else None
    made = sorted(ids[test].tolist())
    if listed is None:
        UNTOUCHED.write_text("".join(f"{i}\n" for i in made))
        print(f"wrote the untouched split to {UNTOUCHED}")
    elif listed != made:
        raise SystemExit(f"the split differs from {UNTOUCHED}: the data or the split code changed")
    print(f"\n== predictor: {len(tune)} tuning images, {len(test)} untouched images ({UNTOUCHED.name}) ==",
          flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="memlens-lnsim-pred-")
    run = Path(tmp.name) / "run" if keep is None else keep
    run.mkdir(parents=True, exist_ok=True)
    tuning = table.iloc[tune][["image_id", "score"]].reset_index(drop=True)
    t_fit = None
    if reuse:  # a predictor fitted by an earlier run of this part: only if it was fitted on exactly these images
        try:
            had = pd.read_csv(run / "per_image.csv", dtype={"image_id": str})
        except OSError:
            had = None
        if had is None or not (run / "predictor.pt").is_file() or not had.equals(tuning):
            raise SystemExit(f"--reuse: {run} holds no predictor fitted on the {len(tune)} tuning images")
        print(f"reusing {run / 'predictor.pt'} (fitted on the tuning images by an earlier run; not refitted)")
    else:
        # a run holding only the tuning images: what fit-predictor reads (scores, where the images are, halves)
        tuning.to_csv(run / "per_image.csv", index=False)
        (run / "dataset.json").write_text(json.dumps({"source": str((data / "scores.csv").resolve()),
                                                      "layout": "csv"}))
        if (data / "split_halves.npz").is_file() and not (run / "split_halves.npz").is_file():
            shutil.copy(data / "split_halves.npz", run / "split_halves.npz")
        t0 = time.perf_counter()
        rc = cli(["fit-predictor", str(run), "--seed", str(seed)])
        t_fit = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"fit-predictor failed with exit code {rc}")
    info = read_predictor(run / "predictor.pt")["info"]
    own = info["estimate"]
    paths = table["path"].tolist()
    t0 = time.perf_counter()
    pred = predict_images([paths[i] for i in test], run, batch_size=32, device="cpu").table
    t_pred = time.perf_counter() - t0
    by_path = dict(zip(pred["image"].astype(str), pred["predicted_score"], strict=True))
    p_default = np.array([by_path[str(paths[i])] for i in test])

    rows = []
    preds: dict[str, np.ndarray] = {}

    def add(name: str, inputs: str, p: np.ndarray, reported: float | None = None) -> None:
        e = estimate(y[test], p, seed=seed)
        auc = prediction_metrics(y[test], p)["auc"]
        rows.append({"model": name, "inputs": inputs, "reported": reported, **e, "auc": auc})
        preds[name] = np.asarray(p, dtype=float)

    add(f"memlens default ({info['model']})", info["inputs"], p_default, own["spearman"])
    t0 = time.perf_counter()
    if info["model"] != "svr" and info["inputs"] in FEATURE_SETS:  # the frozen-feature SVR alone, for the gain
        ids_file = [line.split("\t")[0] for line in
                    (run / f"featureset_{info['inputs']}_ids.txt").read_text().splitlines() if line.strip()]
        pos = {i: k for k, i in enumerate(ids_file)}
        Xc = np.load(run / f"featureset_{info['inputs']}.npy")
        X_tune = Xc[[pos[i] for i in ids[tune]]]
        X_test = extract_feature_set([paths[i] for i in test], info["inputs"])
        svr = MemorabilitySVR(blocks=FEATURE_SETS[info["inputs"]].blocks()).fit(X_tune, y[tune])
        add("frozen-feature SVR alone", info["inputs"], svr.predict(X_test))
    F0 = extract_feature_set(paths, "lite0-crop")
    rg = ridge_baseline().fit(F0[tune], y[tune])
    add("ridge", "EfficientNet-Lite0 multi-stage features (lite0-crop, 2,168)", rg.predict(F0[test]))
    L, lat_label = _latents(paths, latents_run, ids.tolist())
    mlp = MemorabilityRegressor(random_state=seed).fit(L[tune], y[tune])
    add("paper's MLP", lat_label, mlp.predict(L[test]))
    t_base = time.perf_counter() - t0
    out = pd.DataFrame(rows)
    print(f"\nSpearman on the {len(test)} untouched images (paired bootstrap 95 % CI), all fitted on the {len(tune)}:")
    for _, r in out.iterrows():
        rep = f"; its own estimate {r['reported']:.3f}" if r["reported"] is not None and np.isfinite(r["reported"]) \
            else ""
        print(f"  {r['model']:<26} {r['spearman']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  AUC {r['auc']:.3f}"
              f"  ({r['inputs']}{rep})")
    # the gain of the default over each other model, on the same images: a paired bootstrap of the difference
    print(f"\nthe default minus each other model, on the same {len(test)} untouched images ({UNTOUCHED.name}; "
          f"Spearman difference, paired bootstrap 95 % CI: each resample re-ranks both models' predictions of the "
          f"same images):")
    for name, d in paired_gains(y[test], preds, str(out.iloc[0]["model"]), seed=seed).items():
        p = "p < 0.001" if d["p_boot"] < 0.001 else f"p {d['p_boot']:.3f}"
        print(f"  minus {name:<26} {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]  {p}")
    if keep is not None:  # the predictions, so that later questions about this look need no new look
        saved = pd.DataFrame({"image_id": ids[test], "score": y[test],
                              **{f"predicted {name}": p for name, p in preds.items()}})
        saved.to_csv(keep / "untouched_predictions.csv", index=False)
        print(f"predictions of the untouched images: {keep / 'untouched_predictions.csv'}")
    gap = own["spearman"] - out.iloc[0]["spearman"]
    print(f"fit-predictor's own estimate ({own['kind']}, n={own['n']}): {own['spearman']:.3f} "
          f"[{own['ci_low']:.3f}, {own['ci_high']:.3f}]; on the untouched images {out.iloc[0]['spearman']:.3f} "
          f"(gap {gap:+.3f}; goal within 0.03)")
    if ds.halves is not None:
        from memlens.stats import split_half_reliability

        rel = split_half_reliability(ds.halves.subset(ids[test].tolist()))
        print(f"noise ceiling of the untouched images: split-half Spearman {rel['spearman_mean']:.3f} "
              f"(Spearman-Brown {rel['spearman_brown']:.3f})")
    fit_time = "reused" if t_fit is None else f"{t_fit:.0f} s ({t_fit / 60:.1f} min; goal < 30)"
    print(f"wall time: fit-predictor {fit_time}, predict on {len(test)} images "
          f"{t_pred:.0f} s, baselines {t_base:.0f} s", flush=True)
    if keep is None:
        tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=here.parent.parent / "shared" / "data" / "lnsim-dev")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0, help="seed of fit-predictor and the pipeline")
    ap.add_argument("--latents-run", type=Path, default=None,
                    help="a run of the pipeline part whose latents the paper's MLP uses (default: the untrained "
                         "default autoencoder's)")
    ap.add_argument("--part", choices=["both", "predictor", "pipeline"], default="both")
    ap.add_argument("--reuse", action="store_true",
                    help="with --part predictor --out RUN: apply the predictor an earlier run left in RUN (fitted on "
                         "the tuning images) instead of fitting it again")
    args = ap.parse_args(argv)
    if args.reuse and (args.part != "predictor" or args.out is None):
        ap.error("--reuse needs --part predictor and --out RUN")
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
        _predictor_part(args.data, args.seed, args.latents_run,
                        None if args.part == "both" or args.out is None else args.out, reuse=args.reuse)
    if args.part == "predictor":
        return 0
    print("\n== pipeline: train, score, analyze, fit-predictor with default options ==", flush=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    data = str(args.data / "scores.csv")
    _stage("train", ["train", data, "--out", str(run)], times)
    _stage("score", ["score", "--run", str(run)], times)
    _stage("analyze", ["analyze", str(run)], times)
    _stage("fit-predictor", ["fit-predictor", str(run), "--seed", str(args.seed)], times)
    total = time.perf_counter() - t_all

    cv = pd.read_csv(run / "predictor_cv.csv")
    kind = "holdout" if (cv["estimate"] == "holdout").any() else "outer-cv"
    means = cv[(cv["fold"] == "mean") & (cv["estimate"] == kind)].set_index("model")
    print(f"\nfit-predictor (seed {args.seed}, {kind} estimate): "
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
