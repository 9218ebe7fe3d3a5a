"""A small but complete fake run directory for the report tests (every file a report can read).

The numbers are random but consistent: the correlations in ``correlations.csv`` are the real Spearman
correlations of the columns of ``per_image.csv``, the split halves average to the scores, and so on.
One image is named ``<b>x</b>.png`` and one category ``sports & <games>`` to exercise HTML escaping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import spearmanr

WEIRD_IMAGE = "<b>x</b>.png"
WEIRD_CATEGORY = "sports & <games>"
CATEGORIES = ("animal", "food", WEIRD_CATEGORY)


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


def make_fake_run(base: Path, n: int = 48, seed: int = 0, *, simulated: bool = False) -> FakeRun:
    """Write a data root and a run directory under ``base``; return their paths and the per-image table."""
    rng = np.random.default_rng(seed)
    data, run = base / "data", base / "run"
    data.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)

    cats = [CATEGORIES[i % len(CATEGORIES)] for i in range(n)]
    ids = [f"{'sports' if c == WEIRD_CATEGORY else c}/img_{i:03d}.jpg" for i, c in enumerate(cats)]
    ids[0] = WEIRD_IMAGE
    latent = rng.normal(size=n)
    score = 1 / (1 + np.exp(-(0.4 + 0.8 * latent)))
    score[0] = 0.99  # the weird name is the most memorable image: it shows in the galleries
    recon_mse = 0.02 + 0.01 * (0.6 * latent + 0.8 * rng.normal(size=n)) ** 2 + 0.003 * rng.random(n)
    df = pd.DataFrame({
        "image_id": ids,
        "score": np.round(score, 6),
        "category": cats,
        "subcategory": [f"sub{i % 2}" for i in range(n)],
        "split": ["train" if i % 5 else "test" for i in range(n)],
        "recon_mse": recon_mse,
        "recon_dssim": 0.1 + 0.05 * rng.random(n) + 0.5 * recon_mse,
        "recon_mse_before": recon_mse * 1.5 + 0.005 * rng.random(n),
        "recon_exposure": recon_mse * 1.2,
        "distinctiveness": 1.0 + 0.5 * latent + rng.normal(scale=0.7, size=n),
        "distinctiveness_features": 2.0 + rng.normal(size=n),
        "predicted_score": np.round(score + rng.normal(scale=0.05, size=n), 6),
    })
    df.to_csv(run / "per_image.csv", index=False)

    # images on disk (the weird name included)
    for image_id, c in zip(ids, cats, strict=True):
        colour = {"animal": (200, 120, 40), "food": (40, 160, 90)}.get(c, (60, 90, 200))
        path = data / image_id
        if path.suffix == ".jpg":
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = np.clip(np.array(colour) + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(path, quality=90)
        else:
            _png(path, colour, 32, rng)

    (run / "dataset.json").write_text(json.dumps({
        "source": str(data), "root": str(data), "layout": "memcat", "options": {"score_variant": "corrected"},
        "n_images": n, "simulated": simulated,
    }))
    (run / "config.json").write_text(json.dumps({
        "train": {"backbone": "tiny", "init": "scratch", "mode": "exposure", "loss": "mse", "lr": 1e-4,
                  "batch_size": 1, "seed": 3},
        "score": {"metrics": ["mse", "dssim"], "batch_size": 8},
        "analyze": {"n_boot": 200, "seed": 0},
    }))
    (run / "manifest.json").write_text(json.dumps({
        "memlens_version": "0.1.0.dev0",
        "versions": {"python": "3.11.2", "torch": "2.13.0", "numpy": np.__version__},
        "device": "cpu",
        "seeds": {"train": 3, "analyze": 0},
        "timings": {"train": 12.5, "score": 3.25, "analyze": 0.5},
        "input_hash": "sha256:0123456789abcdef",
    }))

    pd.DataFrame({"phase": ["pretrain"] * 4 + ["exposure"] * 2, "epoch": [1, 2, 3, 4, 1, 2],
                  "loss": [0.09, 0.06, 0.05, 0.045, 0.04, 0.038],
                  "val_loss": [0.1, 0.07, 0.06, 0.055, np.nan, np.nan]}).to_csv(run / "training_curve.csv", index=False)
    order = rng.permutation(n)
    pd.DataFrame({"image_id": [ids[i] for i in order], "order": np.arange(n),
                  "loss": recon_mse[order] * 1.3}).to_csv(run / "exposure.csv", index=False)

    n_splits = 5
    half1 = np.clip(score[None, :] + rng.normal(scale=0.08, size=(n_splits, n)), 0, 1)
    half2 = np.clip(2 * score[None, :] - half1, 0, 1)
    np.savez(run / "split_halves.npz", image=np.array(ids), half1=half1, half2=half2)

    rows = []
    measures = ["recon_mse", "recon_dssim", "recon_mse_before", "recon_exposure", "distinctiveness",
                "distinctiveness_features"]

    def _row(x, scope, group, control, sub):
        r, p = spearmanr(sub[x], sub["score"])
        return {"x": x, "y": "score", "scope": scope, "group": group, "control": control, "n": len(sub),
                "r": float(r), "ci_low": float(r) - 0.15, "ci_high": float(r) + 0.15, "p_value": float(p),
                "method": "spearman", "ceiling": 0.9, "r_over_ceiling": float(r) / 0.9}

    for x in measures:
        rows.append(_row(x, "pooled", "", "", df))
        for c in CATEGORIES:
            rows.append(_row(x, "group", c, "", df[df.category == c]))
        w = _row(x, "within", "", "category", df)
        w["r"] -= 0.01
        rows.append(w)
    part = _row("distinctiveness", "partial", "", "recon_mse", df)
    part["r"] -= 0.05
    rows.append(part)
    corr = pd.DataFrame(rows)
    corr.to_csv(run / "correlations.csv", index=False)
    (run / "correlations.json").write_text(json.dumps(corr.where(corr.notna(), None).to_dict("records")))

    cv = []
    for fold in range(5):
        cv.append({"fold": fold, "model": "mlp", "spearman": 0.55 + 0.05 * rng.normal(), "pearson": 0.5,
                   "mse": 0.01, "auc": 0.7})
        cv.append({"fold": fold, "model": "ridge", "spearman": 0.40 + 0.05 * rng.normal(), "pearson": 0.38,
                   "mse": 0.012, "auc": 0.65})
    pd.DataFrame(cv).to_csv(run / "predictor_cv.csv", index=False)

    att = run / "attributions"
    for i in range(4):
        _png(att / f"overlay_{Path(ids[i + 1]).stem}.png", (250, 60 * i, 30), 40, rng)
    _png(att / "overlay_a&b.png", (10, 200, 200), 40, rng)
    _png(att / "aggregate_most_memorable.png", (220, 80, 20), 40)
    _png(att / "aggregate_least_memorable.png", (20, 80, 220), 40)
    np.savez(att / "attributions.npz", maps=rng.random((5, 8, 8)).astype(np.float32))
    (att / "sanity.json").write_text(json.dumps({"test": "model parameter randomisation",
                                                 "spearman_original_vs_randomised": 0.12, "passed": True}))

    desc = pd.DataFrame({"image_id": ids, "brightness": rng.random(n), "contrast": rng.random(n),
                         "colorfulness": score + rng.normal(scale=0.1, size=n), "edge_density": rng.random(n)})
    desc.to_csv(run / "descriptors.csv", index=False)
    drows = []
    for d in ["brightness", "contrast", "colorfulness", "edge_density"]:
        r, p = spearmanr(desc[d], score)
        drows.append({"descriptor": d, "n": n, "r": float(r), "ci_low": float(r) - 0.2, "ci_high": float(r) + 0.2,
                      "p_value": float(p)})
    pd.DataFrame(drows).to_csv(run / "descriptor_correlations.csv", index=False)
    return FakeRun(run=run, data=data, per_image=df)
