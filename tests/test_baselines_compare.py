"""`memlens baselines RUN`: baselines beside the run's predictor on the images of its honest estimate, the fitted
ones on the predictor's own outer folds; paired bootstrap CIs and differences; the prediction cache; the
training-data overlap flag; the report section; the opt-in `run` stage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from _fake_run import REAL_RUN_ARGS
from _fake_run import real_run as _real_run
from memlens.baselines import BASELINES, BaselineInfo, compare_baselines, register_baseline, training_overlap
from memlens.baselines import resmem as resmem_mod
from memlens.baselines.compare import DIFF_COLUMNS, TABLE_COLUMNS
from memlens.baselines.pretrained import PretrainedBaseline, WeightsNotFound
from memlens.cli import main
from memlens.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_installed_weights(monkeypatch, tmp_path_factory):
    monkeypatch.delenv("MEMLENS_RESMEM_WEIGHTS", raising=False)
    monkeypatch.delenv("MEMLENS_VITMEM_WEIGHTS", raising=False)
    monkeypatch.setattr(resmem_mod, "_installed_weights", lambda: [])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return _real_run(tmp_path_factory)


@pytest.fixture
def run(real, tmp_path):
    """A copy of the shared real run (its data stays where it is: read only)."""
    dst = tmp_path / "run"
    shutil.copytree(real.run, dst)
    return dst


@pytest.fixture
def own_data(real, tmp_path):
    """A copy of the run with its own copy of the data (for tests that change images or markers)."""
    data, dst = tmp_path / "data", tmp_path / "run2"
    shutil.copytree(real.data, data)
    shutil.copytree(real.run, dst)
    meta = json.loads((dst / "dataset.json").read_text())
    meta["source"] = meta["root"] = str(data)
    (dst / "dataset.json").write_text(json.dumps(meta))
    return data, dst


class _TinyNet(torch.nn.Module):
    def forward(self, x):  # a score from the colour means: cheap, deterministic, varies between images
        m = x.mean(dim=(2, 3))
        return torch.sigmoid(3 * (m[:, 0] - m[:, 2]) + m[:, 1])


class Tiny(PretrainedBaseline):
    """A pretrained baseline as cheap as a test needs (ResMem and ViTMem take about a second per image on a CPU;
    their networks are tested in test_baselines.py)."""

    info = BaselineInfo(name="tiny", description="colour means", inputs="RGB 32 x 32", license="test",
                        trained_on=("LaMem", "MemCat"), order=5)
    resize, crop = 36, 32

    def find_weights(self):
        if self.weights is None:
            raise WeightsNotFound("tiny weights not found: give --weights tiny=PATH")
        return Path(self.weights)

    def build(self, path):
        return _TinyNet()


@pytest.fixture
def tiny(tmp_path):
    """Registers the ``tiny`` pretrained baseline for one test; returns its weights file."""
    w = tmp_path / "tiny.pt"
    w.write_bytes(b"weights")
    register_baseline(Tiny.info, lambda **kw: Tiny(**kw),
                      lambda weights=None, **_kw: (weights is not None, "tiny weights not found"))
    yield w
    BASELINES.pop("tiny")


def test_fitted_baselines_on_the_predictors_outer_folds(run):
    res = compare_baselines(run, "ridge-lite0,paper-mlp", n_boot=200, seed=0)
    table, diff = pd.read_csv(run / "baselines.csv"), pd.read_csv(run / "baselines_diff.csv")
    assert list(table.columns) == list(TABLE_COLUMNS) and list(diff.columns) == list(DIFF_COLUMNS)
    assert table.model.tolist() == ["memlens", "ridge-lite0", "paper-mlp"]
    oof = pd.read_csv(run / "predictor_oof.csv", dtype={"image_id": str})
    honest = oof[oof.part == "outer-cv"]
    assert (table.n == len(honest)).all() and res.info["predictor"]["part"] == "outer-cv"
    # memlens's row: the predictor's own out-of-fold predictions of those images
    assert table.spearman[0] == pytest.approx(spearmanr(honest.predicted_svr, honest.score)[0])
    assert ((table.ci_low < table.spearman) & (table.spearman < table.ci_high)).all()
    # the difference is memlens minus the baseline, each on the same images
    for row in diff.itertuples():
        mine = table.set_index("model").loc[row.model]
        assert row.direction == f"memlens minus {row.model}" and row.spearman_model == pytest.approx(mine.spearman)
        assert row.difference == pytest.approx(table.spearman[0] - mine.spearman)
        assert row.ci_low <= row.difference <= row.ci_high
    # each image predicted by a ridge fitted on every image but its fold: the predictor's training rows
    cached = pd.read_csv(run / "baseline_ridge-lite0.csv", dtype={"image_id": str}).set_index("image_id")
    assert cached.index.tolist() == honest.image_id.tolist()
    assert (cached.fold.to_numpy() == honest.fold.to_numpy()).all()
    from memlens.predict import ridge_baseline, run_feature_set

    X = run_feature_set(run, "lite0-crop", oof.image_id.tolist())
    test = (oof.fold == 1).to_numpy()
    want = ridge_baseline().fit(X[~test], oof.score[~test]).predict(X[test])
    np.testing.assert_allclose(cached.loc[oof.image_id[test], "predicted_score"], want, rtol=1e-6, atol=1e-9)
    assert res.predictions.shape[0] == len(honest) and "predicted_paper-mlp" in res.predictions


def test_pretrained_scores_are_cached_and_rescored_only_when_an_image_changes(own_data, tiny, monkeypatch):
    data, run = own_data
    weights = {"tiny": str(tiny)}
    first = compare_baselines(run, "tiny", weights=weights, n_boot=50)
    n = int(first.table.n[0])
    cache = pd.read_csv(run / "baseline_tiny.csv", dtype={"image_id": str})
    assert len(cache) == n and cache.predicted_score.between(0, 1).all()
    assert first.info["details"]["tiny"]["n_scored"] == n
    # the cached scores are the model's scores of the files
    want = Tiny(weights=tiny).predict([str(data / i) for i in cache.image_id])
    np.testing.assert_allclose(cache.predicted_score, want, rtol=0, atol=1e-9)
    scored = []
    real_items = PretrainedBaseline.predict_items

    def counting(self, items, **kw):
        scored.extend(label for label, _ in items)
        return real_items(self, items, **kw)

    monkeypatch.setattr(PretrainedBaseline, "predict_items", counting)
    again = compare_baselines(run, "tiny", weights=weights, n_boot=50)
    assert scored == [] and again.info["details"]["tiny"]["n_cached"] == n
    pd.testing.assert_frame_equal(again.table, first.table)
    changed = data / cache.image_id[0]
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    compare_baselines(run, "tiny", weights=weights, n_boot=50)
    assert scored == [cache.image_id[0]]
    other = tiny.parent / "other.pt"  # other weights: everything scored again
    other.write_bytes(b"other weights")
    compare_baselines(run, "tiny", weights={"tiny": str(other)}, n_boot=50)
    assert len(scored) == 1 + n


def test_overlap_with_the_training_data_is_flagged(own_data, tiny, capsys):
    data, run = own_data
    assert training_overlap(run, ("LaMem", "MemCat")) == (False, "the generated demo set (simulated images)")
    (data / "demo_config.json").unlink()  # now it looks like MemCat itself
    flagged, why = training_overlap(run, ("LaMem", "MemCat"))
    assert flagged and "MemCat layout" in why
    assert training_overlap(run, ()) == (False, "")
    rc = main(["baselines", str(run), "--models", "tiny,ridge-lite0", "--weights", f"tiny={tiny}", "--n-boot", "50"])
    assert rc == 0
    out = capsys.readouterr()
    table = pd.read_csv(run / "baselines.csv").set_index("model")
    assert table.loc["tiny", "overlap"] and not table.loc["ridge-lite0", "overlap"]
    assert "[trained on this data set: optimistic]" in out.out
    assert "note: tiny may have seen these images" in out.err
    from memlens.report import build_report

    build_report(run)
    sec = (run / "report.html").read_text(encoding="utf-8").split('id="baselines"', 1)[1].split("</section>")[0]
    assert "Training data overlap" in sec and "tiny ⚠" in sec


def test_all_installed_and_one_line_errors(run, tmp_path, capsys):
    assert main(["baselines", str(run), "--n-boot", "50"]) == 0  # all-installed: no weights here
    out = capsys.readouterr()
    assert "not run: resmem: ResMem weights not found" in out.err and "not run: vitmem:" in out.err
    assert pd.read_csv(run / "baselines.csv").model.tolist() == ["memlens", "ridge-lite0", "paper-mlp"]
    assert main(["baselines", str(run), "--models", "resmem"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install --no-deps resmem" in err and "Traceback" not in err
    assert main(["baselines", str(run), "--models", "memnet"]) == 1
    assert "unknown baseline 'memnet'" in capsys.readouterr().err
    assert main(["baselines", str(run), "--weights", "resmem"]) == 2
    (tmp_path / "fresh").mkdir()
    assert main(["baselines", str(tmp_path / "fresh")]) == 1
    assert "predictor_oof.csv not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="paper-mlp: .*latents.npy not found"):
        (run / "latents.npy").unlink()
        compare_baselines(run, "paper-mlp")


def test_report_section(run):
    from memlens.report import build_report

    build_report(run)
    page = (run / "report.html").read_text(encoding="utf-8")
    sec = page.split('id="baselines"', 1)[1].split("</section>", 1)[0]
    assert "not run" in sec and "memlens baselines RUN" in sec
    assert json.loads((run / "results.json").read_text())["baselines"]["status"] == "not run"
    compare_baselines(run, "ridge-lite0,paper-mlp", n_boot=100)
    build_report(run)
    page = (run / "report.html").read_text(encoding="utf-8")
    sec = page.split('id="baselines"', 1)[1].split("</section>", 1)[0]
    assert "not run" not in sec and sec.count("<img") == 2 and "memlens − model" in sec
    res = json.loads((run / "results.json").read_text())["baselines"]
    assert res["status"] == "run" and [r["model"] for r in res["rows"]] == ["memlens", "ridge-lite0", "paper-mlp"]
    assert set(res["agreement_with_memlens"]) == {"ridge-lite0", "paper-mlp"}
    assert '<a href="#baselines">' in page


def test_run_stage_is_off_unless_asked(real, run, capsys):
    from memlens.config import PipelineConfig

    assert PipelineConfig({"baselines": {"models": "resmem", "n_boot": 10}}).get("baselines")["models"] == "resmem"
    with pytest.raises(ConfigError, match="baselines.model: unknown option"):
        PipelineConfig({"baselines": {"model": "resmem"}})
    args = ["run", str(real.data), "--out", str(run), *REAL_RUN_ARGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "baselines      off" in out and not (run / "baselines.csv").exists()
    assert main([*args, "--baselines", "ridge-lite0"]) == 0
    out = capsys.readouterr().out
    assert "[baselines] memlens baselines" in out and "--models ridge-lite0" in out and "[report] memlens report" in out
    assert "[explain] up to date, skipped" in out  # the stages before it did not rerun
    assert pd.read_csv(run / "baselines.csv").model.tolist() == ["memlens", "ridge-lite0"]
    state = json.loads((run / "pipeline.json").read_text())["stages"]
    assert state["baselines"]["status"] == "done" and "--n-boot" in state["baselines"]["args"]
    assert main([*args, "--baselines", "ridge-lite0"]) == 0  # nothing changed: nothing reruns
    assert "[baselines] up to date, skipped" in capsys.readouterr().out
