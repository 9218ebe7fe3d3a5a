"""``memlens explain`` with out-of-fold models: each scored image explained by the cross-validation fold model
that held it out (refitted), on a tiny real run (24 images of 16 px, a small autoencoder's latents)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

torch.set_num_threads(1)
S = 16
N = 24
CATS = ("beach", "forest", "city")


def make_run(tmp_path, *, subcategories: bool = True):
    """Images, dataset.json (csv layout), per_image.csv (score, category, subcategory), autoencoder.pt and the
    latents of the images through it (so f(x) of the image model equals the head on the stored latents)."""
    from PIL import Image

    from memlens.data import load_image
    from memlens.models import create_autoencoder, save_autoencoder

    rng = np.random.default_rng(0)
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir(parents=True)
    run.mkdir()
    ids = [f"img_{i:02d}.png" for i in range(N)]
    bright = rng.random(N)
    for i, image_id in enumerate(ids):
        arr = rng.integers(0, 256, (S, S, 3)).astype(float) * (0.3 + 0.7 * bright[i])
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(data / image_id)
    score = 0.4 + 0.3 * bright + 0.05 * rng.normal(size=N)
    pd.DataFrame({"image": ids, "score": score}).to_csv(data / "table.csv", index=False)
    per = pd.DataFrame({"image_id": ids, "score": score, "category": [CATS[i % 3] for i in range(N)]})
    if subcategories:
        per["subcategory"] = [f"{CATS[i % 3]}-{'ab'[(i // 3) % 2]}" for i in range(N)]
    per.to_csv(run / "per_image.csv", index=False)
    (run / "dataset.json").write_text(json.dumps({"source": str(data / "table.csv"), "layout": "csv"}))
    torch.manual_seed(0)
    ae = create_autoencoder("small", input_size=S, width=4, latent_channels=4).eval()
    save_autoencoder(run / "autoencoder.pt", ae)
    x = torch.from_numpy(np.stack([load_image(data / i, S) for i in ids]).transpose(0, 3, 1, 2) / 255.0).float()
    with torch.no_grad():
        z = ae.encode(x).flatten(1).numpy().astype(np.float32)
    np.save(run / "latents.npy", z)
    (run / "latent_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    return run, ids, score


FIT = dict(inputs="latents", hidden=(8,), max_epochs=20, seed=0, finetune=None)
EXPLAIN = dict(top=2, bottom=2, n_steps=4, n_boot=0, aggregate_max=2, sanity_max=2, device="cpu")


def _explained(summary):
    return [e for g in ("image", "top", "bottom") for e in summary["explained"][g]]


def test_each_image_is_explained_by_the_fold_model_that_held_it_out(tmp_path):
    from memlens.explain import explain_run
    from memlens.predict import fit_predictor_run
    from memlens.predict.fitting import refit_fold_models

    run, ids, score = make_run(tmp_path)
    fit_predictor_run(run, cv=3, model="svr", holdout=0, **FIT)
    oof = pd.read_csv(run / "predictor_oof.csv")
    assert {"part", "fold"} <= set(oof.columns) and set(oof["fold"]) == {0, 1, 2}

    summary = explain_run(run, **EXPLAIN)
    assert summary["model_for"] == "oof"
    entries = _explained(summary)
    assert len(entries) == 4
    fold_of = dict(zip(oof["image_id"], oof["fold"], strict=True))
    pred_of = dict(zip(oof["image_id"], oof["predicted_svr"], strict=True))
    sd = float(np.std(score))
    for e in entries:
        k = int(fold_of[e["image_id"]])
        assert e["model"] == f"outer-cv fold {k}" and e["in_sample"] is False
        assert e["explained_with"] == f"outer-cv fold {k} model (not fitted on this image)"
        # the prediction shown is the fold model's: fit-predictor's out-of-fold prediction of the image
        assert e["oof_predicted_score"] == pytest.approx(pred_of[e["image_id"]])
        assert e["predicted_score"] == pytest.approx(pred_of[e["image_id"]], abs=1e-3 * sd)
    models = summary["models"]
    assert models["check"]["passed"] is True and models["check"]["max_abs_diff"] <= 1e-4 * sd
    assert models["assignment"].startswith("predictor_oof.csv (part, fold)")
    assert models["refit"]["stratify"] == "category"  # the default, though the run has a subcategory column
    # only the folds of explained images were refitted, each on the rows of its training folds
    explained_all = set(models["explained_with"])
    assert set(models["fits"]) == {f"outer-cv fold {int(fold_of[i])}" for i in explained_all}

    # none of the models was fitted on an image it explains
    refit = refit_fold_models(run, sorted(explained_all))
    for i, key in refit.key_of.items():
        train_ids = {refit.image_ids[r] for r in refit.fits[key]["train_rows"]}
        assert i not in train_ids and len(train_ids) == N - int((oof["fold"] == key[1]).sum())

    att = run / "attributions"
    with np.load(att / "attributions.npz", allow_pickle=False) as z:
        assert len(z["explained_with"]) == len(z["image_ids"]) and not z["in_sample"].any()
        assert all(w.endswith("model (not fitted on this image)") for w in z["explained_with"].tolist())
    desc = pd.read_csv(run / "descriptors.csv", keep_default_na=False)
    has_map = desc["image_id"].isin(list(explained_all))
    assert (desc.loc[has_map, "explained_with"] != "").all() and (desc.loc[~has_map, "explained_with"] == "").all()
    sanity = json.loads((att / "sanity.json").read_text())
    assert sanity["n_images"] == 2 and np.isfinite(sanity["mean_spearman"])
    assert sanity["randomized_module"] == "head" and len(sanity["explained_with"]) == 2
    assert all("not fitted on this image" in w for w in sanity["explained_with"])

    # the old behaviour: the final model, fitted on every image (in-sample), on request
    final = explain_run(run, model_for="final", **EXPLAIN)
    assert final["model_for"] == "final"
    for e in _explained(final):
        assert e["model"] == "final" and e["in_sample"] is True
        assert e["explained_with"] == "final model (fitted on this image: in-sample)"
    gap = [abs(a["predicted_score"] - b["predicted_score"]) for a, b in zip(entries, _explained(final), strict=True)]
    assert max(gap) > 1e-3 * sd  # in-sample and out-of-fold predictions differ
    with np.load(att / "attributions.npz", allow_pickle=False) as z:
        assert z["in_sample"].all()


def test_fold_assignment_is_recomputed_when_predictor_oof_has_no_fold_column(tmp_path):
    """Runs fitted before the fold column: the splits are rebuilt from predictor.pt's settings and checked
    against the stored out-of-fold predictions; a rebuilt split that disagrees with a fold column is an error."""
    from memlens.errors import RunDirError
    from memlens.predict import fit_predictor_run
    from memlens.predict.fitting import refit_fold_models

    run, ids, _ = make_run(tmp_path, subcategories=False)
    fit_predictor_run(run, cv=3, model="svr", holdout=0, **FIT)
    with_col = refit_fold_models(run, ids[:6])
    oof = pd.read_csv(run / "predictor_oof.csv")
    oof.drop(columns="fold").to_csv(run / "predictor_oof.csv", index=False)
    rebuilt = refit_fold_models(run, ids[:6])
    assert rebuilt.key_of == with_col.key_of
    assert rebuilt.assignment.startswith("splits rebuilt from predictor.pt's settings (kfold split x3, stratified "
                                         "by category, seed 0)")
    assert rebuilt.check["passed"] is True and rebuilt.check["n_images"] == 6
    # a fold column that the rebuilt splits contradict (another seed, here) is refused, with what to do
    wrong = oof.copy()
    wrong["fold"] = (wrong["fold"] + 1) % 3
    wrong.to_csv(run / "predictor_oof.csv", index=False)
    with pytest.raises(RunDirError, match=r"by outer-cv fold 1 but the splits rebuilt from predictor.pt .*--model-for final"):
        refit_fold_models(run, ids[:6])
    # and a run whose images changed since fit-predictor
    oof.iloc[1:].to_csv(run / "predictor_oof.csv", index=False)
    with pytest.raises(RunDirError, match="changed since memlens fit-predictor"):
        refit_fold_models(run, ids[:6])
    (run / "predictor_oof.csv").unlink()
    with pytest.raises(RunDirError, match="predictor_oof.csv not found"):
        refit_fold_models(run, ids[:6])


@pytest.mark.parametrize("model", ["mlp", "ridge", "auto"])
def test_refitted_fold_models_reproduce_the_stored_out_of_fold_predictions(tmp_path, model):
    """Deterministic models: the refit of each fold predicts its held-out images as fit-predictor's
    cross-validation did (the MLP seeded with seed + fold, like its cross-validation); with --model auto (nested
    selection) the fold models are of the kind saved in predictor.pt."""
    from memlens.predict import fit_predictor_run, read_predictor
    from memlens.predict.fitting import refit_fold_models

    run, ids, score = make_run(tmp_path)
    fit_predictor_run(run, cv=3, model=model, holdout=0, **{**FIT, "seed": 3})
    refit = refit_fold_models(run, ids)
    saved = read_predictor(run / "predictor.pt")["info"]["model"]
    assert refit.model == saved == (saved if model == "auto" else model) and len(refit.fits) == 3
    assert refit.check["column"] == f"predicted_{saved}"
    assert refit.check["n_images"] == N and refit.check["passed"] is True
    assert refit.check["max_abs_diff"] <= 1e-4 * float(np.std(score))


def test_holdout_and_untested_images(tmp_path):
    """With a holdout, its images are explained by the model fitted on the selection images; with the paper
    split (30 % tested), the untested images by one leave-out fit that none of them is in."""
    from memlens.explain import explain_run
    from memlens.predict import fit_predictor_run
    from memlens.predict.fitting import refit_fold_models

    run, ids, _ = make_run(tmp_path)
    fit_predictor_run(run, cv=2, model="svr", holdout=0.25, **FIT)
    oof = pd.read_csv(run / "predictor_oof.csv")
    hold = oof.loc[oof["part"] == "holdout", "image_id"].tolist()
    summary = explain_run(run, images=hold[:1], **{**EXPLAIN, "top": 1, "bottom": 1})
    e = summary["explained"]["image"][0]
    assert e["model"] == "holdout" and e["in_sample"] is False
    assert e["explained_with"] == "holdout model (fitted on the selection images; not fitted on this image)"
    assert summary["models"]["check"]["passed"] is True
    # every image comes from the held-out set (top, bottom, quartiles) and one model explains them all: the
    # holdout model that fit-predictor stored in predictor.pt, so nothing is refitted
    assert {x["image_id"] for x in _explained(summary)} <= set(hold)
    assert {x["model"] for x in _explained(summary)} == {"holdout"}
    assert summary["models"]["fits"]["holdout"]["stored"] is True
    assert summary["models"]["fits"]["holdout"]["seconds"] == 0
    assert summary["chosen_from"].startswith(f"the top, bottom and quartile images are chosen among the {len(hold)}")
    stored = oof.set_index("image_id")["predicted_svr"]
    for x in _explained(summary):
        assert x["oof_predicted_score"] == pytest.approx(stored[x["image_id"]])

    fit_predictor_run(run, cv=1, split="paper", model="ridge", holdout=0, **FIT)
    oof = pd.read_csv(run / "predictor_oof.csv")
    untested = oof.loc[oof["fold"].isna(), "image_id"].tolist()
    tested = oof.loc[oof["fold"].notna(), "image_id"].tolist()
    assert len(untested) > len(tested) > 0
    refit = refit_fold_models(run, untested[:3] + tested[:2])
    assert {refit.key_of[i] for i in untested[:3]} == {("leave-out", 0)}
    assert {refit.key_of[i] for i in tested[:2]} == {("outer-cv", 0)}
    train = {refit.image_ids[r] for r in refit.fits[("leave-out", 0)]["train_rows"]}
    assert not train & set(untested[:3]) and len(train) == N - 3
    assert refit.check["n_images"] == 2 and refit.check["passed"] is True


def test_cli_option_and_report(tmp_path, capsys):
    from memlens.cli import main
    from memlens.predict import fit_predictor_run
    from memlens.report import collect_report

    run, ids, _ = make_run(tmp_path)
    fit_predictor_run(run, cv=3, model="svr", holdout=0, **FIT)
    args = ["-q", "explain", str(run), "--top", "1", "--bottom", "1", "--steps", "4", "--n-boot", "0",
            "--aggregate-max", "1", "--sanity-max", "1", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fold model(s) (2 refitted: " in out and "reproduce predictor_oof.csv" in out
    page, results = collect_report(run)
    sec = results["explanations"]
    assert sec["model_for"] == "oof"
    assert "not fitted on its image" in page and "out-of-fold prediction" in page
    assert main([*args, "--model-for", "final"]) == 0
    assert "the final model for 2 image(s) it was fitted on (in-sample)" in capsys.readouterr().out
    page, results = collect_report(run)
    assert results["explanations"]["model_for"] == "final" and "in-sample prediction" in page
    assert main([*args, "--model-for", "nope"]) == 2
    # without fit-predictor's cross-validation: one line saying what to do
    (run / "predictor_oof.csv").unlink()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "predictor_oof.csv not found" in err and "--model-for final" in err and "Traceback" not in err
