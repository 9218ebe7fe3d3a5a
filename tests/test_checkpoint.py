"""Checkpoint files: memlens round trips, atomic writes, foreign/malformed files, imagenet-autoencoder loads."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

from memlens.errors import CheckpointError
from memlens.models import create_autoencoder, load_autoencoder, read_checkpoint, save_autoencoder
from memlens.models.checkpoint import (
    load_mapped_state_dict,
    load_state_dict_as_scripts,
    load_train_state,
    read_state_dict,
    save_train_state,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _x(size=32, n=2, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_round_trip_restores_name_config_weights_and_extra(tmp_path):
    model = create_autoencoder("small", input_size=32, seed=5, width=8, latent_channels=6)
    with torch.no_grad():  # make BN running stats non-default so that buffers are checked too
        for bn in model.batchnorm_layers():
            bn.running_mean.uniform_(-1, 1)
    path = save_autoencoder(tmp_path / "ae.pt", model, extra={"note": "hello", "losses": [0.1, 0.2]})
    loaded = load_autoencoder(path)
    assert loaded.spec.name == "small" and loaded.config == model.config
    assert loaded.checkpoint_extra == {"note": "hello", "losses": [0.1, 0.2]}
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x()), model(_x()), rtol=0, atol=0)
    ck = read_checkpoint(path)
    assert ck["format"] == "memlens.autoencoder" and ck["version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.pt"]  # no temporary files left


def test_failed_save_keeps_the_previous_file(tmp_path):
    model = create_autoencoder("small", input_size=32, width=8)
    path = save_autoencoder(tmp_path / "ae.pt", model)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_autoencoder(path, model, extra={"bad": lambda: 1})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.pt"]


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["missing", "text", "object", "foreign", "no_state_dict", "future"])
def test_foreign_or_malformed_files_raise_checkpoint_error(tmp_path, kind, capsys):
    path = tmp_path / "f.pt"
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "object":
        with open(path, "wb") as fh:
            pickle.dump({"format": "memlens.autoencoder", "x": _Evil()}, fh)
    elif kind == "foreign":
        torch.save({"epoch": 3, "arch": "resnet"}, path)
    elif kind == "no_state_dict":
        torch.save({"format": "memlens.autoencoder", "version": 1, "name": "small", "config": {}}, path)
    elif kind == "future":
        torch.save({"format": "memlens.autoencoder", "version": 99, "name": "small", "config": {},
                    "state_dict": {"a": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError) as info:
        load_autoencoder(path)
    assert str(path) in str(info.value)
    assert "this must never run" not in capsys.readouterr().out


def test_memlens_file_with_a_missing_tensor_is_refused(tmp_path):
    model = create_autoencoder("small", input_size=32, width=8)
    save_autoencoder(tmp_path / "ae.pt", model)
    ck = torch.load(tmp_path / "ae.pt", weights_only=True)
    del ck["state_dict"]["decoder.4.body.0.weight"]
    ck["state_dict"]["decoder.extra.weight"] = torch.zeros(2)
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_autoencoder(tmp_path / "bad.pt")
    msg = str(info.value)
    assert "missing keys (1): decoder.4.body.0.weight" in msg and "unexpected keys (1): decoder.extra.weight" in msg


def test_init_from_a_memlens_checkpoint(tmp_path):
    src = create_autoencoder("small", input_size=32, seed=1, width=8)
    save_autoencoder(tmp_path / "ae.pt", src)
    model = create_autoencoder("small", init=str(tmp_path / "ae.pt"), input_size=32, seed=2, width=8)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), model.state_dict().values(), strict=True))
    assert model.init.startswith("checkpoint:") and model.init_report["kind"] == "memlens"
    with pytest.raises(CheckpointError, match="holds a 'small' autoencoder, not 'vgg16'"):
        create_autoencoder("vgg16", init=str(tmp_path / "ae.pt"))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        create_autoencoder("small", init=str(tmp_path / "ae.pt"), input_size=32, width=16)


def test_load_mapped_state_dict_tolerates_only_num_batches_tracked():
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sd = {k: v for k, v in a.state_dict().items() if not k.endswith("num_batches_tracked")}
    b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    report = load_mapped_state_dict(b, sd, {k: k for k in b.state_dict()})
    assert report["n_loaded"] == 6 and report["n_expected"] == 7
    sd.pop("1.running_mean")  # now the counter's absence is no longer excused either
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): 1\.running_mean, 1\.num_batches_tracked"):
        load_mapped_state_dict(b, sd, {k: k for k in b.state_dict()})


def test_train_state_round_trip_and_foreign_file(tmp_path):
    save_train_state(tmp_path / "s.pt", {"step": 3, "rng": {"torch": torch.get_rng_state()}})
    assert load_train_state(tmp_path / "s.pt")["step"] == 3
    torch.save({"step": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a memlens training state"):
        load_train_state(tmp_path / "other.pt")


def test_read_state_dict_unwraps_and_strips_module_prefix(tmp_path):
    torch.save({"state_dict": {"module.a.weight": torch.ones(2)}, "epoch": 1}, tmp_path / "c.pth")
    assert list(read_state_dict(tmp_path / "c.pth")) == ["a.weight"]
    assert list(read_state_dict(tmp_path / "c.pth", strip_module_prefix=False)) == ["module.a.weight"]
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_state_dict(tmp_path / "list.pth")


# -- the imagenet-autoencoder VGG16 (the paper's published checkpoints) ---------------------------


class _IAEEncoderLayer(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.layer = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        return self.layer(x)


class _IAEDecoderLayer(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.layer = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, padding=1))

    def forward(self, x):
        return self.layer(x)


class _Seq(nn.Module):
    def __init__(self, named):
        super().__init__()
        for name, m in named:
            self.add_module(name, m)

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x


def _iae_vgg16() -> nn.Module:
    """A stand-in with the module names of imagenet-autoencoder's VGGAutoEncoder (vgg16 configs
    [2, 2, 3, 3, 3]), written from its architecture description: keys such as
    ``encoder.conv1.0 EncoderLayer.layer.0.weight`` and ``decoder.conv1.0 UpSampling.weight``."""
    enc_plan = [(3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)]
    dec_plan = [(512, 512, 3), (512, 256, 3), (256, 128, 3), (128, 64, 2), (64, 3, 2)]
    enc = OrderedDict()
    for s, (cin, cout, n) in enumerate(enc_plan, start=1):
        layers = [(f"{i} EncoderLayer", _IAEEncoderLayer(cin if i == 0 else cout, cout)) for i in range(n)]
        enc[f"conv{s}"] = _Seq(layers + [(f"{n} MaxPooling", nn.MaxPool2d(2, 2))])
    dec = OrderedDict()
    for b, (cin, cout, n) in enumerate(dec_plan, start=1):
        layers = [("0 UpSampling", nn.ConvTranspose2d(cin, cin, 2, stride=2))]
        layers += [(f"{i + 1} DecoderLayer", _IAEDecoderLayer(cin, cout if i == n - 1 else cin)) for i in range(n)]
        dec[f"conv{b}"] = _Seq(layers)

    class AE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _Seq(list(enc.items()))
            self.decoder = _Seq(list(dec.items()))

        def forward(self, x):
            return torch.sigmoid(self.decoder(self.encoder(x)))

    torch.manual_seed(0)
    ae = AE()
    with torch.no_grad():
        for m in ae.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return ae.eval()


@pytest.fixture(scope="module")
def iae_checkpoint(tmp_path_factory):
    ae = _iae_vgg16()
    path = tmp_path_factory.mktemp("iae") / "imagenet-autoencoder-vgg16.pth"
    # as written by their DataParallel training script: module. prefix, under 'state_dict', with extras
    torch.save({"epoch": 20, "arch": "vgg16",
                "state_dict": OrderedDict((f"module.{k}", v) for k, v in ae.state_dict().items())}, path)
    return ae, path


def test_vgg16_loads_a_module_prefixed_imagenet_autoencoder_checkpoint(iae_checkpoint):
    ae, path = iae_checkpoint
    model = create_autoencoder("vgg16", init=str(path)).eval()
    report = model.init_report
    assert report["kind"] == "imagenet-autoencoder"
    assert report["n_loaded"] == report["n_expected"] == len(ae.state_dict()) == len(model.state_dict())
    assert model.normalize == "none"
    x = _x(size=64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ae(x), rtol=1e-5, atol=1e-6)


def test_vgg16_refuses_an_imagenet_autoencoder_checkpoint_with_a_missing_layer(iae_checkpoint, tmp_path):
    ae, _ = iae_checkpoint
    sd = OrderedDict((f"module.{k}", v) for k, v in ae.state_dict().items()
                     if not k.startswith("decoder.conv2.2 DecoderLayer."))
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError) as info:
        create_autoencoder("vgg16", init=str(path))
    msg = str(info.value)
    assert "refusing a partial load" in msg and "missing keys (7)" in msg
    assert "decoder.blocks.1.layers.3.weight (from decoder.conv2.2 DecoderLayer.layer.0.weight)" in msg


def test_scripts_load_of_a_module_prefixed_imagenet_autoencoder_checkpoint_loads_nothing(iae_checkpoint, caplog):
    """The released scripts' non-strict load keeps the file's module. prefix: no key matches the model's."""
    from memlens.models.vgg import imagenet_autoencoder_mapping

    ae, path = iae_checkpoint
    model = create_autoencoder("vgg16", init="scratch", seed=1).eval()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    raw = read_state_dict(path, strip_module_prefix=False)
    mapping = imagenet_autoencoder_mapping(model)
    with caplog.at_level("WARNING", logger="memlens.models.checkpoint"):
        rep = load_state_dict_as_scripts(model, raw, mapping, what="vgg16 checkpoint")
    n = len(model.state_dict())
    assert rep["load"] == "scripts" and rep["n_loaded"] == 0 and rep["n_expected"] == n
    assert rep["loaded_by_part"]["encoder"][0] == rep["loaded_by_part"]["decoder"][0] == 0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())  # random weights kept
    assert f"0 of {n} tensors loaded" in caplog.text and "carry a 'module.' prefix" in caplog.text
    assert "the model starts from random weights, as the released scripts did" in caplog.text
    # the same file without the prefix: every key matches, as a strict load would give
    caplog.clear()
    with caplog.at_level("WARNING", logger="memlens.models.checkpoint"):
        rep = load_state_dict_as_scripts(model, ae.state_dict(), mapping)
    assert rep["n_loaded"] == n and not caplog.text
    x = _x(size=64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ae(x), rtol=1e-5, atol=1e-6)


def test_scripts_load_keeps_unmatched_tensors_and_refuses_shape_mismatches():
    model = create_autoencoder("small", init="scratch", input_size=32, width=8, latent_channels=8, seed=0)
    other = create_autoencoder("small", init="scratch", input_size=32, width=8, latent_channels=8, seed=1)
    sd = model.state_dict()
    dec = {k: v for k, v in other.state_dict().items() if k.startswith("decoder.")}
    rep = load_state_dict_as_scripts(model, dec, {k: k for k in sd})
    assert rep["n_loaded"] == len(dec) and rep["loaded_by_part"]["decoder"] == [len(dec), len(dec)]
    assert rep["loaded_by_part"]["encoder"][0] == 0
    assert all(torch.equal(model.state_dict()[k], dec[k]) for k in dec)
    bad = {"decoder." + k.split(".", 1)[1]: torch.zeros(1) for k in list(dec)[:1]}
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_state_dict_as_scripts(model, bad, {k: k for k in sd})
