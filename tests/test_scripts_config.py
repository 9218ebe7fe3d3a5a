"""The built-in config bagheri2026-scripts (the paper's released scripts): it loads strictly, differs from
bagheri2026 exactly in the scripts' settings, and runs end to end on stand-in MemCat data.

The end-to-end run uses the SAME config file and overrides only what a tiny offline run needs: a stand-in
imagenet-autoencoder checkpoint with DataParallel's ``module.`` prefix (as the scripts' checkpoint has), 32 px
images, and mse in place of lpips-squeeze (1-mse as the loss) when the lpips package cannot be used.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from memlens.commands._pipeline import run_pipeline
from memlens.commands.run import build_stage_options
from memlens.config import STAGES, builtin_configs, load_config
from test_paper_config import CONTRACT, N, _lpips_usable, _make_memcat

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "src" / "memlens" / "configs" / "bagheri2026-scripts.yaml"
STATED = REPO / "src" / "memlens" / "configs" / "bagheri2026.yaml"

#: the released scripts' settings, and nothing else, distinguish the two configs' train sections
SCRIPTS_TRAIN = {"loss": "1-lpips-squeeze", "order": "category", "bn": "train", "lr": 5.0e-6, "init_load": "scripts"}


def test_scripts_config_is_built_in_and_loads_strictly(tmp_path, monkeypatch):
    assert builtin_configs()["bagheri2026-scripts"] == CONFIG.resolve()
    monkeypatch.chdir(tmp_path)
    assert load_config("bagheri2026-scripts").to_dict() == load_config(CONFIG).to_dict()


def test_scripts_config_differs_from_the_stated_method_only_in_the_scripts_settings():
    scripts, stated = load_config(CONFIG).to_dict(), load_config(STATED).to_dict()
    assert set(scripts) == set(stated) == set(STAGES)
    for stage in STAGES:
        if stage != "train":
            assert scripts[stage] == stated[stage], stage
    tr, st = scripts["train"], stated["train"]
    for key, value in SCRIPTS_TRAIN.items():
        assert tr[key] == value, key
    assert float(st["lr"]) == pytest.approx(1e-5)
    differ = {k for k in set(tr) | set(st) if tr.get(k) != st.get(k)}
    assert differ <= set(SCRIPTS_TRAIN) | {"amp"}  # amp: auto is memlens's default, written out
    assert tr.get("amp", "auto") == "auto"
    assert tr["backbone"] == "vgg16" and tr["pretrain_epochs"] == 0 and tr["epochs"] == 1 and tr["mode"] == "exposure"


def test_every_line_of_the_scripts_config_is_commented():
    for i, line in enumerate(CONFIG.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped and not stripped.endswith(":"):
            assert "#" in line, f"{CONFIG.name}:{i} has no comment: {line!r}"
            key = stripped.split(":", 1)[0]
            if key in SCRIPTS_TRAIN:
                assert "# scripts:" in line, f"{CONFIG.name}:{i}: say that the value comes from the scripts"


def _prefixed_iae_checkpoint(path: Path) -> None:
    """A stand-in imagenet-autoencoder VGG16 checkpoint as their DataParallel training saved it."""
    from test_checkpoint import _iae_vgg16

    ae = _iae_vgg16()
    torch.save({"epoch": 20, "state_dict": OrderedDict((f"module.{k}", v) for k, v in ae.state_dict().items())},
               path)


def test_the_scripts_config_runs_end_to_end_on_standin_memcat(tmp_path, caplog):
    data = _make_memcat(tmp_path / "memcat")
    run = tmp_path / "run"
    ck = tmp_path / "imagenet-autoencoder-vgg16.pth"
    _prefixed_iae_checkpoint(ck)
    lpips_ok = _lpips_usable()
    metric = "lpips-squeeze" if lpips_ok else "mse"
    config = load_config(CONFIG)
    paper_metrics = config.get("score")["metrics"].split(",")
    metrics = list(dict.fromkeys(m if m != "lpips-squeeze" else metric for m in paper_metrics))
    size = 64 if lpips_ok else 32
    sets = (f"train.init={ck}", f"train.image_size={size}", f"train.loss=1-{metric}",
            f"score.metrics={','.join(metrics)}", f"score.feature_size={max(size, 32)}", "analyze.n_boot=50",
            "explain.steps=4", "explain.aggregate_max=4", "explain.sanity_max=2", "explain.n_boot=50")
    options = build_stage_options(CONFIG, sets, {})
    cfg = config.to_dict()
    changed = {(s, k) for s in options for k in options[s] if cfg.get(s, {}).get(k) != options[s][k]}
    assert changed <= {("train", "init"), ("train", "image_size"), ("train", "loss"), ("score", "metrics"),
                       ("score", "feature_size"), ("analyze", "n_boot"), ("explain", "steps"),
                       ("explain", "n_boot"), ("explain", "aggregate_max"), ("explain", "sanity_max")}
    for key in ("order", "bn", "lr", "init_load"):
        assert options["train"][key] == SCRIPTS_TRAIN[key]

    with caplog.at_level("WARNING", logger="memlens"):
        record = run_pipeline(data, run, options, echo=lambda _m: None)
    assert all(record[s]["status"] == "done" for s in STAGES if s != "baselines"), record
    assert record["baselines"]["status"] == "off"  # opt-in: the config sets no models
    for name in CONTRACT:
        assert (run / name).is_file(), f"missing contract file {name}"

    # the scripts' checkpoint load: nothing matches the module.-prefixed keys; warned and recorded
    manifest = json.loads((run / "manifest.json").read_text())
    rep = manifest["model"]["init_report"]
    assert rep["load"] == "scripts" and rep["kind"] == "imagenet-autoencoder" and rep["n_loaded"] == 0
    assert f"0 of {rep['n_expected']} tensors loaded" in caplog.text
    assert "starts from random weights, as the released scripts did" in caplog.text
    ex = manifest["training"]["exposure"]
    assert ex["settings"]["loss"] == f"1-{metric}" and ex["settings"]["lr"] == pytest.approx(5e-6)
    assert ex["settings"]["bn"] == "train" and ex["settings"]["order"] == "given"

    # category order, unshuffled: grouped by category, then by image id
    exposure = pd.read_csv(run / "exposure.csv").sort_values("order")
    assert len(exposure) == N
    keys = [(i.split("/")[0], i) for i in exposure["image_id"]]
    assert keys == sorted(keys)
    # the recorded loss is the distance (what scoring calls recon_exposure), not 1 - d
    per_image = pd.read_csv(run / "per_image.csv")
    joined = exposure.merge(per_image[["image_id", "recon_exposure"]], on="image_id")
    np.testing.assert_allclose(joined["loss"], joined["recon_exposure"], rtol=1e-6)
    assert (exposure["loss"] >= 0).all()

    # batch norm in training mode at batch 1: the running statistics moved during exposure
    from memlens.models import load_autoencoder

    before = load_autoencoder(run / "autoencoder_before.pt").state_dict()
    after = load_autoencoder(run / "autoencoder.pt").state_dict()
    stats = [k for k in before if k.endswith("running_mean")]
    assert stats and any(not torch.equal(before[k], after[k]) for k in stats)
