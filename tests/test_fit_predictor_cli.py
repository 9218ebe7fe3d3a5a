"""``memlens fit-predictor`` on a fabricated run directory with a planted signal in the latents."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from memlens.cli import main

N = 150
CATS = ("beach", "forest", "city")


def make_run(tmp_path, *, halves: bool = True, with_autoencoder: bool = True, seed: int = 0,
             subcategories: bool = False):
    """per_image.csv, latents.npy (float16, 32 = 8x2x2 columns like the small autoencoder at 16 px),
    features.npy, latent_ids.txt (in a different order than the table), split_halves.npz, autoencoder.pt.
    ``subcategories``: a ``subcategory`` column too (MemCat's layout), of 5 to 40 images and one of 2."""
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
    if subcategories:  # per category: subcategories of 40, 5 and 5 images (i // 3 = rank inside the category)
        table["subcategory"] = [f"{CATS[i % 3]}-{0 if i // 3 < 40 else 1 + (i // 3) % 2}" for i in range(N)]
        table.loc[[0, 3], "subcategory"] = "beach-tiny"  # 2 images: fewer than the folds, merged into beach's rest
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
    """An explicit --model: no choice is made, so the nested estimate is plain k-fold (outer-cv rows only)."""
    run, table = make_run(tmp_path)
    assert main(["fit-predictor", str(run), "--cv", "3", "--features", "latents", "--seed", "1", "--model", "svr",
                 *FAST]) == 0
    out = capsys.readouterr().out
    assert "mlp" in out and "ridge" in out and "noise ceiling" in out and "149 images" in out
    assert "nested cross-validation" in out and "estimate for new images of this kind: Spearman" in out

    cv = pd.read_csv(run / "predictor_cv.csv")
    assert cv.columns[:5].tolist() == ["fold", "model", "inputs", "split", "estimate"]
    assert set(cv["estimate"]) == {"outer-cv"}  # 149 < 1,000 images: no holdout, and nothing was chosen
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
    # the pooled out-of-fold Spearman and its paired bootstrap CI, on the mean rows
    oof = pd.read_csv(run / "predictor_oof.csv")
    from scipy.stats import spearmanr

    assert mean.loc["svr", "spearman_pooled"] == pytest.approx(spearmanr(oof["predicted_svr"], oof["score"])[0])
    assert mean.loc["svr", "ci_low"] < mean.loc["svr", "spearman_pooled"] < mean.loc["svr", "ci_high"]
    assert cv.loc[cv["saved"], "model"].unique().tolist() == ["svr"]
    assert cv.loc[cv["reported"], "model"].unique().tolist() == ["svr"]

    assert len(oof) == 149 and oof[["predicted_mlp", "predicted_svr", "predicted_ridge"]].notna().all().all()
    assert set(oof["part"]) == {"outer-cv"}

    # predictor.pt: the autoencoder's latents (flattened: pool none) -> SVR; usable on images
    from memlens.predict import load_memorability_model, read_predictor

    raw = read_predictor(run / "predictor.pt")
    assert raw["recipe"][0]["kind"] == "autoencoder" and raw["recipe"][0]["pool"] == "none"
    assert raw["info"]["inputs"] == "latents" and raw["info"]["n_images"] == 149
    assert raw["info"]["model"] == "svr" and raw["head"]["type"] == "svr"
    est = raw["info"]["estimate"]
    assert est["kind"] == "outer-cv" and est["n"] == 149
    assert est["spearman"] == pytest.approx(mean.loc["svr", "spearman_pooled"])
    model = load_memorability_model(run / "predictor.pt")
    assert model.input_size == 16
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pred = model.predict(x)
    assert pred.shape == (5,) and np.isfinite(pred).all()
    np.testing.assert_allclose(model.predict(x[:1]), pred[:1], rtol=1e-6)


def test_auto_nested_selection_is_made_inside_each_outer_fold(tmp_path, capsys):
    """--model auto on a small set: an inner CV inside each outer fold's training rows picks the model; the
    ``selected`` rows carry the chosen model's predictions of that fold; the saved model is chosen by a CV of
    every image (inner-cv rows) and is the one in predictor.pt."""
    run, _ = make_run(tmp_path)
    assert main(["fit-predictor", str(run), "--cv", "3", "--features", "latents", "--seed", "1", *FAST]) == 0
    out = capsys.readouterr().out
    cv = pd.read_csv(run / "predictor_cv.csv")
    assert set(cv["estimate"]) == {"inner-cv", "outer-cv"}
    sel = cv[(cv["model"] == "selected") & (cv["fold"] != "mean")]
    assert len(sel) == 3 and set(sel["chosen"]) <= {"svr", "mlp", "ridge"}
    oof = pd.read_csv(run / "predictor_oof.csv")
    outer = cv[(cv["estimate"] == "outer-cv") & (cv["fold"] != "mean")]
    for _, r in sel.iterrows():  # each fold's selected figure is the chosen model's figure on that fold
        same = outer[(outer["fold"] == r["fold"]) & (outer["model"] == r["chosen"])]
        assert r["spearman"] == pytest.approx(float(same["spearman"].iloc[0]))
    from memlens.predict import read_predictor

    raw = read_predictor(run / "predictor.pt")
    inner = cv[(cv["estimate"] == "inner-cv") & (cv["fold"] == "mean")].set_index("model")["spearman"]
    assert raw["info"]["model"] == inner.idxmax()  # the best selection figure is saved
    assert raw["info"]["estimate"]["procedure"] == "selected"
    assert cv.loc[cv["reported"], "model"].unique().tolist() == ["selected"]
    from scipy.stats import spearmanr

    assert raw["info"]["estimate"]["spearman"] == pytest.approx(spearmanr(oof["predicted_selected"], oof["score"])[0])
    # nested: the procedure's gain over each fixed model, on the same outer-fold predictions
    versus = raw["info"]["estimate"]["versus"]
    assert set(versus) == {"svr", "mlp", "ridge"}
    for name, g in versus.items():
        assert g["diff"] == pytest.approx(spearmanr(oof["predicted_selected"], oof["score"])[0]
                                          - spearmanr(oof[f"predicted_{name}"], oof["score"])[0])
    # the fold's chosen model gives the same predictions as "selected" there: at least one difference is narrow
    assert min(g["ci_high"] - g["ci_low"] for g in versus.values()) < 0.2
    assert f"predictor.pt holds the {raw['info']['model']} model (chosen by --model auto on the selection figures" in out


def test_holdout_is_set_aside_before_any_choice(tmp_path, capsys):
    """--holdout 0.3: those images are in no inner fold, every model is scored once on them, and the figure
    reported for the saved model is its Spearman on them (with a paired bootstrap CI)."""
    run, _ = make_run(tmp_path)
    assert main(["fit-predictor", str(run), "--cv", "3", "--features", "latents", "--holdout", "0.3", *FAST]) == 0
    out = capsys.readouterr().out
    assert "45 images (30%) set aside before any choice" in out
    cv = pd.read_csv(run / "predictor_cv.csv")
    oof = pd.read_csv(run / "predictor_oof.csv")
    assert (oof["part"] == "holdout").sum() == 45 and (oof["part"] == "inner-cv").sum() == 104
    inner = cv[(cv["estimate"] == "inner-cv") & (cv["fold"] != "mean")]
    assert inner.groupby("model")["n_test"].sum().tolist() == [104, 104, 104]  # the holdout is in no fold
    hold = cv[(cv["estimate"] == "holdout") & (cv["fold"] != "mean")]
    assert hold["n_test"].tolist() == [45, 45, 45] and hold["n_train"].tolist() == [104, 104, 104]
    from scipy.stats import spearmanr

    from memlens.predict import read_predictor

    raw = read_predictor(run / "predictor.pt")
    chosen = raw["info"]["model"]
    h = oof[oof["part"] == "holdout"]
    rho = spearmanr(h[f"predicted_{chosen}"], h["score"])[0]
    assert raw["info"]["estimate"]["spearman"] == pytest.approx(rho)
    assert raw["info"]["estimate"]["kind"] == "holdout" and raw["info"]["estimate"]["n"] == 45
    assert raw["info"]["holdout"] == 0.3
    assert f"Spearman {rho:.3f}" in out and "on the 45 held-out images no choice saw" in out
    # the saved model minus each other model on the same 45 images, with a paired CI around the difference
    versus = raw["info"]["estimate"]["versus"]
    assert set(versus) == {"svr", "mlp", "ridge"} - {chosen}
    for name, g in versus.items():
        want = rho - spearmanr(h[f"predicted_{name}"], h["score"])[0]
        assert g["n"] == 45 and g["diff"] == pytest.approx(want) and g["ci_low"] <= want <= g["ci_high"]
        assert f"{name} {g['diff']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]" in out
        row = cv[(cv["estimate"] == "holdout") & (cv["fold"] == "mean") & (cv["model"] == name)].iloc[0]
        assert (row["reported_minus"], row["reported_minus_ci_low"], row["reported_minus_ci_high"],
                row["reported_minus_p"]) == pytest.approx((g["diff"], g["ci_low"], g["ci_high"], g["p_boot"]))
    assert f"the same 45 images, {chosen} minus each other model" in out
    assert cv.loc[cv["reported"], "reported_minus"].isna().all()  # no gain of the reported model over itself
    # the same seed sets the same images aside; another seed others
    first = set(h["image_id"])
    assert main(["fit-predictor", str(run), "--cv", "3", "--features", "latents", "--holdout", "0.3",
                 "--model", "ridge", *FAST]) == 0
    again = pd.read_csv(run / "predictor_oof.csv")
    assert set(again.loc[again["part"] == "holdout", "image_id"]) == first
    assert main(["fit-predictor", str(run), "--cv", "3", "--features", "latents", "--holdout", "0.3",
                 "--model", "ridge", "--seed", "5", *FAST]) == 0
    other = pd.read_csv(run / "predictor_oof.csv")
    assert set(other.loc[other["part"] == "holdout", "image_id"]) != first
    # ridge saved as a plain linear head that reproduces the pipeline's predictions
    from memlens.predict import load_regressor

    head = load_regressor(run / "predictor.pt")
    assert read_predictor(run / "predictor.pt")["info"]["model"] == "ridge" and head.coefs_[0].shape == (32, 1)
    assert main(["fit-predictor", str(run), "--holdout", "0.9"]) == 2
    assert "fraction in [0, 0.5]" in capsys.readouterr().err


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
    assert main(["fit-predictor", str(run), "--blend", "1"]) == 2  # the tails' weight: strictly inside (0, 1)
    assert main(["fit-predictor", str(run), "--finetune-seeds", "0"]) == 2
    assert main(["fit-predictor", str(run), "--finetune-stage", "0"]) == 2  # stages 1-7
    assert main(["fit-predictor", str(run), "--finetune-stage", "8"]) == 2
    from memlens.errors import ConfigError
    from memlens.predict import fit_predictor_run
    from memlens.predict.finetune import TRUNK_STAGE
    from memlens.predict.fitting import DEFAULT_BLEND

    with pytest.raises(ConfigError, match="blend must be between 0 and 1"):
        fit_predictor_run(run, blend=0.0)
    with pytest.raises(ConfigError, match="finetune_stage must be a stage of EfficientNet-Lite, 1-7"):
        fit_predictor_run(run, finetune_stage=0)
    # the CLI states the library's defaults (it does not import the library to show its help)
    assert main(["fit-predictor", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"[default: {DEFAULT_BLEND:g}]" in shown
    assert f"slower (worth a GPU). [default: {TRUNK_STAGE}]" in shown


def test_features_from_another_network_cannot_be_loaded_as_a_model(tmp_path):
    """features.npy here has 12 columns, not EfficientNet-Lite0's 1280: predictor.pt refuses to load."""
    from memlens.errors import CheckpointError
    from memlens.predict import load_memorability_model, load_regressor

    run, _ = make_run(tmp_path, halves=False)
    assert main(["fit-predictor", str(run), "--cv", "2", "--features", "features", "--model", "mlp", *FAST]) == 0
    with pytest.raises(CheckpointError, match="encoders give 1280 columns but its head expects 12"):
        load_memorability_model(run / "predictor.pt")
    assert load_regressor(run / "predictor.pt").n_features_in_ == 12  # the head alone still works


def test_report_leads_with_the_honest_estimate(tmp_path):
    """The report's predictor section and headline give the held-out figure (with its CI) for the saved model,
    and label the inner cross-validation figures as the selection figures, apart."""
    from memlens.predict import read_predictor
    from memlens.report import collect_report

    run, _ = make_run(tmp_path)
    assert main(["fit-predictor", str(run), "--cv", "3", "--features", "latents", "--holdout", "0.3", *FAST]) == 0
    est = read_predictor(run / "predictor.pt")["info"]["estimate"]
    page, results = collect_report(run)
    pred = results["predictor"]
    assert pred["estimate"]["kind"] == "holdout" and pred["estimate"]["n"] == 45
    assert pred["estimate"]["spearman"] == pytest.approx(est["spearman"])
    assert pred["estimate"]["ci_low"] == pytest.approx(est["ci_low"])
    assert set(pred["inner"]) == {"mlp", "svr", "ridge"}
    assert results["headline"]["predictor rho (on held-out images no choice saw)"] == pytest.approx(
        est["spearman"], abs=5e-4)
    assert "Selection figures (inner cross-validation)" in page and "set aside" in page
    assert f"{est['spearman']:.3f}" in page
    # one CI per figure: the report quotes fit-predictor's (the same in the headline, the table and predictor_cv.csv)
    assert pred["oof"][est["model"]]["ci_low"] == pytest.approx(est["ci_low"])
    assert pred["oof"][est["model"]]["r"] == pytest.approx(est["spearman"])
    # the table of every model carries the saved model's paired gain over each, as fit-predictor computed it
    gains = pred["gains"]
    assert gains["reference"] == est["model"] and set(gains["models"]) == set(est["versus"])
    for name, g in est["versus"].items():  # the report quotes fit-predictor's figures, CIs included
        assert (gains["models"][name]["diff"], gains["models"][name]["ci_low"], gains["models"][name]["ci_high"]) \
            == pytest.approx((g["diff"], g["ci_low"], g["ci_high"]))
        assert f"{g['diff']:+.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}]" in page
    assert f"ρ of {est['model']} minus this one [95% CI]" in page


def test_subcategory_stratification_end_to_end(tmp_path):
    """A run with a subcategory column: --stratify subcategory (and auto) stratifies by category > subcategory >
    score half, while the default keeps category strata; each
    subcategory is spread over the folds within one image (a 2-image one merged into its category's rest); the
    fold of every image is in predictor_oof.csv; category stratification gives the splits of before."""
    from memlens.errors import ConfigError
    from memlens.predict import fit_predictor_run, read_predictor

    run, table = make_run(tmp_path / "sub", subcategories=True)
    res = fit_predictor_run(run, cv=3, inputs="latents", model="svr", holdout=0, hidden=(16,), max_epochs=30,
                            finetune=None, stratify="auto")
    assert res["stratify"] == "subcategory"
    assert read_predictor(run / "predictor.pt")["info"]["stratify"] == "subcategory"
    oof = pd.read_csv(run / "predictor_oof.csv")
    assert oof["fold"].notna().all() and set(oof["fold"]) == {0, 1, 2}
    cv = pd.read_csv(run / "predictor_cv.csv")
    outer = cv[(cv["model"] == "svr") & (cv["fold"] != "mean")]
    assert oof["fold"].value_counts().sort_index().tolist() == outer["n_test"].astype(int).tolist()
    sub = oof["image_id"].map(dict(zip(table["image_id"], table["subcategory"], strict=True)))
    sub = sub.where(sub != "beach-tiny", "beach|rest")  # the merged remainder counts as one group
    for g, rows in oof.groupby(sub):
        counts = rows["fold"].value_counts().reindex([0, 1, 2], fill_value=0)
        assert counts.max() - counts.min() <= 1, (g, counts.tolist())
    assert np.isfinite(oof["predicted_svr"]).all() and cv["spearman"].notna().all()
    # with a holdout too (stratified alike)
    res = fit_predictor_run(run, cv=3, inputs="latents", model="ridge", holdout=0.3, hidden=(16,), max_epochs=30,
                            finetune=None, stratify="subcategory")
    assert res["estimate"]["kind"] == "holdout" and res["stratify"] == "subcategory"

    # the default (category) on that run: the same splits as a run without the column (the behaviour before)
    fit_predictor_run(run, cv=3, inputs="latents", model="svr", holdout=0, hidden=(16,), max_epochs=30,
                      finetune=None)
    assert read_predictor(run / "predictor.pt")["info"]["stratify"] == "category"
    plain, _ = make_run(tmp_path / "plain")
    res = fit_predictor_run(plain, cv=3, inputs="latents", model="svr", holdout=0, hidden=(16,), max_epochs=30,
                            finetune=None)
    assert res["stratify"] == "category"
    pd.testing.assert_frame_equal(pd.read_csv(run / "predictor_oof.csv"), pd.read_csv(plain / "predictor_oof.csv"))
    assert main(["fit-predictor", str(run), "--cv", "3", "--features", "latents", "--model", "ridge", "--holdout",
                 "0", "--stratify", "subcategory", *FAST]) == 0
    assert read_predictor(run / "predictor.pt")["info"]["stratify"] == "subcategory"
    with pytest.raises(ConfigError, match="no subcategory column"):
        fit_predictor_run(plain, cv=3, inputs="latents", stratify="subcategory", finetune=None)
    with pytest.raises(ConfigError, match="stratify must be one of"):
        fit_predictor_run(plain, cv=3, inputs="latents", stratify="random", finetune=None)


def test_estimate_within_and_between_categories(tmp_path, capsys):
    """predictor_categories.csv: the honest predictions' Spearman pooled, per category, within and between,
    recomputed here from predictor_oof.csv; the CLI prints the within line; the report quotes the file."""
    from memlens.predict import read_predictor
    from memlens.report import collect_report
    from memlens.stats import between_groups, correlate

    run, table = make_run(tmp_path)
    assert main(["fit-predictor", str(run), "--cv", "3", "--features", "latents", "--model", "ridge",
                 "--holdout", "0", *FAST]) == 0
    out = capsys.readouterr().out
    parts = pd.read_csv(run / "predictor_categories.csv")
    assert list(parts.scope) == ["pooled", "group", "group", "group", "within", "between"]
    oof = pd.read_csv(run / "predictor_oof.csv").merge(table[["image_id", "category"]], on="image_id")
    oof = oof[oof.part == "outer-cv"]
    within = correlate(oof.predicted_ridge, oof.score, groups=oof.category, n_boot=0).r
    pooled = correlate(oof.predicted_ridge, oof.score, n_boot=0).r
    assert parts[parts.scope == "within"].r.iloc[0] == pytest.approx(within)
    assert parts[parts.scope == "pooled"].r.iloc[0] == pytest.approx(pooled)
    between = between_groups(oof.predicted_ridge, oof.score, oof.category, n_boot=0).r
    assert parts[parts.scope == "between"].r.iloc[0] == pytest.approx(between)
    assert (parts.ceiling.dropna() > parts.split_half.dropna()).all()  # sqrt(Spearman-Brown) of the halves
    est = read_predictor(run / "predictor.pt")["info"]["estimate"]
    assert est["within"]["r"] == pytest.approx(within) and est["between"]["n_groups"] == 3
    assert f"within category (category means removed): Spearman {within:.3f}" in out
    _, results = collect_report(run)
    got = results["predictor"]["estimate_parts"]
    assert got["source"] == "predictor_categories.csv" and got["within"]["r"] == pytest.approx(within)
    assert got["within"]["ci_low"] == pytest.approx(parts[parts.scope == "within"].ci_low.iloc[0])


@pytest.mark.parametrize("holdout", [0, 0.3])
def test_on_step_counts_every_fit_towards_a_known_total(tmp_path, holdout):
    """fit-predictor's progress bar: on_step(done, total) once per fit, the total known from the first call."""
    from memlens.predict import fit_predictor_run

    run, _ = make_run(tmp_path)
    calls = []
    fit_predictor_run(run, cv=3, inputs="latents", holdout=holdout, hidden=(16,), max_epochs=20, finetune=None,
                      on_step=lambda done, total: calls.append((done, total)))
    totals = {t for _, t in calls}
    assert len(totals) == 1 and [d for d, _ in calls] == list(range(1, len(calls) + 1))
    # holdout: 3 inner folds + the holdout fit + the final model; nested with --model auto: 3 outer folds, the
    # inner folds of each outer fold's choice, 3 folds for the saved model's choice, the final model
    assert calls[-1][0] == totals.pop() == (3 + 1 + 1 if holdout else 3 + 3 * 3 + 3 + 1)
