"""`memlens predict`: new images scored end to end with a fitted run; unreadable files skipped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from _fake_run import real_run as _real_run
from memlens.cli import main
from memlens.inference import collect_images, predict_images
from memlens.predict import load_memorability_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _real_run(tmp_path_factory)


def test_predict_folder_writes_every_image(run, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run.data), "--run", str(run.run), "-o", str(out), "--batch-size", "7"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["image", "predicted_score"]
    n_images = len(collect_images([run.data])[0])
    assert len(table) == n_images and n_images >= 40  # the demo set plus its experience corpus
    assert np.isfinite(table.predicted_score).all() and table.predicted_score.std() > 0


def test_scores_match_the_model_and_do_not_depend_on_the_batch(run):
    files = sorted((run.data).rglob("demo_*.jpg"))[:9]
    a = predict_images(files, run.run, batch_size=1).table
    b = predict_images(files, run.run, batch_size=4).table
    np.testing.assert_allclose(a.predicted_score, b.predicted_score, rtol=0, atol=1e-6)
    # same numbers as the model applied by hand to the decoded images
    from memlens.data import load_image

    model = load_memorability_model(run.run / "predictor.pt")
    x = torch.from_numpy(np.stack([load_image(f, model.input_size) for f in files])).permute(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(a.predicted_score, model.predict(x.float()), rtol=0, atol=1e-5)


def test_unreadable_files_are_listed_and_skipped(run, tmp_path, capsys):
    good = sorted((run.data).rglob("demo_*.jpg"))[0]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    rc = main(["predict", str(good), str(bad), str(empty), str(tmp_path / "missing.jpg"), "--run", str(run.run)])
    assert rc == 0
    captured = capsys.readouterr()
    rows = pd.read_csv(__import__("io").StringIO(captured.out))
    assert rows.image.tolist() == [str(good)]
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 3
    assert any("broken.jpg" in s for s in skipped) and any("missing.jpg" in s for s in skipped)
    assert "Traceback" not in captured.err


def test_nothing_readable_exits_1(run, tmp_path, capsys):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"junk")
    assert main(["predict", str(bad), "--run", str(run.run)]) == 1
    out = tmp_path / "p.csv"
    assert main(["predict", str(bad), "--run", str(run.run), "-o", str(out)]) == 1
    assert not out.exists() and f"no image could be scored; {out} not written" in capsys.readouterr().err


def test_missing_predictor_is_a_clear_error(tmp_path, capsys):
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    (tmp_path / "run").mkdir()
    assert main(["predict", str(img), "--run", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "predictor.pt: missing" in err and "memlens fit-predictor" in err


def test_feature_set_predictor_scores_new_files_as_it_was_fitted(run, tmp_path):
    """fit-predictor on a feature set (extracted from the run's files, cached) -> predict on the same files
    gives the final model's predictions on the cached features: fit and predict decode alike."""
    import shutil

    from memlens.predict import load_regressor, read_predictor

    r = tmp_path / "run"
    shutil.copytree(run.run, r)
    assert main(["fit-predictor", str(r), "--features", "lite01", "--cv", "2", "--max-epochs", "5",
                 "--model", "svr"]) == 0
    cv = pd.read_csv(r / "predictor_cv.csv")
    # --finetune auto fine-tunes from 1,000 scored images on: not on these 40 (no tail, no trunk cache)
    assert set(cv["model"]) == {"mlp", "svr", "ridge"} and (cv["inputs"] == "lite01").all()
    assert not (r / "featureset_lite01_trunk_efficientnet_lite0.npz").exists()
    raw = read_predictor(r / "predictor.pt")
    assert raw["recipe"] == [{"kind": "featureset", "name": "lite01", "pool": "none", "layer": None, "size": None,
                              "dim": 4336}]
    assert raw["head"]["type"] == "svr" and len(raw["head"]["blocks"]) == 4
    ids = [line.split("\t")[0] for line in (r / "featureset_lite01_ids.txt").read_text().splitlines()]
    X = np.load(r / "featureset_lite01.npy")
    assert X.shape == (len(ids), 4336)
    files = [run.data / i for i in ids[:6]]
    got = predict_images(files, r, batch_size=4).table.predicted_score.to_numpy()
    want = load_regressor(r / "predictor.pt").predict(X[:6])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # the cache is reused: a second fit reads it (same numbers, no extraction)
    mtime = (r / "featureset_lite01.npy").stat().st_mtime_ns
    assert main(["fit-predictor", str(r), "--features", "lite01", "--cv", "2", "--max-epochs", "5"]) == 0
    assert (r / "featureset_lite01.npy").stat().st_mtime_ns == mtime
    # an image file that changed since invalidates the cache: features are extracted again
    from PIL import Image

    changed = run.data / ids[0]
    backup = changed.read_bytes()
    try:
        Image.new("RGB", (32, 32), (250, 10, 10)).save(changed, format="JPEG")
        assert main(["fit-predictor", str(r), "--features", "lite01", "--cv", "2", "--max-epochs", "5"]) == 0
        X2 = np.load(r / "featureset_lite01.npy")
        assert not np.allclose(X2[0], X[0]) and np.allclose(X2[1:], X[1:], atol=1e-5)
    finally:
        changed.write_bytes(backup)


def test_finetuned_blend_is_saved_and_predicts_new_files_as_it_was_fitted(run, tmp_path):
    """--finetune lite0 --model svr+finetune: the fine-tuned tails are stored in predictor.pt (plain tensors),
    and memlens predict on the run's files gives the blend of the SVR on the cached features and the tails on
    the cached trunk activations (float16 cache against float32 live activations: 2e-3 in score units)."""
    import shutil

    from memlens.predict import load_regressor, read_predictor
    from memlens.predict.finetune import FineTunedLiteRegressor, TrunkActivations

    r = tmp_path / "run"
    shutil.copytree(run.run, r)
    assert main(["fit-predictor", str(r), "--features", "lite0-crop", "--cv", "2", "--finetune", "lite0",
                 "--model", "svr+finetune", "--max-epochs", "5"]) == 0
    cv = pd.read_csv(r / "predictor_cv.csv")
    assert {"finetune", "svr+finetune"} <= set(cv["model"])
    assert cv.loc[cv["saved"], "model"].unique().tolist() == ["svr+finetune"]
    raw = read_predictor(r / "predictor.pt")
    from memlens.predict.fitting import DEFAULT_BLEND

    w = raw["finetuned"]["blend"]
    assert raw["finetuned"]["type"] == "finetuned-lite" and w == pytest.approx(DEFAULT_BLEND) and 0 < w < 1
    assert load_memorability_model(r / "predictor.pt").blend == pytest.approx(w)  # what predict applies
    assert raw["info"]["finetune"]["variant"] == "efficientnet_lite0"
    ids = [line.split("\t")[0] for line in (r / "featureset_lite0-crop_ids.txt").read_text().splitlines()]
    X = np.load(r / "featureset_lite0-crop.npy")
    acts = TrunkActivations.load(r / "featureset_lite0-crop_trunk_efficientnet_lite0.npz")
    assert len(acts) == len(ids) and acts.maps[0].shape == (2, 112, 14, 14)
    ft = FineTunedLiteRegressor.from_state(raw["finetuned"])
    want = (1 - w) * load_regressor(r / "predictor.pt").predict(X[:6]) + w * ft.predict(acts[np.arange(6)])
    got = predict_images([run.data / i for i in ids[:6]], r, batch_size=4).table.predicted_score.to_numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)
    assert np.ptp(ft.predict(acts)) > 0  # the tails learned something that varies between images
    # explain runs through the blend; its randomisation check re-initialises both learned parts
    assert main(["explain", str(r), "--top", "1", "--bottom", "1", "--steps", "4", "--aggregate-max", "2",
                 "--sanity-max", "1", "--device", "cpu"]) == 0
    import json

    sanity = json.loads((r / "attributions" / "sanity.json").read_text())
    assert sanity["randomized_module"] == "head+tails"
    # by default each image is explained by its fold model (SVR and tails refitted on that fold's training
    # images), which reproduces fit-predictor's out-of-fold prediction of it
    info = json.loads((r / "attributions" / "explain.json").read_text())
    assert info["model_for"] == "oof" and info["models"]["refit"]["model"] == "svr+finetune"
    assert info["models"]["check"]["passed"] is True and info["models"]["check"]["n_images"] >= 2
    assert all(e["model"].startswith("outer-cv fold ") and not e["in_sample"]
               for g in ("top", "bottom") for e in info["explained"][g])
    model = load_memorability_model(r / "predictor.pt")
    from memlens.explain.sanity import randomize_weights

    rnd = randomize_weights(model, "head+tails", seed=0)
    for a, b in ((model.tails[0].out.weight, rnd.tails[0].out.weight),
                 (next(model.head.parameters()), next(rnd.head.parameters()))):
        assert not torch.equal(a, b)

    # with a holdout, predictor.pt keeps the honest estimate's own model (SVR and tails fitted on the selection
    # images); explain picks its images among the held-out ones and uses that model: nothing is refitted.
    # --finetune-seeds 2: two tails in every fit, both saved, their mean blended; --blend 0.4: the tails' weight;
    # --finetune-stage 6: the trunk ends after stage 6 (its cache is extracted again), only stage 7 and the head
    # are fine-tuned, and predict feeds the tails stage 6's maps
    assert main(["fit-predictor", str(r), "--features", "lite0-crop", "--cv", "2", "--finetune", "lite0",
                 "--model", "svr+finetune", "--max-epochs", "5", "--holdout", "0.3", "--finetune-seeds", "2",
                 "--blend", "0.4", "--finetune-stage", "6"]) == 0
    raw = read_predictor(r / "predictor.pt")
    assert raw["finetuned"]["stage"] == 6 and raw["holdout"]["finetuned"]["stage"] == 6
    assert raw["info"]["finetune"]["stage"] == 6
    acts6 = TrunkActivations.load(r / "featureset_lite0-crop_trunk_efficientnet_lite0.npz")
    assert acts6.stage == 6 and acts6.maps[0].shape == (2, 192, 7, 7)
    ft6 = FineTunedLiteRegressor.from_state(raw["finetuned"])
    want6 = 0.6 * load_regressor(r / "predictor.pt").predict(X[:6]) + 0.4 * ft6.predict(acts6[np.arange(6)])
    got6 = predict_images([run.data / i for i in ids[:6]], r, batch_size=4).table.predicted_score.to_numpy()
    np.testing.assert_allclose(got6, want6, rtol=0, atol=2e-3)
    # an image of an inner fold: its fold model is refitted with the stored stage and reproduces its prediction
    from memlens.predict.fitting import refit_fold_models

    inner_id = str(pd.read_csv(r / "predictor_oof.csv").query("part == 'inner-cv'")["image_id"].iloc[0])
    refit = refit_fold_models(r, [inner_id])
    fit = next(iter(refit.fits.values()))
    assert refit.key_of[inner_id][0] == "inner-cv" and fit["finetuned"].stage_ == 6
    assert refit.check["passed"] is True and refit.check["n_images"] == 1
    assert raw["finetuned"]["blend"] == pytest.approx(0.4) and raw["holdout"]["finetuned"]["blend"] == pytest.approx(0.4)
    assert raw["info"]["finetune"]["blend"] == pytest.approx(0.4)
    assert load_memorability_model(r / "predictor.pt").blend == pytest.approx(0.4)
    oof = pd.read_csv(r / "predictor_oof.csv")
    np.testing.assert_allclose(oof["predicted_svr+finetune"],
                               0.6 * oof["predicted_svr"] + 0.4 * oof["predicted_finetune"], rtol=0, atol=1e-9)
    assert raw["holdout"]["finetuned"]["type"] == "finetuned-lite" and raw["holdout"]["head"]["type"] == "svr"
    assert raw["info"]["finetune"]["n_seeds"] == 2
    assert len(raw["finetuned"]["tails"]) == 2 and len(raw["holdout"]["finetuned"]["tails"]) == 2
    t0, t1 = raw["finetuned"]["tails"]
    assert any(not torch.equal(t0[k], t1[k]) for k in t0)  # two seeds, two different tails
    assert main(["explain", str(r), "--top", "1", "--bottom", "1", "--steps", "4", "--aggregate-max", "2",
                 "--sanity-max", "1", "--device", "cpu"]) == 0
    info = json.loads((r / "attributions" / "explain.json").read_text())
    assert set(info["models"]["fits"]) == {"holdout"} and info["models"]["fits"]["holdout"]["stored"] is True
    assert info["models"]["check"]["passed"] is True and info["models"]["check"]["max_abs_diff"] < 1e-6


def test_explain_runs_on_a_feature_set_predictor(run, tmp_path):
    """Integrated Gradients through the feature-set encoder and the kernel head: maps for the chosen images."""
    import shutil

    r = tmp_path / "run"
    shutil.copytree(run.run, r)
    shutil.rmtree(r / "attributions", ignore_errors=True)
    assert main(["fit-predictor", str(r), "--features", "lite0-crop", "--cv", "2", "--max-epochs", "5"]) == 0
    assert main(["explain", str(r), "--top", "1", "--bottom", "1", "--steps", "4", "--aggregate-max", "2",
                 "--sanity-max", "1", "--device", "cpu"]) == 0
    with np.load(r / "attributions" / "attributions.npz") as z:
        # map_errors: NaN for the maps only in the aggregates (not error-checked), finite for the overlays
        arrays = [z[k] for k in z.files if z[k].dtype.kind == "f" and k != "map_errors"]
        assert np.isfinite(z["map_errors"]).sum() == 2
    assert arrays and all(np.isfinite(a).all() for a in arrays)
    assert any(a.ndim >= 3 and np.abs(a).sum() > 0 for a in arrays)  # pixel maps, not all zero
    assert list((r / "attributions").glob("overlay_top01_*.png"))


def test_nothing_to_score_is_said_without_loading_the_networks(run, tmp_path, capsys, monkeypatch):
    import memlens.predict as P

    def never(*a, **k):
        raise AssertionError("the predictor was loaded for nothing")

    monkeypatch.setattr(P, "load_memorability_model", never)
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--run", str(run.run)]) == 1
    err = capsys.readouterr().err
    assert "folder holds no image files" in err and "no image could be scored" in err


def test_finetune_auto_follows_the_number_of_scored_images(run, tmp_path, monkeypatch):
    """--finetune auto adds Lite0's tail from AUTO_FINETUNE_MIN scored images on (lowered here to fit a test)."""
    import shutil

    import memlens.predict.fitting as fitting

    r = tmp_path / "run"
    shutil.copytree(run.run, r)
    assert fitting._n_scored(r) == 40
    monkeypatch.setattr(fitting, "AUTO_FINETUNE_MIN", 40)
    assert main(["fit-predictor", str(r), "--features", "lite0-crop", "--cv", "2", "--model", "svr",
                 "--max-epochs", "5"]) == 0
    assert {"finetune", "svr+finetune"} <= set(pd.read_csv(r / "predictor_cv.csv")["model"])
    monkeypatch.setattr(fitting, "AUTO_FINETUNE_MIN", 41)
    assert main(["fit-predictor", str(r), "--features", "lite0-crop", "--cv", "2", "--model", "svr",
                 "--max-epochs", "5"]) == 0
    assert "finetune" not in set(pd.read_csv(r / "predictor_cv.csv")["model"])
