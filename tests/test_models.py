"""The autoencoder registry, the backbones' input contract, and EfficientNet-Lite correctness."""

from __future__ import annotations

import glob
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from memlens.errors import CheckpointError, ConfigError
from memlens.models import create_autoencoder, get_spec, list_autoencoders
from memlens.models import efficientnet as E

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# -- registry --------------------------------------------------------------------------------------


def test_registry_names_and_specs():
    names = list_autoencoders()
    assert {"small", "vgg16", "efficientnet_lite0"} <= set(names)
    for name in names:
        spec = get_spec(name)
        assert spec.name == name
        assert spec.input_size % spec.size_multiple == 0
        assert len(spec.latent_shape) == 3 and spec.latent_shape[1] == spec.input_size // spec.size_multiple
        assert spec.weights and spec.license and spec.description
        assert spec.default_init in ("scratch", "imagenet")
    assert get_spec("vgg16").latent_shape == (512, 7, 7) and get_spec("vgg16").input_size == 224
    assert "Apache-2.0" in get_spec("efficientnet_lite0").license
    with pytest.raises(ConfigError, match="unknown autoencoder backbone 'nope'.*small"):
        get_spec("nope")


@pytest.mark.parametrize("name,size", [("small", 32), ("small", 64), ("vgg16", 64), ("efficientnet_lite0", 64)])
def test_shapes_and_output_range(name, size):
    model = create_autoencoder(name, input_size=size).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = model.encode(x)
        y = model(x)
    assert tuple(z.shape[1:]) == model.spec.latent_shape == model.latent_shape(size)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert model.config["input_size"] == size


def test_vgg16_architecture_matches_the_paper():
    model = create_autoencoder("vgg16")
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.encoder.modules() if isinstance(m, nn.MaxPool2d)]
    bns = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert (len(convs), len(pools), len(bns)) == (13, 5, 13)
    ups = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 5 and all(m.stride == (2, 2) for m in ups)
    assert model.spec.latent_shape == (512, 7, 7)
    assert model.normalize == "none"  # trained from pixels, like the imagenet-autoencoder


def test_out_of_range_input_names_min_and_max():
    model = create_autoencoder("small", input_size=32).eval()
    x = torch.rand(1, 3, 32, 32)
    x[0, 0, 0, 0] = 2.5
    x[0, 1, 0, 0] = -0.75
    with pytest.raises(ValueError, match=r"min -0\.75.*max 2\.5"):
        model(x)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.rand(1, 3, 36, 36))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model.encode(torch.rand(3, 32, 32))


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = create_autoencoder("small", input_size=32, seed=3)
    b = create_autoencoder("small", input_size=32, seed=3)
    c = create_autoencoder("small", input_size=32, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    wa, wb, wc = (next(m.encoder.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_create_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="no 'imagenet' initialisation"):
        create_autoencoder("small", init="imagenet")
    with pytest.raises(ConfigError, match="no file at"):
        create_autoencoder("small", init=str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="multiple of 8"):
        create_autoencoder("small", input_size=30)
    with pytest.raises(ConfigError, match="unknown option.*'depth'"):
        create_autoencoder("small", depth=3)


def test_eval_outputs_do_not_depend_on_the_batch():
    model = create_autoencoder("small", input_size=32).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-6)


def test_vgg16_imagenet_init_needs_a_source(monkeypatch):
    monkeypatch.delenv("MEMLENS_VGG16_BN_WEIGHTS", raising=False)
    with pytest.raises(ConfigError, match="weights=PATH.*MEMLENS_VGG16_BN_WEIGHTS.*download"):
        create_autoencoder("vgg16", init="imagenet")


def _torchvision_like_vgg16_bn_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The key layout of torchvision's vgg16_bn (cfg D with BN), written independently of memlens."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            cin = v
    torch.manual_seed(seed)
    features = nn.Sequential(*layers)
    with torch.no_grad():
        for m in features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(8, 4)  # the classifier is ignored by the encoder
    sd["classifier.6.bias"] = torch.zeros(8)
    return sd


def test_vgg16_imagenet_init_from_a_local_file(tmp_path, monkeypatch):
    sd = _torchvision_like_vgg16_bn_state()
    path = tmp_path / "vgg16_bn.pth"
    torch.save(sd, path)
    model = create_autoencoder("vgg16", init="imagenet", weights=str(path))
    assert model.normalize == "imagenet"
    assert model.init_report["n_loaded"] == model.init_report["n_expected"] == 13 * 2 + 13 * 5
    enc = model.encoder.state_dict()
    assert all(torch.equal(enc[k], sd[k]) for k in enc)
    # the environment variable works too, and a truncated file is refused naming the key
    del sd["features.41.running_var"]  # the BN after the last conv (features.40)
    torch.save(sd, path)
    monkeypatch.setenv("MEMLENS_VGG16_BN_WEIGHTS", str(path))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): features\.41\.running_var"):
        create_autoencoder("vgg16", init="imagenet")


# -- EfficientNet-Lite -----------------------------------------------------------------------------


def test_lite0_package_weights_load_every_key():
    net = E.EfficientNetLite("efficientnet_lite0")
    report = E.load_efficientnet_weights(net)
    raw = torch.load(E.package_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert report["n_loaded"] == len(net.state_dict()) == len(raw) == 296
    # spot-check explicit mappings
    sd = net.state_dict()
    assert torch.equal(sd["stem.conv.weight"], raw["_conv_stem.weight"])
    assert torch.equal(sd["blocks.1.expand.conv.weight"], raw["_blocks.1._expand_conv.weight"])
    assert torch.equal(sd["blocks.15.dw.bn.running_var"], raw["_blocks.15._bn1.running_var"])
    assert torch.equal(sd["head.bn.bias"], raw["_bn1.bias"])
    assert torch.equal(sd["classifier.weight"], raw["_fc.weight"])


def test_lite0_weight_file_with_missing_or_prefixed_keys(tmp_path):
    raw = torch.load(E.package_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in raw.items()}}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    net = E.EfficientNetLite("efficientnet_lite0")
    assert E.load_efficientnet_weights(net, tmp_path / "wrapped.pth")["n_loaded"] == 296
    del raw["_blocks.7._project_conv.weight"]
    torch.save(raw, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.7\.project\.conv\.weight \(from _blocks\.7\._project_conv\.weight\)"):
        E.load_efficientnet_weights(E.EfficientNetLite("efficientnet_lite0"), tmp_path / "broken.pth")


def test_lite0_autoencoder_encoder_is_the_imagenet_network():
    model = create_autoencoder("efficientnet_lite0", init="imagenet", input_size=64).eval()
    assert model.normalize == "lite" and model.init_report["n_loaded"] == 294
    net = E.efficientnet_lite("efficientnet_lite0")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model.encode(x)
        ref = net.forward_stages(E.normalize_lite(x))[7]  # stage7 output
    torch.testing.assert_close(z, ref)


def test_same_padding_is_tensorflow_style():
    conv = E._SameConv(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.ones(1, 1, 4, 4)
    # TF SAME for k=3, s=2, even input pads 0 before and 1 after: top-left window is fully inside
    y = conv(x)
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 0, 0].item() == 9.0 and y[0, 0, 1, 1].item() == 4.0


def test_feature_extractor_is_frozen_and_differentiable_in_the_input():
    ext = E.feature_extractor()
    ext.train()
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())
    assert ext.layers == ("stage1", "stage2", "stage3", "stage5", "stage7")
    assert ext.channels == (16, 24, 40, 112, 320)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    feats = ext(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2)]
    sum(f.mean() for f in feats).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="observed min"):
        ext(x.detach() * 255)
    with pytest.raises(ConfigError, match="unknown feature layer"):
        E.feature_extractor(layers=["conv5_3"])
    head = E.feature_extractor(layers=["head"])
    assert head(torch.rand(1, 3, 64, 64))[0].shape == (1, 1280, 2, 2)


def test_pooled_features_shape_and_batch_independence():
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    f = E.pooled_features(x, batch_size=2)
    assert f.shape == (3, 1280) and f.dtype == torch.float32
    one = E.pooled_features(x[1:2])
    torch.testing.assert_close(f[1:2], one, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_optional_lite_variants_load_every_key(name):
    if importlib.util.find_spec(E.LITE_VARIANTS[name].module) is None:
        pytest.skip(f"{E.LITE_VARIANTS[name].package} is not installed")
    net = E.EfficientNetLite(name)
    report = E.load_efficientnet_weights(net)
    assert report["n_loaded"] == len(net.state_dict())


def _natural_images(n: int = 16) -> torch.Tensor:
    from PIL import Image

    files = sorted(glob.glob(str(SHARED / "lnsim-dev" / "images" / "*.jpg")))[:n]
    if len(files) < n:
        pytest.skip(f"real images not found under {SHARED / 'lnsim-dev'}")
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
        w, h = im.size
        left, top = (w - 224) // 2, (h - 224) // 2
        out.append(torch.from_numpy(np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255).permute(2, 0, 1))
    return torch.stack(out)


@pytest.mark.shared
def test_lite0_classifies_outdoor_scenes_and_matches_its_bn_statistics():
    """On real outdoor photographs (LNSIM): the top-1 class is mostly a landscape class (ImageNet 970-980:
    alp ... volcano), and the stem's pre-BN activation variance matches the BN running variance only with
    the Lite preprocessing ((x - 0.5) / 0.5), not with ImageNet mean/std."""
    x = _natural_images()
    net = E.efficientnet_lite("efficientnet_lite0")
    with torch.no_grad():
        cls = net(E.normalize_lite(x)).argmax(1)
    assert ((cls >= 970) & (cls <= 980)).float().mean() >= 0.4
    bn = net.stem.bn

    def log_var_ratio(inp: torch.Tensor) -> float:
        with torch.no_grad():
            a = net.stem.conv(inp)
        ok = bn.running_var > 1e-3
        return float((a.var((0, 2, 3)) / bn.running_var)[ok].log().median())

    lite = log_var_ratio(E.normalize_lite(x))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    imagenet = log_var_ratio((x - mean) / std)
    assert abs(lite) < 0.5 < abs(imagenet)


def test_fused_batchnorm_feature_extractor_matches_the_plain_network():
    """The frozen extractors fold batch norm into the convolutions; their outputs do not change."""
    import torch

    from memlens.models.efficientnet import (
        FeatureExtractor,
        efficientnet_lite,
        normalize_lite,
        pooled_feature_extractor,
    )

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    plain = efficientnet_lite("efficientnet_lite0", weights="imagenet").eval()
    with torch.no_grad():
        ref = plain.forward_stages(normalize_lite(x))
        fused = FeatureExtractor(efficientnet_lite("efficientnet_lite0", weights="imagenet"),
                                 ("stage1", "stage5", "head"))(x)
        pooler = pooled_feature_extractor()
        pooled = pooler(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in pooler.modules())
    for got, idx in zip(fused, (1, 5, 8), strict=True):
        torch.testing.assert_close(got, ref[idx], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, ref[-1].mean(dim=(2, 3)), rtol=1e-4, atol=1e-4)
