"""score_images: columns and shapes, batch invariance, identical reruns, streaming, latents on disk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from memlens import metrics as M
from memlens.errors import ConfigError, DataError
from memlens.scoring import score_images

METRICS = ("mse", "l1", "dssim", "ms-dssim", "perceptual")


class ToyAE(nn.Module):
    """A tiny conv autoencoder with batch norm (eval mode must use its running statistics)."""

    def __init__(self, seed: int = 0, size: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.encoder = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                     nn.Conv2d(6, 4, 3, stride=2, padding=1))
        self.decoder = nn.Sequential(nn.ConvTranspose2d(4, 6, 2, stride=2), nn.ReLU(),
                                     nn.ConvTranspose2d(6, 3, 2, stride=2))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
            bn = self.encoder[1]
            bn.running_mean.copy_(torch.randn(6, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(6, generator=g) + 0.5)
        self.config = {"input_size": size}
        self.encode_calls: list[int] = []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.encode_calls.append(x.shape[0])
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class ToyFeatures(nn.Module):
    """Maps images to two feature maps (like the EfficientNet extractor); the last one is pooled."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(9)
        self.c1 = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(5, 7, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(7)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)

    def forward(self, x: torch.Tensor, check: bool = True) -> list[torch.Tensor]:
        a = torch.relu(self.c1(x))
        return [a, torch.relu(self.bn(self.c2(a)))]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is much faster than several on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def toy_perceptual(monkeypatch):
    ext = ToyFeatures().eval()
    monkeypatch.setitem(M._EXTRACTORS, "cpu", ext)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(2)
    base = torch.rand(40, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(base, size=(32, 32), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _score(images, **kw):
    kw.setdefault("metrics", METRICS)
    kw.setdefault("feature_model", ToyFeatures())
    kw.setdefault("feature_size", 48)
    kw.setdefault("device", "cpu")
    return score_images(ToyAE(), images, **kw)


def test_columns_and_shapes(images):
    res = _score(images, batch_size=8)
    assert list(res.table.columns) == ["image_id"] + [f"recon_{m}" for m in METRICS]
    assert res.table["image_id"].tolist() == [str(i) for i in range(40)]
    assert res.latent_shape == (4, 8, 8)
    assert res.latents.shape == (40, 4 * 8 * 8) and res.latents.dtype == np.float32
    assert res.features.shape == (40, 7) and res.features.dtype == np.float32
    for m in METRICS:
        col = res.table[f"recon_{m}"]
        assert np.isfinite(col).all() and (col > 0).all()
    # the latent rows are the flattened bottleneck and the mse column is the per-image mse
    model = ToyAE().eval()
    with torch.no_grad():
        z = model.encode(images[:3])
        xh = model.decode(z)
    np.testing.assert_allclose(res.latents[:3], z.flatten(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.table["recon_mse"][:3], ((images[:3] - xh) ** 2).mean(dim=(1, 2, 3)).numpy(),
                               rtol=1e-5)
    assert res.info["n_images"] == 40 and res.info["images_per_s"] > 0


def test_pool_dtype_and_features_off(images):
    res = _score(images, pool="avg", latent_dtype="float16", features=False, metrics=("mse",))
    assert res.latents.shape == (40, 4) and res.latents.dtype == np.float16
    full = _score(images, metrics=("mse",), features=False)
    pooled = full.latents.reshape(40, 4, 64).mean(2)
    np.testing.assert_allclose(res.latents.astype(np.float32), pooled, rtol=2e-3, atol=2e-3)
    assert res.features is None and list(res.table.columns) == ["image_id", "recon_mse"]


def test_batch_invariance(images):
    results = [_score(images, batch_size=b) for b in (1, 7, 32)]
    ref = results[0]
    for res in results[1:]:
        pd.testing.assert_frame_equal(res.table, ref.table, check_exact=False, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(res.latents, ref.latents, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(res.features, ref.features, atol=1e-6, rtol=1e-6)


def test_before_model_columns(images):
    model, same, other = ToyAE(0), ToyAE(0), ToyAE(1)
    res = score_images(model, images, before_model=same, metrics=("mse", "dssim"), features=False, device="cpu")
    assert list(res.table.columns) == ["image_id", "recon_mse", "recon_dssim", "recon_mse_before",
                                       "recon_dssim_before"]
    np.testing.assert_array_equal(res.table["recon_mse"], res.table["recon_mse_before"])
    res2 = score_images(model, images, before_model=other, metrics=("mse",), features=False, device="cpu")
    np.testing.assert_array_equal(res2.table["recon_mse"], res.table["recon_mse"])
    assert (res2.table["recon_mse_before"] != res2.table["recon_mse"]).all()


def test_files_identical_on_rerun(images, tmp_path):
    outs = []
    for run in ("a", "b"):
        d = tmp_path / run
        res = _score(images, batch_size=7, latents_path=d / "latents.npy", features_path=d / "features.npy")
        res.table.to_csv(d / "t.csv", index=False)
        outs.append([(d / f).read_bytes() for f in ("latents.npy", "features.npy", "t.csv")])
        assert isinstance(res.latents, np.memmap) and res.latents_path == d / "latents.npy"
        assert sorted(p.name for p in d.iterdir()) == ["features.npy", "latents.npy", "t.csv"]  # no temp files
    assert outs[0] == outs[1]
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "latents.npy"), _score(images).latents)


def test_streams_an_iterator_without_materialising_it(images, tmp_path):
    consumed = []

    def gen():
        for i in range(len(images)):
            consumed.append(i)
            yield f"img{i:03d}", images[i]

    model = ToyAE()
    seen_at_forward = []
    encode = model.encode

    def spying_encode(x):
        seen_at_forward.append(len(consumed))
        return encode(x)

    model.encode = spying_encode
    res = score_images(model, gen(), batch_size=8, metrics=("mse", "l1"), feature_model=ToyFeatures(),
                       feature_size=48, device="cpu", latents_path=tmp_path / "lat.npy",
                       features_path=tmp_path / "feat.npy")
    # at each forward pass only the images of that batch had been read from the source
    assert seen_at_forward == [8, 16, 24, 32, 40]
    assert res.table["image_id"].tolist() == [f"img{i:03d}" for i in range(40)]
    # unknown length: written through a side file, same numbers as the in-memory tensor source
    ref = _score(images, batch_size=8, metrics=("mse", "l1"))
    np.testing.assert_allclose(np.load(tmp_path / "lat.npy"), ref.latents, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "feat.npy"), ref.features, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feat.npy", "lat.npy"]


def test_model_mode_and_layer(images):
    model = ToyAE()
    model.train()
    res = score_images(model, images[:5], metrics=("mse",), features=False, layer="encoder.2", device="cpu")
    assert model.training  # restored
    assert res.latent_shape == (6, 16, 16) and res.latents.shape == (5, 6 * 16 * 16)
    assert (res.latents >= 0).all()  # the ReLU output
    with pytest.raises(ConfigError, match=r"layer 'nope' not found.*encoder\.0"):
        score_images(model, images[:5], metrics=("mse",), features=False, layer="nope", device="cpu")


def test_failure_leaves_no_files(images, tmp_path, monkeypatch):
    model = ToyAE()
    decode = model.decode

    def failing_decode(z):
        if len(model.encode_calls) > 2:
            raise RuntimeError("boom")
        return decode(z)

    model.decode = failing_decode
    # this instance is instrumented: score it as it is, not a copy with folded batch norms
    monkeypatch.setattr("memlens.scoring.batch.FOLD_BATCHNORM", False)
    with pytest.raises(RuntimeError, match="boom"):
        score_images(model, images, batch_size=8, metrics=("mse",), feature_model=ToyFeatures(), device="cpu",
                     latents_path=tmp_path / "latents.npy", features_path=tmp_path / "features.npy")
    assert list(tmp_path.iterdir()) == []


def test_argument_errors(images):
    with pytest.raises(ConfigError, match="pool"):
        _score(images, pool="max")
    with pytest.raises(ConfigError, match="latent_dtype"):
        _score(images, latent_dtype="int8")
    with pytest.raises(ConfigError, match="available metrics"):
        _score(images, metrics=("mse", "psnr"))
    with pytest.raises(DataError, match="no images"):
        _score(images[:0])
    with pytest.raises(DataError, match="no images"):
        _score(iter([]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _score(images * 3)


def _write_images(folder, n, size=40, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = (rng.random((size, size + 8, 3)) * 255).astype(np.uint8)
        p = folder / f"im{i:02d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_path_source_with_feature_size(tmp_path):
    data = pytest.importorskip("memlens.data.images", reason="memlens.data image pipeline not available yet")
    paths = _write_images(tmp_path / "imgs", 9)
    res = score_images(ToyAE(), paths, metrics=("mse", "dssim"), feature_model=ToyFeatures(), feature_size=48,
                       batch_size=4, device="cpu")
    assert res.table["image_id"].tolist() == [str(p) for p in paths]
    assert res.info["image_size"] == 32 and res.latents.shape == (9, 4 * 8 * 8)
    # the features see the images decoded at feature_size, the model at its input size
    x32 = torch.stack([torch.from_numpy(np.array(data.load_image(p, 32))).permute(2, 0, 1).float() / 255 for p in paths])
    x48 = torch.stack([torch.from_numpy(np.array(data.load_image(p, 48))).permute(2, 0, 1).float() / 255 for p in paths])
    ref = _score(x32, metrics=("mse", "dssim"), batch_size=4)
    np.testing.assert_allclose(res.table["recon_mse"], ref.table["recon_mse"], atol=1e-6)
    feats = ToyFeatures().eval()
    with torch.no_grad():
        f48 = feats(x48)[-1].mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(res.features, f48, atol=1e-5)


def test_real_small_autoencoder_and_features():
    models = pytest.importorskip("memlens.models", reason="memlens.models not available yet")
    pytest.importorskip("memlens.models.efficientnet", reason="EfficientNet extractor not available yet")
    if not hasattr(models, "create_autoencoder"):
        pytest.skip("memlens.models.create_autoencoder not available yet")
    torch.manual_seed(0)
    model = models.create_autoencoder("small")
    size = model.config.get("input_size") or model.spec.input_size
    g = torch.Generator().manual_seed(3)
    x = torch.rand(9, 3, size, size, generator=g)
    res1 = score_images(model, x, metrics=("mse", "ms-dssim"), batch_size=1, device="cpu", feature_size=64)
    res2 = score_images(model, x, metrics=("mse", "ms-dssim"), batch_size=7, device="cpu", feature_size=64)
    assert res1.features.shape == (9, 1280)
    assert res1.latents.shape[0] == 9 and res1.latent_shape == tuple(model.encode(x[:1]).shape[1:])
    pd.testing.assert_frame_equal(res1.table, res2.table, check_exact=False, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(res1.latents, res2.latents, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(res1.features, res2.features, atol=1e-5, rtol=1e-5)


def test_category_reference_leaves_uncategorised_images_alone(caplog):
    """--distinct-reference category: images without a category are not one shared "nan" category."""
    import pandas as pd

    from memlens.neighbors import distinctiveness
    from memlens.scoring.plan import reference_args as _reference_args

    table = pd.DataFrame({"category": ["a", "a", None, "b", "b", " ", None]})
    with caplog.at_level("WARNING", logger="memlens.scoring.plan"):
        args = _reference_args(table, "category")
    assert "3 image(s) have no category" in caplog.text
    x = np.array([[0.0], [1.0], [5.0], [10.0], [12.0], [5.5], [5.2]])
    d = distinctiveness(x, k=1, **args)
    np.testing.assert_allclose(d, [1.0, 1.0, np.nan, 2.0, 2.0, np.nan, np.nan])


def test_batch_scorer_is_the_per_batch_function(images):
    """score_images is a loop over BatchScorer: one batch scored alone gives the same rows as in a full run."""
    from memlens.metrics import get_metric
    from memlens.scoring import BatchScorer

    full = _score(images, batch_size=16, before_model=ToyAE(seed=3))
    model, before, feats = ToyAE().eval(), ToyAE(seed=3).eval(), ToyFeatures().eval()
    scorer = BatchScorer(model, [get_metric(m) for m in METRICS], device=torch.device("cpu"), before_model=before,
                         feature_model=feats, feature_size=48, resize_features=True)
    assert scorer.columns == list(full.table.columns[1:])
    with torch.inference_mode(), scorer.hooked():
        numbers = scorer(images[16:24])
    assert numbers.latent_shape == full.latent_shape
    np.testing.assert_allclose(numbers.latents, full.latents[16:24], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(numbers.features, full.features[16:24], rtol=1e-5, atol=1e-6)
    for col, values in numbers.columns.items():
        np.testing.assert_allclose(values, full.table[col].to_numpy()[16:24], rtol=1e-5, atol=1e-7)
    # a layer's output replaces the bottleneck; the hook is gone after the block
    layered = BatchScorer(model, [get_metric("mse")], device=torch.device("cpu"), layer="encoder.2")
    with torch.inference_mode(), layered.hooked():
        assert layered(images[:4]).latent_shape == (6, 16, 16)
    assert not model.encoder[2]._forward_hooks


def test_register_engine(tmp_path):
    """A registered engine is reachable through score_run(engine=...); a second one of the same name is refused."""
    from memlens.scoring import engines

    calls = []

    def recording(run, data, **kw):
        calls.append((run, data, sorted(kw)))
        return pd.DataFrame({"image_id": ["a"]})

    engines.register_engine("recording-test", recording)
    try:
        out = engines.score_run(tmp_path, "DATA", engine="recording-test", batch_size=3)
        assert out["image_id"].tolist() == ["a"]
        run, data, keys = calls[0]
        assert (run, data) == (tmp_path, "DATA")
        assert {"index", "cluster", "num_workers", "device", "cache", "metrics", "batch_size", "precision"} <= set(keys)
        with pytest.raises(ConfigError, match="registered already"):
            engines.register_engine("recording-test", recording)
        with pytest.raises(ConfigError, match="engine must be one of local, ray, recording-test"):
            engines.score_run(tmp_path, engine="nope")
    finally:
        engines.ENGINES.pop("recording-test", None)


@pytest.mark.parametrize("old, names", [
    ("memlens.measures", ["score_images", "score_run", "ScoreResult", "resolve_device", "FEATURE_SIZE"]),
    ("memlens.engines", ["score_run", "prepare_run", "finish_run", "ENGINES"]),
    ("memlens.engines.ray_engine", ["score_run_ray", "predict_images_ray", "shard_plan", "ray_session"]),
])
def test_old_scoring_paths_warn_and_alias(old, names, monkeypatch):
    """The pre-0.2 module paths still work, as aliases of the new homes, and say they are deprecated."""
    import importlib
    import sys

    for mod in [m for m in sys.modules if m == old or m.startswith(old + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        module = importlib.import_module(old)
    import memlens.inference_ray
    import memlens.ray_cluster
    import memlens.scoring
    import memlens.scoring.ray_engine

    homes = [memlens.scoring, memlens.scoring.ray_engine, memlens.inference_ray, memlens.ray_cluster]
    for name in names:
        assert any(getattr(h, name, None) is getattr(module, name) for h in homes), name


def test_one_efficientnet_pass_serves_the_perceptual_metric_and_the_features(images, monkeypatch):
    """The perceptual metric after and before exposure and the pretrained features share the pass over x: three
    EfficientNet passes per batch (x, its reconstruction, the reconstruction before exposure), not five, with
    the numbers of the separate computations."""
    from memlens.models.efficientnet import EfficientNetLite, feature_extractor
    from memlens.scoring import BatchScorer, pretrained_features

    ext = feature_extractor()
    monkeypatch.setitem(M._EXTRACTORS, "cpu", ext)
    feats = pretrained_features("cpu")
    model, before = ToyAE().eval(), ToyAE(seed=3).eval()
    x = images[:4]
    with torch.inference_mode():  # the separate computations, as before the shared pass
        want_after = M.perceptual_distance(x, model(x)).numpy()
        want_before = M.perceptual_distance(x, before(x)).numpy()
        want_feats = feats(x).numpy()
    passes: list[str] = []
    stages, full = EfficientNetLite.forward_stages, EfficientNetLite.features
    monkeypatch.setattr(EfficientNetLite, "forward_stages",
                        lambda self, a, until=None: passes.append(f"stages{len(a)}") or stages(self, a, until))
    monkeypatch.setattr(EfficientNetLite, "features", lambda self, a: passes.append(f"head{len(a)}") or full(self, a))
    scorer = BatchScorer(model, [M.get_metric("mse"), M.get_metric("perceptual")], device=torch.device("cpu"),
                         before_model=before, feature_model=feats)
    with torch.inference_mode():
        out = scorer(x)
    assert passes == ["stages4", "stages4", "stages4"]
    np.testing.assert_allclose(out.columns["recon_perceptual"], want_after, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.columns["recon_perceptual_before"], want_before, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.features, want_feats, rtol=1e-4, atol=1e-5)
    # features of other pixels (their own decode) or from another network are their own pass
    passes.clear()
    with torch.inference_mode():
        out2 = scorer(x, feature_images=x.flip(3))
    assert passes == ["stages4", "stages4", "stages4", "head4"]
    np.testing.assert_allclose(out2.columns["recon_perceptual"], want_after, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backbone,size", [("small", 32), ("vgg16", 32), ("efficientnet_lite0", 64)])
def test_scoring_folds_batchnorm_into_a_copy(backbone, size):
    """Scoring runs a copy of the autoencoder with every batch norm folded into the convolution before it: the
    copy has none left, gives the original's numbers to float rounding, and the original is untouched."""
    import memlens
    from memlens.models.base import fold_batchnorm

    model = memlens.create_autoencoder(backbone, input_size=size)
    g = torch.Generator().manual_seed(0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    with torch.no_grad():  # statistics and affine parameters far from the identity, so folding matters
        for bn in bns:
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, n = fold_batchnorm(model)
    assert n == len(bns) and folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    x = torch.rand(3, 3, size, size, generator=g)
    with torch.no_grad():
        z, zf = model.encode(x), folded.encode(x)
        np.testing.assert_allclose(zf.numpy(), z.numpy(), rtol=1e-4, atol=1e-5 * float(z.abs().max()))
        np.testing.assert_allclose(folded.decode(zf).numpy(), model.decode(z).numpy(), atol=1e-5)
    on = score_images(model, x, metrics=("mse",), features=False, device="cpu")
    want = ((model(x) - x) ** 2).mean(dim=(1, 2, 3)).detach().numpy()
    np.testing.assert_allclose(on.table["recon_mse"], want, rtol=1e-4)
    assert fold_batchnorm(nn.Sequential(nn.Linear(2, 2)))[1] == 0  # nothing to fold: the model itself
