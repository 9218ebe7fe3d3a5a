"""memlens.predict.finetune: trunk activations, the fine-tuned tail estimator, its saved state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memlens.predict.finetune import FineTunedLiteRegressor, TrunkActivations, trunk_activations


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    # two 224 px squares and one 224 x 336 image (aspect kept: a wider trunk map)
    return [torch.rand(3, 224, 224, generator=g), torch.rand(3, 224, 224, generator=g),
            torch.rand(3, 224, 336, generator=g)]


def test_trunk_activations_equal_the_feature_set_pass(images):
    """The standalone trunk and the feature set's own forward pass give the same stage-5 maps (image and mirror)."""
    from memlens.features import FeatureSetExtractor

    acts = trunk_activations(images, "efficientnet_lite0")
    assert len(acts) == 3 and acts.maps[0].shape == (2, 112, 14, 14) and acts.maps[2].shape == (2, 112, 14, 21)
    ext = FeatureSetExtractor("lite0-crop")
    with torch.inference_mode():
        _, got = ext(torch.stack(images[:2]), trunk={"efficientnet_lite0": 5})
    np.testing.assert_allclose(got["efficientnet_lite0"].numpy(), np.stack(acts.maps[:2]).astype(np.float32),
                               atol=2e-2, rtol=2e-2)  # float16 storage


def test_activations_round_trip_and_subset(images, tmp_path):
    acts = trunk_activations(images, "efficientnet_lite0")
    acts.save(tmp_path / "a.npz")
    back = TrunkActivations.load(tmp_path / "a.npz")
    assert back.variant == "efficientnet_lite0" and back.stage == 5 and len(back) == 3
    for a, b in zip(acts.maps, back.maps, strict=True):
        np.testing.assert_array_equal(a, b)
    sub = back[np.array([2, 0])]
    assert len(sub) == 2 and sub.maps[0].shape == acts.maps[2].shape


def test_fit_predict_and_state_round_trip(images):
    """A tail learns a target that follows the images (Spearman on the training images well above 0), is
    deterministic for a seed, and its saved state (plain tensors) predicts exactly the same."""
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(1)
    imgs = [torch.rand(3, 224, 224, generator=g) * (0.3 + 0.7 * (i % 6) / 5) for i in range(12)]
    y = np.array([0.3 + 0.1 * (i % 6) for i in range(12)])  # brightness level -> score
    acts = trunk_activations(imgs, "efficientnet_lite0")
    est = FineTunedLiteRegressor(epochs=6, lr=1e-3, batch_size=4, n_seeds=2, random_state=3).fit(acts, y)
    pred = est.predict(acts)
    assert spearmanr(pred, y)[0] > 0.5
    again = FineTunedLiteRegressor(epochs=6, lr=1e-3, batch_size=4, n_seeds=2, random_state=3).fit(acts, y)
    np.testing.assert_allclose(again.predict(acts), pred, rtol=0, atol=1e-6)
    state = est.get_state()
    assert all(isinstance(v, torch.Tensor) for sd in state["tails"] for v in sd.values())
    np.testing.assert_allclose(FineTunedLiteRegressor.from_state(state).predict(acts), pred, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="activation maps but"):
        FineTunedLiteRegressor().fit(acts, y[:3])


def test_a_flip_feature_set_reuses_its_mirror_pass_for_the_trunk(images):
    """lite01-flip runs the mirror image anyway: its trunk maps are the same as lite01's separate mirror pass."""
    from memlens.features import FeatureSetExtractor

    x = torch.stack(images[:2])
    with torch.inference_mode():
        _, plain = FeatureSetExtractor("lite01")(x, trunk={"efficientnet_lite0": 5})
        _, flip = FeatureSetExtractor("lite01-flip")(x, trunk={"efficientnet_lite0": 5})
    torch.testing.assert_close(flip["efficientnet_lite0"], plain["efficientnet_lite0"], rtol=1e-5, atol=1e-5)


def test_crop_side_default_scales_with_the_stage_and_takes_fractions_or_positions():
    from memlens.predict.finetune import crop_side

    # the default: 12 positions at stride 16 (stages 4-5, whatever the network: Lite1's 15 x 15 map too, as
    # before crop became stage-aware), scaled to the stage's stride elsewhere
    assert crop_side(None, 14, 14, 5) == 12 and crop_side(None, 15, 15, 5) == 12 and crop_side(None, 14, 21, 4) == 12
    assert crop_side(None, 28, 28, 3) == 24 and crop_side(None, 112, 112, 1) == 96 and crop_side(None, 7, 7, 6) == 6
    assert crop_side(None, 4, 4, 5) == 4  # never more than the map
    assert crop_side(0.5, 14, 21, 5) == 7 and crop_side(0.01, 7, 7, 7) == 1  # a fraction of the shorter side
    assert crop_side(12, 14, 21, 5) == 12 and crop_side(12, 7, 9, 6) == 7 and crop_side(1, 14, 14, 5) == 1


def test_the_default_window_is_the_earlier_crop_12(images):
    """Predictor files written before crop became stage-aware store crop=12: on stage-5 maps it trains exactly the
    tail the default (None) trains, so their fold refits are unchanged."""
    acts = trunk_activations(images[:2] * 3, "efficientnet_lite0")
    y = np.linspace(0.2, 0.8, 6)
    old = FineTunedLiteRegressor(epochs=2, batch_size=3, crop=12, random_state=1).fit(acts, y)
    new = FineTunedLiteRegressor(epochs=2, batch_size=3, random_state=1).fit(acts, y)
    np.testing.assert_array_equal(old.predict(acts), new.predict(acts))
    with pytest.raises(ValueError, match="crop must be None"):
        FineTunedLiteRegressor(crop=float("nan")).fit(acts, y)


@pytest.mark.parametrize("stage", [3, 7])
def test_a_tail_can_start_after_any_stage(stage):
    """Deeper (stage 3: stages 4-7 fine-tuned) or shallower (stage 7: only the head) tails fit, predict and
    round-trip; the trunk maps are that stage's outputs; stages outside 1-7 are refused."""
    from scipy.stats import spearmanr

    from memlens.predict.finetune import LiteTail

    g = torch.Generator().manual_seed(2)
    imgs = [torch.rand(3, 64, 64, generator=g) * (0.3 + 0.7 * (i % 4) / 3) for i in range(8)]
    y = np.array([0.3 + 0.1 * (i % 4) for i in range(8)])
    acts = trunk_activations(imgs, "efficientnet_lite0", stage=stage)
    side = {3: 8, 7: 2}[stage]  # 64 px: stride 8 after stage 3, 32 after stage 7
    assert acts.stage == stage and acts.maps[0].shape[-2:] == (side, side)
    est = FineTunedLiteRegressor(epochs=8, lr=1e-3, batch_size=4, random_state=0).fit(acts, y)
    from memlens.models.efficientnet import efficientnet_lite

    net = efficientnet_lite("efficientnet_lite0", weights=None)
    n_tail = len(net.blocks) - net.stage_ends[stage - 1] - 1  # the blocks of the stages after the trunk
    assert est.stage_ == stage and len(est.tails_[0].blocks) == n_tail and (n_tail == 0) == (stage == 7)
    pred = est.predict(acts)
    assert np.isfinite(pred).all() and np.ptp(pred) > 0 and spearmanr(pred, y)[0] > 0
    back = FineTunedLiteRegressor.from_state(est.get_state())
    np.testing.assert_allclose(back.predict(acts), pred, rtol=0, atol=1e-9)
    for bad in (0, 8):
        with pytest.raises(ValueError, match="after stage 1-7"):
            LiteTail("efficientnet_lite0", bad)
