"""fit_autoencoder (exposure, pretrain, BN, resume, RNG independence) and the `memlens train` command."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from memlens.cli import main
from memlens.errors import CheckpointError, ConfigError
from memlens.models import create_autoencoder, load_autoencoder
from memlens.train import augment_batch, fit_autoencoder

N, SIZE = 12, 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # smooth random images (a learnable signal), in [0, 1]
    low = torch.rand(N, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


def _model(seed: int = 0):
    return create_autoencoder("small", input_size=SIZE, width=8, latent_channels=8, seed=seed)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- exposure --------------------------------------------------------------------------------------


def test_exposure_matches_a_hand_written_single_exposure(images):
    model = _model()
    ref = copy.deepcopy(model)
    res = fit_autoencoder(model, images, mode="exposure", lr=1e-3, seed=7, device="cpu")
    order = res.order
    assert sorted(order.tolist()) == list(range(N)) and order.tolist() != list(range(N))
    # the same procedure written out: batch 1, Adam, BN frozen, loss of each image before its own update
    ref.train()
    for bn in ref.batchnorm_layers():
        bn.eval()
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    expected = np.zeros(N)
    for i in order:
        x = images[i:i + 1]
        opt.zero_grad()
        loss = ((ref(x) - x) ** 2).mean()
        expected[i] = loss.item()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(res.exposure_loss, expected, rtol=1e-5)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert res.completed and res.steps == N and res.settings["lr"] == 1e-3
    frame = res.exposure_frame([f"img{i}" for i in range(N)])
    assert list(frame.columns) == ["image_id", "order", "loss"]
    assert frame.loc[order[0], "order"] == 0 and frame.loc[order[-1], "order"] == N - 1


def test_exposure_order_is_seeded(images):
    a = fit_autoencoder(_model(), images, seed=1, device="cpu").order
    b = fit_autoencoder(_model(), images, seed=1, device="cpu").order
    c = fit_autoencoder(_model(), images, seed=2, device="cpu").order
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_exposure_keeps_bn_running_statistics_frozen_but_learns_affine(images):
    model = _model()
    before = _weights(model)
    fit_autoencoder(model, images, lr=1e-3, device="cpu")
    after = model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    affine = [k for k in before if k.endswith(".weight") and k.replace(".weight", ".running_mean") in before]
    assert stats and affine
    assert all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in affine)
    # bn="train" would update them from single images
    model2 = _model()
    fit_autoencoder(model2, images, lr=1e-3, device="cpu", bn="train")
    assert any(not torch.equal(before[k], model2.state_dict()[k]) for k in stats)


def test_exposure_rejects_mini_batches_and_bad_settings(images):
    with pytest.raises(ConfigError, match="batch_size must be 1"):
        fit_autoencoder(_model(), images, batch_size=4, device="cpu")
    with pytest.raises(ConfigError, match="mode must be"):
        fit_autoencoder(_model(), images, mode="finetune", device="cpu")
    with pytest.raises(ConfigError, match="unknown metric|available metrics"):
        fit_autoencoder(_model(), images, loss="nope", device="cpu")
    bad = images.clone()
    bad[3] *= 255
    with pytest.raises(ValueError, match="observed min"):
        fit_autoencoder(_model(), bad, device="cpu")


def test_results_do_not_depend_on_global_rng_state(images):
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        model = _model()
        res = fit_autoencoder(model, images, mode="pretrain", epochs=2, batch_size=4, device="cpu")
        assert torch.equal(torch.get_rng_state(), state)
        results.append((_weights(model), res.curve))
    assert _equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]


class _DS(torch.utils.data.Dataset):
    """Items like memlens.data.ImageDataset: (tensor, index)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].clone(), i


def test_dataset_input_and_worker_processes_give_the_same_results(images):
    a = fit_autoencoder(_model(), images, lr=1e-3, device="cpu")
    b = fit_autoencoder(_model(), _DS(images), lr=1e-3, device="cpu")
    np.testing.assert_array_equal(a.exposure_loss, b.exposure_loss)
    kw = dict(mode="pretrain", epochs=2, batch_size=4, device="cpu")
    c = fit_autoencoder(_model(), _DS(images), **kw)
    d = fit_autoencoder(_model(), _DS(images), num_workers=1, **kw)
    assert c.curve == d.curve


# -- pretrain --------------------------------------------------------------------------------------


def test_pretrain_learns_with_cosine_schedule_and_validation(images):
    model = _model()
    res = fit_autoencoder(model, images, mode="pretrain", epochs=6, batch_size=4, device="cpu", val_fraction=0.25)
    assert len(res.val_indices) == 3 and not set(res.val_indices) & set(res.train_indices)
    assert res.orders.shape == (6, 9) and all(sorted(r) == sorted(res.train_indices) for r in res.orders.tolist())
    curve = res.curve_frame()
    assert list(curve["epoch"]) == list(range(1, 7)) and curve["val_loss"].notna().all()
    assert curve["loss"].iloc[-1] < curve["loss"].iloc[0]
    assert curve["val_loss"].iloc[-1] < curve["val_loss"].iloc[0]
    lrs = curve["lr"].to_numpy()
    assert np.all(np.diff(lrs) < 0) and lrs[-1] < 0.02 * 1e-3
    assert res.settings["bn"] == "train" and res.exposure_losses is None
    assert not model.training  # left in eval mode


def test_freeze_encoder_fits_only_the_decoder(images):
    model = _model()
    before = _weights(model)
    fit_autoencoder(model, images, mode="pretrain", epochs=1, batch_size=4, device="cpu", freeze_encoder=True)
    after = model.state_dict()
    enc = [k for k in before if k.startswith("encoder.")]
    dec = [k for k in before if k.startswith("decoder.") and k.endswith("weight")]
    assert all(torch.equal(before[k], after[k]) for k in enc)  # BN statistics included
    assert any(not torch.equal(before[k], after[k]) for k in dec)
    assert all(p.requires_grad for p in model.parameters())


def test_augment_batch_is_seeded_in_range_and_changes_images(images):
    a = augment_batch(images[:4], torch.Generator().manual_seed(3))
    b = augment_batch(images[:4], torch.Generator().manual_seed(3))
    c = augment_batch(images[:4], torch.Generator().manual_seed(4))
    assert a.shape == images[:4].shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(a, images[:4])


# -- resume ----------------------------------------------------------------------------------------


class _Killed(Exception):
    pass


def _killer(at: int):
    def cb(done, total, info):
        if done == at:
            raise _Killed

    return cb


@pytest.mark.parametrize("mode,kw,kill_at,every,resumed_at", [
    ("exposure", {"lr": 1e-3}, 8, 3, 6),
    ("pretrain", {"epochs": 3, "batch_size": 4}, 5, 2, 4),  # killed mid-epoch 2
])
def test_killed_and_resumed_run_ends_with_the_same_weights(images, tmp_path, mode, kw, kill_at, every, resumed_at):
    common = dict(mode=mode, device="cpu", deterministic=True, seed=3, **kw)
    full_model = _model()
    full = fit_autoencoder(full_model, images, **common)
    ck = tmp_path / "state.pt"
    with pytest.raises(_Killed):
        fit_autoencoder(_model(), images, checkpoint_path=ck, checkpoint_every=every, progress=_killer(kill_at),
                        **common)
    assert ck.is_file() and not list(tmp_path.glob(".*tmp*"))
    resumed_model = _model(seed=99)  # the weights come from the checkpoint
    res = fit_autoencoder(resumed_model, images, checkpoint_path=ck, checkpoint_every=every, resume=True, **common)
    assert res.resumed_at == resumed_at and res.completed
    assert _equal(_weights(full_model), _weights(resumed_model))
    assert res.curve == full.curve
    if mode == "exposure":
        np.testing.assert_array_equal(res.exposure_losses, full.exposure_losses)


def test_max_steps_stops_and_resume_completes(images, tmp_path):
    full_model = _model()
    full = fit_autoencoder(full_model, images, lr=1e-3, device="cpu")
    ck = tmp_path / "s.pt"
    part = fit_autoencoder(_model(), images, lr=1e-3, device="cpu", checkpoint_path=ck, max_steps=5)
    assert not part.completed and part.steps == 5 and np.isnan(part.exposure_loss).sum() == N - 5
    model = _model()
    rest = fit_autoencoder(model, images, lr=1e-3, device="cpu", checkpoint_path=ck, resume=True)
    assert rest.completed and _equal(_weights(model), _weights(full_model))
    np.testing.assert_array_equal(rest.exposure_loss, full.exposure_loss)
    with pytest.raises(CheckpointError, match=r"differs in: lr"):
        fit_autoencoder(_model(), images, lr=1e-4, device="cpu", checkpoint_path=ck, resume=True)


def test_resume_ignores_the_optimizer_flags_of_another_execution_path(images, tmp_path):
    """A state saved by the CUDA-graph path (Adam capturable, step tensors on the device) resumes eagerly."""
    full_model = _model()
    full = fit_autoencoder(full_model, images, lr=1e-3, device="cpu")
    ck = tmp_path / "s.pt"
    fit_autoencoder(_model(), images, lr=1e-3, device="cpu", checkpoint_path=ck, max_steps=5)
    saved = torch.load(ck, weights_only=False)
    for g in saved["optimizer"]["param_groups"]:
        g["capturable"] = True  # as the fast path writes it
    torch.save(saved, ck)
    model = _model()
    rest = fit_autoencoder(model, images, lr=1e-3, device="cpu", checkpoint_path=ck, resume=True)
    assert rest.completed and _equal(_weights(model), _weights(full_model))
    np.testing.assert_array_equal(rest.exposure_loss, full.exposure_loss)


# -- GPU (skipped without CUDA) --------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fast,amp,rtol", [(False, False, 2e-3), (True, False, 2e-3), (True, True, 6e-2)])
def test_gpu_exposure_agrees_with_cpu(images, fast, amp, rtol):
    cpu = fit_autoencoder(_model(), images, lr=1e-4, device="cpu")
    # float32 means float32: cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=amp):
        gpu = fit_autoencoder(_model(), images, lr=1e-4, device="cuda", fast=fast, amp=amp)
    assert gpu.fast_path == fast
    np.testing.assert_allclose(gpu.exposure_loss, cpu.exposure_loss, rtol=rtol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_complement_and_bn_train_agree_with_cpu(images):
    """The CUDA-graph path records the distance for 1-<metric> too; bn='train' runs eager (no graph)."""
    imgs = images
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        for kw, fast in (({"loss": "1-mse"}, True), ({"bn": "train"}, False)):
            cpu = fit_autoencoder(_model(), imgs, lr=1e-4, device="cpu", **kw)
            gpu = fit_autoencoder(_model(), imgs, lr=1e-4, device="cuda", amp="float32", **kw)
            assert gpu.fast_path == fast and gpu.precision == "float32"
            np.testing.assert_allclose(gpu.exposure_loss, cpu.exposure_loss, rtol=2e-3)
        assert fit_autoencoder(_model(), imgs, max_steps=2, device="cuda", amp="bfloat16").precision == "bf16 autocast"


# -- the command -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from memlens.data import make_demo_set

    return make_demo_set(tmp_path_factory.mktemp("d") / "demo", n_images=20, n_experience=12, image_size=32,
                         n_observers=20, n_splits=2)


_FAST = ["--backbone", "small", "--image-size", "32", "--pretrain-epochs", "2", "--batch-size", "8", "--threads", "1"]


def test_cli_train_writes_the_run_directory(demo, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(demo), "--out", str(run), *_FAST, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "visual experience: 12 images (data-root experience/ folder)" in out
    for name in ("config.json", "dataset.json", "manifest.json", "autoencoder.pt", "autoencoder_before.pt",
                 "exposure.csv", "experience_order.csv", "training_curve.csv", "training_curve.png"):
        assert (run / name).is_file(), name
    exp = pd.read_csv(run / "exposure.csv")
    assert list(exp.columns) == ["image_id", "order", "loss"] and len(exp) == 20
    assert exp["order"].tolist() == list(range(20)) and (exp["loss"] > 0).all()
    man = json.loads((run / "manifest.json").read_text())
    assert man["seeds"]["seed"] == 3 and man["device"]["used"] == "cpu"
    assert man["training"]["experience"]["n_images"] == 12 and man["training"]["experience"]["epochs"] == 2
    assert man["training"]["exposure"]["presentations_per_image"] == 1 and len(man["input"]["table_sha256"]) == 64
    order = pd.read_csv(run / "experience_order.csv")
    assert len(order) == 2 * man["training"]["experience"]["n_train"]
    ds = json.loads((run / "dataset.json").read_text())
    from memlens.data import load_dataset

    again = load_dataset(ds["source"], ds["layout"], **ds["options"])
    assert set(exp["image_id"]) == set(again.image_ids)
    before, after = load_autoencoder(run / "autoencoder_before.pt"), load_autoencoder(run / "autoencoder.pt")
    assert not _equal(_weights(before), _weights(after))
    curve = pd.read_csv(run / "training_curve.csv")
    assert set(curve["phase"]) == {"experience", "exposure"}
    # a resumed run of a complete directory reuses the visual experience and gives the same exposure
    assert main(["train", str(demo), "--out", str(run), *_FAST, "--seed", "3", "--resume"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(run / "exposure.csv"), exp)


def _csv_set(root, n=12):
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"im{i:02d}.png")
        rows.append({"image": f"im{i:02d}.png", "score": float(rng.random())})
    pd.DataFrame(rows).to_csv(root / "scores.csv", index=False)
    return root


def test_cli_holds_out_experience_by_default_and_refuses_overlap(tmp_path, capsys, caplog):
    data = _csv_set(tmp_path / "set")
    run = tmp_path / "run"
    with caplog.at_level("WARNING", logger="memlens.train"):
        assert main(["train", str(data), "--out", str(run), *_FAST]) == 0
    # a small autoencoder from scratch, a few steps on 3 images: the run says it is close to untrained
    steps = json.loads((run / "manifest.json").read_text())["training"]["experience"]["steps"]
    assert f"had {steps} optimiser steps of visual experience on 3 images" in caplog.text
    held = (run / "experience_ids.txt").read_text().split()
    exp = pd.read_csv(run / "exposure.csv")
    assert len(held) == 3 and len(exp) == 9 and not set(held) & set(exp["image_id"])
    man = json.loads((run / "manifest.json").read_text())
    assert man["training"]["experience"]["source"] == "holdout"
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(tmp_path / "r2"), *_FAST, "--experience", str(data)]) == 1
    assert "shares 12 image(s) with the data set" in capsys.readouterr().err


def test_cli_imagenet_encoder_is_kept_during_visual_experience(demo, tmp_path):
    from memlens.models.efficientnet import EfficientNetLite, load_efficientnet_weights

    run = tmp_path / "run"
    args = ["train", str(demo), "--out", str(run), "--backbone", "efficientnet_lite0", "--image-size", "32",
            "--pretrain-epochs", "1", "--batch-size", "8", "--threads", "1"]
    assert main(args) == 0
    man = json.loads((run / "manifest.json").read_text())
    assert man["model"]["init"] == "imagenet" and man["model"]["init_report"]["n_loaded"] == 294
    assert man["training"]["experience"]["freeze_encoder"] is True
    assert len(man["model"]["init_report"]["sha256"]) == 64
    net = EfficientNetLite("efficientnet_lite0")
    load_efficientnet_weights(net)
    before = load_autoencoder(run / "autoencoder_before.pt")
    ref = net.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in before.encoder.state_dict().items())


def test_pretrain_never_trains_batch_norm_on_a_single_image(images):
    # 4 images, 1 for validation, batches of 2: the lone last image joins the previous batch while BN trains
    kw = dict(mode="pretrain", epochs=2, batch_size=2, device="cpu", val_fraction=0.25)
    assert fit_autoencoder(_model(), images[:4], **kw).steps == 2
    assert fit_autoencoder(_model(), images[:4], bn="frozen", **kw).steps == 4
    # an EfficientNet-Lite latent is 1x1 at 32 px, where a batch of one cannot be normalised at all
    lite = create_autoencoder("efficientnet_lite0", input_size=32)
    res = fit_autoencoder(lite, images[:4], **kw)
    assert res.completed and np.isfinite(res.curve[-1]["val_loss"])


def test_auto_threads_ignore_the_machine_load(monkeypatch):
    """'auto' must not follow the load: training numbers depend on the thread count, and a rerun must match."""
    import os

    from memlens.train import auto_threads, busy_machine_note

    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        idle = auto_threads()
        monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0))
        assert auto_threads() == idle == 2
        cores = len(os.sched_getaffinity(0))
        assert "--threads 1 is usually faster" in busy_machine_note(2) and f"on {cores} cores" in busy_machine_note(2)
        assert busy_machine_note(1) is None  # one thread cannot be oversubscribed
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        assert busy_machine_note(2) is None
    finally:
        torch.set_num_threads(prev)


def test_a_failed_retrain_puts_the_earlier_run_back(tmp_path, capsys):
    """A corrupt image met mid-training, a diverging loss: the earlier model, manifest and tables stay as they were."""
    data = _csv_set(tmp_path / "set")
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *_FAST]) == 0
    (run / "per_image.csv").write_text("image_id,recon_mse\nim00.png,0.1\n")  # a later stage's output
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert {"autoencoder.pt", "autoencoder_before.pt", "manifest.json", "exposure.csv"} <= set(before)
    held = set((run / "experience_ids.txt").read_text().split())
    exposed = next(f"im{i:02d}.png" for i in range(12) if f"im{i:02d}.png" not in held)
    good = (data / exposed).read_bytes()
    (data / exposed).write_text("hello")  # decoded only during the exposure, after the visual experience
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(run), *_FAST, "--seed", "5", "--overwrite"]) == 1
    assert "not an image file" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before and not (run / ".replaced-outputs").exists()
    # and the failed training left no state that a --resume could continue next to the earlier run's files
    assert not (run / "checkpoints").exists()
    (data / exposed).write_bytes(good)
    # a learning rate that makes the loss overflow: a clear error, and the earlier run is still there
    assert main(["train", str(data), "--out", str(run), *_FAST, "--lr", "1e30", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "the exposure diverged: the loss became" in err and "use a lower learning rate --lr (it was 1e+30)" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # a completed retrain replaces everything, later outputs included
    assert main(["train", str(data), "--out", str(run), *_FAST, "--seed", "5", "--overwrite"]) == 0
    assert not (run / "per_image.csv").exists() and not (run / ".replaced-outputs").exists()
    assert (run / "autoencoder.pt").read_bytes() != before["autoencoder.pt"]
    assert json.loads((run / "manifest.json").read_text())["seeds"]["seed"] == 5


def test_a_killed_retrain_is_undone_before_the_next_one(tmp_path, capsys):
    """A retrain killed (SIGKILL, out of memory) while the earlier run waited in .replaced-outputs/: the next
    train puts that run back whole first, so its checks see the earlier run's later outputs."""
    data = _csv_set(tmp_path / "set")
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *_FAST]) == 0
    (run / "per_image.csv").write_text("image_id,recon_mse\nim00.png,0.1\n")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    aside = run / ".replaced-outputs"  # the state a kill during the exposure leaves behind
    aside.mkdir()
    for p in list(run.iterdir()):
        if p.is_file():
            p.rename(aside / p.name)
    (run / "autoencoder_before.pt").write_bytes(b"partial new model")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "exposure.pt").write_bytes(b"state of the killed training")
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(run), *_FAST, "--seed", "9"]) == 1  # no --overwrite
    assert "per_image.csv" in capsys.readouterr().err  # refused: the earlier run's later outputs are back
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not aside.exists() and not (run / "checkpoints").exists()


# -- the released scripts' switches (--loss 1-METRIC, --order, --bn, --init-load) and --amp -------------


@pytest.mark.parametrize("name", ["mse", "dssim"])
def test_complement_loss_gradient_is_the_negative_of_the_metrics(images, name):
    from memlens.metrics import make_loss

    x = images[:3]
    y0 = (0.8 * images[3:6] + 0.1).clone()
    plain, comp = make_loss(name), make_loss(f"1-{name}")
    assert comp.spec == f"1-{name}" and comp.complement and not plain.complement
    y1, y2 = y0.clone().requires_grad_(), y0.clone().requires_grad_()
    (g_plain,) = torch.autograd.grad(plain(x, y1), y1)
    (g_comp,) = torch.autograd.grad(comp(x, y2), y2)
    assert g_plain.abs().sum() > 0
    torch.testing.assert_close(g_comp, -g_plain)
    # the per-image values stay distances; only the objective is complemented
    torch.testing.assert_close(comp.per_image(x, y0), plain.per_image(x, y0))
    torch.testing.assert_close(comp(x, y0), 1 - plain(x, y0))


def test_complement_lpips_squeeze_gradient():
    pytest.importorskip("lpips")
    from memlens.metrics import make_loss

    g = torch.Generator().manual_seed(0)
    x, y0 = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    try:
        plain = make_loss("lpips-squeeze")
        y1 = y0.clone().requires_grad_()
        (g_plain,) = torch.autograd.grad(plain(x, y1), y1)
    except Exception as exc:  # the package is there but its backbone weights cannot be fetched offline
        pytest.skip(f"lpips-squeeze unusable here: {exc}")
    y2 = y0.clone().requires_grad_()
    (g_comp,) = torch.autograd.grad(make_loss("1-lpips-squeeze")(x, y2), y2)
    torch.testing.assert_close(g_comp, -g_plain)


def test_complement_loss_spec_errors():
    from memlens.metrics import make_loss

    for bad in ("1-mse+dssim", "1-0.5*mse", "1-"):
        with pytest.raises(ConfigError, match="a complement must be '1-<metric>'"):
            make_loss(bad)
    with pytest.raises(ConfigError, match="loss '1-nope': unknown metric 'nope'"):
        make_loss("1-nope")


@pytest.mark.parametrize("loss", ["mse", "dssim"])
def test_one_exposure_step_moves_the_distance_down_with_the_loss_and_up_with_its_complement(images, loss):
    from memlens.metrics import get_metric

    x = images[5:6]
    metric = get_metric(loss)
    start = _model()
    with torch.no_grad():
        d0 = float(metric(x, start.eval()(x)))
    after = {}
    for spec in (loss, f"1-{loss}"):
        model = copy.deepcopy(start)
        res = fit_autoencoder(model, x, loss=spec, lr=1e-3, device="cpu")
        # exposure.csv's loss is the distance at exposure, not 1 - d
        assert res.exposure_loss[0] == pytest.approx(d0, rel=1e-5)
        assert res.settings["loss"] == spec
        with torch.no_grad():
            after[spec] = float(metric(x, model(x)))
    assert after[loss] < d0 < after[f"1-{loss}"]


def test_given_exposure_order_is_used_for_every_pass(images):
    order = list(range(N))[::-1]
    res = fit_autoencoder(_model(), images, order=order, epochs=2, lr=1e-3, device="cpu")
    assert res.orders.tolist() == [order, order] and res.settings["order"] == "given"
    assert fit_autoencoder(_model(), images, max_steps=1, device="cpu").settings["order"] == "random"
    for bad in ([0, 0, *range(2, N)], list(range(N - 1))):
        with pytest.raises(ConfigError, match="permutation"):
            fit_autoencoder(_model(), images, order=bad, device="cpu")
    with pytest.raises(ConfigError, match="exposure mode only"):
        fit_autoencoder(_model(), images, mode="pretrain", order=order, device="cpu")


def test_amp_float32_equals_auto_on_the_cpu_and_bfloat16_is_refused(images):
    a, b = _model(), _model()
    ra = fit_autoencoder(a, images, lr=1e-3, device="cpu", amp="auto")
    rb = fit_autoencoder(b, images, lr=1e-3, device="cpu", amp="float32")
    assert np.array_equal(ra.exposure_loss, rb.exposure_loss) and _equal(_weights(a), _weights(b))
    assert ra.precision == rb.precision == "float32" and ra.summary()["precision"] == "float32"
    with pytest.raises(ConfigError, match="bfloat16 needs a CUDA device"):
        fit_autoencoder(_model(), images, device="cpu", amp="bfloat16")


def _cat_set(root, n=12, cats=("b_cat", "a_cat", "c_cat")):
    """A csv set whose table interleaves the categories (row i has category i % 3)."""
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    rows = []
    for i in range(n):
        c = rng.normal(size=(3, 2))
        img = np.stack([np.sin(4 * xx * c[k, 0]) + c[k, 1] * yy for k in range(3)], -1)
        img = (img - img.min()) / (np.ptp(img) + 1e-9)
        name = f"im{(7 * i) % n:02d}.png"  # table order is not the file-name order
        Image.fromarray((img * 255).astype(np.uint8)).save(root / name)
        rows.append({"image": name, "score": float(rng.random()), "category": cats[i % len(cats)]})
    pd.DataFrame(rows).to_csv(root / "scores.csv", index=False)
    return root


_EXPOSE = ["--backbone", "small", "--image-size", "32", "--pretrain-epochs", "0", "--threads", "1", "--lr", "1e-3"]


def test_cli_order_category_groups_the_exposure_and_random_interleaves(tmp_path):
    data = _cat_set(tmp_path / "set")
    table = pd.read_csv(data / "scores.csv")
    cat_of = dict(zip(table["image"], table["category"], strict=True))
    seqs = {}
    for order in ("category", "random"):
        run = tmp_path / order
        assert main(["train", str(data), "--out", str(run), *_EXPOSE, "--order", order]) == 0
        exp = pd.read_csv(run / "exposure.csv").sort_values("order")
        assert list(exp.columns) == ["image_id", "order", "loss"] and len(exp) == 12
        seqs[order] = [(cat_of[i], i) for i in exp["image_id"]]
        man = json.loads((run / "manifest.json").read_text())
        assert man["training"]["exposure"]["settings"]["order"] == ("given" if order == "category" else "random")
        assert json.loads((run / "config.json").read_text())["order"] == order
    assert seqs["category"] == sorted(seqs["category"])  # grouped by category, then image id
    cats = [c for c, _ in seqs["random"]]
    assert sum(a != b for a, b in zip(cats, cats[1:], strict=False)) > 2  # interleaved, not three blocks


def test_cli_order_category_needs_categories(tmp_path, capsys):
    data = _csv_set(tmp_path / "set")
    assert main(["train", str(data), "--out", str(tmp_path / "run"), *_EXPOSE, "--order", "category"]) == 1
    err = capsys.readouterr().err
    assert "order 'category' needs image categories" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_bn_train_updates_running_statistics_and_frozen_keeps_them(tmp_path):
    data = _cat_set(tmp_path / "set")
    stats = {}
    for bn in ("frozen", "train"):
        run = tmp_path / bn
        assert main(["train", str(data), "--out", str(run), *_EXPOSE, "--bn", bn]) == 0
        before, after = load_autoencoder(run / "autoencoder_before.pt"), load_autoencoder(run / "autoencoder.pt")
        b, a = before.state_dict(), after.state_dict()
        keys = [k for k in b if k.endswith(("running_mean", "running_var"))]
        assert keys
        stats[bn] = all(torch.equal(b[k], a[k]) for k in keys)
        man = json.loads((run / "manifest.json").read_text())
        assert man["training"]["exposure"]["settings"]["bn"] == bn
        assert man["training"]["exposure"]["bn"].startswith(bn)
        # the trained model scores in eval mode with its (updated) running statistics
        assert main(["score", str(data), "--run", str(run), "--metrics", "mse", "--device", "cpu"]) == 0
        per = pd.read_csv(run / "per_image.csv")
        assert len(per) == 12 and np.isfinite(per["recon_mse"]).all()
    assert stats == {"frozen": True, "train": False}


def _cli_model(seed: int = 0):
    """The small autoencoder `memlens train --backbone small --image-size 32 --seed SEED` builds."""
    return create_autoencoder("small", input_size=SIZE, seed=seed)


def _prefixed_checkpoint(path, seed=5):
    """A small autoencoder's weights saved as a DataParallel training script would: module. prefix."""
    src = _cli_model(seed=seed)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    return src


def test_cli_init_load_scripts_loads_nothing_from_a_prefixed_checkpoint_and_warns(tmp_path, caplog, capsys):
    data = _cat_set(tmp_path / "set")
    ck = tmp_path / "ae.pth"
    src = _prefixed_checkpoint(ck)
    n = len(src.state_dict())
    small = ["--backbone", "small", "--image-size", "32", "--pretrain-epochs", "0", "--threads", "1"]
    # strict (default): every tensor loads, module. prefix removed
    run = tmp_path / "strict"
    with caplog.at_level("INFO", logger="memlens"):
        assert main(["train", str(data), "--out", str(run), *small, "--init", str(ck)]) == 0
    rep = json.loads((run / "manifest.json").read_text())["model"]["init_report"]
    assert rep["n_loaded"] == rep["n_expected"] == n and rep.get("load") != "scripts"
    assert _equal(_weights(load_autoencoder(run / "autoencoder_before.pt")), _weights(src))
    assert "decoder has learned nothing" not in caplog.text  # a whole pretrained autoencoder: no such warning
    # scripts: nothing matches the prefixed keys; the model keeps its seeded random initial weights
    caplog.clear()
    capsys.readouterr()
    run = tmp_path / "scripts"
    with caplog.at_level("WARNING", logger="memlens"):
        assert main(["train", str(data), "--out", str(run), *small, "--init", str(ck), "--init-load", "scripts"]) == 0
    assert f"0 of {n} tensors loaded" in caplog.text and "starts from random weights, as the released scripts did" \
        in caplog.text
    assert "decoder has learned nothing" in caplog.text
    man = json.loads((run / "manifest.json").read_text())
    rep = man["model"]["init_report"]
    assert rep["load"] == "scripts" and rep["n_loaded"] == 0 and rep["n_expected"] == n
    assert rep["n_unmatched_file_keys"] == n and rep["loaded_by_part"]["decoder"][0] == 0
    assert json.loads((run / "config.json").read_text())["init_load"] == "scripts"
    assert _equal(_weights(load_autoencoder(run / "autoencoder_before.pt")), _weights(_cli_model(seed=0)))
    assert f"0 of {n} tensors loaded" in capsys.readouterr().out
    # scripts with an unprefixed file: the keys match, everything loads
    plain = tmp_path / "plain.pth"
    torch.save(src.state_dict(), plain)
    run = tmp_path / "scripts-plain"
    assert main(["train", str(data), "--out", str(run), *small, "--init", str(plain), "--init-load", "scripts"]) == 0
    assert json.loads((run / "manifest.json").read_text())["model"]["init_report"]["n_loaded"] == n
    assert _equal(_weights(load_autoencoder(run / "autoencoder_before.pt")), _weights(src))


def test_cli_init_load_scripts_needs_a_path_and_complement_needs_no_experience(tmp_path, capsys):
    data = _cat_set(tmp_path / "set")
    assert main(["train", str(data), "--out", str(tmp_path / "r1"), *_EXPOSE, "--init-load", "scripts"]) == 1
    assert "give --init PATH, not --init scratch" in capsys.readouterr().err
    args = ["train", str(data), "--out", str(tmp_path / "r2"), "--backbone", "small", "--image-size", "32",
            "--loss", "1-mse", "--pretrain-epochs", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "maximises the distance" in err and "Traceback" not in err
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_cli_no_experience_warns_only_when_the_decoder_is_untrained(tmp_path, caplog):
    from memlens.models import save_autoencoder

    data = _cat_set(tmp_path / "set")
    with caplog.at_level("WARNING", logger="memlens"):
        assert main(["train", str(data), "--out", str(tmp_path / "scratch"), *_EXPOSE]) == 0
    assert "no visual experience before exposure (pretrain_epochs=0) and the model starts from random weights " \
           "(init scratch): the decoder has learned nothing" in caplog.text
    caplog.clear()
    ck = save_autoencoder(tmp_path / "pretrained.pt", _cli_model(seed=3))  # a memlens autoencoder file
    with caplog.at_level("WARNING", logger="memlens"):
        assert main(["train", str(data), "--out", str(tmp_path / "paper"), *_EXPOSE, "--init", str(ck)]) == 0
    assert "decoder has learned nothing" not in caplog.text


def test_cli_complement_amp_and_options_are_recorded(tmp_path):
    data = _cat_set(tmp_path / "set")
    runs = {}
    for amp in ("auto", "float32"):
        run = tmp_path / amp
        assert main(["train", str(data), "--out", str(run), *_EXPOSE, "--loss", "1-mse", "--amp", amp]) == 0
        runs[amp] = run
        man = json.loads((run / "manifest.json").read_text())
        assert man["device"]["amp"] == amp and man["device"]["precision"] == "float32"
        ex = man["training"]["exposure"]
        assert ex["settings"]["loss"] == "1-mse" and ex["precision"] == "float32"
        assert ex["objective"].startswith("1 - mse") and "records the distance" in ex["objective"]
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["loss"] == "1-mse" and cfg["amp"] == amp and cfg["bn"] == "frozen" and cfg["order"] == "random"
    a, b = (pd.read_csv(runs[k] / "exposure.csv") for k in ("auto", "float32"))
    pd.testing.assert_frame_equal(a, b)
    assert _equal(_weights(load_autoencoder(runs["auto"] / "autoencoder.pt")),
                  _weights(load_autoencoder(runs["float32"] / "autoencoder.pt")))
    # the recorded loss is the distance mse (in [0, 1], small for these images), not 1 - mse
    assert (a["loss"] < 0.5).all()
    assert main(["train", str(data), "--out", str(tmp_path / "bf"), *_EXPOSE, "--amp", "bfloat16"]) == 1
