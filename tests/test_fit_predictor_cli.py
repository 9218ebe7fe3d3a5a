"""``memlens fit-predictor`` on a fabricated run directory with a planted signal in the latents."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from memlens.cli import main

N = 150
CATS = ("beach", "forest", "city")


def make_run(tmp_path, *, halves: bool = True, with_autoencoder: bool = True, seed: int = 0):
    """per_image.csv, latents.npy (float16, 32 = 8x2x2 columns like the small autoencoder at 16 px),
    features.npy, latent_ids.txt (in a different order than the table), split_halves.npz, autoencoder.pt."""
    from memlens.models import create_autoencoder, save_autoencoder

    rng = np.random.default_rng(seed)
    run = tmp_path / "run"
    run.mkdir(parents=True)
    ids = [f"{CATS[i % 3]}/img_{i:03d}.jpg" for i in range(N)]
    lat = rng.normal(size=(N, 32))
    signal = np.tanh(lat[:, 0] + 0.7 * lat[:, 1] - 0.5 * lat[:, 2] * lat[:, 3])
    score = 0.6 + 0.12 * signal + 0.03 * rng.normal(size=N)
    table = pd.DataFrame({"image_id": ids, "score": score, "category": [CATS[i % 3] for i in range(N)]})
    table.loc[7, "score"] = np.nan  # an image without a score is left out
    table.to_csv(run / "per_image.csv", index=False)
    order = rng.permutation(N)  # the latent rows are in another order than the table: aligned by id
    np.save(run / "latents.npy", lat[order].astype(np.float16))
    feats = np.concatenate([signal[:, None] + rng.normal(size=(N, 1)), rng.normal(size=(N, 11))], axis=1)
    np.save(run / "features.npy", feats[order].astype(np.float32))
    (run / "latent_ids.txt").write_text("".join(f"{ids[i]}\n" for i in order))
    if halves:
        h1 = score[None, :] + 0.03 * rng.normal(size=(5, N))
        h2 = score[None, :] + 0.03 * rng.normal(size=(5, N))
        np.savez(run / "split_halves.npz", image=np.array(ids), half1=h1, half2=h2)
    if with_autoencoder:
        save_autoencoder(run / "autoencoder.pt", create_autoencoder("small", input_size=16, width=4, latent_channels=8))
    return run, table


FAST = ["--hidden", "256", "--max-epochs", "100"]


def test_kfold_latents_end_to_end(tmp_path, capsys):
    run, table = make_run(tmp_path)
    assert main(["fit-predictor", str(run), "--cv", "3", "--features", "latents", "--seed", "1", *FAST]) == 0
    out = capsys.readouterr().out
    assert "mlp" in out and "ridge" in out and "noise ceiling" in out and "149 images" in out

    cv = pd.read_csv(run / "predictor_cv.csv")
    assert cv.columns[:4].tolist() == ["fold", "model", "inputs", "split"]
    folds = cv[cv["fold"] != "mean"]
    assert len(folds) == 9 and set(folds["model"]) == {"mlp", "svr", "ridge"}
    assert folds.groupby("model")["n_test"].sum().tolist() == [149, 149, 149]  # every scored image tested once
    assert set(cv[cv["fold"] == "mean"]["model"]) == {"mlp", "svr", "ridge"}
    for col in ("spearman", "pearson", "mse", "auc", "human_consistency", "spearman_brown"):
        assert cv[col].notna().all(), col
    mean = cv[cv["fold"] == "mean"].set_index("model")
    # the planted signal (mostly linear, 100 training images per fold): measured over three data seeds,
    # mean Spearman 0.53-0.75 for the MLP and 0.75-0.80 for ridge (0.74 and 0.80 for this seed)
    assert mean.loc["mlp", "spearman"] > 0.5
    assert mean.loc["ridge", "spearman"] > 0.65
    assert mean.loc["svr", "spearman"] > 0.5
    assert 0.9 < mean.loc["mlp", "spearman_brown"] <= 1  # the halves agree closely by construction
    hc = mean.loc["mlp", "human_consistency"]
    assert mean.loc["mlp", "spearman_brown"] == pytest.approx(2 * hc / (1 + hc))
    assert mean.loc["mlp", "spearman"] == pytest.approx(folds[folds["model"] == "mlp"]["spearman"].mean())

    oof = pd.read_csv(run / "predictor_oof.csv")
    assert len(oof) == 149 and oof[["predicted_mlp", "predicted_svr", "predicted_ridge"]].notna().all().all()

    # predictor.pt: the autoencoder's latents (flattened: pool none) -> MLP; usable on images
    from memlens.predict import load_memorability_model, read_predictor

    raw = read_predictor(run / "predictor.pt")
    assert raw["recipe"][0]["kind"] == "autoencoder" and raw["recipe"][0]["pool"] == "none"
    assert raw["info"]["inputs"] == "latents" and raw["info"]["n_images"] == 149
    assert raw["info"]["model"] == "svr" and raw["head"]["type"] == "svr"  # the default model
    model = load_memorability_model(run / "predictor.pt")
    assert model.input_size == 16
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pred = model.predict(x)
    assert pred.shape == (5,) and np.isfinite(pred).all()
    np.testing.assert_allclose(model.predict(x[:1]), pred[:1], rtol=1e-6)


def test_deterministic_for_a_seed(tmp_path):
    run, _ = make_run(tmp_path)
    args = ["fit-predictor", str(run), "--cv", "2", "--features", "features", *FAST]
    assert main(args) == 0
    first = pd.read_csv(run / "predictor_cv.csv").drop(columns="seconds")
    assert main(args) == 0
    second = pd.read_csv(run / "predictor_cv.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(first, second)


def test_paper_split_and_both_inputs(tmp_path):
    run, _ = make_run(tmp_path, halves=False)
    assert main(["fit-predictor", str(run), "--split", "paper", "--features", "both", *FAST]) == 0
    cv = pd.read_csv(run / "predictor_cv.csv")
    mlp = cv[(cv["model"] == "mlp") & (cv["fold"] != "mean")].iloc[0]
    assert (mlp["n_train"], mlp["n_val"], mlp["n_test"]) in {(89, 15, 45), (90, 15, 44), (89, 14, 46),
                                                             (90, 14, 45), (89, 16, 44), (88, 15, 46)}
    assert not {"human_consistency", "spearman_brown"} & set(cv.columns)
    from memlens.predict import read_predictor

    assert [r["kind"] for r in read_predictor(run / "predictor.pt")["recipe"]] == ["autoencoder", "pretrained"]


def test_user_errors(tmp_path, capsys):
    run, _ = make_run(tmp_path, with_autoencoder=False)
    assert main(["fit-predictor", str(run), "--features", "latents", *FAST]) == 1
    assert "autoencoder.pt" in capsys.readouterr().err
    (run / "features.npy").unlink()
    assert main(["fit-predictor", str(run), "--features", "features"]) == 1
    assert "features.npy not found" in capsys.readouterr().err
    (run / "latent_ids.txt").write_text("other.jpg\n")
    assert main(["fit-predictor", str(run), "--features", "latents"]) == 1
    assert "no row in" in capsys.readouterr().err
    assert main(["fit-predictor", str(tmp_path / "nowhere")]) == 1
    assert "per_image.csv: missing (make it with: memlens score" in capsys.readouterr().err
    run2, _ = make_run(tmp_path / "second")
    assert main(["fit-predictor", str(run2), "--cv", "1"]) == 1
    assert "at least 2 folds" in capsys.readouterr().err
    assert main(["fit-predictor", str(run2), "--device", "nonsense"]) == 2  # a typo: usage error
    assert "'nonsense': use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert main(["fit-predictor", str(run), "--hidden", "a,b"]) == 2
    assert main(["fit-predictor", str(run), "--split", "loo"]) == 2


def test_features_from_another_network_cannot_be_loaded_as_a_model(tmp_path):
    """features.npy here has 12 columns, not EfficientNet-Lite0's 1280: predictor.pt refuses to load."""
    from memlens.errors import CheckpointError
    from memlens.predict import load_memorability_model, load_regressor

    run, _ = make_run(tmp_path, halves=False)
    assert main(["fit-predictor", str(run), "--cv", "2", "--features", "features", "--model", "mlp", *FAST]) == 0
    with pytest.raises(CheckpointError, match="encoders give 1280 columns but its head expects 12"):
        load_memorability_model(run / "predictor.pt")
    assert load_regressor(run / "predictor.pt").n_features_in_ == 12  # the head alone still works
