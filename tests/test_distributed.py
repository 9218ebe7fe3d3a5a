"""DDP pretraining: 2 processes (gloo, 127.0.0.1) train exactly as 1 process on the same global batches."""

from __future__ import annotations

import os
import socket
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from memlens import distributed
from memlens.errors import ConfigError

if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("this torch build has no gloo backend", allow_module_level=True)

N, SIZE = 14, 32
FIT = dict(mode="pretrain", epochs=2, batch_size=6, seed=3, device="cpu", val_fraction=0.2, lr=3e-3, threads=1)


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    low = torch.rand(N, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


def _model():
    from memlens.models import create_autoencoder

    return create_autoencoder("small", input_size=SIZE, width=8, latent_channels=8, seed=1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))  # loopback only
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"})


def _fit_worker(rank: int, world: int, port: int, out: str) -> None:
    _env(rank, world, port)
    torch.set_num_threads(1)
    from memlens.train import fit_autoencoder

    model = _model()
    res = fit_autoencoder(model, _images(), **FIT)
    torch.save({"state": model.state_dict(), "curve": res.curve, "rank": rank,
                "classes": sorted({type(m).__name__ for m in model.modules()})}, f"{out}/rank{rank}.pt")
    distributed.shutdown()


def _train_run_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    _env(rank, world, port)
    from memlens.cli import main

    writes: list[str] = []
    root = os.path.realpath(out)

    def audit(event: str, args: tuple) -> None:  # every file this process creates or renames in the run dir
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and (
                any(c in str(args[1] or "") for c in "wax+") or (args[2] or 0) & (os.O_WRONLY | os.O_RDWR)):
            path = os.fsdecode(args[0])
        elif event == "os.rename":
            path = os.fsdecode(args[1])
        else:
            return
        if os.path.realpath(path).startswith(root + os.sep):
            writes.append(path)

    sys.addaudithook(audit)
    rc = main(["-q", "train", data, "--out", out, "--mode", "pretrain", "--backbone", "small", "--image-size", "32",
               "--epochs", "2", "--batch-size", "4", "--seed", "5", "--threads", "1", "--device", "cpu"])
    distributed.shutdown()
    with open(f"{out}.writes{rank}", "w") as fh:
        fh.write("\n".join(writes))
    sys.exit(rc)


def _spawn(fn, *args) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=fn, args=(rank, 2, *args)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():  # pragma: no cover - a hung collective
            p.kill()
    assert codes == [0, 0], f"worker exit codes {codes}"


def _step_worker(rank: int, world: int, port: int, out: str) -> None:
    """One DDP training step on this rank's part of the global batch; saves the gradients and new weights."""
    _env(rank, world, port)
    torch.set_num_threads(1)
    from memlens.metrics import make_loss

    ctx = distributed.init_from_env(device="cpu")
    model = _model().train()
    ddp = distributed.wrap_model(model, ctx)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _images()[:STEP_BATCH]
    a, z = ctx.part(len(x))
    per = make_loss("mse+0.5*dssim").per_image(x[a:z], ddp(x[a:z], check=False))
    ctx.scaled_loss(per, len(x)).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    opt.step()
    distributed.restore_batchnorm(model)
    torch.save({"grads": grads, "state": model.state_dict()}, f"{out}/step{rank}.pt")
    distributed.shutdown()


STEP_BATCH = 7  # split 4 + 3: unequal parts
#: the latent bias sits before a batch norm, so the loss does not depend on it (its gradient is rounding
#: noise, which Adam rescales to full steps), and that BN's running mean follows it
GAUGE = ("encoder.9.bias", "decoder.1.running_mean")


def test_two_process_ddp_step_equals_one_process_step(tmp_path):
    from memlens.metrics import make_loss

    torch.set_num_threads(1)
    model = _model().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _images()[:STEP_BATCH]
    make_loss("mse+0.5*dssim").per_image(x, model(x, check=False)).mean().backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters()}
    opt.step()
    _spawn(_step_worker, _free_port(), str(tmp_path))
    got = [torch.load(tmp_path / f"step{r}.pt", weights_only=False) for r in range(2)]
    unseen = set()
    for k, g in want.items():
        # the averaged gradient is the gradient of the global-batch mean, batch norm over the global batch
        # (float32 sums in another order: 1e-5 of the largest entry)
        diff = (got[0]["grads"][k] - g).abs().max().item()
        assert diff <= 1e-5 * g.abs().max().item() + 1e-8, (k, diff)
        torch.testing.assert_close(got[1]["grads"][k], got[0]["grads"][k], rtol=0, atol=0)
        if g.abs().max() < 1e-7:  # the latent bias before a batch norm: the loss does not depend on it
            unseen.add(k)
    assert unseen == {"encoder.9.bias"}
    for k, v in model.state_dict().items():  # weights and BN running statistics after the step
        torch.testing.assert_close(got[1]["state"][k], got[0]["state"][k], rtol=0, atol=0)
        if k not in GAUGE:
            torch.testing.assert_close(got[0]["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def _reconstructions(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_images(), check=False)


def test_two_process_ddp_pretrain_equals_one_process(tmp_path):
    torch.set_num_threads(1)
    from memlens.train import fit_autoencoder

    model = _model()
    ref = fit_autoencoder(model, _images(), **FIT)
    _spawn(_fit_worker, _free_port(), str(tmp_path))
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert "GlobalBatchNorm" not in got[0]["classes"] and "BatchNorm2d" in got[0]["classes"]  # restored
    for k in got[0]["state"]:  # both ranks end with the same weights
        torch.testing.assert_close(got[1]["state"][k], got[0]["state"][k], rtol=0, atol=0)
    # the same model as one process: the same function, and the weights agree to float rounding (except
    # the GAUGE entries the loss does not see)
    twin = _model()
    twin.load_state_dict(got[0]["state"])
    torch.testing.assert_close(_reconstructions(twin), _reconstructions(model), rtol=1e-4, atol=2e-5)
    init = _model().state_dict()
    learned = [k for k, v in model.state_dict().items() if v.is_floating_point() and k not in GAUGE
               and (v - init[k]).abs().max() > 1e-3]
    assert len(learned) > 20
    for k in learned:
        torch.testing.assert_close(got[0]["state"][k], model.state_dict()[k], rtol=1e-4, atol=2e-6, msg=k)
    # the same curve: global-batch training loss and validation loss per epoch
    assert len(got[0]["curve"]) == len(ref.curve) == 2
    for a, b in zip(got[0]["curve"], ref.curve, strict=True):
        assert a["step"] == b["step"]
        np.testing.assert_allclose([a["loss"], a["val_loss"]], [b["loss"], b["val_loss"]], rtol=1e-5)


def test_cli_train_under_two_processes_writes_once_and_matches(tmp_path):
    from memlens.cli import main
    from memlens.data import make_demo_set
    from memlens.models import load_autoencoder

    data = make_demo_set(tmp_path / "demo", n_images=12, image_size=32, n_experience=0, n_observers=10, n_splits=3)
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["-q", "train", str(data), "--mode", "pretrain", "--backbone", "small", "--image-size", "32", "--epochs",
            "2", "--batch-size", "4", "--seed", "5", "--threads", "1", "--device", "cpu"]
    assert main([*args[:3], "--out", str(one), *args[3:]]) == 0
    _spawn(_train_run_worker, _free_port(), str(data), str(two))
    assert sorted(p.name for p in two.rglob("*")) == sorted(p.name for p in one.rglob("*"))
    # only rank 0 wrote into the run directory
    assert "autoencoder.pt" in (tmp_path / "two.writes0").read_text()
    assert (tmp_path / "two.writes1").read_text() == ""
    a, b = load_autoencoder(one / "autoencoder.pt"), load_autoencoder(two / "autoencoder.pt")
    torch.testing.assert_close(_reconstructions(b), _reconstructions(a), rtol=1e-4, atol=2e-5)
    curve = [(tmp_path / r / "training_curve.csv").read_text().splitlines() for r in ("one", "two")]
    assert len(curve[0]) == len(curve[1]) == 3 and curve[0][0] == curve[1][0]


def test_parts_sampler_and_errors(monkeypatch):
    assert [distributed.part_bounds(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [distributed.part_bounds(2, r, 3) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]
    batches = [[5, 1, 3, 0, 2], [4, 6]]
    parts = [list(distributed.DistributedBatchSampler(batches, rank=r, world_size=2)) for r in range(2)]
    assert parts == [[[5, 1, 3], [4]], [[0, 2], [6]]]
    assert [sum((p[j] for p in parts), []) for j in range(2)] == batches  # together: the global batches

    # the augmentation of a rank's part equals the same images' augmentation within the whole batch
    from memlens.train import augment_batch, seeded_generator

    x = _images()[:5]
    whole = augment_batch(x, seeded_generator(0, "augment", 0, 0))
    ctx = distributed.DistContext(rank=1, world_size=2, local_rank=1, backend="gloo", device=torch.device("cpu"))
    a, z = ctx.part(5)
    torch.testing.assert_close(ctx.augment(x[a:z], seeded_generator(0, "augment", 0, 0), a), whole[a:z], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="cannot be split over 2 processes"):
        distributed.check_batches([(0, 4), (4, 5)], ctx)

    assert distributed.context_for_training("pretrain", torch.device("cpu")) is None  # a single process
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="exposure mode presents one image at a time"):
        distributed.context_for_training("exposure", torch.device("cpu"))
