"""memlens.predict: the MLP estimator, the image -> score model, predictor files, splits and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.model_selection import cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from memlens.errors import CheckpointError
from memlens.predict import (
    MemorabilityModel,
    MemorabilityRegressor,
    MemorabilitySVR,
    cross_validate,
    holdout_split,
    load_memorability_model,
    make_splits,
    prediction_metrics,
    ridge_baseline,
    save_predictor,
    strata_labels,
)

FAST = {"hidden": (16,), "max_epochs": 40, "random_state": 0}
CHECKED = {"hidden": (32,), "lr": 1e-2, "max_epochs": 30, "random_state": 0}


# ------------------------------------------------------------------------------------------ estimator contract
@parametrize_with_checks([MemorabilityRegressor(**CHECKED)])
def test_sklearn_estimator_checks(estimator, check):
    """Every scikit-learn estimator check passes (none is skipped or expected to fail)."""
    check(estimator)


def _nonlinear(n: int, d: int = 6, seed: int = 0, noise: float = 0.1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    f = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * np.abs(x[:, 3])
    return x, f + noise * rng.normal(size=n), f


def test_recovers_nonlinear_function_where_ridge_cannot():
    x, y, _ = _nonlinear(400)
    xt, _, ft = _nonlinear(300, seed=1, noise=0.0)
    mlp = MemorabilityRegressor(hidden=(64,), lr=3e-3, max_epochs=80, random_state=0).fit(x, y)
    rho_mlp = spearmanr(mlp.predict(xt), ft)[0]
    rho_ridge = spearmanr(ridge_baseline().fit(x, y).predict(xt), ft)[0]
    # measured over three data/model seeds: MLP 0.81-0.87, ridge 0.28-0.38 (the function is mostly non-linear)
    assert rho_mlp > 0.7
    assert rho_ridge < 0.5
    assert mlp.best_epoch_ <= mlp.n_epochs_ <= 80


def test_ridge_baseline_on_linear_data():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 30))
    w = rng.normal(size=30)
    y = x @ w + 0.1 * rng.normal(size=200)
    xt = rng.normal(size=(100, 30))
    model = ridge_baseline().fit(x, y)
    assert spearmanr(model.predict(xt), xt @ w)[0] > 0.99
    assert model[-1].alpha_ in model[-1].alphas


def test_deterministic_and_leaves_global_rng_alone():
    x, y, _ = _nonlinear(150)
    state = torch.get_rng_state()
    a = MemorabilityRegressor(**FAST).fit(x, y).predict(x)
    assert torch.equal(state, torch.get_rng_state())
    b = MemorabilityRegressor(**FAST).fit(x, y).predict(x)
    c = MemorabilityRegressor(**{**FAST, "random_state": 1}).fit(x, y).predict(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_num_threads_restored():
    x, y, _ = _nonlinear(60)
    before = torch.get_num_threads()
    MemorabilityRegressor(**FAST, num_threads=1).fit(x, y)
    assert torch.get_num_threads() == before


def test_early_stopping_keeps_best_validation_weights():
    x, y, _ = _nonlinear(300)
    xv, yv, _ = _nonlinear(80, seed=3)
    est = MemorabilityRegressor(hidden=(64,), lr=1e-2, max_epochs=100, patience=5, random_state=0)
    est.fit(x, y, validation_data=(xv, yv))
    assert est.best_val_loss_ == pytest.approx(min(est.val_loss_curve_))
    assert est.n_epochs_ == len(est.val_loss_curve_) and est.n_epochs_ - est.best_epoch_ <= 5
    mse_std = np.mean(((est.predict(xv) - yv) / est.y_scale_) ** 2)
    assert mse_std == pytest.approx(est.best_val_loss_, rel=1e-4)


def test_standardisation_uses_training_rows_and_predictions_are_in_target_units():
    rng = np.random.default_rng(4)
    x = rng.normal(loc=50, scale=10, size=(120, 5))
    y = 1000 + 5 * x[:, 0]
    est = MemorabilityRegressor(**FAST, val_fraction=0.0).fit(x, y)
    np.testing.assert_allclose(est.x_mean_, x.mean(axis=0))
    np.testing.assert_allclose(est.x_scale_, x.std(axis=0))
    assert est.y_mean_ == pytest.approx(y.mean())
    assert abs(np.mean(est.predict(x)) - y.mean()) < 0.2 * y.std()


def test_works_in_cross_val_score():
    x, y, _ = _nonlinear(200)
    scores = cross_val_score(MemorabilityRegressor(**FAST), x, y, cv=3, scoring="neg_mean_squared_error")
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_bad_parameters_raise_at_fit():
    x, y, _ = _nonlinear(30)
    for bad in ({"dropout": 1.0}, {"hidden": (0,)}, {"val_fraction": 1.0}, {"max_epochs": 0}):
        with pytest.raises(ValueError):
            MemorabilityRegressor(**{**FAST, **bad}).fit(x, y)


def test_torch_head_matches_numpy_and_state_roundtrip(tmp_path):
    x, y, _ = _nonlinear(100)
    est = MemorabilityRegressor(hidden=(16, 8), max_epochs=20, random_state=0).fit(x, y)
    head = est.to_torch()
    with torch.no_grad():
        np.testing.assert_allclose(head(torch.from_numpy(x)).numpy(), est.predict(x), rtol=1e-5, atol=1e-5)
    torch.save(est.get_state(), tmp_path / "state.pt")
    again = MemorabilityRegressor.from_state(torch.load(tmp_path / "state.pt", weights_only=True))
    np.testing.assert_array_equal(again.predict(x), est.predict(x))
    assert again.get_params() == est.get_params()


# ------------------------------------------------------------------------------------------ image -> score
class TinyEncoder(nn.Module):
    """Conv + batch norm + pooling: images -> (N, 4, 2, 2)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.AdaptiveAvgPool2d(2))
        with torch.no_grad():
            self.net[1].running_mean.uniform_(-0.1, 0.1)

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def images():
    return torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _fitted_model(images, pool="none"):
    enc = TinyEncoder().eval()
    with torch.no_grad():
        z = enc(images)
    feats = (z.flatten(2).mean(2) if pool == "avg" else z.flatten(1)).numpy()
    y = feats[:, 0] * 3 + feats[:, 1]
    est = MemorabilityRegressor(hidden=(8,), max_epochs=30, random_state=0, val_fraction=0).fit(feats, y)
    return MemorabilityModel(enc, est, pool=pool, sizes=8), est, feats


@pytest.mark.parametrize("pool", ["none", "avg"])
def test_model_equals_encoder_then_regressor(images, pool):
    model, est, feats = _fitted_model(images, pool)
    assert model.input_size == 8
    np.testing.assert_allclose(model.predict(images), est.predict(feats), rtol=1e-5, atol=1e-6)


def test_model_is_differentiable_and_batch_invariant(images):
    model, _, _ = _fitted_model(images)
    model.train()  # encoders stay in eval mode: batch norm uses running statistics
    assert not model.encoder.training
    x = images.clone().requires_grad_(True)
    model.eval()
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    p1, p7, p32 = (model.predict(images, batch_size=b) for b in (1, 7, 32))
    np.testing.assert_allclose(p1, p32, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p7, p32, rtol=1e-6, atol=1e-7)


def test_model_resizes_and_checks_range(images):
    model, _, _ = _fitted_model(images)
    big = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    assert model.predict(big.clamp(0, 1)).shape == (20,)
    with pytest.raises(ValueError, match="observed min"):
        model(images * 255)


def test_two_encoders_concatenate(images):
    enc_a, enc_b = TinyEncoder().eval(), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        feats = torch.cat([enc_a(images).flatten(2).mean(2), enc_b(images)], dim=1).numpy()
    est = MemorabilityRegressor(hidden=(8,), max_epochs=10, random_state=0).fit(feats, feats.sum(1))
    model = MemorabilityModel([enc_a, enc_b], est, pool=["avg", "none"])
    np.testing.assert_allclose(model.predict(images), est.predict(feats), rtol=1e-5, atol=1e-6)


def _autoencoder_run(tmp_path):
    from memlens.models import create_autoencoder, save_autoencoder

    ae = create_autoencoder("small", input_size=16, width=4, latent_channels=8)
    save_autoencoder(tmp_path / "autoencoder.pt", ae)
    return ae


def test_predictor_file_roundtrip(tmp_path):
    from memlens._io import file_sha256

    ae = _autoencoder_run(tmp_path).eval()
    x = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = ae.encode(x).flatten(2).mean(2).numpy()
    est = MemorabilityRegressor(hidden=(8,), max_epochs=10, random_state=0).fit(z, z[:, 0])
    recipe = [{"kind": "autoencoder", "checkpoint": "autoencoder.pt", "sha256": file_sha256(tmp_path / "autoencoder.pt"),
               "pool": "avg", "layer": None, "size": 16, "dim": 8}]
    save_predictor(tmp_path / "predictor.pt", est, recipe, info={"note": "test", "rho": np.float64(0.5)})
    raw = torch.load(tmp_path / "predictor.pt", weights_only=True)  # plain content only
    assert raw["format"] == "memlens.predictor" and raw["info"]["rho"] == 0.5
    model = load_memorability_model(tmp_path / "predictor.pt")
    np.testing.assert_allclose(model.predict(x), est.predict(z), rtol=1e-5, atol=1e-6)
    assert model.input_size == 16 and model.info["note"] == "test"
    # save again through the model, load through the class method
    model.save(tmp_path / "again.pt")
    np.testing.assert_allclose(MemorabilityModel.load(tmp_path / "again.pt").predict(x), model.predict(x))


def test_predictor_file_errors(tmp_path):
    ae = _autoencoder_run(tmp_path)
    est = MemorabilityRegressor(hidden=(4,), max_epochs=2, random_state=0).fit(np.eye(8), np.arange(8.0))
    recipe = [{"kind": "autoencoder", "checkpoint": "autoencoder.pt", "sha256": "0" * 64, "pool": "avg",
               "size": 16, "dim": 8}]
    save_predictor(tmp_path / "predictor.pt", est, recipe)
    with pytest.raises(CheckpointError, match="changed since the predictor was fitted"):  # an older predictor
        load_memorability_model(tmp_path / "predictor.pt")
    # newer predictors compare the weights, not the file: the same weights saved again (other timings in the
    # file) are accepted, other weights are refused
    from memlens.models import create_autoencoder, save_autoencoder
    from memlens.predict import weights_sha256

    save_autoencoder(tmp_path / "autoencoder.pt", ae, extra={"seconds": 12.3})
    save_predictor(tmp_path / "predictor.pt", est, [{**recipe[0], "weights_sha256": weights_sha256(ae)}])
    assert load_memorability_model(tmp_path / "predictor.pt").predict(torch.rand(2, 3, 16, 16)).shape == (2,)
    other = create_autoencoder(ae.spec.name, **{k: v for k, v in ae.config.items() if k != "seed"}, seed=7)
    save_autoencoder(tmp_path / "autoencoder.pt", other)
    with pytest.raises(CheckpointError, match="holds other weights than the autoencoder the predictor was fitted on"):
        load_memorability_model(tmp_path / "predictor.pt")
    # the same tensors with another input normalisation compute something else: another hash
    renorm = create_autoencoder(ae.spec.name, **{**ae.config, "normalize": "none"})
    renorm.load_state_dict(ae.state_dict())
    assert weights_sha256(renorm) != weights_sha256(ae)
    torch.save({"hello": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a memlens predictor"):
        load_memorability_model(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_memorability_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="columns"):
        save_predictor(tmp_path / "bad.pt", est, [{**recipe[0], "dim": 5}])
    del ae


# ------------------------------------------------------------------------------------------ splits and metrics
def _strata(n=403, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    cats = rng.choice(["a", "b", "c", "d"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    return strata_labels(scores, cats), scores, cats


def test_strata_labels():
    labels = strata_labels(np.array([0.1, 0.9, 0.2, 0.8]), ["x", "x", "y", "y"])
    assert labels.tolist() == ["x|lo", "x|hi", "y|lo", "y|hi"]
    assert strata_labels(np.array([1.0, 2.0, 3.0])).tolist() == ["lo", "lo", "hi"]


def test_kfold_splits_are_disjoint_complete_and_stratified():
    strata, _, _ = _strata()
    splits = make_splits(strata, "kfold", 5, seed=3)
    tests = np.concatenate([s["test"] for s in splits])
    assert sorted(tests.tolist()) == list(range(len(strata)))  # every row tested exactly once
    for s in splits:
        assert not np.intersect1d(s["train"], s["test"]).size and len(s["val"]) == 0
        assert len(s["train"]) + len(s["test"]) == len(strata)
    for lab in set(strata):
        counts = [int((strata[s["test"]] == lab).sum()) for s in splits]
        assert max(counts) - min(counts) <= 1, (lab, counts)
    again = make_splits(strata, "kfold", 5, seed=3)
    assert all(np.array_equal(a["test"], b["test"]) for a, b in zip(splits, again, strict=True))
    other = make_splits(strata, "kfold", 5, seed=4)
    assert not np.array_equal(splits[0]["test"], other[0]["test"])


def test_paper_split_is_60_10_30_within_every_stratum():
    strata, _, _ = _strata()
    splits = make_splits(strata, "paper", 3, seed=0)
    assert len(splits) == 3
    for s in splits:
        parts = [s["train"], s["val"], s["test"]]
        assert sum(len(p) for p in parts) == len(strata)
        assert len(np.unique(np.concatenate(parts))) == len(strata)  # disjoint and complete
        for lab in set(strata):
            size = int((strata == lab).sum())
            for part, frac in zip(parts, (0.6, 0.1, 0.3), strict=True):
                assert abs(int((strata[part] == lab).sum()) - frac * size) <= 2, (lab, frac)
    assert not np.array_equal(splits[0]["test"], splits[1]["test"])


def test_split_arguments():
    with pytest.raises(ValueError, match="kfold or paper|'kfold' or 'paper'"):
        make_splits(["a"] * 10, "loo")
    with pytest.raises(ValueError):
        make_splits(["a"] * 3, "kfold", 5)


def test_prediction_metrics_known_values():
    y = np.array([0.1, 0.4, 0.2, 0.9, 0.5, 0.7])
    perfect = prediction_metrics(y, y)
    assert perfect["spearman"] == pytest.approx(1) and perfect["pearson"] == pytest.approx(1)
    assert perfect["mse"] == 0 and perfect["auc"] == 1
    reverse = prediction_metrics(y, -y)
    assert reverse["spearman"] == pytest.approx(-1) and reverse["auc"] == 0
    assert np.isnan(prediction_metrics(y, np.ones_like(y))["spearman"])
    assert prediction_metrics(y, y + 0.1)["mse"] == pytest.approx(0.01)


def test_no_leakage_scalers_fit_on_training_rows_only():
    x, y, _ = _nonlinear(90)
    strata = strata_labels(y)
    splits = make_splits(strata, "paper", 1, seed=0)
    res = cross_validate(x, y, splits, regressor=MemorabilityRegressor(**FAST), return_estimators=True)
    sp, fitted = splits[0], res.estimators[0]
    # the MLP's scaler saw only the training rows, ridge's only train + validation rows
    np.testing.assert_allclose(fitted["mlp"].x_mean_, x[sp["train"]].mean(axis=0), rtol=1e-6)
    trval = np.concatenate([sp["train"], sp["val"]])
    np.testing.assert_allclose(fitted["ridge"][0].mean_, x[trval].mean(axis=0), rtol=1e-6)
    # changing the test rows (inputs and scores) changes nothing that was learned
    x2, y2 = x.copy(), y.copy()
    x2[sp["test"]] = 1e3
    y2[sp["test"]] = -5.0
    res2 = cross_validate(x2, y2, splits, regressor=MemorabilityRegressor(**FAST), return_estimators=True)
    for a, b in zip(fitted["mlp"].coefs_, res2.estimators[0]["mlp"].coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fitted["ridge"][-1].coef_, res2.estimators[0]["ridge"][-1].coef_)
    table = res.table
    assert set(table["model"]) == {"mlp", "ridge"} and (table["n_test"] == len(sp["test"])).all()
    assert np.isfinite(res.oof["mlp"][sp["test"]]).all() and np.isnan(res.oof["mlp"][sp["train"]]).all()


def test_blends_are_weighted_means_of_the_fold_predictions():
    """A blend costs no fit: its out-of-fold predictions are the weighted mean of its members' (a sequence of
    names: the plain mean); weights are divided by their sum, and negative or all-zero weights are refused."""
    x, y, _ = _nonlinear(60)
    splits = make_splits(strata_labels(y), n_splits=3, seed=0)
    res = cross_validate(x, y, splits, mlp=False, svr=MemorabilitySVR(),
                         blends={"plain": ("svr", "ridge"), "weighted": {"svr": 3.0, "ridge": 1.0}})
    np.testing.assert_allclose(res.oof["plain"], (res.oof["svr"] + res.oof["ridge"]) / 2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.oof["weighted"], 0.75 * res.oof["svr"] + 0.25 * res.oof["ridge"], rtol=0,
                               atol=1e-12)
    assert not np.allclose(res.oof["plain"], res.oof["weighted"])
    assert set(res.table["model"]) == {"svr", "ridge", "plain", "weighted"}
    for bad in ({"svr": -0.5, "ridge": 1.5}, {"svr": 0.0, "ridge": 0.0}):
        with pytest.raises(ValueError, match="weights must be >= 0"):
            cross_validate(x, y, splits, mlp=False, svr=MemorabilitySVR(), blends={"b": bad})


# ------------------------------------------------------------------------------ stratification by subcategory
def _subcategory_table(seed=0):
    """Three categories with subcategories of 40 down to 2 images (the small ones: fewer than the folds)."""
    sizes = {"animal": [40, 23, 7, 2], "food": [31, 18, 3], "sports": [55, 12, 1]}
    cats = np.array([c for c, subs in sizes.items() for k, m in enumerate(subs) for _ in range(m)], dtype=object)
    subs = np.array([f"{c}{k}" for c, subs in sizes.items() for k, m in enumerate(subs) for _ in range(m)],
                    dtype=object)
    perm = np.random.default_rng(seed).permutation(len(cats))  # rows of a subcategory are not contiguous
    scores = np.random.default_rng(seed + 1).random(len(cats))
    return scores, cats[perm], subs[perm]


def test_subcategory_strata_merge_small_subcategories_into_their_category_rest():
    from memlens.predict.evaluation import SUBCATEGORY_REST

    scores, cats, subs = _subcategory_table()
    labels = strata_labels(scores, cats, subs, min_size=5)
    groups = {lab.rsplit("|", 1)[0] for lab in labels}
    assert groups == {"animal|animal0", "animal|animal1", "animal|animal2", f"animal|{SUBCATEGORY_REST}",
                      "food|food0", "food|food1", f"food|{SUBCATEGORY_REST}", "sports|sports0", "sports|sports1",
                      f"sports|{SUBCATEGORY_REST}"}
    rest = labels[subs == "animal3"]
    assert all(lab.startswith(f"animal|{SUBCATEGORY_REST}|") for lab in rest)  # 2 < 5 members: merged
    assert all(lab.startswith("animal|animal2|") for lab in labels[subs == "animal2"])  # 7 >= 5: kept
    # without categories the remainder is shared; unknown subcategories are merged too
    no_cat = strata_labels(scores[:4], None, ["x", "x", None, float("nan")], min_size=2)
    assert [lab.rsplit("|", 1)[0] for lab in no_cat] == ["x", "x", SUBCATEGORY_REST, SUBCATEGORY_REST]
    # the category strata are unchanged
    assert strata_labels(scores[:2], cats[:2]).tolist() == [f"{cats[0]}|{'hi' if scores[0] > np.median(scores[:2]) else 'lo'}",
                                                            f"{cats[1]}|{'hi' if scores[1] > np.median(scores[:2]) else 'lo'}"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subcategory_splits_hold_the_proportions_of_every_subcategory(seed):
    """Nested dealing: every subcategory (the merged remainder counted as one), every category and every
    subcategory x score half is spread over the folds within one image of its share; the holdout too."""
    scores, cats, subs = _subcategory_table(seed)
    k = 5
    labels = strata_labels(scores, cats, subs, min_size=k)
    group = np.array([lab.rsplit("|", 1)[0] for lab in labels], dtype=object)
    levels = {"category": cats, "subcategory": group, "subcategory x half": labels}
    splits = make_splits(labels, "kfold", k, seed=seed, nested=True)
    assert sorted(np.concatenate([s["test"] for s in splits]).tolist()) == list(range(len(labels)))
    for name, lev in levels.items():
        for g in set(lev.tolist()):
            size = int((lev == g).sum())
            counts = [int((lev[s["test"]] == g).sum()) for s in splits]
            assert all(abs(c - size / k) < 1 for c in counts), (name, g, counts)
    hs = holdout_split(labels, 0.2, seed=seed, nested=True)
    assert len(hs["holdout"]) == round(0.2 * len(labels))
    for name, lev in levels.items():
        for g in set(lev.tolist()):
            size = int((lev == g).sum())
            assert abs(int((lev[hs["holdout"]] == g).sum()) - 0.2 * size) < 1, (name, g)
    # the paper split deals a 10-image 6/1/3 pattern: every subcategory within 1.2 images of 60/10/30
    for sp in make_splits(labels, "paper", 2, seed=seed, nested=True):
        for g in set(group.tolist()):
            size = int((group == g).sum())
            for part, frac in (("train", 0.6), ("val", 0.1), ("test", 0.3)):
                assert abs(int((group[sp[part]] == g).sum()) - frac * size) <= 1.2 + 1e-9, (g, part)
    # the flat (category) dealing is what it was: nested=False is the default
    flat = strata_labels(scores, cats)
    assert all(np.array_equal(a["test"], b["test"]) for a, b in
               zip(make_splits(flat, "kfold", k, seed=seed), make_splits(flat, "kfold", k, seed=seed, nested=False),
                   strict=True))


def test_resolve_stratify():
    from memlens.errors import ConfigError
    from memlens.predict.evaluation import resolve_stratify

    assert resolve_stratify("auto", True) == "subcategory" and resolve_stratify(None, False) == "category"
    assert resolve_stratify("category", True) == "category" and resolve_stratify("none", True) == "none"
    with pytest.raises(ConfigError, match="no subcategory column"):
        resolve_stratify("subcategory", False)
    with pytest.raises(ConfigError, match="stratify must be one of auto, category, subcategory, none"):
        resolve_stratify("random", True)


def test_svr_head_scores_an_image_the_same_in_any_row_of_a_batch():
    """The differentiable SVR head computes distances pair by pair: two copies of one image in a batch, and the
    image alone, get bit-identical scores (the matrix-product form of cdist rounded rows differently)."""
    from memlens.predict import MemorabilitySVR

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 40)).astype(np.float32)
    head = MemorabilitySVR().fit(X, rng.random(80)).to_torch()
    assert sum(len(sv) for sv in head.sv) > 25  # enough support vectors for cdist's matrix-product path
    x = torch.from_numpy(rng.normal(size=(1, 40)).astype(np.float32))
    with torch.no_grad():
        batch = head(torch.cat([x, torch.from_numpy(X[:30]), x]))
        alone = head(x)
    assert batch[0] == batch[-1] == alone[0]


def test_paired_gains_are_paired_bootstrap_differences_of_spearman():
    """paired_gains: the reference model's Spearman minus each other's on the same rows, with a CI from shared
    resamples: narrow for two close models, excluding 0 for a clearly worse one; rows missing a prediction drop
    out of that pair only."""
    from scipy.stats import spearmanr

    from memlens.predict import paired_gains
    from memlens.stats import correlation_difference

    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    good = y + rng.normal(size=400)
    close = good + 0.05 * rng.normal(size=400)
    bad = y + 3 * rng.normal(size=400)
    gapped = bad.copy()
    gapped[:50] = np.nan
    g = paired_gains(y, {"good": good, "close": close, "bad": bad, "gapped": gapped}, "good", seed=3)
    assert set(g) == {"close", "bad", "gapped"}
    assert g["bad"]["diff"] == pytest.approx(spearmanr(good, y)[0] - spearmanr(bad, y)[0])
    assert g["bad"]["ci_low"] > 0 and g["bad"]["p_boot"] < 0.01
    assert g["close"]["ci_low"] < g["close"]["diff"] < g["close"]["ci_high"]
    assert g["close"]["ci_high"] - g["close"]["ci_low"] < 0.5 * (g["bad"]["ci_high"] - g["bad"]["ci_low"])
    assert g["gapped"]["n"] == 350 and g["bad"]["n"] == 400
    want = correlation_difference(good, gapped, y, seed=3)
    assert g["gapped"]["diff"] == pytest.approx(want["diff"]) and g["gapped"]["ci_low"] == pytest.approx(want["ci_low"])
    with pytest.raises(ValueError, match="no predictions of the reference model 'best'"):
        paired_gains(y, {"good": good}, "best")
