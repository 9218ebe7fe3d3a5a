"""memlens.baselines: the registry, the authors' preprocessing, the plain-torch ResMem and ViTMem networks (key
names and shapes of the published checkpoints, strict loading, batch independence), finding their weights
without importing the packages, and the one-line errors when they are missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import memlens
from memlens.baselines import (
    BASELINES,
    ResMem,
    ViTMem,
    WeightsNotFound,
    baseline_info,
    find_resmem_weights,
    find_vitmem_weights,
    get_baseline,
    list_baselines,
)
from memlens.baselines import resmem as resmem_mod
from memlens.baselines.preprocess import crop_offset, resize_center_crop
from memlens.baselines.resmem import ResMemNet, ResNet152
from memlens.baselines.vitmem import VITMEM_FILE, VITMEM_URL, VisionTransformer, ViTMemNet
from memlens.cli import main
from memlens.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_installed_weights(monkeypatch, tmp_path_factory):
    """Tests see no ResMem/ViTMem weights unless they put some there: no env vars, no installed resmem, an empty
    torch hub folder (CI installs the resmem wheel; test_real_resmem_weights opts back in)."""
    monkeypatch.delenv("MEMLENS_RESMEM_WEIGHTS", raising=False)
    monkeypatch.delenv("MEMLENS_VITMEM_WEIGHTS", raising=False)
    monkeypatch.setattr(resmem_mod, "_installed_weights", lambda: [])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


def _images(folder, n=3, size=(40, 30)):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        p = folder / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------- registry
def test_registry_lists_the_four_baselines_with_their_metadata():
    assert list_baselines() == ["resmem", "vitmem", "ridge-lite0", "paper-mlp"]
    assert memlens.list_baselines is list_baselines and memlens.get_baseline is get_baseline
    res = baseline_info("resmem")
    assert res.trained_on == ("LaMem", "MemCat") and not res.needs_fit and "Non-commercial" in res.license
    assert baseline_info("ridge-lite0").needs_fit and baseline_info("paper-mlp").trained_on == ()
    for name, (info, _factory, _ok) in BASELINES.items():
        assert info.name == name and info.inputs and info.license and info.description
        assert set(info.to_dict()) >= {"name", "inputs", "license", "trained_on", "needs_fit"}
    with pytest.raises(ConfigError, match="unknown baseline 'memnet'"):
        get_baseline("memnet")
    # nothing installed (the fixture): only the fitted ones are available
    assert list_baselines(available=True) == ["ridge-lite0", "paper-mlp"]


# ---------------------------------------------------------------------------------------------- preprocessing
def test_preprocessing_is_torchvisions_resize_then_centre_crop(tmp_path):
    assert crop_offset(256, 227) == 14 and crop_offset(256, 224) == 16  # int(round(14.5)) == 14
    path = _images(tmp_path, 1, (300, 200))[0]
    got = resize_center_crop(path, 256, 227)
    assert got.shape == (3, 227, 227) and got.dtype == np.float32
    with Image.open(path) as im:  # torchvision on a PIL image: resize((w, h), BILINEAR), crop, ToTensor
        want = np.asarray(im.convert("RGB").resize((256, 256), Image.Resampling.BILINEAR))[14:241, 14:241]
    np.testing.assert_array_equal(got, want.transpose(2, 0, 1).astype(np.float32) / 255)
    # the same pixels as a PIL image, a uint8 array, a float array (resized in float: within one 8-bit step)
    with Image.open(path) as im:
        pil = im.convert("RGB")
        arr8 = np.asarray(pil)
    np.testing.assert_array_equal(resize_center_crop(pil, 256, 227), got)
    np.testing.assert_array_equal(resize_center_crop(arr8, 256, 227), got)
    np.testing.assert_allclose(resize_center_crop(arr8 / 255.0, 256, 227), got, atol=1.01 / 255)
    with pytest.raises(ValueError, match=r"observed min .* max 2"):
        resize_center_crop(arr8 * 2.0 / 255, 256, 227)


# ---------------------------------------------------------------------------------------------- ResMem
def test_resmem_network_has_the_published_state_dict_layout():
    sd = ResMemNet().state_dict()
    assert len(sd) == 956  # the count of the published model.pt
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["features.conv1.weight"] == (64, 3, 7, 7) and shapes["features.fc.weight"] == (1000, 2048)
    assert "features.layer3.35.conv3.weight" in shapes and "features.layer4.2.bn3.running_var" in shapes
    assert shapes["features.layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["conv1.weight"] == (48, 3, 11, 11) and shapes["conv2.weight"] == (256, 24, 5, 5)
    assert shapes["conv3.weight"] == (384, 128, 3, 3) and shapes["conv5.weight"] == (256, 192, 3, 3)
    assert shapes["fc6.weight"] == (4096, 256 * 6 * 6 + 1000) and shapes["fc12.weight"] == (1, 256)
    net = ResMemNet().eval()
    x = torch.rand(1, 3, 227, 227)
    with torch.no_grad():
        assert tuple(net.branch(x).shape) == (1, 9216)
        y = net(x)
    assert tuple(y.shape) == (1,) and 0 <= float(y) <= 1


def test_batchnorm_folding_keeps_the_outputs():
    torch.manual_seed(0)
    net = ResNet152(blocks=(1, 1, 1, 1)).eval()
    for m in net.modules():  # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = net(x)
        got = net.fold_batchnorm()(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def resmem_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("resmem") / "model.pt"
    torch.save(ResMemNet().state_dict(), path)
    return path


def test_resmem_loads_a_state_dict_strictly_and_scores_any_input(resmem_file, tmp_path):
    paths = _images(tmp_path, 3)
    model = ResMem(weights=resmem_file, batch_size=2)
    a = model.predict(paths)
    assert a.shape == (3,) and ((a >= 0) & (a <= 1)).all()
    np.testing.assert_allclose(ResMem(weights=resmem_file, batch_size=1).predict(paths), a, rtol=0, atol=1e-6)
    with Image.open(paths[1]) as im:  # a PIL image and its array score as the file does
        pil = im.convert("RGB")
    b = model.predict([pil, np.asarray(pil)])
    np.testing.assert_allclose(b, [a[1], a[1]], rtol=0, atol=1e-6)
    assert model.weights_path_ == resmem_file
    # a file of other weights is refused, naming what differs
    bad = tmp_path / "other.pt"
    sd = torch.load(resmem_file, weights_only=True)
    sd.pop("fc12.bias")
    torch.save(sd, bad)
    with pytest.raises(memlens.CheckpointError, match="1 missing"):
        ResMem(weights=bad).predict(paths[:1])


def test_resmem_weights_are_found_in_order_without_importing_the_package(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFound) as err:
        find_resmem_weights()
    msg = str(err.value)
    assert "\n" not in msg and "pip install --no-deps resmem" in msg and "--weights resmem=PATH" in msg
    # an installed resmem distribution whose __init__ cannot even be imported: found through find_spec only
    site = tmp_path / "site"
    pkg = site / "resmem"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('torchvision::nms does not exist')\n")
    (pkg / "model.pt").write_bytes(b"x")
    (site / "resmem-9.9.dist-info").mkdir()
    (site / "resmem-9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: resmem\nVersion: 9.9\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(resmem_mod, "_installed_weights", _real_installed)
    assert find_resmem_weights() == pkg / "model.pt"
    import sys

    assert "resmem" not in sys.modules
    env = tmp_path / "env.pt"
    env.write_bytes(b"x")
    monkeypatch.setenv("MEMLENS_RESMEM_WEIGHTS", str(env))
    assert find_resmem_weights() == env  # the env var before the package
    given = tmp_path / "given.pt"
    given.write_bytes(b"x")
    assert find_resmem_weights(given) == given  # the argument before both
    with pytest.raises(WeightsNotFound, match="no such file"):
        find_resmem_weights(tmp_path / "nope.pt")


_real_installed = resmem_mod._installed_weights  # before the autouse fixture patches it


def test_real_resmem_weights(monkeypatch, tmp_path):
    """The published weights (pip install --no-deps resmem; CI installs them): scores in ResMem's range, and a
    fixed synthetic image gives the score measured when this implementation was checked against lnsim-dev."""
    monkeypatch.undo()  # the env var, the installed package and torch hub as the user has them
    try:
        path = find_resmem_weights()
    except WeightsNotFound:
        pytest.skip("ResMem's model.pt not found (pip install --no-deps resmem, or MEMLENS_RESMEM_WEIGHTS=PATH)")
    yy, xx = np.mgrid[0:240, 0:320]
    img = np.stack([xx / 319.0, yy / 239.0, ((xx + yy) % 40) / 39.0], axis=-1).astype(np.float32)
    paths = _images(tmp_path, 2, (64, 48))
    scores = ResMem(weights=path).predict([img, *paths])
    assert ((scores > 0.35) & (scores < 1.0)).all()  # ResMem's outputs never go below about 0.41
    assert scores[0] == pytest.approx(REFERENCE_RESMEM_SCORE, abs=2e-4)


#: ResMem's score of the synthetic image of test_real_resmem_weights (this implementation, published weights)
REFERENCE_RESMEM_SCORE = 0.905553


# ---------------------------------------------------------------------------------------------- ViTMem
def _timm_keys(depth=12):
    keys = {"vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight", "vit.patch_embed.proj.bias",
            "vit.norm.weight", "vit.norm.bias", "vit.head.weight", "vit.head.bias"}
    for i in range(depth):
        b = f"vit.blocks.{i}."
        keys |= {b + k for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight",
                                 "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                                 "mlp.fc2.weight", "mlp.fc2.bias")}
    return keys


def test_vitmem_network_has_timms_miil_layout():
    net = ViTMemNet()
    sd = net.state_dict()
    assert set(sd) == _timm_keys()  # no qkv bias: the MIIL variant
    assert tuple(sd["vit.pos_embed"].shape) == (1, 197, 768) and tuple(sd["vit.head.weight"].shape) == (1, 768)
    assert tuple(sd["vit.blocks.0.attn.qkv.weight"].shape) == (2304, 768)
    assert tuple(sd["vit.blocks.0.mlp.fc1.weight"].shape) == (3072, 768)
    assert all(m.eps == 1e-6 for m in net.modules() if isinstance(m, torch.nn.LayerNorm))


def test_vit_attention_matches_the_textbook_formula():
    torch.manual_seed(0)
    vit = VisionTransformer(size=32, patch=16, dim=8, depth=1, heads=2, n_out=1).eval()
    for p in vit.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        got = vit(x)
        blk = vit.blocks[0]
        t = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([vit.cls_token.expand(2, -1, -1), t], 1) + vit.pos_embed
        h = torch.nn.functional.layer_norm(t, (8,), blk.norm1.weight, blk.norm1.bias, 1e-6)
        q, k, v = (h @ blk.attn.qkv.weight.T).split(8, dim=-1)
        heads = []
        for j in range(2):
            sl = slice(4 * j, 4 * j + 4)
            a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0, dim=-1)
            heads.append(a @ v[..., sl])
        t = t + blk.attn.proj(torch.cat(heads, -1))
        h = torch.nn.functional.layer_norm(t, (8,), blk.norm2.weight, blk.norm2.bias, 1e-6)
        t = t + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(h)))
        t = torch.nn.functional.layer_norm(t, (8,), vit.norm.weight, vit.norm.bias, 1e-6)
        want = vit.head(t[:, 0])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def vitmem_file(tmp_path_factory):
    torch.manual_seed(2)
    net = ViTMemNet()
    for p in net.parameters():  # a random network with outputs that vary between images
        torch.nn.init.normal_(p, std=0.02)
    path = tmp_path_factory.mktemp("vitmem") / VITMEM_FILE
    torch.save(net.state_dict(), path)
    return path


def test_vitmem_round_trip_shape_range_determinism(vitmem_file, tmp_path):
    paths = _images(tmp_path, 4)
    a = ViTMem(weights=vitmem_file, batch_size=3).predict(paths)
    b = ViTMem(weights=vitmem_file, batch_size=1).predict(paths)
    assert a.shape == (4,) and ((a > 0) & (a < 1)).all() and np.ptp(a) > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # the batch does not matter
    # a bare timm state dict (no "vit." prefix) loads too
    sd = {k[len("vit."):]: v for k, v in torch.load(vitmem_file, weights_only=True).items()}
    bare = tmp_path / "bare.pth"
    torch.save(sd, bare)
    np.testing.assert_allclose(ViTMem(weights=bare).predict(paths), a, rtol=0, atol=1e-6)


def test_vitmem_weights_from_torch_hub_or_one_clear_line(vitmem_file, tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFound) as err:
        find_vitmem_weights()
    msg = str(err.value)
    hub = torch.hub.get_dir()
    assert "\n" not in msg and VITMEM_FILE in msg and VITMEM_URL in msg and hub in msg
    target = tmp_path / "torch" / "hub" / "checkpoints" / VITMEM_FILE  # torch.hub.get_dir() = $TORCH_HOME/hub
    target.parent.mkdir(parents=True)
    target.symlink_to(vitmem_file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert find_vitmem_weights() == target
    assert list_baselines(available=True) == ["vitmem", "ridge-lite0", "paper-mlp"]


def test_predict_model_cli(vitmem_file, tmp_path, capsys):
    import pandas as pd

    paths = _images(tmp_path, 2)
    out = tmp_path / "pred.csv"
    rc = main(["predict", *map(str, paths), "--model", "vitmem", "--weights", str(vitmem_file), "-o", str(out)])
    assert rc == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["image", "predicted_score"] and table.image.tolist() == list(map(str, paths))
    np.testing.assert_allclose(table.predicted_score, ViTMem(weights=vitmem_file).predict(paths), atol=1e-6)
    capsys.readouterr()
    # no weights: one line saying how to get them, exit 1, no traceback
    assert main(["predict", str(paths[0]), "--model", "resmem"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "pip install --no-deps resmem" in err
    assert "Traceback" not in err
    # usage errors: exit 2
    assert main(["predict", str(paths[0])]) == 2
    assert main(["predict", str(paths[0]), "--model", "memnet"]) == 2
    assert main(["predict", str(paths[0]), "--model", "resmem", "--run", str(tmp_path)]) == 2
    assert "unknown baseline 'memnet'" in capsys.readouterr().err


def test_fitted_baselines_fit_and_predict_images(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((10, 48, 48, 3)).astype(np.float32)
    ridge = get_baseline("ridge-lite0")
    with pytest.raises(memlens.MemlensError, match="call fit"):
        ridge.predict(images[:2])
    ridge.fit(images, rng.random(10))
    assert ridge.predict(images[:3]).shape == (3,)
    with pytest.raises(ConfigError, match="run=RUN"):
        get_baseline("paper-mlp").fit(images, rng.random(10))
