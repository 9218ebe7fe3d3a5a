"""Feature sets (memlens.features), aspect-keeping decoding and the kernel predictor (MemorabilitySVR)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from memlens.data import load_image_aspect
from memlens.features import FeatureSetExtractor, extract_feature_set, get_feature_set, list_feature_sets
from memlens.predict import MemorabilitySVR, regressor_from_state


@pytest.fixture(scope="module")
def lite0():
    return FeatureSetExtractor("lite0-crop")


def _photo(path, w, h, seed=0, exif_orientation=None):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    if exif_orientation is None:
        im.save(path, quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(path, quality=95, exif=exif.tobytes())
    return path


def test_registry_layout_matches_the_extractor(lite0):
    assert set(list_feature_sets()) >= {"lite01", "lite01-flip", "lite0-crop"}
    fs = get_feature_set("lite0-crop")
    out = lite0(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, fs.n_features) and out.dtype == torch.float32
    # per network: stage3..head means (40+80+112+192+320+1280) and stage2..4 standard deviations (24+40+80)
    assert fs.n_features == 2024 + 144
    assert fs.blocks() == [(0, 2168, 1.0), (40, 424, 0.5)]  # all columns; the stage 4-6 means
    two = get_feature_set("lite01")
    assert two.n_features == 2 * 2168 and len(two.blocks()) == 4 and two.load_size == 240
    with pytest.raises(Exception, match="unknown feature set"):
        get_feature_set("nope")


def test_pooled_columns_are_what_they_claim(lite0):
    """The head-mean block equals the network's own pooled head features; std columns are >= 0."""
    from memlens.models.efficientnet import efficientnet_lite, normalize_lite

    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))  # the set's side: no resizing
    f = lite0(x)
    net = efficientnet_lite("efficientnet_lite0").eval()
    with torch.no_grad():
        head = net.features(normalize_lite(x)).mean(dim=(2, 3))
    np.testing.assert_allclose(f[:, 744:2024].numpy(), head.numpy(), rtol=1e-4, atol=1e-4)
    assert (f[:, 2024:] >= 0).all()


def test_batch_invariant_and_crop_takes_the_centre(lite0):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 48, 80, generator=g)
    full = lite0(x)
    one = torch.cat([lite0(x[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(full.numpy(), one.numpy(), rtol=1e-4, atol=1e-5)
    centre = lite0(x[..., :, 16:64])  # the centre 48 x 48 square, as the crop set takes it
    np.testing.assert_allclose(full.numpy(), centre.numpy(), rtol=1e-4, atol=1e-5)


def test_keep_aspect_sees_the_whole_image():
    """lite01 keeps the aspect ratio: the sides of a wide image change its features; the crop set ignores them."""
    keep = FeatureSetExtractor("lite01")
    x = torch.rand(1, 3, 48, 96, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[..., :20] = 0.0  # blacken the left border, outside the centre square
    assert (keep(x) - keep(y)).abs().max() > 1e-2
    crop = FeatureSetExtractor("lite0-crop")
    np.testing.assert_allclose(crop(x).numpy(), crop(y).numpy(), rtol=1e-4, atol=1e-5)


def test_load_image_aspect(tmp_path):
    wide = _photo(tmp_path / "wide.jpg", 300, 200)
    a = load_image_aspect(wide, 60)
    assert a.shape == (60, 90, 3) and a.dtype == np.uint8
    pano = _photo(tmp_path / "pano.jpg", 800, 100)
    assert load_image_aspect(pano, 50).shape == (50, 150, 3)  # capped at 3:1, the centre part
    assert load_image_aspect(pano, 50, max_aspect=8).shape == (50, 400, 3)
    rotated = _photo(tmp_path / "rot.jpg", 300, 200, exif_orientation=6)  # stored landscape, shown portrait
    assert load_image_aspect(rotated, 60).shape == (90, 60, 3)
    with pytest.raises(ValueError):
        load_image_aspect(wide, 0)


def test_extract_feature_set_from_files(tmp_path, lite0):
    paths = [_photo(tmp_path / f"{i}.jpg", w, h, seed=i) for i, (w, h) in
             enumerate([(120, 80), (80, 80), (120, 80), (90, 150), (80, 80)])]
    a = extract_feature_set(paths, "lite0-crop", model=lite0, batch_size=2)
    b = extract_feature_set(paths, "lite0-crop", model=lite0, batch_size=16)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    from memlens.data import load_image

    x = torch.from_numpy(load_image(paths[3], 224).copy()).permute(2, 0, 1)[None].float() / 255
    np.testing.assert_allclose(a[3], lite0(x)[0].numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(a[0], a[1])


def _data(n=120, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.arange(1, d + 1)
    y = np.sin(X[:, 0]) + 0.1 * X[:, 1] ** 2 / 4 + 0.05 * rng.standard_normal(n)
    return X, y * 3 + 10


def test_svr_equals_scikit_learn_on_standardised_data():
    from sklearn.svm import SVR

    X, y = _data()
    est = MemorabilitySVR(C=1.5, epsilon=0.05).fit(X, y)
    Z = (X - X.mean(0)) / X.std(0)
    ys = (y - y.mean()) / y.std()
    ref = SVR(C=1.5, epsilon=0.05).fit(Z, ys)
    Xt, _ = _data(30, seed=1)
    Zt = (Xt - X.mean(0)) / X.std(0)
    np.testing.assert_allclose(est.predict(Xt), ref.predict(Zt) * y.std() + y.mean(), rtol=1e-6, atol=1e-6)
    rho = np.corrcoef(est.predict(X), y)[0, 1]
    assert rho > 0.9  # it learns the non-linear signal


def test_svr_blocks_average_their_models_and_round_trip():
    X, y = _data(d=8)
    blocks = [(0, 8, 1.0), (0, 3, 0.5)]
    est = MemorabilitySVR(blocks=blocks).fit(X, y)
    a = MemorabilitySVR().fit(X, y).predict(X)
    b = MemorabilitySVR().fit(X[:, :3], y).predict(X[:, :3])
    np.testing.assert_allclose(est.predict(X), (a + 0.5 * b) / 1.5, rtol=1e-6, atol=1e-6)
    state = est.get_state()
    back = regressor_from_state(state)
    assert isinstance(back, MemorabilitySVR)
    np.testing.assert_allclose(back.predict(X), est.predict(X), rtol=1e-6, atol=1e-6)
    head = est.to_torch()
    np.testing.assert_allclose(head(torch.from_numpy(X).float()).detach().numpy(), est.predict(X),
                               rtol=1e-4, atol=1e-4)
    x = torch.from_numpy(X[:2]).float().requires_grad_(True)
    head(x).sum().backward()  # differentiable (integrated gradients go through it)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="does not fit"):
        MemorabilitySVR(blocks=[(0, 9, 1.0)]).fit(X, y)


def test_svr_in_cross_val_score():
    from sklearn.model_selection import cross_val_score

    X, y = _data(150)
    scores = cross_val_score(MemorabilitySVR(), X, y, cv=3, scoring="r2")
    assert scores.mean() > 0.5


def test_svr_passes_every_scikit_learn_estimator_check():
    import warnings

    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(MemorabilitySVR(), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert len(results) > 40 and failed == []
