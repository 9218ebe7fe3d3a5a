"""Multi-process data-parallel training (DDP) for ``memlens train --mode pretrain`` under ``torchrun``.

``torchrun --nproc-per-node N -m memlens.cli train DATA --out RUN --mode pretrain ...`` starts N processes;
each finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment.
:func:`context_for_training` turns that into a process group (NCCL on GPUs, gloo on CPUs) and a
:class:`DistContext`, which :func:`memlens.train.fit_autoencoder` uses to train exactly as one process would:

* **the same global batches**: every rank derives the same seeded epoch orders; each global batch is split
  into contiguous per-rank parts (:meth:`DistContext.part`; see :class:`DistributedBatchSampler` for a
  DataLoader), so the processes together see exactly the single-process batch;
* **the same augmentation**: each image's random crop/flip is drawn from the batch's seeded generator at
  the image's position in the *global* batch (:meth:`DistContext.augment`);
* **the same gradient**: each rank's loss is ``sum(own per-image losses) * world / global batch``; DDP
  averages gradients over ranks, which gives the gradient of the global batch mean exactly;
* **the same batch norm**: BN layers are replaced by :class:`GlobalBatchNorm`, which normalises with the
  statistics of the global batch (two all-reduces per layer, differentiable; torch's ``SyncBatchNorm`` is
  GPU-only) and updates identical running statistics on every rank;
* **rank-0-only writes**: checkpoints and run files are written by rank 0 only; other ranks send their
  run-directory writes to a private temporary folder (:func:`scratch_output`) that is removed at exit. On
  resume, rank 0 broadcasts the training state it loaded (:meth:`DistContext.sync_training_state`), so
  the other ranks need not even see the run directory.

Exposure mode presents one image at a time and cannot be split over processes: it raises a ConfigError.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .augment import augment_batch

__all__ = ["DistContext", "GlobalBatchNorm", "DistributedBatchSampler", "launched", "init_from_env",
           "context_for_training", "current", "convert_batchnorm", "restore_batchnorm", "wrap_model", "unwrap",
           "part_bounds",
           "scratch_output", "shutdown", "check_batches"]

log = logging.getLogger(__name__)

_CONTEXT: DistContext | None = None


def launched() -> bool:
    """Whether this process was started by a multi-process launcher (``WORLD_SIZE`` > 1 in the environment)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def part_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of rank ``rank`` in a global batch of ``n`` (sizes differ by at most 1)."""
    base, extra = divmod(int(n), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group.

    Attributes
    ----------
    rank, world_size, local_rank : from the launcher's environment.
    backend : ``"nccl"`` or ``"gloo"``.
    device : the device this rank trains on (``cuda:LOCAL_RANK`` on GPUs).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0

    def part(self, n: int) -> tuple[int, int]:
        """This rank's ``[start, stop)`` in a global batch of ``n`` images."""
        return part_bounds(n, self.rank, self.world_size)

    def augment(self, x: torch.Tensor, generator: torch.Generator, start: int) -> torch.Tensor:
        """:func:`memlens.train.augment_batch` on this rank's images, drawn as at positions ``start...`` of the
        global batch: the generator first skips the draws of the ``start`` images before them."""
        if start > 0:  # the images before ours draw their crops/flips first (tiny stand-ins: same draws)
            augment_batch(torch.zeros(int(start), x.shape[1], 2, 2), generator)
        if x.shape[0] == 0:
            return x
        return augment_batch(x, generator)

    def scaled_loss(self, per_image: torch.Tensor, n_global: int) -> torch.Tensor:
        """``sum(per_image) * world / n_global``: DDP's gradient average then equals the global-batch mean's."""
        return per_image.sum() * (self.world_size / float(n_global))

    def all_sum(self, value: float | torch.Tensor) -> float:
        """Sum a number over all ranks (no gradient)."""
        import torch.distributed as dist

        t = torch.as_tensor(value, dtype=torch.float64, device=self._comm_device()).detach().clone().reshape(1)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def broadcast_object(self, obj: Any) -> Any:
        """``obj`` of rank 0 on every rank (pickled)."""
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device() if self.backend == "nccl" else None)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    def sync_training_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: Any) -> None:
        """Give every rank rank 0's model, optimizer and loop state (after rank 0 resumed from a checkpoint).

        Without a resumed state (step 0) nothing is sent: every rank built the same model from the same seed,
        and DDP broadcasts rank 0's parameters when it wraps the model.
        """
        step = self.broadcast_object(int(getattr(state, "step", 0)) if self.is_main else None)
        if not step:
            return
        payload = None
        if self.is_main:
            payload = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                       "optimizer": _to_cpu(optimizer.state_dict()),
                       "state": {k: getattr(state, k) for k in ("step", "curve", "losses", "epoch_loss_sum",
                                                                 "epoch_loss_n", "rng")}}
        payload = self.broadcast_object(payload)
        if not self.is_main:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            for k, v in payload["state"].items():
                setattr(state, k, v)
        log.info("rank %d: training state of rank 0 at step %d", self.rank, step)

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def current() -> DistContext | None:
    """The context of this process once :func:`init_from_env` ran (None in a single process)."""
    return _CONTEXT


def init_from_env(backend: str = "auto", device: str | torch.device = "auto",
                  timeout_s: float = 1800) -> DistContext | None:
    """Join the process group described by the launcher's environment (None when not launched).

    Parameters
    ----------
    backend : ``"auto"`` (NCCL when this rank trains on CUDA, else gloo), ``"nccl"`` or ``"gloo"``.
    device : ``"auto"``/``"cuda"`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``"cpu"``.
    timeout_s : collective timeout.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    import torch.distributed as dist

    if not launched() and not dist.is_initialized():
        return None
    if not dist.is_available():  # pragma: no cover - torch builds without distributed
        raise ConfigError("this torch build has no torch.distributed; multi-process training is unavailable")
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing and not dist.is_initialized():
        raise ConfigError(f"multi-process training needs {', '.join(missing)} in the environment "
                          "(start it with torchrun)")
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    dev = torch.device(device) if not isinstance(device, torch.device) and device not in ("auto", None) else device
    if dev in ("auto", None):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda requested but CUDA is not available")
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"backend must be 'auto', 'nccl' or 'gloo', got {backend!r}")
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
        if backend == "nccl":
            kwargs["device_id"] = dev
        if _is_loopback(os.environ.get("MASTER_ADDR", "")):
            # one machine: keep every socket on the loopback interface (gloo's pairs, and the rendezvous
            # store, which torch would otherwise open on all interfaces)
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # torchrun brings its own store
                rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
                kwargs.update(store=_loopback_store(rank, world, timeout), rank=rank, world_size=world)
        dist.init_process_group(**kwargs)
        atexit.register(shutdown)
    _CONTEXT = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                           backend=dist.get_backend(), device=dev)
    log.info("rank %d of %d (%s) on %s", _CONTEXT.rank, _CONTEXT.world_size, _CONTEXT.backend, dev)
    return _CONTEXT


def _is_loopback(addr: str) -> bool:
    return addr in ("127.0.0.1", "localhost", "::1") or addr.startswith("127.")


def _loopback_store(rank: int, world_size: int, timeout: datetime.timedelta) -> Any:
    """The rendezvous key-value store on ``127.0.0.1:MASTER_PORT``, bound to loopback only (rank 0 serves it
    from a socket it binds itself; ``TCPStore`` alone listens on every interface)."""
    import socket

    import torch.distributed as dist

    host, port = "127.0.0.1", int(os.environ["MASTER_PORT"])
    if rank != 0:
        return dist.TCPStore(host, port, world_size, False, timeout=timeout)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} for the process group ({exc}); choose another "
                          "MASTER_PORT") from None
    sock.listen(max(64, world_size))
    fd = sock.detach()  # the store owns the socket from now on
    return dist.TCPStore(host, port, world_size, True, timeout=timeout, wait_for_workers=False,
                         master_listen_fd=fd, use_libuv=True)


def shutdown() -> None:
    """Leave the process group (registered at exit by :func:`init_from_env`)."""
    global _CONTEXT
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def context_for_training(mode: str, device: torch.device) -> DistContext | None:
    """The DDP context for :func:`memlens.train.fit_autoencoder`, or None in a single process.

    Raises
    ------
    ConfigError
        For ``mode="exposure"`` under a multi-process launcher (one image at a time cannot be split).
    """
    import torch.distributed as dist

    if not launched() and not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    if mode != "pretrain":
        raise ConfigError(f"{mode} mode presents one image at a time and cannot run in several processes; "
                          "run it without torchrun (multi-process training is for --mode pretrain)")
    return init_from_env(device="cuda" if device.type == "cuda" else "cpu")


# --------------------------------------------------------------------------------------------------------
# model wrapping


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = x.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class GlobalBatchNorm(nn.Module):
    """Batch norm over the *global* batch of all ranks (drop-in for BatchNorm1d/2d/3d; CPU and GPU).

    In training mode the mean and (biased) variance are all-reduced over the ranks (two passes: the mean,
    then the squared deviations; differentiable), so every rank normalises with exactly the statistics a
    single process would compute on the whole batch, and updates the same running statistics (unbiased
    variance, as torch does). In eval mode it is plain batch norm with the running statistics.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.source_class = type(bn)
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.momentum = bn.momentum
        self.affine = bn.affine
        self.track_running_stats = bn.track_running_stats
        self.weight = bn.weight
        self.bias = bn.bias
        if bn.track_running_stats:
            self.register_buffer("running_mean", bn.running_mean)
            self.register_buffer("running_var", bn.running_var)
            self.register_buffer("num_batches_tracked", bn.num_batches_tracked)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.train(bn.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        use_batch = self.training or self.running_mean is None
        if not use_batch or not (dist.is_available() and dist.is_initialized()):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_batch,
                                self.momentum or 0.0, self.eps)
        all_reduce = _AllReduceSum.apply
        dims = [0] + list(range(2, x.ndim))
        shape = [1, -1] + [1] * (x.ndim - 2)
        xf = x.float()
        count = torch.tensor([x.numel() / max(x.shape[1], 1)], dtype=torch.float32, device=x.device)
        n = all_reduce(count.clone())
        mean = all_reduce(xf.sum(dim=dims)) / n
        dev = xf - mean.reshape(shape)
        var = all_reduce(dev.pow(2).sum(dim=dims)) / n
        y = dev * torch.rsqrt(var + self.eps).reshape(shape)
        if self.weight is not None:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                total = float(n)
                unbiased = var.detach() * (total / max(total - 1.0, 1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` (in place) by a :class:`GlobalBatchNorm` sharing its
    parameters and buffers; returns ``module``."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            setattr(module, name, GlobalBatchNorm(child))
        else:
            convert_batchnorm(child)
    return module


def restore_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_batchnorm`: plain ``BatchNorm{1,2,3}d`` layers with the same parameters/buffers."""
    for name, child in list(module.named_children()):
        if isinstance(child, GlobalBatchNorm):
            bn = child.source_class(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                         track_running_stats=child.track_running_stats)
            bn.weight, bn.bias = child.weight, child.bias
            if child.track_running_stats:
                bn.running_mean, bn.running_var = child.running_mean, child.running_var
                bn.num_batches_tracked = child.num_batches_tracked
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            restore_batchnorm(child)
    return module


def wrap_model(model: nn.Module, ctx: DistContext, global_bn: bool = True) -> nn.Module:
    """``model`` with global batch norm (``global_bn``), wrapped in ``DistributedDataParallel`` for ``ctx``.

    The BN conversion is in place (the caller's model object is trained); :func:`unwrap` returns it, and
    :func:`restore_batchnorm` puts plain BN layers back (done by ``fit_autoencoder`` at the end). Frozen BN
    (running statistics) needs no conversion: pass ``global_bn=False``.
    """
    from torch.nn.parallel import DistributedDataParallel

    if global_bn:
        convert_batchnorm(model)
    ids = [ctx.device.index or 0] if ctx.device.type == "cuda" else None
    # buffers stay in step by construction (GlobalBatchNorm): DDP need not broadcast them every forward
    import inspect

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_sync)


def check_batches(bounds: Sequence[tuple[int, int]], ctx: DistContext) -> None:
    """Every global batch must give each rank at least one image.

    Raises
    ------
    ConfigError
        Naming the smallest batch and the number of processes.
    """
    smallest = min((b - a for a, b in bounds), default=0)
    if smallest < ctx.world_size:
        raise ConfigError(f"a batch of {smallest} image(s) cannot be split over {ctx.world_size} processes: use a "
                          f"batch size of at least {ctx.world_size} (and one that leaves no smaller last batch)")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (``model`` itself otherwise)."""
    return getattr(model, "module", model)


# --------------------------------------------------------------------------------------------------------
# data and files


class DistributedBatchSampler:
    """Batch sampler yielding this rank's contiguous part of each *global* batch.

    Unlike ``torch.utils.data.DistributedSampler`` (which deals an epoch's indices round-robin and pads the
    last ones), this keeps the global batches of a single process: the union over ranks of their parts of
    batch ``j`` is exactly batch ``j``. Use it as ``DataLoader(dataset, batch_sampler=...)``.

    Parameters
    ----------
    batches : the global batches (lists of dataset indices), identical on every rank.
    rank, world_size : this rank's place (default: :func:`current`).
    """

    def __init__(self, batches: Sequence[Sequence[int]], rank: int | None = None, world_size: int | None = None):
        ctx = current()
        self.rank = int(rank if rank is not None else (ctx.rank if ctx else 0))
        self.world_size = int(world_size if world_size is not None else (ctx.world_size if ctx else 1))
        self.batches = [list(b) for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches:
            a, z = part_bounds(len(b), self.rank, self.world_size)
            yield b[a:z]

    def __len__(self) -> int:
        return len(self.batches)


def scratch_output(out: str | os.PathLike) -> Path:
    """Where a rank writes its copy of the run directory: ``out`` on rank 0 (or in one process), else a private
    temporary folder removed when the process exits (rank-0-only writes to the real run directory)."""
    ctx = current()
    if ctx is None or ctx.is_main:
        return Path(out)
    scratch = Path(tempfile.mkdtemp(prefix=f"memlens-rank{ctx.rank}-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    log.debug("rank %d: run-directory writes go to %s (rank 0 writes %s)", ctx.rank, scratch, out)
    return scratch
