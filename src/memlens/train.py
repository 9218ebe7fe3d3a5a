"""Training autoencoders: single ``exposure`` (the paper's memory experiment) and ``pretrain`` (visual experience).

``fit_autoencoder(model, images, mode=...)`` trains ``model`` in place and returns a :class:`TrainResult`.

exposure
    One pass over the images, batch size 1, in a seeded random order (never the given order), Adam at a
    small learning rate (default 1e-5) held constant. Each image's loss is recorded *at its exposure*: the
    loss of the forward pass that the image's own update is computed from, i.e. before the model learned
    from it. Batch norm: ``bn="auto"`` = ``"frozen"``: every BN layer runs in eval mode with its running
    statistics fixed (a batch of one image has no meaningful batch statistics, and updating running
    averages from single images would make an image's loss depend on the few images shown just before it);
    BN's affine weights still learn. ``bn="train"`` uses batch statistics instead.
pretrain
    Multi-epoch mini-batch training with augmentation (random resized crop + horizontal flip, written in
    torch, seeded per step), Adam (default lr 1e-3) with a cosine schedule to 0, and a validation loss
    per epoch on a seeded held-out fraction. BN (``bn="auto"``) trains normally. ``freeze_encoder=True``
    fits only the decoder (the encoder, BN included, stays as it is), e.g. for an ImageNet encoder.

All randomness derives from ``seed`` (orders, splits, augmentation, and the global RNG inside the call,
which is forked and restored), so results do not depend on hidden global state. With ``checkpoint_path``
the full training state (model, optimizer, schedule position, RNG states, per-image losses so far) is
written atomically every ``checkpoint_every`` steps; ``resume=True`` continues from it and -- on the CPU with
``deterministic=True`` -- ends with exactly the weights of an uninterrupted run.

On CUDA: bf16 autocast for the model, channels_last memory format, and for exposure a fast path that
captures the whole batch-1 training step (forward, loss, backward, Adam) in a CUDA graph and replays it per
image (``fast="auto"``); it falls back to eager execution when capture fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as _distributed
from ._io import check_output_path
from .errors import CheckpointError, ConfigError, DataError, RunDirError, TrainingError
from .models.base import Autoencoder, check_image_range
from .models.checkpoint import load_train_state, save_train_state

__all__ = ["fit_autoencoder", "train_run", "TrainResult", "resolve_device", "augment_batch", "DEFAULT_LR"]

log = logging.getLogger(__name__)

DEFAULT_LR = {"exposure": 1e-5, "pretrain": 1e-3}
DEFAULT_CHECKPOINT_EVERY = {"exposure": 1000}
#: random resized crop: area fraction and aspect-ratio ranges
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)

ProgressFn = Callable[[int, int, dict[str, Any]], None]


# -- results ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a :func:`fit_autoencoder` call did.

    Attributes
    ----------
    mode : "exposure" or "pretrain".
    n_images : images given.
    epochs : passes (exposure) or epochs (pretrain) requested.
    orders : (epochs, n) image indices in presentation order, one row per pass/epoch (pretrain: the
        training images only; exposure: all images).
    exposure_losses : exposure only, (epochs, N): the loss of image i at its exposure in pass p
        (NaN where not yet exposed when stopped early).
    curve : rows ``{phase, epoch, step, loss, val_loss, lr}`` (per step for exposure, per epoch for pretrain).
    train_indices, val_indices : pretrain split (exposure: all images / none).
    steps : optimisation steps taken in total; completed : whether every step ran.
    seconds, images_per_s : wall time of this call's training loop and its throughput (excluding setup).
    setup_seconds : part of ``seconds`` spent before the first step (CUDA-graph warm-up and capture).
    device, fast_path : where it ran and whether the CUDA-graph path was used.
    settings : the resolved settings (lr, loss, batch_size, bn, augment, seed, ...).
    resumed_at : the step a resumed run continued from (None when it started fresh).
    """

    mode: str
    n_images: int
    epochs: int
    orders: np.ndarray
    exposure_losses: np.ndarray | None
    curve: list[dict[str, Any]]
    train_indices: np.ndarray
    val_indices: np.ndarray
    steps: int
    completed: bool
    seconds: float
    images_per_s: float
    device: str
    fast_path: bool
    settings: dict[str, Any] = field(default_factory=dict)
    resumed_at: int | None = None
    setup_seconds: float = 0.0

    @property
    def order(self) -> np.ndarray:
        """The first pass's presentation order (image indices)."""
        return self.orders[0]

    @property
    def exposure_loss(self) -> np.ndarray | None:
        """Loss of each image at its first exposure, (N,), indexed like the images (exposure only)."""
        return None if self.exposure_losses is None else self.exposure_losses[0]

    def exposure_frame(self, image_ids: Sequence[str] | None = None) -> Any:
        """DataFrame ``image_id`` (or ``image_index``), ``order`` (0-based position), ``loss``; extra passes
        add ``order_pass{k}``/``loss_pass{k}``."""
        import pandas as pd

        if self.exposure_losses is None:
            raise ValueError("exposure_frame() needs an exposure-mode result")
        n = self.n_images
        key = list(image_ids) if image_ids is not None else list(range(n))
        if len(key) != n:
            raise ValueError(f"{len(key)} image ids for {n} images")
        data: dict[str, Any] = {"image_id" if image_ids is not None else "image_index": key}
        for p in range(self.orders.shape[0]):
            pos = np.full(n, -1, dtype=np.int64)
            pos[self.orders[p]] = np.arange(n)
            suffix = "" if p == 0 else f"_pass{p + 1}"
            data[f"order{suffix}"] = pos
            data[f"loss{suffix}"] = self.exposure_losses[p]
        return pd.DataFrame(data)

    def curve_frame(self) -> Any:
        """The training curve as a DataFrame."""
        import pandas as pd

        cols = ["phase", "epoch", "step", "loss", "val_loss", "lr"]
        return pd.DataFrame([{c: r.get(c) for c in cols} for r in self.curve], columns=cols)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no per-image arrays)."""
        return {
            "mode": self.mode, "n_images": self.n_images, "epochs": self.epochs, "steps": self.steps,
            "completed": self.completed, "seconds": round(self.seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "images_per_s": round(self.images_per_s, 2), "device": self.device, "fast_path": self.fast_path,
            "n_train": int(len(self.train_indices)), "n_val": int(len(self.val_indices)),
            "resumed_at": self.resumed_at, "settings": dict(self.settings),
            "final_val_loss": next((r["val_loss"] for r in reversed(self.curve) if r.get("val_loss") is not None), None),
        }


# -- helpers ---------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU raises ``ConfigError``."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available (use --device cpu or auto)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return dev


def _derive(seed: int, *parts: Any) -> int:
    """A 63-bit seed derived from ``seed`` and a purpose (stable across runs and platforms)."""
    text = "/".join(str(p) for p in (int(seed), *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _generator(seed: int, *parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(_derive(seed, *parts))


def _permutation(n: int, seed: int, *parts: Any) -> np.ndarray:
    return torch.randperm(n, generator=_generator(seed, *parts)).numpy().astype(np.int64)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (area 35-100%, aspect 3/4-4/3) + horizontal flip, per image, same output size.

    ``x``: (B, 3, H, W) in [0, 1] on the CPU; the result stays in [0, 1].
    """
    b, _, h, w = x.shape
    out = torch.empty_like(x)
    area = h * w
    log_r = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for i in range(b):
        u = torch.rand(3 * 10 + 1, generator=generator).tolist()
        ch, cw, top, left = h, w, 0, 0
        for t in range(10):
            s = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u[3 * t]
            r = math.exp(log_r[0] + (log_r[1] - log_r[0]) * u[3 * t + 1])
            cw_t = int(round(math.sqrt(area * s * r)))
            ch_t = int(round(math.sqrt(area * s / r)))
            if 0 < cw_t <= w and 0 < ch_t <= h:
                ch, cw = ch_t, cw_t
                pos = u[3 * t + 2]
                top = int(pos * (h - ch + 1)) if h > ch else 0
                left = int(((pos * 7919) % 1.0) * (w - cw + 1)) if w > cw else 0
                break
        crop = x[i:i + 1, :, top:top + ch, left:left + cw]
        if (ch, cw) != (h, w):
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        if u[-1] < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0]
    return out.clamp_(0.0, 1.0)


class _Images:
    """Uniform, validated access to a tensor, a sequence of tensors or a torch Dataset of images."""

    def __init__(self, images: Any, size_multiple: int, cache: bool):
        if isinstance(images, torch.utils.data.DataLoader):
            images = images.dataset
        if torch.is_tensor(images):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
            check_image_range(images)
        elif not hasattr(images, "__getitem__") or not hasattr(images, "__len__"):
            raise TypeError("images must be a tensor (N, 3, H, W), a sequence of (3, H, W) tensors or a Dataset")
        self.src = images
        self.n = len(images)
        self.multiple = size_multiple
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.shape: tuple[int, ...] | None = None
        self._checked: set[int] = set()
        if torch.is_tensor(images):  # validated as a whole above: no per-image reads (GPU syncs) later
            if images.shape[2] % size_multiple or images.shape[3] % size_multiple:
                raise ValueError(f"image sides must be multiples of {size_multiple} for this model, got "
                                 f"{tuple(images.shape[2:])}")
            self.shape = tuple(images.shape[1:])
            self._checked = set(range(self.n))

    def __len__(self) -> int:
        return self.n

    def get(self, i: int) -> torch.Tensor:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        item = self.src[i]
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not torch.is_tensor(item):
            item = torch.as_tensor(np.asarray(item))
        x = item if item.dtype == torch.float32 else item.to(torch.float32)
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if i not in self._checked:
            if x.ndim != 3 or x.shape[0] != 3:
                raise ValueError(f"image {i}: expected a (3, H, W) tensor, got shape {tuple(x.shape)}")
            if self.shape is None:
                self.shape = tuple(x.shape)
                if x.shape[1] % self.multiple or x.shape[2] % self.multiple:
                    raise ValueError(f"image sides must be multiples of {self.multiple} for this model, got "
                                     f"{tuple(x.shape[1:])}")
            elif tuple(x.shape) != self.shape:
                raise ValueError(f"image {i} has shape {tuple(x.shape)}, the first had {self.shape}; resize all "
                                 "images to one size")
            check_image_range(x[None], what=f"image {i}")
            self._checked.add(i)
        if self.cache is not None:
            self.cache[i] = x
        return x

    def batch(self, idx: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.get(int(i)) for i in idx])


def _iter_batches(images: _Images, batches: Sequence[Sequence[int]], num_workers: int) -> Iterator[torch.Tensor]:
    """Yield stacked batches in order; with workers, decode in background processes (order kept)."""
    cache = images.cache
    on_gpu = isinstance(images.src, (list, tuple)) and any(torch.is_tensor(t) and t.is_cuda for t in images.src)
    if num_workers <= 0 or torch.is_tensor(images.src) or on_gpu or (
            cache is not None and all(int(i) in cache for b in batches for i in b)):
        for b in batches:
            yield images.batch(b)
        return
    loader = torch.utils.data.DataLoader(
        _Indexed(images), batch_sampler=[list(b) for b in batches], num_workers=num_workers,
        collate_fn=_collate)
    for b, x in zip(batches, loader, strict=True):
        if cache is not None:  # workers decoded (and validated) them: keep them for the next epochs
            for j, i in enumerate(b):
                cache[int(i)] = x[j]
        yield x


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, images: _Images):
        self.images = images

    def __len__(self) -> int:
        return self.images.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images.get(i)


def _collate(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(items)


def _bn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _set_modes(model: nn.Module, bn: str, freeze_encoder: bool) -> None:
    model.train()
    if bn == "frozen":
        for m in _bn_layers(model):
            m.eval()
    if freeze_encoder:
        model.encoder.eval()


@contextlib.contextmanager
def _num_threads(n: int | None) -> Iterator[None]:
    if not n:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def auto_threads() -> int:
    """The CPU threads ``threads="auto"`` means: torch's intra-op thread count, at least 1.

    torch's default is the usable cores (or ``OMP_NUM_THREADS`` when set). The choice is fixed for a machine
    and never follows its momentary load: training results depend (slightly) on the thread count, because
    float sums are split differently, and a rerun must give the same numbers. ``manifest.json`` records
    the count (``device.torch_threads``). On a busy machine :func:`train_run` warns that ``--threads 1`` is
    faster (oversubscribed intra-op threads are very slow: 2 threads on 2 busy cores ran batch-1 exposure
    20x slower than 1 thread).
    """
    return max(1, int(torch.get_num_threads()))


def _busy_machine_note(threads: int) -> str | None:
    """A warning when ``threads`` > 1 and other processes already keep the cores busy, else None."""
    import os

    if threads <= 1:
        return None
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # pragma: no cover - platforms without load averages
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load < 0.75 * cores:
        return None
    return (f"the machine is busy (1-minute load {load:.1f} on {cores} cores) and training uses {threads} threads: "
            "shared cores make this slow; --threads 1 is usually faster then (the numbers depend slightly on the "
            "thread count, which manifest.json records)")


@contextlib.contextmanager
def _deterministic(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def _epoch_batches(n: int, batch_size: int, merge_single: bool) -> list[tuple[int, int]]:
    """(start, stop) of each mini-batch; a last batch of one image joins the previous one when BN trains
    (batch statistics of a single image are undefined at 1x1 resolution and meaningless otherwise)."""
    bounds = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    if merge_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _cosine(base: float, t: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / max(total, 1)))


# -- the training entry point ----------------------------------------------------------------------


def fit_autoencoder(
    model: Autoencoder,
    images: Any,
    *,
    mode: str = "exposure",
    loss: Any = "mse",
    lr: float | None = None,
    epochs: int = 1,
    batch_size: int = 1,
    seed: int = 0,
    device: str | torch.device = "auto",
    val_fraction: float = 0.1,
    augment: bool = True,
    bn: str = "auto",
    freeze_encoder: bool = False,
    weight_decay: float = 0.0,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    progress: ProgressFn | None = None,
    num_workers: int = 0,
    amp: bool = True,
    channels_last: bool = True,
    fast: bool | str = "auto",
    deterministic: bool = False,
    cache_images: bool | str = "auto",
    threads: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``images`` (see the module docstring for the two modes).

    Parameters
    ----------
    model : an :class:`~memlens.models.Autoencoder` (or any module mapping images to reconstructions).
    images : a tensor (N, 3, H, W), a sequence of (3, H, W) tensors, or a torch Dataset whose items are
        tensors or ``(tensor, index)`` (e.g. ``memlens.data.ImageDataset``); float32 in [0, 1].
    mode : ``"exposure"`` or ``"pretrain"``.
    loss : a :func:`memlens.metrics.make_loss` spec (``"mse"``, ``"mse+0.5*dssim"``, ...).
    lr : learning rate; default 1e-5 (exposure) or 1e-3 (pretrain).
    epochs : passes over the images (exposure: each pass in a new seeded order; the paper uses 1).
    batch_size : exposure requires 1 (the paper's setting); pretrain mini-batch size.
    seed : seeds the order, the validation split, augmentation and the global RNG inside the call.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    val_fraction : pretrain: held-out fraction for the per-epoch validation loss.
    augment : pretrain: random resized crop + horizontal flip.
    bn : ``"auto"`` (exposure: frozen, pretrain: train), ``"frozen"`` or ``"train"``.
    freeze_encoder : train only the decoder (encoder in eval mode, no gradients).
    weight_decay : Adam's L2 penalty on the weights (default 0).
    checkpoint_path, checkpoint_every, resume : atomic training-state checkpoints and resumption.
    max_steps : stop after this many steps in total (the state is checkpointed; resume continues).
    progress : ``progress(done, total, info)`` after each step (info: phase, epoch, loss when known).
    num_workers : background processes decoding a Dataset's images.
    amp, channels_last, fast : CUDA only: bf16 autocast, channels_last, the CUDA-graph exposure path.
    deterministic : enable ``torch.use_deterministic_algorithms`` during the call.
    cache_images : keep decoded images in memory across epochs (``"auto"``: pretrain, when under 1 GiB).
    threads : CPU threads for torch during the call (restored afterwards); None leaves the setting alone.

    Returns
    -------
    TrainResult
        The model is left in eval mode on ``device``.
    """
    from .metrics import make_loss

    if mode not in ("exposure", "pretrain"):
        raise ConfigError(f"mode must be 'exposure' or 'pretrain', got {mode!r}")
    if bn == "auto":
        bn = "frozen" if mode == "exposure" else "train"
    if bn not in ("frozen", "train"):
        raise ConfigError(f"bn must be 'auto', 'frozen' or 'train', got {bn!r}")
    epochs, batch_size = int(epochs), int(batch_size)
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if mode == "exposure" and batch_size != 1:
        raise ConfigError("exposure mode presents one image at a time: batch_size must be 1 (use pretrain mode "
                          "for mini-batches)")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    lr = float(DEFAULT_LR[mode] if lr is None else lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number, got {lr}")
    loss_fn = make_loss(loss)
    dev = resolve_device(device)
    ddp = _distributed.context_for_training(mode, dev)  # None unless started by torchrun (WORLD_SIZE > 1)
    if ddp is not None:
        dev = ddp.device
    spec = getattr(model, "spec", None)
    multiple = int(getattr(spec, "size_multiple", 1) or 1)

    n_total = len(images.dataset) if isinstance(images, torch.utils.data.DataLoader) else len(images)
    if n_total == 0:
        raise DataError("no images to train on")
    if cache_images == "auto":
        cache = mode == "pretrain" and epochs > 1
    else:
        cache = bool(cache_images)
    src = _Images(images, multiple, cache=cache)
    if cache and cache_images == "auto":
        first = src.get(0)
        if first.numel() * 4 * len(src) > (1 << 30):
            src.cache = None

    # splits and orders: pure functions of the seed
    if mode == "pretrain" and val_fraction > 0 and n_total >= 2:
        n_val = min(n_total - 1, max(1, int(round(n_total * val_fraction))))
    else:
        n_val = 0
    split = _permutation(n_total, seed, "val-split") if n_val else np.arange(n_total)
    val_idx = np.sort(split[:n_val]) if n_val else np.zeros(0, dtype=np.int64)
    train_idx = np.sort(split[n_val:]) if n_val else np.arange(n_total, dtype=np.int64)
    n_train = len(train_idx)
    if mode == "exposure":
        orders = np.stack([_permutation(n_total, seed, "exposure", p) for p in range(epochs)])
        batches_per_epoch = n_total
    else:
        orders = np.stack([train_idx[_permutation(n_train, seed, "epoch", e)] for e in range(epochs)])
        batches_per_epoch = len(_epoch_batches(n_train, batch_size, merge_single=bn == "train"))
        if ddp is not None:
            _distributed.check_batches(_epoch_batches(n_train, batch_size, merge_single=bn == "train"), ddp)
    total_steps = epochs * batches_per_epoch
    if checkpoint_every is None:
        checkpoint_every = DEFAULT_CHECKPOINT_EVERY.get(mode, batches_per_epoch)
    checkpoint_every = max(1, int(checkpoint_every))

    settings = {
        "mode": mode, "loss": loss_fn.spec, "lr": lr, "epochs": epochs, "batch_size": batch_size, "seed": int(seed),
        "val_fraction": float(val_fraction) if mode == "pretrain" else 0.0, "augment": bool(augment) and mode == "pretrain",
        "bn": bn, "freeze_encoder": bool(freeze_encoder), "weight_decay": float(weight_decay),
        "schedule": "cosine" if mode == "pretrain" else "constant", "n_images": n_total,
        "model": getattr(spec, "name", type(model).__name__),
        # the initialisation seed does not matter once weights are restored from a training state
        "model_config": {k: v for k, v in (getattr(model, "config", {}) or {}).items() if k != "seed"},
    }

    # model, parameters, optimizer
    frozen_params: list[nn.Parameter] = []
    if freeze_encoder:
        if not hasattr(model, "encoder"):
            raise ConfigError("freeze_encoder=True needs a model with an .encoder")
        frozen_params = [p for p in model.encoder.parameters() if p.requires_grad]
        for p in frozen_params:
            p.requires_grad_(False)
    try:
        model.to(dev)
        use_cl = dev.type == "cuda" and channels_last
        if use_cl:
            model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters")
        want_fast = mode == "exposure" and dev.type == "cuda" and fast in (True, "auto") and bn == "frozen"
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, capturable=want_fast)

        state = _State(orders=orders, n_total=n_total, epochs=epochs, mode=mode)
        resumed_at = None
        ck_path = Path(checkpoint_path) if checkpoint_path is not None else None
        if resume and ck_path is not None and ck_path.is_file():
            saved = load_train_state(ck_path)
            _check_same_run(saved, settings, ck_path)
            _restore(saved, model, optimizer, state, dev)
            resumed_at = state.step
            log.info("resuming %s from %s at step %d of %d", mode, ck_path, state.step, total_steps)
        elif resume and ck_path is not None:
            log.info("no training state at %s: starting from the beginning", ck_path)

        train_model: nn.Module = model
        if ddp is not None:  # every rank starts from rank 0's state; DDP averages the gradients
            ddp.sync_training_state(model, optimizer, state)
            train_model = _distributed.wrap_model(model, ddp, global_bn=bn == "train")
        run = _Run(model=train_model, optimizer=optimizer, loss_fn=loss_fn, src=src, dev=dev, amp=amp, use_cl=use_cl,
                   bn=bn, freeze_encoder=freeze_encoder, settings=settings, state=state, ck_path=ck_path,
                   ck_every=checkpoint_every, max_steps=max_steps, progress=progress, total=total_steps,
                   num_workers=num_workers, augment=bool(augment), seed=int(seed), lr=lr,
                   batches_per_epoch=batches_per_epoch, train_idx=train_idx, val_idx=val_idx, ddp=ddp)
        t0 = time.perf_counter()
        steps_before = state.step
        with _deterministic(deterministic), _num_threads(threads if dev.type == "cpu" else None), \
                 torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            if state.rng is not None:
                _set_rng(state.rng, dev)
            else:  # seed only the generators forked above (the global state is restored on exit)
                torch.default_generator.manual_seed(_derive(seed, "global"))
                if dev.type == "cuda":
                    torch.cuda.default_generators[dev.index or 0].manual_seed(_derive(seed, "global-cuda"))
            if mode == "exposure":
                fast_used = run.exposure(want_fast, fast)
            else:
                fast_used = False
                run.pretrain()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
    finally:
        for p in frozen_params:
            p.requires_grad_(True)
        if ddp is not None:
            _distributed.restore_batchnorm(model)
        model.eval()

    done = state.step - steps_before
    n_seen = done * (1 if mode == "exposure" else batch_size)
    loop_s = max(seconds - run.setup_seconds, 0.0)
    result = TrainResult(
        mode=mode, n_images=n_total, epochs=epochs, orders=orders,
        exposure_losses=state.losses.copy() if mode == "exposure" else None,
        curve=list(state.curve), train_indices=train_idx, val_indices=val_idx, steps=state.step,
        completed=state.step >= total_steps, seconds=seconds,
        images_per_s=(n_seen / loop_s) if loop_s > 0 and done else 0.0, device=str(dev), fast_path=fast_used,
        settings=settings, resumed_at=resumed_at, setup_seconds=run.setup_seconds,
    )
    log.info("%s: %d/%d steps in %.1f s (%.1f images/s) on %s%s", mode, state.step, total_steps, seconds,
             result.images_per_s, dev, " with the CUDA-graph path" if fast_used else "")
    return result


# -- internal state and loops ----------------------------------------------------------------------


class _State:
    """Everything that changes during training besides model and optimizer (checkpointed)."""

    def __init__(self, orders: np.ndarray, n_total: int, epochs: int, mode: str):
        self.step = 0
        self.curve: list[dict[str, Any]] = []
        self.losses = np.full((epochs, n_total), np.nan) if mode == "exposure" else np.zeros((0, 0))
        self.epoch_loss_sum = 0.0
        self.epoch_loss_n = 0
        self.rng: dict[str, Any] | None = None
        self.orders = orders

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "curve": [dict(r) for r in self.curve],
            "losses": torch.from_numpy(self.losses.copy()),
            "epoch_loss_sum": float(self.epoch_loss_sum),
            "epoch_loss_n": int(self.epoch_loss_n),
            "orders": torch.from_numpy(self.orders.copy()),
        }


def _rng_state(dev: torch.device) -> dict[str, Any]:
    out = {"torch": torch.get_rng_state()}
    if dev.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(dev)
    return out


def _set_rng(rng: dict[str, Any], dev: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if dev.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], dev)


def _check_same_run(saved: dict[str, Any], settings: dict[str, Any], path: Path) -> None:
    old = saved.get("settings")
    if not isinstance(old, dict):
        raise CheckpointError(f"{path}: training state without settings (cannot resume)")
    diff = [f"{k} ({old.get(k)!r} -> {settings.get(k)!r})" for k in settings if old.get(k) != settings.get(k)]
    if diff:
        raise CheckpointError(f"{path} was written by a different run; it differs in: {', '.join(diff)} "
                              "(remove it or restore the original settings to resume)")


def _restore(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, state: _State,
             dev: torch.device) -> None:
    try:
        model.load_state_dict(saved["model"], strict=True)
        # Adam's ``capturable`` flag (on for the CUDA-graph path) travels with the optimizer state, but it
        # belongs to the run that resumes: a fast-path checkpoint resumed on the CPU (or eagerly) must not
        # bring it along, nor an eager one switch it off for the fast path
        capturable = [g.get("capturable", False) for g in optimizer.param_groups]
        optimizer.load_state_dict(saved["optimizer"])
        for g, cap in zip(optimizer.param_groups, capturable, strict=True):
            g["capturable"] = cap
            for prm in g["params"]:
                st = optimizer.state.get(prm, {})
                if torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(device=prm.device if cap else "cpu", dtype=torch.float32)
        state.step = int(saved["state"]["step"])
        state.curve = [dict(r) for r in saved["state"]["curve"]]
        losses = saved["state"]["losses"].numpy()
        if losses.shape != state.losses.shape:
            raise CheckpointError("per-image losses have another shape")
        state.losses = losses.copy()
        state.epoch_loss_sum = float(saved["state"]["epoch_loss_sum"])
        state.epoch_loss_n = int(saved["state"]["epoch_loss_n"])
        if not np.array_equal(saved["state"]["orders"].numpy(), state.orders):
            raise CheckpointError("the presentation orders differ (different data or seed)")
        state.rng = saved.get("rng")
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"malformed training state ({type(exc).__name__}: {exc})") from None


@dataclass
class _Run:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Any
    src: _Images
    dev: torch.device
    amp: bool
    use_cl: bool
    bn: str
    freeze_encoder: bool
    settings: dict[str, Any]
    state: _State
    ck_path: Path | None
    ck_every: int
    max_steps: int | None
    progress: ProgressFn | None
    total: int
    num_workers: int
    augment: bool
    seed: int
    lr: float
    batches_per_epoch: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    setup_seconds: float = 0.0
    ddp: Any = None  # memlens.distributed.DistContext when training in several processes

    # -- common pieces --
    def _to_dev(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dev, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.use_cl else x

    def _forward_loss(self, x: torch.Tensor, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model if model is None else model
        with _autocast(self.dev, self.amp):
            out = model(x, check=False) if isinstance(_distributed.unwrap(model), Autoencoder) else model(x)
        per = self.loss_fn.per_image(x, out.float(), validate=False)
        return per.mean(), per

    def _save(self) -> None:
        if self.ck_path is None or (self.ddp is not None and not self.ddp.is_main):
            return
        save_train_state(self.ck_path, {
            "settings": self.settings,
            "model": {k: v.detach().cpu() for k, v in _distributed.unwrap(self.model).state_dict().items()},
            "optimizer": _cpu(self.optimizer.state_dict()),
            "scheduler": {"kind": self.settings["schedule"], "step": self.state.step, "total": self.total,
                          "base_lr": self.lr},
            "state": self.state.to_dict(),
            "rng": _rng_state(self.dev),
        })
        log.debug("checkpoint at step %d -> %s", self.state.step, self.ck_path)

    def _stop_now(self) -> bool:
        return self.max_steps is not None and self.state.step >= self.max_steps

    def _after_step(self, info: dict[str, Any]) -> None:
        st = self.state
        if st.step % self.ck_every == 0 and st.step < self.total:
            self._save()
        if self.progress is not None:
            self.progress(st.step, self.total, info)

    # -- exposure --
    def exposure(self, want_fast: bool, fast: bool | str) -> bool:
        st = self.state
        n = self.src.n
        _set_modes(self.model, self.bn, self.freeze_encoder)
        for m in self.optimizer.param_groups:
            m["lr"] = self.lr
        graph = None
        if want_fast and st.step < self.total:
            first = st.orders[st.step // n][st.step % n]
            t0 = time.perf_counter()
            graph = self._capture(self._to_dev(self.src.get(int(first))[None]), strict=fast is True)
            self.setup_seconds = time.perf_counter() - t0
        dev_losses = torch.zeros(self.total, device=self.dev, dtype=torch.float32)
        start = st.step
        flushed = start

        def flush(upto: int) -> None:
            nonlocal flushed
            if upto > flushed:
                vals = dev_losses[flushed:upto].cpu().numpy()
                for s, v in zip(range(flushed, upto), vals, strict=True):
                    p, k = divmod(s, n)
                    st.losses[p, st.orders[p][k]] = float(v)
                    st.curve.append({"phase": "exposure", "epoch": p + 1, "step": s + 1, "loss": float(v),
                                     "val_loss": None, "lr": self.lr})
                flushed = upto

        while st.step < self.total and not self._stop_now():
            p, k = divmod(st.step, n)
            chunk_end = min((p + 1) * n, self.total)
            if self.max_steps is not None:
                chunk_end = min(chunk_end, self.max_steps)
            idx = st.orders[p][k:chunk_end - p * n]
            for j, x in enumerate(_iter_batches(self.src, [[int(i)] for i in idx], self.num_workers)):
                xd = self._to_dev(x)
                if graph is not None:
                    static_x, static_loss, g = graph
                    static_x.copy_(xd)
                    g.replay()
                    dev_losses[st.step].copy_(static_loss.detach())
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    loss, _ = self._forward_loss(xd)
                    loss.backward()
                    self.optimizer.step()
                    dev_losses[st.step] = loss.detach().float()
                st.step += 1
                due_ck = self.ck_path is not None and st.step % self.ck_every == 0
                if due_ck or self.dev.type == "cpu" or st.step == chunk_end:
                    flush(st.step)
                info = {"phase": "exposure", "epoch": p + 1, "image": int(idx[j])}
                if flushed == st.step:
                    info["loss"] = st.curve[-1]["loss"]
                self._after_step(info)
        flush(st.step)
        st.rng = None
        self._save()
        return graph is not None

    def _capture(self, example: torch.Tensor, strict: bool) -> tuple[torch.Tensor, torch.Tensor, Any] | None:
        """Capture forward + loss + backward + Adam step for one image in a CUDA graph (None on failure)."""
        model, opt = self.model, self.optimizer
        snap_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        snap_opt = {id(p): {k: (t.clone() if torch.is_tensor(t) else t) for k, t in s.items()}
                    for p, s in opt.state.items()}

        def restore() -> None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(snap_model[k])
                for p, s in opt.state.items():
                    old = snap_opt.get(id(p))
                    for k, t in s.items():
                        if torch.is_tensor(t):
                            if old is None:
                                t.zero_()
                            else:
                                t.copy_(old[k])
        try:
            static_x = example.clone()
            side = torch.cuda.Stream(self.dev)
            side.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(side):
                for _ in range(3):
                    opt.zero_grad(set_to_none=True)
                    loss, _ = self._forward_loss(static_x)
                    loss.backward()
                    opt.step()
            torch.cuda.current_stream(self.dev).wait_stream(side)
            restore()
            g = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(g):
                static_loss, _ = self._forward_loss(static_x)
                static_loss.backward()
                opt.step()
            torch.cuda.synchronize(self.dev)
            return static_x, static_loss, g
        except Exception as exc:  # capture is an optimisation: fall back to eager
            restore()
            opt.zero_grad(set_to_none=True)
            if strict:
                raise RuntimeError(f"CUDA-graph capture of the exposure step failed: {exc}") from exc
            log.warning("CUDA-graph capture failed (%s: %s); using eager batch-1 steps", type(exc).__name__, exc)
            return None

    # -- pretrain --
    def pretrain(self) -> None:
        st = self.state
        bs = int(self.settings["batch_size"])
        bpe = self.batches_per_epoch
        while st.step < self.total and not self._stop_now():
            e, b0 = divmod(st.step, bpe)
            order = st.orders[e]
            bounds = _epoch_batches(len(order), bs, merge_single=self.bn == "train")
            batches = [order[a:b].tolist() for a, b in bounds[b0:]]
            if self.max_steps is not None:
                batches = batches[:max(0, self.max_steps - st.step)]
            # several processes: each feeds its contiguous part of every global batch
            parts = [self.ddp.part(len(bt)) for bt in batches] if self.ddp is not None else None
            feed = batches if parts is None else [bt[a:z] for bt, (a, z) in zip(batches, parts, strict=True)]
            _set_modes(_distributed.unwrap(self.model), self.bn, self.freeze_encoder)
            for j, x in enumerate(_iter_batches(self.src, feed, self.num_workers)):
                b = st.step - e * bpe
                n_batch = len(batches[j])
                if self.augment:
                    gen = _generator(self.seed, "augment", e, b)
                    x = augment_batch(x, gen) if parts is None else self.ddp.augment(x, gen, parts[j][0])
                lr = _cosine(self.lr, st.step, self.total)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                xd = self._to_dev(x)
                self.optimizer.zero_grad(set_to_none=True)
                loss, per = self._forward_loss(xd)
                if self.ddp is not None:  # DDP's gradient average then equals the global batch mean's gradient
                    loss = self.ddp.scaled_loss(per, n_batch)
                loss.backward()
                self.optimizer.step()
                lv = float(loss.detach()) if self.ddp is None else self.ddp.all_sum(per.detach().sum()) / n_batch
                st.epoch_loss_sum += lv * n_batch
                st.epoch_loss_n += n_batch
                st.step += 1
                info = {"phase": "pretrain", "epoch": e + 1, "loss": lv, "batch": n_batch}
                if st.step % bpe == 0:
                    val = self._validate()
                    st.curve.append({"phase": "pretrain", "epoch": e + 1, "step": st.step,
                                     "loss": st.epoch_loss_sum / max(st.epoch_loss_n, 1), "val_loss": val,
                                     "lr": lr})
                    log.info("pretrain epoch %d/%d: loss %.5f%s", e + 1, self.total // bpe,
                             st.curve[-1]["loss"], f", val {val:.5f}" if val is not None else "")
                    st.epoch_loss_sum, st.epoch_loss_n = 0.0, 0
                    _set_modes(_distributed.unwrap(self.model), self.bn, self.freeze_encoder)
                    info["val_loss"] = val
                self._after_step(info)
        st.rng = None
        self._save()

    @torch.no_grad()
    def _validate(self) -> float | None:
        if len(self.val_idx) == 0:
            return None
        model = _distributed.unwrap(self.model)  # no DDP collectives: ranks may run different batch counts
        model.eval()
        bs = max(1, int(self.settings["batch_size"]))
        total, n = 0.0, 0
        idx = self.val_idx.tolist()
        if self.ddp is not None:  # each rank measures its part of the validation images
            a, z = self.ddp.part(len(idx))
            idx = idx[a:z]
        for i in range(0, len(idx), bs):
            x = self._to_dev(self.src.batch(idx[i:i + bs]))
            _, per = self._forward_loss(x, model)
            total += float(per.sum())
            n += len(per)
        if self.ddp is not None:
            total, n = self.ddp.all_sum(total), int(round(self.ddp.all_sum(n)))
        return total / n


def _cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu(v) for v in obj)
    return obj


# -- a whole training run into a run directory -----------------------------------------------------

#: outputs of the stages after train (score, analyze, fit-predictor, explain, report); names or globs
LATER_OUTPUTS = ("per_image.csv", "latents.npy", "latent_ids.txt", "features.npy", "split_halves.npz", "index.json",
                 "correlations.csv", "correlations.json", "predictor.pt", "predictor_cv.csv", "predictor_oof.csv",
                 "featureset_*", "descriptors.csv", "descriptor_correlations.csv", "attributions", "report.html",
                 "results.json", "shards")


#: training states under RUN/checkpoints/ (written while a training runs, removed when it completes)
TRAIN_STATES = ("experience.pt", "exposure.pt", "pretrain.pt")


def has_resumable_state(run: str | Path) -> bool:
    """An interrupted training in ``run``: a checkpoint, or the visual experience done and the exposure not."""
    run = Path(run)
    return (any((run / "checkpoints" / f).exists() for f in TRAIN_STATES)
            or ((run / "autoencoder_before.pt").exists() and not (run / "autoencoder.pt").exists()))


def later_outputs(run: str | Path) -> list[str]:
    """Names of the later stages' outputs (:data:`LATER_OUTPUTS`) present in ``run``, sorted."""
    run = Path(run)
    if not run.is_dir():
        return []
    return sorted({p.name for pattern in LATER_OUTPUTS for p in run.glob(pattern)})


RUN_FILES = ("config.json", "dataset.json", "manifest.json", "autoencoder.pt", "autoencoder_before.pt",
             "exposure.csv", "experience_order.csv", "pretrain_order.csv", "experience_ids.txt", "training_curve.csv",
             "training_curve.png")
DEFAULT_EXPERIENCE_FRACTION = 0.25
DEFAULT_PRETRAIN_EPOCHS = 10
DEFAULT_PRETRAIN_BATCH = 32


def _versions() -> dict[str, str]:
    from ._io import software_versions

    return software_versions()


def table_sha256(table: Any) -> str:
    """sha256 of a data set's table content (every column but the absolute ``path``)."""
    cols = [c for c in table.columns if c != "path"]
    return hashlib.sha256(table[cols].to_csv(index=False).encode()).hexdigest()


def _real(paths: Sequence[str]) -> list[str]:
    import os

    return [os.path.realpath(p) for p in paths]


def train_run(
    source: str | Path,
    out: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    init: str | None = None,
    weights: str | None = None,
    download: bool = False,
    mode: str = "exposure",
    experience: str | Path | None = None,
    experience_fraction: float = DEFAULT_EXPERIENCE_FRACTION,
    pretrain_epochs: int = DEFAULT_PRETRAIN_EPOCHS,
    pretrain_lr: float | None = None,
    freeze_encoder: bool | None = None,
    loss: str = "mse",
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = DEFAULT_PRETRAIN_BATCH,
    image_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    layout: str = "auto",
    image_col: str | None = None,
    score_col: str | None = None,
    category_col: str | None = None,
    score_variant: str | None = None,
    splits: Sequence[str] | None = None,
    num_workers: int = 0,
    threads: int | str | None = "auto",
    overwrite: bool = False,
    progress: Callable[[str, int, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train an autoencoder on a data set and write the run directory (``memlens train`` calls this).

    exposure mode (the paper's procedure):

    1. *visual experience*: ``pretrain`` on the experience corpus -- ``experience`` (a folder or table of
       images disjoint from the data set); by default the data root's ``experience/`` folder when it exists,
       else a seeded ``experience_fraction`` (25%) of the collection, held out from exposure and listed in
       ``experience_ids.txt``. ``pretrain_epochs=0`` skips it. With ``init="imagenet"`` the encoder is kept
       fixed and only the decoder learns (``freeze_encoder`` overrides). Saves ``autoencoder_before.pt``.
    2. *single exposure* of the (remaining) collection: ``autoencoder.pt`` and ``exposure.csv``
       (``image_id, order, loss``).

    pretrain mode: multi-epoch training on the collection itself (``epochs``, default 10; encoder frozen
    for ``init="imagenet"`` unless ``freeze_encoder=False``) -> ``autoencoder.pt``.

    Also written: ``config.json``, ``dataset.json``, ``manifest.json``, ``training_curve.csv``/``.png``.
    ``threads``: CPU threads ("auto": :func:`auto_threads`, None: torch's setting). ``score_variant`` and
    ``splits`` select MemCat's score and LaMem's split files, as in :func:`memlens.data.load_dataset`.

    A new training (not ``resume``) in a directory that holds the outputs of later stages of an earlier run
    (``per_image.csv``, ``predictor.pt``, ...; :data:`LATER_OUTPUTS`) raises :class:`RunDirError`: they
    would no longer belong to the new model. ``overwrite=True`` removes them first.
    Returns the manifest dict.
    """

    from ._io import atomic_write_json, atomic_write_text, file_sha256
    from .data import ImageDataset, load_dataset
    from .models import create_autoencoder, get_spec, load_autoencoder, save_autoencoder

    t_start = time.perf_counter()
    if mode not in ("exposure", "pretrain"):
        raise ConfigError(f"mode must be 'exposure' or 'pretrain', got {mode!r}")
    if not 0.0 < float(experience_fraction) < 1.0:
        raise ConfigError(f"experience_fraction must be in (0, 1), got {experience_fraction}")
    if int(pretrain_epochs) < 0:
        raise ConfigError(f"pretrain_epochs must be >= 0, got {pretrain_epochs}")
    spec = get_spec(backbone)
    init = init or spec.default_init
    size = int(image_size or spec.input_size)
    dev = resolve_device(device)
    ddp = _distributed.context_for_training(mode, dev)  # torchrun: join the process group (pretrain only)
    shared_out = Path(out)  # every rank checks the real run directory; rank 0 alone changes it
    if ddp is not None and not ddp.is_main:  # rank-0-only writes: the others write to a private scratch folder
        out, progress = _distributed.scratch_output(out), None
    if threads == "auto":
        threads = auto_threads() if dev.type == "cpu" else None
        busy = _busy_machine_note(threads) if threads else None
        if busy:
            log.warning("%s", busy)
    elif threads is not None:
        threads = int(threads)
        if threads < 1:
            raise ConfigError(f"threads must be >= 1 or 'auto', got {threads}")
    out = Path(out)
    check_output_path(out, directory=True)
    data_opts = {k: v for k, v in {"image_col": image_col, "score_col": score_col, "category_col": category_col,
                                   "score_variant": score_variant,
                                   "splits": list(splits) if splits else None}.items() if v is not None}
    # everything that can be checked before the run directory is touched: the data and the model settings
    ds = load_dataset(source, layout, **data_opts)
    root = Path(ds.root).resolve()
    if out.resolve() == root or (ds.layout == "folder" and root in out.resolve().parents):
        where = "the data folder" if out.resolve() == root else "inside a data folder read image by image"
        raise RunDirError(f"--out {out}: {where} ({ds.root}); the run's tables and images would become part of "
                          "the data set. Write the run elsewhere")
    # the model and the loss too: bad settings fail before anything is written
    t0 = time.perf_counter()
    model = create_autoencoder(backbone, init=init, input_size=size, seed=seed, weights=weights, download=download)
    timings: dict[str, float] = {"create_model_s": time.perf_counter() - t0}
    from .metrics import make_loss

    make_loss(loss)
    # resuming an interrupted training (its checkpoints, or the visual experience done and the exposure not)
    # keeps the directory as it is; anything else, --resume or not, is a new training
    _recover_set_aside(shared_out)  # a killed retrain's earlier run first: the checks below must see it
    stale = [] if (resume and has_resumable_state(shared_out)) else later_outputs(shared_out)
    if stale and not overwrite:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        raise RunDirError(f"{out} holds results of an earlier run ({shown}); a new training would leave them "
                          "out of date. Use another --out, or --overwrite to remove them first")
    exposed = ds
    exp_info: dict[str, Any] = {"source": "none"}
    exp_ds = None
    notes: list[str] = []
    holdout_ids: list[str] | None = None  # written to experience_ids.txt once the directory is prepared

    if mode == "exposure" and int(pretrain_epochs) > 0:
        if experience is not None:
            exp_ds = load_dataset(experience, "auto")
            overlap = set(_real(exp_ds.paths)) & set(_real(ds.paths))
            if overlap:
                raise DataError(f"the experience corpus {experience} shares {len(overlap)} image(s) with the data set "
                                f"(e.g. {sorted(overlap)[0]}); experience images must be disjoint from the exposed ones")
            exp_info = {"source": "explicit", "path": str(Path(experience).absolute())}
        elif (ds.root / "experience").is_dir():
            exp_ds = load_dataset(ds.root / "experience", "folder")
            exp_real = set(_real(exp_ds.paths))
            keep = [i for i, p in zip(ds.image_ids, _real(ds.paths), strict=True) if p not in exp_real]
            if len(keep) < len(ds):
                notes.append(f"{len(ds) - len(keep)} images of the experience/ folder excluded from exposure")
                exposed = ds.subset(keep)
            exp_info = {"source": "data-root experience/ folder", "path": str(ds.root / "experience")}
            log.info("visual experience: using %s (%d images)", ds.root / "experience", len(exp_ds))
        else:
            perm = _permutation(len(ds), seed, "experience-holdout")
            n_exp = max(1, int(round(len(ds) * float(experience_fraction))))
            if len(ds) - n_exp < 1:
                raise DataError(f"{source}: too few images ({len(ds)}) to hold out an experience corpus; "
                                "give --experience DIR|TABLE")
            ids = ds.image_ids
            exp_ids = [ids[i] for i in sorted(perm[:n_exp])]
            exp_ds = ds.subset(exp_ids)
            exposed = ds.subset([ids[i] for i in sorted(perm[n_exp:])])
            holdout_ids = exp_ids
            exp_info = {"source": "holdout", "fraction": float(experience_fraction),
                        "ids_file": "experience_ids.txt",
                        "note": f"default: a seeded {experience_fraction:.0%} of the collection, held out "
                                "from exposure (no experience corpus given and no experience/ folder)"}
            log.warning("no experience corpus given: holding out a seeded %.0f%% of the collection (%d image%s) "
                        "for visual experience; they are not exposed", 100 * experience_fraction, n_exp,
                        "" if n_exp == 1 else "s")
        exp_info["n_images"] = len(exp_ds)
    elif mode == "exposure":
        exp_info = {"source": "none", "note": "pretrain_epochs=0: no visual experience before exposure"}
        log.warning("no visual experience before exposure (pretrain_epochs=0): the decoder has learned nothing")

    if mode == "exposure" and len(exposed) == 0:
        raise DataError(f"{source}: no images left to expose")

    # every check passed: prepare the run directory. The earlier run's outputs are set aside, not deleted: a
    # training that fails or is interrupted puts them back, one that completes removes them
    if out != shared_out:  # a non-zero rank's scratch folder: rank 0 prepares the real one
        stale = []
    out.mkdir(parents=True, exist_ok=True)
    states = out / "checkpoints"
    replaced = list(stale)
    if not resume:
        for name in TRAIN_STATES:
            with contextlib.suppress(FileNotFoundError):
                (states / name).unlink()
        replaced += [n for n in RUN_FILES if n not in replaced]
    with _set_aside(out, replaced) as moved:
        if set(stale) & set(moved):
            log.warning("replacing %d output(s) of an earlier run in %s (put back if this training fails): %s",
                        len(stale), out, ", ".join(stale))
        if holdout_ids is not None:
            atomic_write_text(out / "experience_ids.txt", "\n".join(holdout_ids) + "\n")

        # model
        before_path = out / "autoencoder_before.pt"
        config = {
            "data": str(source), "out": str(out), "backbone": backbone, "init": init, "weights": weights,
            "download": bool(download), "mode": mode, "experience": None if experience is None else str(experience),
            "experience_fraction": float(experience_fraction), "pretrain_epochs": int(pretrain_epochs),
            "pretrain_lr": pretrain_lr, "freeze_encoder": freeze_encoder, "loss": loss, "epochs": epochs, "lr": lr,
            "batch_size": int(batch_size), "image_size": size, "seed": int(seed), "device": str(device),
            "resolved_device": str(dev), "layout": layout, **data_opts, "num_workers": int(num_workers),
            "threads": threads,
        }
        atomic_write_json(out / "config.json", config)
        dataset_json = {"source": str(Path(source).absolute()), "root": str(ds.root), "layout": ds.layout,
                        "options": {k: v for k, v in ds.spec().items() if k not in ("source", "layout")},
                        "n_images": len(ds),
                        "image_size": size, "notes": list(ds.notes) + notes,
                        "exposed": {"n_images": len(exposed), "file": "exposure.csv" if mode == "exposure" else None},
                        "experience": {**exp_info, **({"spec": exp_ds.spec()} if exp_ds is not None else {})}}
        atomic_write_json(out / "dataset.json", dataset_json)

        log.info("model: %s (init=%s, input %d px, %s parameters)", backbone, model.init, size,
                 f"{sum(p.numel() for p in model.parameters()):,}")
        init_report = {k: v for k, v in getattr(model, "init_report", {}).items()}
        curves: list[dict[str, Any]] = []
        phases: dict[str, Any] = {}

        def cb(phase: str) -> ProgressFn | None:
            if progress is None:
                return None
            return lambda done, total, info: progress(phase, done, total, info)

        common = {"loss": loss, "seed": seed, "device": dev, "num_workers": num_workers, "threads": threads}
        if mode == "pretrain":
            n_ep = int(epochs or DEFAULT_PRETRAIN_EPOCHS)
            imgs = ImageDataset(ds.paths, size)
            t0 = time.perf_counter()
            fe = (init == "imagenet") if freeze_encoder is None else bool(freeze_encoder)
            res = fit_autoencoder(model, imgs, mode="pretrain", lr=lr, epochs=n_ep, batch_size=batch_size,
                                  freeze_encoder=fe, checkpoint_path=states / "pretrain.pt",
                                  resume=resume, progress=cb("pretrain"), **common)
            timings["pretrain_s"] = time.perf_counter() - t0
            _check_finite(model, res, "pretraining", lr, "--lr")
            curves += res.curve
            phases["pretrain"] = _phase_info(res, ds.image_ids, out, "pretrain_order.csv")
            phases["pretrain"]["freeze_encoder"] = fe
        else:
            # (1) visual experience
            if exp_ds is not None:
                fe = (init == "imagenet") if freeze_encoder is None else bool(freeze_encoder)
                exp_settings = {"backbone": backbone, "init": init, "image_size": size, "seed": int(seed),
                                "epochs": int(pretrain_epochs), "lr": pretrain_lr, "batch_size": int(batch_size),
                                "loss": loss, "freeze_encoder": fe, "n_images": len(exp_ds),
                                "experience": exp_info.get("source")}
                reuse = None
                if resume and before_path.is_file():
                    with contextlib.suppress(Exception):
                        cand = load_autoencoder(before_path)
                        if cand.checkpoint_extra.get("experience_settings") == exp_settings:
                            reuse = cand
                if reuse is not None:
                    model = reuse
                    phases["experience"] = dict(reuse.checkpoint_extra.get("experience", {}), reused=True)
                    curves += list(reuse.checkpoint_extra.get("curve", []))
                    log.info("resume: visual experience already complete (%s)", before_path)
                else:
                    t0 = time.perf_counter()
                    res = fit_autoencoder(model, ImageDataset(exp_ds.paths, size), mode="pretrain", lr=pretrain_lr,
                                          epochs=int(pretrain_epochs), batch_size=batch_size, freeze_encoder=fe,
                                          checkpoint_path=states / "experience.pt", resume=resume,
                                          progress=cb("experience"), **common)
                    timings["experience_s"] = time.perf_counter() - t0
                    _check_finite(model, res, "visual experience", pretrain_lr, "--pretrain-lr")
                    for r in res.curve:
                        r["phase"] = "experience"
                    curves += res.curve
                    phases["experience"] = _phase_info(res, exp_ds.image_ids, out, "experience_order.csv")
                    phases["experience"]["freeze_encoder"] = fe
                    save_autoencoder(before_path, model, extra={"experience_settings": exp_settings,
                                                                "experience": phases["experience"],
                                                                "curve": res.curve})
                    with contextlib.suppress(FileNotFoundError):
                        (states / "experience.pt").unlink()
            else:
                save_autoencoder(before_path, model, extra={"experience": {"source": "none"}})
            # (2) single exposure
            t0 = time.perf_counter()
            res = fit_autoencoder(model, ImageDataset(exposed.paths, size), mode="exposure", lr=lr,
                                  epochs=int(epochs or 1), checkpoint_path=states / "exposure.pt", resume=resume,
                                  progress=cb("exposure"), **common)
            timings["exposure_s"] = time.perf_counter() - t0
            _check_finite(model, res, "exposure", lr, "--lr")
            curves += res.curve
            frame = res.exposure_frame(exposed.image_ids).sort_values("order", kind="stable")
            from ._io import atomic_path

            with atomic_path(out / "exposure.csv") as tmp:
                frame.to_csv(tmp, index=False, float_format="%.8g")
            phases["exposure"] = {k: v for k, v in res.summary().items() if k != "settings"}
            phases["exposure"].update({"settings": res.settings, "presentations_per_image": res.epochs,
                                       "order": f"seeded random permutation (seed {seed}) per pass",
                                       "order_file": "exposure.csv", "loss_recorded": "at exposure, before the update"})

        if mode == "exposure" and exp_info.get("source") != "none":  # no experience at all is warned about above
            caution = experience_caution(init, phases.get("experience") or exp_info,
                                         [r.get("val_loss") for r in curves if r.get("phase") == "experience"])
            if caution:
                log.warning("%s", caution)
        save_autoencoder(out / "autoencoder.pt", model, extra={"mode": mode, "phases": phases})
        for name in ("exposure.pt", "pretrain.pt"):
            with contextlib.suppress(FileNotFoundError):
                (states / name).unlink()
        with contextlib.suppress(OSError):
            states.rmdir()
        _write_curve(out, curves)
        timings["total_s"] = time.perf_counter() - t_start

        source_p = Path(source)
        manifest = {
            "memlens_run": "train",
            "versions": _versions(),
            "device": {"requested": str(device), "used": str(dev),
                       "name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                       "torch_threads": threads or torch.get_num_threads()},
            "seeds": {"seed": int(seed), "model_init": int(seed), "derivation": "sha256(seed/purpose)"},
            "input": {"source": str(source_p.absolute()), "layout": ds.layout, "n_images": len(ds),
                      "table_sha256": table_sha256(ds.table),
                      "source_sha256": file_sha256(source_p) if source_p.is_file() else None},
            "model": {"backbone": backbone, "init": init, "init_report": init_report, "config": model.config,
                      "spec": model.spec.to_dict(), "parameters": int(sum(p.numel() for p in model.parameters()))},
            "training": {"mode": mode, "experience": {**exp_info, **phases.get("experience", {})}
                         if mode == "exposure" else None, **{k: v for k, v in phases.items() if k != "experience"}},
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "files": {name: file_sha256(out / name) for name in ("autoencoder.pt", "autoencoder_before.pt")
                      if (out / name).is_file()},
        }
        atomic_write_json(out / "manifest.json", manifest)
        return manifest


#: fewer optimiser steps of visual experience than this, from random weights, may leave the decoder untrained
MIN_SCRATCH_EXPERIENCE_STEPS = 500
#: ... and the caution is given when the validation loss did not at least halve over the experience
MAX_VAL_LOSS_RATIO = 0.5


def experience_caution(init: str | None, experience: Mapping[str, Any] | None,
                       val_losses: Sequence[float] | None = None) -> str | None:
    """A caution when an autoencoder trained from scratch learned little in its visual experience, else None.

    ``experience`` is the manifest's ``training.experience`` entry (``steps``, ``n_images``); ``val_losses``
    the experience's validation loss per epoch (``training_curve.csv``). The caution is given for a model
    that started from random weights (``init`` ``"scratch"``), took fewer than
    :data:`MIN_SCRATCH_EXPERIENCE_STEPS` optimiser steps, and whose validation loss did not fall to
    :data:`MAX_VAL_LOSS_RATIO` of its first value (or was not measured). Such a model reconstructs new images
    little better than an untrained one, so a null correlation may be the model's, not the images'.
    """
    exp = experience or {}
    if init not in (None, "scratch"):
        return None
    steps = exp.get("steps")
    none = exp.get("source") == "none"
    if not none and (not isinstance(steps, (int, float)) or steps >= MIN_SCRATCH_EXPERIENCE_STEPS):
        return None
    val = [float(v) for v in (val_losses or []) if v is not None and math.isfinite(float(v))]
    fell = ""
    if not none and len(val) >= 2 and val[0] > 0:
        if val[-1] / val[0] <= MAX_VAL_LOSS_RATIO:
            return None  # it learned to reconstruct images it did not train on
        fell = f"; its validation loss fell only from {val[0]:.3g} to {val[-1]:.3g}"
    n = exp.get("n_images")
    what = ("no visual experience" if none or not steps else
            f"{int(steps)} optimiser steps of visual experience" + (f" on {int(n)} images" if n else ""))
    return (f"the autoencoder started from random weights and had {what}{fell}: it may reconstruct new images "
            "little better than an untrained model, so its reconstruction errors may say more about the model than "
            "about the images; use a pretrained backbone (the default efficientnet_lite0 with --init imagenet) or a "
            "larger --experience corpus / more --pretrain-epochs")


def _check_finite(model: nn.Module, res: TrainResult, phase: str, lr: float | None, flag: str) -> None:
    """Raise :class:`TrainingError` when a phase ended with a non-finite loss or non-finite weights."""
    losses = [r.get("loss") for r in res.curve]
    bad_loss = next((k for k, v in enumerate(losses) if v is not None and not math.isfinite(float(v))), None)
    bad_weights = any(not torch.isfinite(p).all() for p in model.parameters())
    if bad_loss is None and not bad_weights:
        return
    unit = "step" if phase == "exposure" else "epoch"  # the curve has a row per image, or per epoch
    where = f"the loss became {losses[bad_loss]} at {unit} {bad_loss + 1} of {len(losses)}" \
        if bad_loss is not None else "the weights are no longer finite"
    rate = f" (it was {lr:g})" if isinstance(lr, (int, float)) else ""
    raise TrainingError(f"the {phase} diverged: {where}; use a lower learning rate {flag}{rate}")


_ASIDE = ".replaced-outputs"  # where the earlier run's files wait while a new training runs


def _put_back_earlier_run(out: Path, aside: Path, names: Sequence[str]) -> None:
    """Put the earlier run back: remove what a failed training wrote (``names`` and its training states in
    ``checkpoints/``), then move everything in ``aside`` back into ``out``."""
    import os

    for name in {*names, *(p.name for p in aside.iterdir())}:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
    for name in TRAIN_STATES:  # a resume must not continue the failed training next to the earlier run's files
        with contextlib.suppress(FileNotFoundError):
            (out / "checkpoints" / name).unlink()
    with contextlib.suppress(OSError):
        (out / "checkpoints").rmdir()
    for p in sorted(aside.iterdir()):
        os.replace(p, out / p.name)
    shutil.rmtree(aside, ignore_errors=True)


def _recover_set_aside(out: Path) -> None:
    """A ``.replaced-outputs/`` folder left by a killed retrain: put that earlier run back, whole."""
    aside = Path(out) / _ASIDE
    if aside.is_dir():
        _put_back_earlier_run(Path(out), aside, RUN_FILES)
        log.warning("%s: an earlier training was killed while replacing a run; that run's files were put back",
                    out)


@contextlib.contextmanager
def _set_aside(out: Path, names: Sequence[str]) -> Iterator[list[str]]:
    """Move ``out/<name>`` (files or folders) to ``out/.replaced-outputs/`` for the duration of the block.

    Yields the names moved. When the block raises (a bad image, a diverging loss, Ctrl-C) and there was an
    earlier run, every file of ``names`` the block wrote and its training states are removed and the earlier
    files are put back, so a failed training never leaves a run without its model or with a mix of two runs
    (such a retrain is started again, not resumed). Without an earlier run the partial outputs and states
    stay, for ``--resume``. When the block completes, the earlier files are deleted. A process killed inside
    the block leaves the folder for :func:`_recover_set_aside`.
    """
    import os

    aside = out / _ASIDE
    moved = []
    for name in names:
        if (out / name).exists() or (out / name).is_symlink():
            aside.mkdir(exist_ok=True)
            os.replace(out / name, aside / name)
            moved.append(name)
    try:
        yield moved
    except BaseException:
        if moved:
            _put_back_earlier_run(out, aside, names)
            log.warning("the training did not complete: the earlier run's files in %s were put back", out)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _phase_info(res: TrainResult, ids: Sequence[str], out: Path, order_file: str) -> dict[str, Any]:
    """Summary of a pretrain phase, and its presentation order written to ``order_file``."""
    from ._io import atomic_write_text

    lines = ["epoch,position,image_id"]
    for e, row in enumerate(res.orders):
        lines += [f"{e + 1},{k},{_csv_field(ids[i])}" for k, i in enumerate(row)]
    atomic_write_text(out / order_file, "\n".join(lines) + "\n")
    info = {k: v for k, v in res.summary().items()}
    n_train = len(res.train_indices)
    info.update({"n_train": n_train, "n_val": len(res.val_indices), "presentations_per_image": res.epochs,
                 "presentations": int(res.epochs * n_train), "order_file": order_file,
                 "augment": "random resized crop + horizontal flip" if res.settings.get("augment") else "none"})
    return info


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _write_curve(out: Path, curves: list[dict[str, Any]]) -> None:
    import pandas as pd

    from ._io import atomic_path

    cols = ["phase", "epoch", "step", "loss", "val_loss", "lr"]
    frame = pd.DataFrame([{c: r.get(c) for c in cols} for r in curves], columns=cols)
    with atomic_path(out / "training_curve.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.8g")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover
        return
    phases = [p for p in ("experience", "pretrain", "exposure") if (frame["phase"] == p).any()]
    if not phases:
        return
    fig = Figure(figsize=(5 * len(phases), 3.6), layout="constrained")
    axes = fig.subplots(1, len(phases), squeeze=False)[0]
    for ax, phase in zip(axes, phases, strict=True):
        f = frame[frame["phase"] == phase]
        if phase == "exposure":
            ax.plot(f["step"], f["loss"], ".", ms=2, alpha=0.4, label="loss at exposure")
            w = max(1, len(f) // 20)
            ax.plot(f["step"], f["loss"].rolling(w, min_periods=1).mean(), "-", label=f"running mean ({w})")
            ax.set_xlabel("exposure (image)")
        else:
            ax.plot(f["epoch"], f["loss"], "o-", label="train")
            if f["val_loss"].notna().any():
                ax.plot(f["epoch"], f["val_loss"], "s--", label="validation")
            ax.set_xlabel("epoch")
        ax.set_title("visual experience" if phase == "experience" else phase)
        ax.set_ylabel("loss (distance; lower = better)")
        ax.legend(fontsize=8)
    with atomic_path(out / "training_curve.png") as tmp:
        fig.savefig(tmp, dpi=100)
