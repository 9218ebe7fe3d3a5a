"""Integrated Gradients, baselines, aggregate maps, figures and the randomisation check, on toy models."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from memlens.explain import (
    aggregate_figure,
    aggregate_maps,
    gaussian_blur,
    integrated_gradients,
    make_baseline,
    normalize_maps,
    overlay_figure,
    randomization_check,
    randomize_weights,
    save_figure,
)

torch.set_num_threads(1)
H = W = 8


class Linear(nn.Module):
    """f(x) = sum(w * x): IG attributions are exactly (x - baseline) * w."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return (x * self.w).sum(dim=(1, 2, 3))


class Wiggly(nn.Module):
    """A strongly non-linear score, sum(sin(25 x)): a two-step path integral cannot converge."""

    def forward(self, x):
        return torch.sin(25.0 * x).sum(dim=(1, 2, 3))


class Toy(nn.Module):
    """Encoder + head like MemorabilityModel, with dropout and batch norm (eval mode matters)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten()
        )
        self.head = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(4 * (H // 2) * (W // 2), 6), nn.Tanh(), nn.Linear(6, 1)
        )
        with torch.no_grad():
            self.encoder[1].running_mean.uniform_(-0.1, 0.1)
            self.encoder[1].running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.head(self.encoder(x)).squeeze(1)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(5, 3, H, W, generator=g)


@pytest.mark.parametrize("baseline", ["black", "mean", "blur", "tensor"])
def test_linear_model_closed_form_and_zero_delta(images, baseline):
    w = torch.randn(3, H, W, generator=torch.Generator().manual_seed(2))
    model = Linear(w)
    b = torch.full((3, H, W), 0.3) if baseline == "tensor" else baseline
    res = integrated_gradients(model, images, baseline=b, n_steps=4, internal_batch_size=3)
    base = make_baseline(images, b)
    expected = ((images - base) * w).numpy()
    np.testing.assert_allclose(res.attributions, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.delta, 0.0, atol=1e-4)
    assert not res.flagged.any()
    np.testing.assert_allclose(res.maps[:, 0], np.abs(expected).sum(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.signed_maps[:, 0], expected.sum(axis=1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        res.scores - res.baseline_scores, expected.sum(axis=(1, 2, 3)), rtol=1e-4, atol=1e-4
    )
    assert res.maps.shape == (5, 1, H, W) and res.attributions.shape == (5, 3, H, W)
    assert res.baseline == baseline


def test_baselines():
    x = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(3))
    mean = make_baseline(x, "mean")
    np.testing.assert_allclose(mean[:, :, 4, 7], x.mean(dim=(2, 3)), rtol=1e-6)
    assert torch.equal(make_baseline(x, "black"), torch.zeros_like(x))
    flat = torch.full((1, 3, 9, 9), 0.7)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[0, 0, 15, 15] = 1.0
    blurred = gaussian_blur(impulse, 1.5)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-6)  # mass kept away from the border
    # separable Gaussian: peak ratio between centre and a neighbour 2 px away is exp(-4 / (2 sigma^2))
    assert float(blurred[0, 0, 15, 17] / blurred[0, 0, 15, 15]) == pytest.approx(np.exp(-4 / 4.5), rel=1e-5)
    blur = make_baseline(x, "blur")
    assert blur.shape == x.shape and float(blur.std()) < float(x.std())
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline(x, "white")
    with pytest.raises(ValueError, match="does not broadcast"):
        make_baseline(x, torch.zeros(3, 4, 4))


def test_every_layer_gets_its_own_mode_back(images):
    """Fine-tuning with a frozen BatchNorm, or Monte-Carlo dropout in an eval model: each layer's mode returns."""
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 1))
    net.train()
    net[1].eval()
    integrated_gradients(net, images[:1], n_steps=4)
    assert net.training and not net[1].training and net[2].training
    net.eval()
    net[2].train()
    integrated_gradients(net, images[:1], n_steps=4)
    assert not net.training and not net[1].training and net[2].training


def test_maps_are_batch_invariant_and_model_is_put_in_eval_mode(images):
    model = Toy()
    model.train()
    together = integrated_gradients(model, images, n_steps=8, internal_batch_size=5)
    assert model.training  # the caller's mode is restored
    alone = [
        integrated_gradients(model, images[i : i + 1], n_steps=8, internal_batch_size=5) for i in range(5)
    ]
    reordered = integrated_gradients(model, images.flip(0)[:3], n_steps=8, internal_batch_size=5)
    for i in range(5):
        np.testing.assert_allclose(together.maps[i], alone[i].maps[0], rtol=1e-5, atol=1e-7)
        assert together.delta[i] == pytest.approx(alone[i].delta[0], abs=1e-6)
    np.testing.assert_allclose(reordered.maps, together.maps[::-1][:3], rtol=1e-5, atol=1e-7)
    # dropout is off: two runs agree exactly
    again = integrated_gradients(model, images, n_steps=8, internal_batch_size=5)
    np.testing.assert_array_equal(again.attributions, together.attributions)
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(together.scores, model(images).numpy(), rtol=1e-5)


def test_too_few_steps_on_a_nonlinear_model_is_flagged_not_hidden(images, caplog):
    model = Wiggly()
    with caplog.at_level(logging.WARNING, logger="memlens.explain"):
        coarse = integrated_gradients(model, images, n_steps=2, internal_batch_size=2, error_check=False)
    assert coarse.flagged.all() and coarse.n_flagged == 5
    assert (coarse.relative_delta > 0.05).all()
    assert coarse.maps.shape == (5, 1, H, W) and np.isfinite(coarse.maps).all()  # kept, not dropped
    assert any("did not converge for 5 of 5" in r.getMessage() for r in caplog.records)
    fine = integrated_gradients(model, images, n_steps=96, internal_batch_size=32, error_check=False)
    assert not fine.flagged.any()
    assert np.abs(fine.delta).max() < 1e-3 * np.abs(fine.scores - fine.baseline_scores).min()
    np.testing.assert_allclose(
        fine.relative_delta, np.abs(fine.delta) / np.abs(fine.scores - fine.baseline_scores)
    )
    # the delta is the gap between the attribution sum and f(x) - f(baseline)
    np.testing.assert_allclose(
        coarse.delta,
        coarse.attributions.sum(axis=(1, 2, 3)) - (coarse.scores - coarse.baseline_scores),
        rtol=1e-4,
        atol=1e-3,
    )


def test_map_error_estimate_tracks_the_real_error_and_flags_by_it(images, caplog):
    """The default flag: each map's error estimated from a half-step pass, checked against a 512-step map."""
    model = Wiggly()
    ref = integrated_gradients(model, images, n_steps=512, internal_batch_size=64).attributions.reshape(5, -1)
    missed = 0
    for steps in (4, 6, 8, 12, 16, 24):
        res = integrated_gradients(model, images, n_steps=steps, internal_batch_size=16)
        a = res.attributions.reshape(5, -1).astype(np.float64)
        true = np.abs(a - ref).sum(1) / np.abs(ref).sum(1)
        np.testing.assert_array_equal(res.flagged, res.map_error > 0.1)
        missed += int(np.sum((true > 0.1) & ~res.flagged))  # an inaccurate map that passes: never
    assert missed == 0
    with caplog.at_level(logging.WARNING, logger="memlens.explain"):
        coarse = integrated_gradients(model, images, n_steps=2, internal_batch_size=2)
    assert coarse.flagged.all() and coarse.summary()["flag_criterion"] == "map_error"
    assert any("the maps of 5 of 5 images are not accurate yet" in r.getMessage() for r in caplog.records)
    fine = integrated_gradients(model, images, n_steps=96, internal_batch_size=32)
    assert not fine.flagged.any() and fine.summary()["max_map_error"] < 0.1
    # one step has no half: no estimate, the delta criterion decides; the same for Riemann rules below 4 steps
    one = integrated_gradients(model, images[:1], n_steps=1)
    assert np.isnan(one.map_error).all() and one.summary()["flag_criterion"] == "relative_delta"
    for steps in (2, 3):
        r = integrated_gradients(model, images[:1], n_steps=steps, method="riemann_trapezoid")
        assert not r.error_checked and np.isnan(r.map_error).all()
    assert integrated_gradients(model, images[:1], n_steps=4, method="riemann_trapezoid").error_checked


def test_error_check_on_chosen_images_only(images):
    """error_check as one bool per image: those maps get the half-step estimate (the same numbers as checking
    every image), the others none (NaN, not flagged), and the maps themselves do not change."""
    model = Wiggly()
    every = integrated_gradients(model, images, n_steps=8, internal_batch_size=8)
    some = integrated_gradients(model, images, n_steps=8, internal_batch_size=8,
                                error_check=[True, False, True, False, False])
    np.testing.assert_array_equal(some.attributions, every.attributions)
    np.testing.assert_allclose(some.map_error[[0, 2]], every.map_error[[0, 2]])
    assert np.isnan(some.map_error[[1, 3, 4]]).all() and not some.flagged[[1, 3, 4]].any()  # not judged
    np.testing.assert_array_equal(some.flagged[[0, 2]], some.map_error[[0, 2]] > 0.1)
    assert some.summary()["n_error_checked"] == 2 and every.summary()["n_error_checked"] == 5
    with pytest.raises(ValueError, match="one bool per image"):
        integrated_gradients(model, images, n_steps=8, error_check=[True, False])


def test_map_error_is_bounded_when_a_map_is_all_zero(images):
    """A score flat on the first part of the path: the 1-point pass (node 0.5) gives a zero map, the 2-point
    pass (nodes 0.21, 0.79) does not. The error is relative to the larger map: 0.5, not infinite."""
    from torch import nn

    class Kink(nn.Module):
        def forward(self, x):
            return torch.relu(x.mean(dim=(1, 2, 3)) - 0.3) * 10

    x = torch.full((1, 3, H, W), 0.5)
    res = integrated_gradients(Kink(), x, n_steps=2)
    assert res.error_checked and res.map_error[0] == pytest.approx(0.5) and res.flagged[0]
    assert res.summary()["flag_criterion"] == "map_error" and res.summary()["max_map_error"] is not None


def test_smoothgrad_reproducible_per_seed_and_leaves_global_rng_alone(images):
    model = Toy()
    state = torch.get_rng_state()
    kw = dict(n_steps=4, internal_batch_size=4, smoothgrad=3, smoothgrad_sigma=0.1)
    a = integrated_gradients(model, images[:3], seed=7, **kw)
    b = integrated_gradients(model, images[:3], seed=7, **kw)
    c = integrated_gradients(model, images[:3], seed=8, **kw)
    plain = integrated_gradients(model, images[:3], n_steps=4, internal_batch_size=4)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a.attributions, b.attributions)
    assert not np.allclose(a.attributions, c.attributions)
    assert not np.allclose(a.attributions, plain.attributions)
    # noise depends on the seed and the image, not on the batch
    single = integrated_gradients(model, images[1:2], seed=7, **kw)
    np.testing.assert_allclose(single.attributions[0], a.attributions[1], rtol=1e-5, atol=1e-7)
    assert a.smoothgrad == 3 and np.all(a.delta >= 0)


def test_smoothgrad_keeps_noisy_inputs_in_the_model_domain(images):
    class Strict(Toy):
        def forward(self, x):
            if float(x.detach().min()) < 0.0 or float(x.detach().max()) > 1.0:
                raise ValueError("input outside [0, 1]")
            return super().forward(x)

    res = integrated_gradients(Strict(), images[:2], n_steps=4, smoothgrad=4, smoothgrad_sigma=0.5)
    assert np.isfinite(res.attributions).all() and res.maps.shape == (2, 1, H, W)


def test_input_validation(images):
    model = Linear(torch.ones(3, H, W))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]; observed min -1\.\d+, max 0\.\d+"):
        integrated_gradients(model, images * 2 - 1.5)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        integrated_gradients(model, images[:, :2])

    class Two(nn.Module):
        def forward(self, x):
            return torch.stack([x.sum(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3))], dim=1)

    with pytest.raises(ValueError, match="one score per image"):
        integrated_gradients(Two(), images)


def test_aggregate_maps_normalise_and_split_by_quartile():
    n = 8
    maps = np.zeros((n, 1, 6, 6))
    scores = np.arange(n, dtype=float)  # quartiles: {0, 1} bottom, {6, 7} top
    for i in range(n):
        if i >= 4:
            maps[i, 0, 2:4, 2:4] = (i + 1) * 10.0  # memorable: central mass, arbitrary scale
        else:
            maps[i, 0, 0, 0] = -(i + 1)  # forgettable: one corner (sign ignored)
    agg = aggregate_maps(maps, scores)
    assert (agg.n_top, agg.n_bottom) == (2, 2)
    assert agg.top.sum() == pytest.approx(1.0) and agg.bottom.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(agg.top[2:4, 2:4], 0.25)
    assert agg.bottom[0, 0] == pytest.approx(1.0)
    assert agg.difference.sum() == pytest.approx(0.0, abs=1e-12)
    assert agg.to_dict()["top_center_share"] == pytest.approx(1.0)
    assert agg.to_dict()["bottom_center_share"] == 0.0
    norm = normalize_maps(np.stack([np.ones((3, 3)), np.zeros((3, 3))]))
    np.testing.assert_allclose(norm[0], 1 / 9)
    assert np.isnan(norm[1]).all()


def test_figures_are_written_as_png(tmp_path, images):
    res = integrated_gradients(Toy(), images, n_steps=4)
    fig = overlay_figure(images[0], res.maps[0], title="img 0")
    assert len(fig.axes) == 3  # image, overlay, colour bar
    save_figure(fig, tmp_path / "o.png")
    signed = overlay_figure(images[0].numpy(), res.signed_maps[0])
    assert signed.axes[1].images[1].get_cmap().name == "RdBu_r"
    agg = aggregate_maps(res.maps, np.arange(5.0))
    save_figure(aggregate_figure(agg), tmp_path / "a.png")
    from PIL import Image

    for name in ("o.png", "a.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "o.png"]  # no temporary files left


def test_randomize_weights_resets_only_the_head():
    model = Toy()
    rnd = randomize_weights(model, "head", seed=0)
    for (name, p), (_, q) in zip(model.named_parameters(), rnd.named_parameters(), strict=True):
        assert torch.equal(p, q) == name.startswith("encoder"), name
    again = randomize_weights(model, "head", seed=0)
    for p, q in zip(rnd.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="no sub-module 'decoder'.*encoder, head"):
        randomize_weights(model, "decoder")
    # a head built under torch.manual_seed(s) is not re-initialised to its own weights by seed=s
    for s in (0, 7):
        fresh = nn.Module()
        torch.manual_seed(s)
        fresh.head = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 1))
        rnd = randomize_weights(fresh, "head", seed=s)
        for p, q in zip(fresh.head.parameters(), rnd.head.parameters(), strict=True):
            assert not torch.equal(p, q)


def test_randomization_check(images):
    model = Toy()
    kw = dict(n_steps=8, internal_batch_size=8)
    same = randomization_check(model, images, randomized_model=model, **kw)
    np.testing.assert_allclose(same.spearman, 1.0)
    res = randomization_check(model, images, module="head", seed=3, **kw)
    assert res.spearman.shape == (5,) and np.isfinite(res.spearman).all()
    assert res.mean < 0.95
    d = res.to_dict()
    assert d["mean_spearman"] == pytest.approx(res.mean) and d["randomized_module"] == "head"
    maps = integrated_gradients(model, images, **kw).maps
    pre = randomization_check(model, images, module="head", seed=3, maps=maps, **kw)
    np.testing.assert_allclose(pre.spearman, res.spearman)
    whole = randomization_check(model, images, module=None, seed=3, **kw)
    assert np.isfinite(whole.spearman).all()


# ------------------------------------------------------------------------------------ explain_run
S = 16  # image side of the fake run


class SizedToy(Toy):
    """Toy predictor that declares its input size like MemorabilityModel."""

    input_size = S

    def __init__(self):
        super().__init__(seed=5)
        self.head[1] = nn.Linear(4 * (S // 2) * (S // 2), 6)


def _fake_run(tmp_path, n: int = 12, with_predicted: bool = False):
    import json

    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    data, run = tmp_path / "data", tmp_path / "run"
    (data / "sub dir").mkdir(parents=True)
    run.mkdir()
    ids = [f"img_{i:02d}.png" for i in range(n)]
    ids[3] = "sub dir/a&b c.png"  # needs a safe file name
    for i, image_id in enumerate(ids):
        arr = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
        arr[: S // 2] = arr[: S // 2] // (1 + i % 3)
        Image.fromarray(arr).save(data / image_id)
    scores = rng.permutation(n) / n + 0.02
    pd.DataFrame({"image": ids, "score": scores}).to_csv(data / "table.csv", index=False)
    per = pd.DataFrame({"image_id": ids, "score": scores, "recon_mse": rng.random(n)})
    if with_predicted:
        per["predicted_score"] = scores + rng.normal(0, 0.05, n)
    per.to_csv(run / "per_image.csv", index=False)
    (run / "dataset.json").write_text(json.dumps({"source": str(data / "table.csv"), "layout": "csv"}))
    (run / "predictor.pt").write_bytes(b"stand-in: loading is patched in these tests")
    return run, ids, scores, per


@pytest.fixture
def patched_model(monkeypatch):
    import memlens.explain.stage as stage

    model = SizedToy().eval()
    monkeypatch.setattr(stage, "load_predictor", lambda path, device: model)
    return model


def test_explain_run_writes_every_output(tmp_path, patched_model):
    import json

    import pandas as pd
    from scipy.stats import spearmanr

    from memlens.explain import explain_run

    run, ids, scores, _ = _fake_run(tmp_path)
    summary = explain_run(
        run, images=["img_05.png"], top=2, bottom=2, n_steps=8, n_boot=50, aggregate_max=2, sanity_max=3,
        model_for="final",  # a stand-in model: no cross-validation to refit folds of
    )
    assert summary["model_for"] == "final"
    assert {e["explained_with"] for g in ("image", "top", "bottom") for e in summary["explained"][g]} == {
        "final model (fitted on this image: in-sample)"}
    att = run / "attributions"
    order = np.argsort(-scores)
    top_ids, bottom_ids = [ids[i] for i in order[:2]], [ids[i] for i in order[::-1][:2]]
    assert [e["image_id"] for e in summary["explained"]["top"]] == top_ids
    assert [e["image_id"] for e in summary["explained"]["bottom"]] == bottom_ids
    overlays = sorted(p.name for p in att.glob("overlay_*.png"))
    assert len(overlays) == 5 and all(
        n.startswith(("overlay_top0", "overlay_bottom0", "overlay_image_")) for n in overlays
    )
    assert all(" " not in n and "&" not in n and "/" not in n for n in overlays)
    for name in (
        "aggregate_quartiles.png",
        "aggregate_most_memorable.png",
        "aggregate_least_memorable.png",
        "aggregate_difference.png",
        "sanity.json",
        "explain.json",
        "attributions.npz",
    ):
        assert (att / name).is_file(), name
    assert not [p for p in run.rglob(".*tmp*")]  # atomic writes left nothing behind

    z = np.load(att / "attributions.npz", allow_pickle=False)
    n_maps = len(z["image_ids"])
    assert z["maps"].shape == (n_maps, 1, S, S) and z["flagged"].dtype == bool
    assert np.isfinite(z["deltas"]).all() and z["aggregate_top"].shape == (S, S)
    # the default flag: each map's estimated error (from a pass at half the steps)
    shown = set(top_ids + bottom_ids + ["img_05.png"])
    is_shown = np.array([i in shown for i in z["image_ids"].tolist()])
    # the maps shown one by one are error-checked; those only in the aggregates are not judged
    assert np.isfinite(z["map_errors"][is_shown]).all() and np.isnan(z["map_errors"][~is_shown]).all()
    assert np.array_equal(z["flagged"][is_shown], z["map_errors"][is_shown] > 0.1)
    assert summary["integrated_gradients"]["n_error_checked"] == int(is_shown.sum())
    assert summary["integrated_gradients"]["flag_criterion"] == "map_error"
    assert summary["integrated_gradients"]["max_map_error"] == pytest.approx(float(z["map_errors"].max()))
    assert z["aggregate_top"].sum() == pytest.approx(1.0, abs=1e-5)
    assert set(top_ids + bottom_ids + ["img_05.png"]) <= set(z["image_ids"].tolist())
    with torch.no_grad():  # the stored prediction is the model's output for that image
        k = z["image_ids"].tolist().index(top_ids[0])
        from memlens.data import load_image

        x = torch.from_numpy(load_image(run.parent / "data" / top_ids[0], S).transpose(2, 0, 1)[None] / 255.0)
        assert z["predicted_scores"][k] == pytest.approx(float(patched_model(x.float())[0]), rel=1e-5)

    sanity = json.loads((att / "sanity.json").read_text())
    assert sanity["n_images"] == 3 and sanity["randomized_module"] == "head"
    assert sanity["image_ids"] == ["img_05.png", top_ids[0], bottom_ids[0]]  # --images, then top/bottom
    # the aggregate sample reuses the images explained anyway (top 2 are in the top quartile)
    assert summary["aggregate"]["top_quartile_ids"] == sorted(top_ids, key=ids.index)
    assert summary["aggregate"]["bottom_quartile_ids"] == sorted(bottom_ids, key=ids.index)
    assert -1.0 <= sanity["mean_spearman"] <= 1.0 and isinstance(sanity["passed"], bool)

    desc = pd.read_csv(run / "descriptors.csv")
    assert desc["image_id"].tolist() == ids and len(desc) == 12
    assert {"score", "predicted_score", "edge_density", "glcm_contrast", "ig_center_share"} <= set(
        desc.columns
    )
    has_map = desc["image_id"].isin(z["image_ids"].tolist())
    assert (
        desc.loc[has_map, "ig_center_share"].notna().all()
        and desc.loc[~has_map, "ig_center_share"].isna().all()
    )
    assert summary["predicted_score_source"].startswith("predictor.pt")

    corr = pd.read_csv(run / "descriptor_correlations.csv")
    assert set(corr["target"]) == {"score", "predicted_score"} and len(corr) == 2 * 16
    row = corr[(corr.descriptor == "edge_density") & (corr.target == "score")].iloc[0]
    assert row["r"] == pytest.approx(spearmanr(desc["edge_density"], desc["score"]).statistic, abs=1e-9)
    assert row["n"] == 12 and row["ci_low"] <= row["r"] <= row["ci_high"]
    share = corr[(corr.descriptor == "ig_center_share") & (corr.target == "score")].iloc[0]
    assert share["n"] == int(has_map.sum())
    assert summary["timings_s"]["total"] > 0


def test_explain_run_uses_stored_predictions_and_rejects_unknown_images(tmp_path, patched_model):
    import pandas as pd

    from memlens.errors import DataError, RunDirError
    from memlens.explain import explain_run

    run, ids, _, per = _fake_run(tmp_path, with_predicted=True)
    explain_run(run, top=1, bottom=1, n_steps=4, n_boot=0, aggregate_max=1, model_for="final")
    desc = pd.read_csv(run / "descriptors.csv")
    np.testing.assert_allclose(desc["predicted_score"], per["predicted_score"])
    assert len(list((run / "attributions").glob("overlay_*.png"))) == 2
    # without predicted_score in per_image.csv: the out-of-fold predictions of fit-predictor
    oof = pd.DataFrame(
        {"image_id": ids[::-1], "score": 0.5, "predicted_mlp": np.linspace(0.1, 0.9, len(ids))}
    )
    oof.loc[0, "predicted_mlp"] = np.nan
    oof.to_csv(run / "predictor_oof.csv", index=False)
    per.drop(columns="predicted_score").to_csv(run / "per_image.csv", index=False)
    summary = explain_run(run, top=1, bottom=1, n_steps=4, n_boot=0, aggregate_max=1, model_for="final")
    assert summary["predicted_score_source"].startswith("predictor_oof.csv")
    desc = pd.read_csv(run / "descriptors.csv")
    np.testing.assert_allclose(desc["predicted_score"], oof["predicted_mlp"].to_numpy()[::-1])
    # the out-of-fold predictions of the model predictor.pt holds (predictor_cv.csv's saved row), not the MLP's
    oof["predicted_svr"] = np.linspace(0.9, 0.2, len(ids))
    oof.to_csv(run / "predictor_oof.csv", index=False)
    pd.DataFrame({"fold": ["mean", "mean"], "model": ["mlp", "svr"], "saved": [False, True]}).to_csv(
        run / "predictor_cv.csv", index=False)
    summary = explain_run(run, top=1, bottom=1, n_steps=4, n_boot=0, aggregate_max=1, model_for="final")
    assert summary["predicted_score_source"] == "predictor_oof.csv (predicted_svr, out-of-fold)"
    desc = pd.read_csv(run / "descriptors.csv")
    np.testing.assert_allclose(desc["predicted_score"], oof["predicted_svr"].to_numpy()[::-1])
    with pytest.raises(DataError, match="--images nope.png: neither an image id"):
        explain_run(run, images=["nope.png"], n_steps=2, model_for="final")
    (run / "predictor.pt").unlink()
    with pytest.raises(RunDirError, match="predictor.pt not found .*fit-predictor"):
        explain_run(run)


def test_explain_cli(tmp_path, patched_model, capsys):
    import json

    from memlens.cli import main

    run, ids, scores, _ = _fake_run(tmp_path)
    args = ["-q", "explain", str(run), "--top", "1", "--bottom", "1", "--steps", "4", "--baseline", "blur",
            "--model-for", "final"]
    rc = main([*args, "--n-boot", "0", "--aggregate-max", "2", "--images", ids[3], "--seed", "4"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "integrated gradients: " in out.out and "sanity check: mean Spearman" in out.out
    assert "estimated map error median" in out.out
    assert (run / "descriptors.csv").is_file()
    info = json.loads((run / "attributions" / "explain.json").read_text())
    assert info["integrated_gradients"]["baseline"] == "blur" and info["integrated_gradients"]["n_steps"] == 4
    top_q = info["aggregate"]["top_quartile_ids"]
    best = ids[int(np.argmax(scores))]
    assert len(top_q) == 2 and best in top_q  # the explained top image plus one seeded draw
    assert all(scores[ids.index(i)] >= info["aggregate"]["upper_threshold"] for i in top_q)
    assert main(["explain", str(tmp_path / "missing")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["explain", str(run), "--baseline", "white"]) == 2


def test_explain_run_with_a_real_predictor_file(tmp_path):
    """predictor.pt written by memlens.predict, autoencoder by memlens.models: the real loaders."""
    import json

    pytest.importorskip("memlens.predict")
    from memlens.data import load_image
    from memlens.explain import explain_run
    from memlens.models import create_autoencoder, save_autoencoder
    from memlens.predict import MemorabilityRegressor, save_predictor

    run, ids, scores, _ = _fake_run(tmp_path)
    ae = create_autoencoder("small", input_size=S, width=4, latent_channels=4).eval()
    save_autoencoder(run / "autoencoder.pt", ae)
    x = torch.from_numpy(
        np.stack([load_image(run.parent / "data" / i, S) for i in ids]).transpose(0, 3, 1, 2) / 255.0
    ).float()
    with torch.no_grad():
        z = ae.encode(x).flatten(1).numpy()
    reg = MemorabilityRegressor(hidden=(8,), max_epochs=5, val_fraction=0.0, random_state=0).fit(z, scores)
    from memlens._io import file_sha256

    recipe = [
        {
            "kind": "autoencoder",
            "checkpoint": "autoencoder.pt",
            "sha256": file_sha256(run / "autoencoder.pt"),
            "pool": "none",
            "layer": None,
            "size": S,
            "dim": int(z.shape[1]),
        }
    ]
    save_predictor(run / "predictor.pt", reg, recipe)
    summary = explain_run(run, top=2, bottom=2, n_steps=8, n_boot=0, aggregate_max=2, device="cpu",
                          model_for="final")
    assert summary["input_size"] == S
    # the model's predictions through IG equal the regressor's on the latents
    z_ = np.load(run / "attributions" / "attributions.npz")
    k = [ids.index(i) for i in z_["image_ids"].tolist()]
    np.testing.assert_allclose(z_["predicted_scores"], reg.predict(z[k]), rtol=1e-4, atol=1e-5)
    sanity = json.loads((run / "attributions" / "sanity.json").read_text())
    assert sanity["randomized_module"] == "head" and np.isfinite(sanity["mean_spearman"])
    # the default explains each image with its fold model: a predictor saved by hand has no folds to refit
    from memlens.errors import RunDirError

    with pytest.raises(RunDirError, match="does not record how it was cross-validated.*--model-for final"):
        explain_run(run, top=1, bottom=1, n_steps=2, n_boot=0, aggregate_max=0, device="cpu")


def test_sanity_check_convergence_warning_names_the_randomised_model(images, caplog):
    with caplog.at_level("WARNING", logger="memlens.explain"):
        randomization_check(Toy(), images, module="head", seed=3, n_steps=1, internal_batch_size=8,
                            delta_tolerance=1e-9)
    assert "Integrated Gradients (randomised head, sanity check) did not converge" in caplog.text


def test_convergence_delta_is_captums_without_its_extra_passes(images):
    """The delta comes from the f(x), f(baseline) IG computes anyway: captum's own value, two forward passes fewer
    per attribution."""
    from captum.attr import IntegratedGradients

    from memlens.explain.gradients import ScalarOutput

    model = Toy().eval()
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    res = integrated_gradients(model, images[:2], n_steps=8, internal_batch_size=8, error_check=False)
    # per image: f(x) and f(baseline) in one pass of 2, then the 8 path points
    assert calls == [2, 8, 2, 8]
    ig = IntegratedGradients(ScalarOutput(model))
    for i in range(2):
        _, delta = ig.attribute(images[i:i + 1], baselines=torch.zeros_like(images[i:i + 1]), n_steps=8,
                                internal_batch_size=8, return_convergence_delta=True)
        assert res.delta[i] == pytest.approx(float(delta[0]), abs=1e-5)


def test_aggregate_only_maps_and_the_sanity_check_use_their_own_steps(tmp_path, patched_model):
    """Maps shown one by one use n_steps; maps that only enter the aggregates use aggregate_steps, and the
    randomised model's maps sanity_steps: each equal to integrated_gradients at that step count."""
    import json

    from memlens.data import load_image
    from memlens.explain import explain_run

    run, ids, scores, _ = _fake_run(tmp_path)
    summary = explain_run(run, top=1, bottom=1, n_steps=8, aggregate_steps=4, sanity_steps=2, aggregate_max=2,
                          sanity_max=2, n_boot=20, model_for="final")
    ig = summary["integrated_gradients"]
    z = np.load(run / "attributions" / "attributions.npz", allow_pickle=False)
    shown = {summary["explained"][g][0]["image_id"] for g in ("top", "bottom")}
    only_agg = [i for i in z["image_ids"].tolist() if i not in shown]
    assert ig["n_steps"] == 8 and ig["aggregate_steps"] == 4 and ig["n_aggregate_only"] == len(only_agg) == 2
    assert ig["method"] == "gausskronrod" and ig["points_per_map"] == ig["points_per_checked_map"] == 9
    assert ig["aggregate_method"] == "gausslegendre"
    for i in z["image_ids"].tolist():
        x = torch.from_numpy(load_image(run.parent / "data" / i, S).transpose(2, 0, 1)[None] / 255.0).float()
        want = integrated_gradients(patched_model, x, n_steps=8 if i in shown else 4, error_check=False,
                                    method="gausskronrod" if i in shown else "gausslegendre").maps[0]
        np.testing.assert_allclose(z["maps"][z["image_ids"].tolist().index(i)], want, rtol=1e-5, atol=1e-7)
    sanity = json.loads((run / "attributions" / "sanity.json").read_text())
    assert sanity["ig"]["n_steps"] == 2 and sanity["n_images"] == 2
    with pytest.raises(ValueError, match="aggregate_steps"):
        explain_run(run, top=1, bottom=1, aggregate_steps=0, model_for="final")


# ------------------------------------------------------------------------------ the Gauss-Kronrod rule
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 16])
def test_gauss_kronrod_rule_is_exact_to_its_degree_and_embeds_gauss_legendre(n):
    from memlens.explain.quadrature import gauss_kronrod

    nodes, wk, wg = gauss_kronrod(n)
    assert len(nodes) == 2 * n + 1 and np.all(np.diff(nodes) > 0) and np.all(wk > 0)
    exact = lambda m: 2.0 / (m + 1) if m % 2 == 0 else 0.0  # noqa: E731
    degree = 3 * n + 1 if n % 2 == 0 else 3 * n + 2
    for m in range(degree + 1):
        assert abs(np.sum(wk * nodes**m) - exact(m)) < 1e-13, m
    if n <= 8:  # one (even) degree more is not integrated exactly: the rule is no better than its theory says
        m = degree + 1 if (degree + 1) % 2 == 0 else degree + 2  # (beyond n = 8 the gap is below float64)
        assert abs(np.sum(wk * nodes**m) - exact(m)) > 1e-12
    g_nodes, g_weights = np.polynomial.legendre.leggauss(n)
    np.testing.assert_allclose(nodes[wg > 0], g_nodes, atol=1e-15)
    np.testing.assert_allclose(wg[wg > 0], g_weights, atol=1e-15)


def test_gauss_kronrod_15_matches_the_published_table():
    """G7-K15 (Piessens et al., QUADPACK): the outermost node and its weight."""
    from memlens.explain.quadrature import gauss_kronrod

    nodes, wk, _ = gauss_kronrod(7)
    assert abs(nodes[-1] - 0.991455371120812639206854697526329) < 1e-15
    assert abs(wk[-1] - 0.022935322010529224963732008058970) < 1e-15
    assert abs(wk[7] - 0.209482141084727828012999174891714) < 1e-15  # the centre node


def test_gauss_kronrod_map_and_its_free_error_check(images):
    """The Kronrod map needs 2 (n // 2) + 1 path points; its error check is the embedded Gauss map, which equals
    captum's n // 2-point Gauss-Legendre map; on a non-linear model it is about as accurate as n-point
    Gauss-Legendre, and the estimate follows the true error."""
    from memlens.explain.gradients import KRONROD_ERROR_SCALE, kronrod_points

    model = Wiggly()
    ref = integrated_gradients(model, images, n_steps=512, internal_batch_size=64, error_check=False)
    ref_a = ref.attributions.reshape(5, -1).astype(np.float64)

    def true_error(res):
        return np.abs(res.attributions.reshape(5, -1) - ref_a).sum(1) / np.abs(ref_a).sum(1)

    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return model(x)

    kr = integrated_gradients(Counting(), images, n_steps=8, method="gausskronrod", internal_batch_size=64)
    assert kronrod_points(8) == 9 and kronrod_points(32) == 33 and kr.settings["points_per_checked_map"] == 9
    assert sum(calls) == 5 * (2 + 9)  # f(x), f(baseline) and 9 path points per image, no second pass
    gl = integrated_gradients(model, images, n_steps=8, method="gausslegendre", internal_batch_size=64)
    assert gl.settings["points_per_checked_map"] == 12
    half = integrated_gradients(model, images, n_steps=4, error_check=False, internal_batch_size=64)
    a_k = kr.attributions.reshape(5, -1).astype(np.float64)
    a_h = half.attributions.reshape(5, -1).astype(np.float64)
    mass = np.maximum(np.abs(a_k).sum(1), np.abs(a_h).sum(1))
    np.testing.assert_allclose(kr.map_error, np.minimum(1, KRONROD_ERROR_SCALE * np.abs(a_k - a_h).sum(1) / (2 * mass)),
                               rtol=1e-4)
    # the rules differ (8 points do not resolve this model) but Kronrod is no less accurate than Gauss-Legendre
    assert np.abs(kr.attributions - gl.attributions).max() > 1e-2
    assert np.median(true_error(kr)) <= 1.2 * np.median(true_error(gl))
    assert np.median(true_error(kr)) < 0.5 * np.median(true_error(half))
    # an inaccurate map (true error > 10 %) is never left unflagged; converged ones are not flagged
    many = [integrated_gradients(model, images, n_steps=s, method="gausskronrod", internal_batch_size=64)
            for s in (4, 8, 16, 32)]
    est = np.concatenate([r.map_error for r in many])
    true = np.concatenate([true_error(r) for r in many])
    assert (true > 0.1).sum() >= 5 and not ((true > 0.1) & (est <= 0.1)).any()
    assert not many[-1].flagged.any()
    # the convergence delta is computed from the Kronrod map as for any other
    np.testing.assert_allclose(kr.delta, kr.attributions.reshape(5, -1).astype(np.float64).sum(1)
                               - (kr.scores - kr.baseline_scores), atol=1e-4)
    with pytest.raises(ValueError, match="plain IG"):
        integrated_gradients(model, images, n_steps=8, method="gausskronrod", smoothgrad=2)
    with pytest.raises(ValueError, match="unknown method"):
        integrated_gradients(model, images, n_steps=8, method="simpson")


def test_gauss_kronrod_keeps_the_linear_closed_form_and_the_memory_format(images):
    w = torch.randn(3, H, W, generator=torch.Generator().manual_seed(2))
    res = integrated_gradients(Linear(w), images, n_steps=6, method="gausskronrod", internal_batch_size=4)
    np.testing.assert_allclose(res.attributions, (images * w).numpy(), rtol=1e-4, atol=1e-5)
    cl = images.contiguous(memory_format=torch.channels_last)
    model = Toy().eval()
    a = integrated_gradients(model, images, n_steps=8, method="gausskronrod").attributions
    b = integrated_gradients(model, cl, n_steps=8, method="gausskronrod").attributions
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_explain_run_rule_option(tmp_path, patched_model):
    """--rule gausslegendre gives captum's Gauss-Legendre maps with a second pass for the check."""
    from memlens.data import load_image
    from memlens.explain import explain_run

    run, ids, scores, _ = _fake_run(tmp_path)
    summary = explain_run(run, top=1, bottom=1, n_steps=8, rule="gausslegendre", aggregate_max=0, sanity_max=1,
                          n_boot=20, model_for="final")
    ig = summary["integrated_gradients"]
    assert ig["method"] == "gausslegendre" and ig["points_per_checked_map"] == 12
    z = np.load(run / "attributions" / "attributions.npz", allow_pickle=False)
    i = summary["explained"]["top"][0]["image_id"]
    x = torch.from_numpy(load_image(run.parent / "data" / i, S).transpose(2, 0, 1)[None] / 255.0).float()
    want = integrated_gradients(patched_model, x, n_steps=8, error_check=False).maps[0]
    np.testing.assert_allclose(z["maps"][z["image_ids"].tolist().index(i)], want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="rule"):
        explain_run(run, top=1, bottom=1, rule="simpson", model_for="final")
