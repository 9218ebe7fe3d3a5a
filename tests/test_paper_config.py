"""The built-in config bagheri2026 (src/memlens/configs/bagheri2026.yaml): the paper's setting loads strictly and runs end to end in the MemCat layout.

The end-to-end run uses the SAME config file and overrides only what has to change for a tiny offline run:
random initialisation instead of the imagenet-autoencoder checkpoint, 32 px images, mse in place of lpips
when the optional lpips package cannot be used, and fewer bootstrap resamples / IG steps. The stand-in data
set copies 30 rows of the real MemCat score table when it is available (../shared/data/memcat), else a
small synthetic table with the same columns, with tiny generated JPEGs under category/subcategory folders.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memlens.commands._pipeline import run_pipeline
from memlens.commands.run import build_stage_options
from memlens.config import STAGES, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "src" / "memlens" / "configs" / "bagheri2026.yaml"
MEMCAT_TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "memcat" / "memcat_image_data.csv"
PER_CATEGORY = 6  # 5 categories x 6 = 30 images (each is one vgg16 exposure step, ~0.5-1 s on CPU)
N = 5 * PER_CATEGORY
HEADER = ["", "image_file", "category", "subcategory", "current_height", "current_width", "source",
          "searched_label", "resize_factor", "H", "FA", "n_resp", "memorability_wo_fa_correction",
          "memorability_w_fa_correction"]

# Contract files of a complete run directory (DESIGN.md section 4) plus the report.
CONTRACT = ["config.json", "manifest.json", "autoencoder.pt", "per_image.csv", "latents.npy", "latent_ids.txt",
            "correlations.csv", "correlations.json", "predictor.pt", "predictor_cv.csv",
            "attributions/attributions.npz", "descriptors.csv", "report.html", "results.json"]


# ------------------------------------------------------------------------------------------ the config itself
@pytest.fixture(scope="module")
def config():
    return load_config(CONFIG)  # strict: an unknown section or key raises ConfigError


def test_builtin_name_loads_the_shipped_file(tmp_path, monkeypatch):
    from memlens.config import builtin_configs
    from memlens.errors import ConfigError

    assert builtin_configs()["bagheri2026"] == CONFIG.resolve()
    assert set(builtin_configs()) == {"bagheri2026", "bagheri2026-scripts"}  # the stated method, the released scripts
    monkeypatch.chdir(tmp_path)  # found by name from any folder, as a pip user would run it
    assert load_config("bagheri2026").to_dict() == load_config(CONFIG).to_dict()
    (tmp_path / "bagheri2026").write_text("train:\n  seed: 5\n")  # a file of that name wins over the built-in
    assert load_config("bagheri2026").to_dict()["train"] == {"seed": 5}
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found \(built-in configs: "
                                          r"bagheri2026-scripts, bagheri2026\)"):
        load_config("nope.yaml")


def test_config_has_every_stage_and_the_papers_settings(config):
    c = config.to_dict()
    assert set(c) == set(STAGES)
    tr = c["train"]
    assert tr["backbone"] == "vgg16"
    init = str(tr["init"])
    assert init not in ("scratch", "imagenet") and init.endswith((".pth", ".pt", ".tar")), \
        "init must be an imagenet-autoencoder checkpoint PATH"
    assert tr["mode"] == "exposure" and tr["epochs"] == 1 and tr["batch_size"] == 1
    assert float(tr["lr"]) == pytest.approx(1e-5)
    assert tr["pretrain_epochs"] == 0  # the ImageNet training is the visual experience: every image is exposed
    assert tr["loss"] == "lpips-squeeze"
    assert tr["image_size"] == 224
    assert "lpips-squeeze" in c["score"]["metrics"].split(",")  # asked for explicitly: a missing package fails loudly
    assert c["score"]["distinct_k"] == 1
    pr = c["predictor"]
    assert pr["split"] == "paper" and pr["cv"] == 1 and pr["features"] == "latents"
    assert c["explain"]["steps"] >= 1 and c["explain"]["baseline"] in ("black", "blur", "mean")
    assert c["check"]["layout"] == c["train"]["layout"] == "memcat"


def test_every_line_of_the_config_is_commented():
    for i, line in enumerate(CONFIG.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped and not stripped.endswith(":"):
            assert "#" in line, f"{CONFIG.name}:{i} has no comment saying what the paper did: {line!r}"


# ------------------------------------------------------------------------------------------ stand-in MemCat
def _memcat_rows() -> list[list[str]]:
    """30 rows of the real table (6 per category, spread over it), or a synthetic table of the same form."""
    if MEMCAT_TABLE.is_file():
        with MEMCAT_TABLE.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
        assert header == HEADER
        by_cat: dict[str, list[list[str]]] = {}
        for row in rows:
            by_cat.setdefault(row[2], []).append(row)
        out = []
        for cat in sorted(by_cat):
            group = by_cat[cat]
            idx = np.linspace(0, len(group) - 1, PER_CATEGORY).round().astype(int)
            out += [group[i] for i in idx]
        return out
    rng = np.random.default_rng(0)
    out = []
    for c, cat in enumerate(["animal", "food", "landscape", "sports", "vehicle"]):
        for j in range(PER_CATEGORY):
            n, h = int(rng.integers(80, 120)), int(rng.integers(20, 80))
            fa = int(rng.integers(0, 10))
            out.append([str(len(out) + 1), f"{c:02d}{j:04d}.jpg", cat, f"{cat}_sub{j % 2}", "40", "48", "synthetic",
                        f"{cat}_sub{j % 2}", "1", str(h), str(fa), str(n), repr(h / n), repr((h - fa) / n)])
    return out


def _make_memcat(root: Path) -> Path:
    rows = _memcat_rows()
    root.mkdir(parents=True)
    with (root / "memcat_image_data.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:40, 0:48] / 40.0
    for row in rows:
        folder = root / row[2] / row[3]
        folder.mkdir(parents=True, exist_ok=True)
        # a smooth random colour field plus a random blob: images differ in content and in contrast
        coef = rng.normal(size=(3, 3))
        img = np.stack([coef[k, 0] * np.sin(3 * xx * coef[k, 1]) + coef[k, 2] * yy for k in range(3)], -1)
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 1.0), rng.uniform(0.1, 0.3)
        img += rng.uniform(0.5, 2.0) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None] * rng.normal(size=3)
        img = (img - img.min()) / (np.ptp(img) + 1e-9)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / row[1], quality=90)
    return root


def _lpips_usable() -> bool:
    """Whether the lpips metric can actually be computed here (package installed and its weights offline)."""
    import torch

    from memlens.metrics import get_metric

    metric = get_metric("lpips-squeeze")
    if not metric.available:
        return False
    try:
        metric(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    except Exception:
        return False
    return True


# ------------------------------------------------------------------------------------------ end to end
def test_the_paper_config_runs_end_to_end_on_standin_memcat(tmp_path, config):
    data = _make_memcat(tmp_path / "memcat")
    run = tmp_path / "run"
    lpips_ok = _lpips_usable()
    loss = "lpips-squeeze" if lpips_ok else "mse"
    paper_metrics = config.get("score")["metrics"].split(",")
    metrics = list(dict.fromkeys(m if m != "lpips-squeeze" else loss for m in paper_metrics))
    size = 64 if lpips_ok else 32  # LPIPS's AlexNet needs at least ~64 px; vgg16 needs a multiple of 32
    sets = (
        "train.init=scratch",  # random init: the imagenet-autoencoder checkpoint is not available offline
        f"train.image_size={size}",
        f"train.loss={loss}",
        f"score.metrics={','.join(metrics)}",
        f"score.feature_size={max(size, 32)}",
        "analyze.n_boot=50",
        "explain.steps=4",
        "explain.aggregate_max=4",
        "explain.sanity_max=2",
        "explain.n_boot=50",
    )
    options = build_stage_options(CONFIG, sets, {})

    # the overrides are the only differences from the paper's config; the loss differs only by lpips -> mse
    paper = config.to_dict()
    changed = {(s, k) for s in options for k in options[s] if paper.get(s, {}).get(k) != options[s][k]}
    assert changed <= {("train", "init"), ("train", "image_size"), ("train", "loss"), ("score", "metrics"),
                       ("score", "feature_size"), ("analyze", "n_boot"), ("explain", "steps"),
                       ("explain", "n_boot"), ("explain", "aggregate_max"), ("explain", "sanity_max")}
    assert all(k in options.get(s, {}) for s in paper for k in paper[s])  # nothing of the paper's dropped
    assert options["train"]["loss"] == paper["train"]["loss"].replace("lpips-squeeze", loss)
    scored = options["score"]["metrics"].split(",")
    assert set(paper_metrics) - {"lpips-squeeze"} <= set(scored) and set(scored) - set(paper_metrics) <= {loss}

    messages: list[str] = []
    t0 = time.perf_counter()
    record = run_pipeline(data, run, options, echo=messages.append)
    seconds = time.perf_counter() - t0
    print(f"paper config end to end on {N} stand-in images: {seconds:.1f} s",  # visible with pytest -s
          {s: record[s].get("seconds") for s in STAGES})

    assert all(record[s]["status"] == "done" for s in STAGES if s != "baselines"), record
    assert record["baselines"]["status"] == "off"  # opt-in: the config sets no models
    for name in CONTRACT:
        assert (run / name).is_file(), f"missing contract file {name}"
    assert any(p.suffix == ".png" for p in (run / "attributions").iterdir())

    # the paper's settings reached the stages
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["init"] == "scratch"
    assert manifest["training"]["experience"]["source"] == "none"  # pretrain_epochs 0: nothing held out
    exposure = pd.read_csv(run / "exposure.csv")
    assert len(exposure) == N and sorted(exposure["order"]) == list(range(N))
    cats_in_order = exposure.sort_values("order")["image_id"].str.split("/").str[0].tolist()
    assert cats_in_order != sorted(cats_in_order)  # seeded random order, not category order
    tr_cfg = json.loads((run / "config.json").read_text())
    train_cfg = tr_cfg.get("train", tr_cfg)
    assert train_cfg["backbone"] == "vgg16" and float(train_cfg["lr"]) == pytest.approx(1e-5)
    assert train_cfg["loss"] == loss

    per_image = pd.read_csv(run / "per_image.csv")
    assert len(per_image) == N and per_image["image_id"].is_unique
    assert set(per_image["category"]) == {"animal", "food", "landscape", "sports", "vehicle"}
    src = pd.read_csv(data / "memcat_image_data.csv")
    truth = dict(zip(src["image_file"], src["memorability_w_fa_correction"], strict=True))
    got = per_image["image_id"].str.rsplit("/", n=1).str[-1].map(truth)
    np.testing.assert_allclose(per_image["score"], got)  # the corrected score, matched by file name
    for m in metrics:
        assert np.isfinite(per_image[f"recon_{m}"]).all()
    assert ("recon_lpips-squeeze" in per_image.columns) == lpips_ok
    assert np.isfinite(per_image["recon_exposure"]).all() and np.isfinite(per_image["distinctiveness"]).all()
    assert np.load(run / "latents.npy").shape == (N, 512 * (size // 32) ** 2)  # flattened bottleneck

    cv = pd.read_csv(run / "predictor_cv.csv")
    mlp = cv[(cv["model"] == "mlp") & (cv["fold"].astype(str) != "mean")]
    assert len(mlp) == 1 and (mlp["split"] == "paper").all()
    assert (mlp[["n_train", "n_val", "n_test"]].to_numpy() == [[18, 3, 9]]).all()  # 60/10/30 of 30
    assert (cv["inputs"] == "latents").all()

    corr = json.loads((run / "correlations.json").read_text())
    assert corr["n_images"] == N and corr["by"] == "category"
    results = json.loads((run / "results.json").read_text())
    assert results  # the numbers the report shows
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "vgg16" in html
