"""Run directories for the report tests: a fabricated one in the stages' real file formats, and a real one.

:func:`make_fake_run` writes every file a report reads, in exactly the layout the stages write (checked
against ``memlens run`` on the demo set): ``per_image.csv`` as ``memlens score`` writes it,
``correlations.csv/.json`` written by the real :func:`memlens.stats.analyze_run`, ``predictor_cv.csv`` with
fit-predictor's columns and ``fold="mean"`` rows (:func:`memlens.predict.summarize_cv`), ``attributions/``
with explain's file names, ``sanity.json`` and ``explain.json``, ``descriptors.csv`` with the real
descriptors of the images (:func:`memlens.descriptors.image_descriptors`) and ``descriptor_correlations.csv``
with a ``target`` column (score | predicted_score). The numbers are random but consistent: correlations are
those of the columns, the split halves average to the scores, and so on. One image is named
``<b>x</b>.png`` and one category ``sports & <games>`` to exercise HTML escaping.

:func:`real_run` runs the actual pipeline (``memlens run``) on a tiny generated demo set, once per process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

WEIRD_IMAGE = "<b>x</b>.png"
WEIRD_CATEGORY = "sports & <games>"
CATEGORIES = ("animal", "food", WEIRD_CATEGORY)
N_BOOT = 200


@dataclass
class FakeRun:
    run: Path
    data: Path
    per_image: pd.DataFrame


def _png(path: Path, rgb: tuple[int, int, int], size: int = 24, rng: np.random.Generator | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size, size, 3), dtype=np.uint8) + np.array(rgb, dtype=np.uint8)
    if rng is not None:
        arr = np.clip(arr.astype(int) + rng.integers(-30, 30, arr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def make_fake_run(base: Path, n: int = 48, seed: int = 0, *, simulated: bool = False) -> FakeRun:
    """Write a data root and a run directory under ``base``; return their paths and the per-image table.

    ``simulated=True`` makes the data root look like the generated demo set (``demo_truth.csv``,
    ``demo_config.json``, ``README.txt``), as ``memlens demo`` leaves it.
    """
    from memlens.descriptors import DESCRIPTOR_COLUMNS, image_descriptors
    from memlens.explain.stage import safe_name as _safe_name
    from memlens.predict import summarize_cv
    from memlens.stats import analyze_run, correlate

    rng = np.random.default_rng(seed)
    data, run = base / "data", base / "run"
    data.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)

    cats = [CATEGORIES[i % len(CATEGORIES)] for i in range(n)]
    ids = [f"{'sports' if c == WEIRD_CATEGORY else c}/img_{i:03d}.jpg" for i, c in enumerate(cats)]
    ids[0] = WEIRD_IMAGE
    latent = rng.normal(size=n)
    score = 1 / (1 + np.exp(-(0.4 + 0.8 * latent)))
    score[0] = 0.99  # the weird name is the most memorable image: it shows in the galleries and overlays
    recon_mse = 0.02 + 0.01 * (0.6 * latent + 0.8 * rng.normal(size=n)) ** 2 + 0.003 * rng.random(n)
    recon_dssim = 0.1 + 0.05 * rng.random(n) + 0.5 * recon_mse

    # images on disk (the weird name included)
    images = {}
    for image_id, c in zip(ids, cats, strict=True):
        colour = {"animal": (200, 120, 40), "food": (40, 160, 90)}.get(c, (60, 90, 200))
        path = data / image_id
        if path.suffix == ".jpg":
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = np.clip(np.array(colour) + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(path, quality=90)
        else:
            _png(path, colour, 32, rng)
        with Image.open(path) as im:
            images[image_id] = np.asarray(im.convert("RGB"))
    if simulated:
        (data / "demo_truth.csv").write_text("image_id,p_true\n")
        _json(data / "demo_config.json", {"scores": "SIMULATED by virtual observers, not human"})
        (data / "README.txt").write_text("memlens demo set: SIMULATED memorability scores\n")

    # memlens score: per_image.csv (leading columns, recon_*, recon_*_before, recon_exposure, distinctiveness*,
    # then the source table's pass-through columns)
    df = pd.DataFrame({
        "image_id": ids,
        "score": np.round(score, 6),
        "category": cats,
        "subcategory": [f"sub{i % 2}" for i in range(n)],
        "recon_mse": recon_mse,
        "recon_dssim": recon_dssim,
        "recon_mse_before": recon_mse * 1.5 + 0.005 * rng.random(n),
        "recon_dssim_before": recon_dssim * 1.2 + 0.01 * rng.random(n),
        "recon_exposure": recon_mse * 1.2,
        "distinctiveness": 1.0 + 0.5 * latent + rng.normal(scale=0.7, size=n),
        "distinctiveness_features": 2.0 + rng.normal(size=n),
        "path": [str(data / i) for i in ids],
        "H": rng.integers(5, 20, n),
        "FA": rng.integers(0, 3, n),
    })
    df.to_csv(run / "per_image.csv", index=False)
    np.save(run / "latents.npy", rng.normal(size=(n, 8)).astype(np.float32))
    (run / "latent_ids.txt").write_text("".join(f"{i}\n" for i in ids))

    # memlens train: dataset.json, config.json, manifest.json, training_curve.csv, exposure.csv
    _json(run / "dataset.json", {
        "source": str(data), "root": str(data), "layout": "memcat", "options": {}, "n_images": n, "image_size": 32,
        "notes": ["score = memorability_w_fa_correction (false-alarm corrected)",
                  "split-half scores from split_halves.npz (5 splits)"],
        "exposed": {"n_images": n, "file": "exposure.csv"},
        "experience": {"source": "data-root experience/ folder", "path": str(data / "experience"), "n_images": 20,
                       "spec": {"source": str(data / "experience"), "layout": "folder"}},
    })
    config = {"data": str(data), "out": str(run), "backbone": "small", "init": "scratch", "weights": None,
              "download": False, "mode": "exposure", "experience": None, "experience_fraction": 0.25,
              "pretrain_epochs": 4, "pretrain_lr": None, "freeze_encoder": None, "loss": "mse", "epochs": None,
              "lr": None, "batch_size": 8, "image_size": 32, "seed": 3, "device": "cpu", "resolved_device": "cpu",
              "layout": "auto", "num_workers": 0, "threads": 1,
              "score": {"data": str(data), "metrics": ["mse", "dssim"], "layer": None, "pool": "none",
                        "latent_dtype": "float32", "latent_shape": [32, 4, 4], "latent_dim": 512, "image_size": 32,
                        "feature_size": 224, "features": "efficientnet_lite0 head, average-pooled",
                        "distinct_k": 1, "distinct_metric": "euclidean", "distinct_reference": "all",
                        "batch_size": 8, "before": True, "exposure": True}}
    _json(run / "config.json", config)
    exp_settings = {"mode": "exposure", "loss": "mse", "lr": 1e-5, "epochs": 1, "batch_size": 1, "seed": 3}
    _json(run / "manifest.json", {
        "memlens_run": "train",
        "versions": {"memlens": "0.1.0.dev0", "torch": "2.13.0+cpu", "numpy": np.__version__, "python": "3.11.7",
                     "platform": "Linux", "pandas": pd.__version__},
        "device": {"requested": "cpu", "used": "cpu", "name": "cpu", "torch_threads": 1},
        "seeds": {"seed": 3, "model_init": 3, "derivation": "sha256(seed/purpose)"},
        "input": {"source": str(data), "layout": "memcat", "n_images": n,
                  "table_sha256": "0123456789abcdef", "source_sha256": None},
        "model": {"backbone": "small", "init": "scratch", "init_report": {"init": "scratch"},
                  "config": {"input_size": 32, "seed": 3, "normalize": "imagenet"},
                  "spec": {"name": "small", "input_size": 32, "latent_shape": [32, 4, 4]}, "parameters": 117059},
        "training": {"mode": "exposure",
                     "experience": {"source": "data-root experience/ folder", "n_images": 20, "mode": "pretrain",
                                    "epochs": 4, "settings": {"lr": 1e-3, "batch_size": 8}},
                     "exposure": {"mode": "exposure", "n_images": n, "epochs": 1, "settings": exp_settings,
                                  "order": "seeded random permutation (seed 3) per pass",
                                  "order_file": "exposure.csv"}},
        "timings": {"create_model_s": 0.01, "experience_s": 12.5, "exposure_s": 3.25, "total_s": 16.0},
        "files": {"autoencoder.pt": "abc", "autoencoder_before.pt": "def"},
    })
    order = rng.permutation(n)
    exp_loss = recon_mse[order] * 1.3
    curve = [{"phase": "experience", "epoch": e, "step": 3 * e, "loss": v, "val_loss": w, "lr": 1e-3}
             for e, v, w in zip(range(1, 5), [0.09, 0.06, 0.05, 0.045], [0.1, 0.07, 0.06, 0.055], strict=True)]
    curve += [{"phase": "exposure", "epoch": 1, "step": k + 1, "loss": v, "val_loss": None, "lr": 1e-5}
              for k, v in enumerate(exp_loss)]
    pd.DataFrame(curve, columns=["phase", "epoch", "step", "loss", "val_loss", "lr"]).to_csv(
        run / "training_curve.csv", index=False, float_format="%.8g")
    pd.DataFrame({"image_id": [ids[i] for i in order], "order": np.arange(n), "loss": exp_loss}).to_csv(
        run / "exposure.csv", index=False, float_format="%.8g")
    (run / "experience_order.csv").write_text("epoch,position,image_id\n" + "".join(
        f"{e},{k},experience/e{k}.jpg\n" for e in range(1, 5) for k in range(20)))

    n_splits = 5
    half1 = np.clip(score[None, :] + rng.normal(scale=0.08, size=(n_splits, n)), 0, 1)
    half2 = np.clip(2 * score[None, :] - half1, 0, 1)
    np.savez(run / "split_halves.npz", image=np.array(ids), half1=half1, half2=half2)

    # memlens analyze: the real writer
    analyze_run(run, n_boot=N_BOOT, seed=0)

    # memlens fit-predictor: predictor_cv.csv (folds + mean rows), predictor_oof.csv
    n_folds = 5
    fold_of = rng.permutation(np.arange(n) % n_folds)
    pred_mlp = np.clip(score + rng.normal(scale=0.08, size=n), 0, 1)
    pred_ridge = np.clip(score + rng.normal(scale=0.15, size=n), 0, 1)
    from scipy.stats import pearsonr, spearmanr

    rows = []
    for fold in range(n_folds):
        te = fold_of == fold
        for model, pred in (("mlp", pred_mlp), ("ridge", pred_ridge)):
            yt, yp = score[te], pred[te]
            rows.append({"fold": fold, "model": model, "n_train": int((~te).sum()), "n_val": 0,
                         "n_test": int(te.sum()), "spearman": float(spearmanr(yt, yp)[0]),
                         "pearson": float(pearsonr(yt, yp)[0]), "mse": float(np.mean((yt - yp) ** 2)),
                         "auc": 0.5 + 0.3 * rng.random(), "human_consistency": 0.6 + 0.05 * rng.random(),
                         "spearman_brown": 0.75 + 0.05 * rng.random(),
                         **({"epochs": 12.0} if model == "mlp" else {}), "seconds": 0.1,
                         **({"alpha": 10.0} if model == "ridge" else {})})
    table = summarize_cv(pd.DataFrame(rows))
    table.loc[table["fold"] == "mean", "human_consistency"] = 0.62
    table.loc[table["fold"] == "mean", "spearman_brown"] = 0.765
    table.insert(2, "inputs", "features")
    table.insert(3, "split", "kfold")
    table.to_csv(run / "predictor_cv.csv", index=False)
    pd.DataFrame({"image_id": ids, "score": score, "predicted_mlp": pred_mlp, "predicted_ridge": pred_ridge}).to_csv(
        run / "predictor_oof.csv", index=False)

    # memlens explain: attributions/, descriptors.csv, descriptor_correlations.csv
    att = run / "attributions"
    by_score = list(np.argsort(-score, kind="stable"))
    groups = {"image": [ids[by_score[5]]], "top": [ids[i] for i in by_score[:2]],
              "bottom": [ids[i] for i in by_score[::-1][:2]]}
    explained, files = {}, {}
    for g, members in groups.items():
        explained[g] = []
        for rank, image_id in enumerate(members, start=1):
            label = g if g == "image" else f"{g}{rank:02d}"
            fname = f"overlay_{label}_{_safe_name(image_id)}.png"
            _png(att / fname, (250, 40 * rank, 30), 40, rng)
            files[image_id] = fname
            k = ids.index(image_id)
            explained[g].append({"image_id": image_id, "file": fname, "score": float(score[k]),
                                 "predicted_score": float(pred_mlp[k]), "relative_delta": 0.01 * rank,
                                 "flagged": rank == 2})
    for name, colour in (("quartiles", (120, 80, 20)), ("most_memorable", (220, 80, 20)),
                         ("least_memorable", (20, 80, 220)), ("difference", (200, 200, 200))):
        _png(att / f"aggregate_{name}.png", colour, 40)
    maps = rng.random((6, 1, 32, 32)).astype(np.float32)
    np.savez_compressed(att / "attributions.npz", image_ids=np.array(list(files)), maps=maps, signed_maps=maps,
                        aggregate_top=maps[0, 0], aggregate_bottom=maps[1, 0], aggregate_difference=maps[0, 0] - maps[1, 0])
    sanity_ids = [groups["top"][0], groups["bottom"][0]]
    sanity = {"test": "model randomisation (Adebayo et al. 2018)",
              "statistic": "Spearman rank correlation over pixels between |IG| maps of the trained and the "
                           "randomised model, per image",
              "randomized_module": "head", "seed": 0, "n_images": 2, "mean_spearman": 0.12, "median_spearman": 0.12,
              "min_spearman": 0.1, "max_spearman": 0.14, "per_image_spearman": [0.1, 0.14],
              "interpretation": "low correlation = the maps depend on the learned weights (as they should); "
                                "correlation near 1 = the maps do not depend on what the model learned",
              "ig": {"baseline": "black", "n_steps": 32}, "image_ids": sanity_ids, "passed": True, "threshold": 0.5}
    _json(att / "sanity.json", sanity)
    _json(att / "explain.json", {
        "run": str(run), "device": "cpu", "input_size": 32, "n_images": n,
        "integrated_gradients": {"n_images": len(files), "baseline": "black", "n_steps": 32, "smoothgrad": 0,
                                 "seed": 0, "delta_tolerance": 0.05, "n_flagged": 2, "max_relative_delta": 0.06,
                                 "median_relative_delta": 0.02, "method": "gausslegendre"},
        "explained": explained, "flagged_ids": [e["image_id"] for v in explained.values() for e in v if e["flagged"]],
        "aggregate": {"n_top": 12, "n_bottom": 12, "upper_threshold": float(np.quantile(score, 0.75)),
                      "lower_threshold": float(np.quantile(score, 0.25)), "quantile": 0.25,
                      "top_center_share": 0.31, "bottom_center_share": 0.27, "top_quartile_ids": [],
                      "bottom_quartile_ids": [], "max_per_group": 16},
        "sanity": {k: sanity[k] for k in ("mean_spearman", "median_spearman", "passed", "threshold",
                                          "randomized_module", "n_images")},
        "predicted_score_source": "predictor_oof.csv (predicted_mlp, out-of-fold)",
        "descriptor_correlations": {"n_boot": N_BOOT, "seed": 0, "file": "descriptor_correlations.csv"},
        "timings_s": {"total": 1.0},
    })
    desc_rows = []
    for image_id in ids:
        m = maps[list(files).index(image_id), 0] if image_id in files else None
        desc_rows.append(image_descriptors(images[image_id], m))
    desc = pd.DataFrame(desc_rows, columns=DESCRIPTOR_COLUMNS)
    desc.insert(0, "image_id", ids)
    desc.insert(1, "score", score)
    desc.insert(2, "predicted_score", pred_mlp)
    desc.to_csv(run / "descriptors.csv", index=False)
    drows = []
    for target in ("score", "predicted_score"):
        for d in DESCRIPTOR_COLUMNS:
            r = correlate(desc[d].to_numpy(float), desc[target].to_numpy(float), n_boot=N_BOOT, seed=0).to_dict()
            drows.append({"descriptor": d, "target": target, **{k: r[k] for k in (
                "n", "r", "ci_low", "ci_high", "p_value", "method", "ci_method", "confidence", "n_boot", "seed")}})
    pd.DataFrame(drows).to_csv(run / "descriptor_correlations.csv", index=False)

    # memlens run: pipeline.json
    stage_args = {"check": [str(data)], "train": [str(data), "--out", str(run), "--seed", "3"],
                  "score": [str(data), "--run", str(run)], "analyze": [str(run), "--n-boot", str(N_BOOT)],
                  "predictor": [str(run), "--seed", "0"], "explain": [str(run), "--seed", "0"]}
    _json(run / "pipeline.json", {"data": str(data), "stages": {
        k: {"status": "done", "args": v, "seconds": 1.5} for k, v in stage_args.items()}})
    return FakeRun(run=run, data=data, per_image=df)


# ------------------------------------------------------------------------------------------ a real run


@dataclass
class RealRun:
    data: Path
    run: Path
    seconds: float
    output: str


#: tiny settings of every stage (option names of `memlens run`): the whole pipeline in well under a minute
REAL_RUN_ARGS = ("--backbone", "small", "--image-size", "32", "--pretrain-epochs", "2", "--metrics", "mse,dssim",
                 "--feature-size", "32", "--n-boot", "50", "--cv", "3", "--max-epochs", "20", "--features", "latents", "--model", "svr",
                 "--top", "2", "--bottom", "2", "--steps", "8", "--aggregate-max", "4", "--sanity-max", "2",
                 "--seed", "0", "--device", "cpu", "--batch-size", "8")
_REAL: dict[str, RealRun] = {}


def real_run(tmp_path_factory) -> RealRun:
    """The real pipeline (``memlens run``) on a 40-image demo set, run once per test process and shared."""
    if "run" in _REAL:
        return _REAL["run"]
    import contextlib
    import io

    from memlens.cli import main
    from memlens.data import make_demo_set

    base = tmp_path_factory.mktemp("real_run")
    t0 = time.perf_counter()
    data = make_demo_set(base / "data", n_images=40, image_size=32, n_experience=12, n_observers=40, n_splits=5)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(["run", str(data), "--out", str(base / "run"), *REAL_RUN_ARGS])
    if rc != 0:
        raise AssertionError(f"memlens run failed (exit {rc}):\n{out.getvalue()[-4000:]}")
    _REAL["run"] = RealRun(data=data, run=base / "run", seconds=time.perf_counter() - t0, output=out.getvalue())
    return _REAL["run"]
