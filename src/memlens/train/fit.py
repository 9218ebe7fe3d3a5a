"""One training call, :func:`fit_autoencoder`: single ``exposure`` (the paper's memory experiment) or ``pretrain``.

``fit_autoencoder(model, images, mode=...)`` trains ``model`` in place and returns a :class:`TrainResult`.

exposure
    One pass over the images, batch size 1, in a seeded random order (``order="random"``; or an explicit
    presentation order, e.g. images grouped by category as the paper's released scripts fed them), Adam at a
    small learning rate (default 1e-5) held constant. Each image's loss is recorded *at its exposure*: the
    loss of the forward pass that the image's own update is computed from, i.e. before the model learned
    from it. Batch norm: ``bn="auto"`` = ``"frozen"``: every BN layer runs in eval mode with its running
    statistics fixed (a batch of one image has no meaningful batch statistics, and updating running
    averages from single images would make an image's loss depend on the few images shown just before it);
    BN's affine weights still learn. ``bn="train"`` uses batch statistics instead (each image normalised
    with its own statistics, and the running statistics updated from it, as plain ``model.train()`` at
    batch 1 does; the CUDA-graph fast path is not used then).
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

On CUDA: bf16 autocast for the model (``amp``), channels_last memory format, and for exposure a fast path that
captures the whole batch-1 training step (forward, loss, backward, Adam) in a CUDA graph and replays it per
image (``fast="auto"``); it falls back to eager execution when capture fails.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..models.base import Autoencoder
from ..models.checkpoint import load_train_state
from .distributed import check_batches, context_for_training, restore_batchnorm, wrap_model
from .exposure import ExposureLoop
from .images import TrainImages
from .loop import ProgressFn
from .pretrain import PretrainLoop, epoch_batches
from .result import TrainResult
from .runtime import deterministic_algorithms, num_threads, resolve_device
from .seeding import derive_seed, seeded_permutation
from .state import TrainState, check_same_run, restore_state, set_rng_state

__all__ = ["fit_autoencoder", "resolve_precision", "DEFAULT_LR", "DEFAULT_CHECKPOINT_EVERY"]

log = logging.getLogger(__name__)

DEFAULT_LR = {"exposure": 1e-5, "pretrain": 1e-3}
DEFAULT_CHECKPOINT_EVERY = {"exposure": 1000}


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
    amp: bool | str = True,
    order: str | Sequence[int] = "random",
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
    loss : a :func:`memlens.metrics.make_loss` spec (``"mse"``, ``"mse+0.5*dssim"``, ...); ``"1-<metric>"``
        minimises the complement (maximises the distance). Recorded losses are distances either way.
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
    amp : the model's precision: ``True``/``"auto"`` = bf16 autocast on CUDA, float32 on the CPU;
        ``"bf16"``/``"bfloat16"`` = bf16 autocast (CUDA only: ``ConfigError`` on the CPU); ``False``/``"float32"`` =
        no autocast.
    order : exposure only: ``"random"`` (a seeded permutation per pass) or a presentation order (a
        permutation of the image indices) used for every pass, unshuffled.
    channels_last, fast : CUDA only: channels_last, the CUDA-graph exposure path.
    deterministic : enable ``torch.use_deterministic_algorithms`` during the call.
    cache_images : keep decoded images in memory across epochs (``"auto"``: pretrain, when under 1 GiB).
    threads : CPU threads for torch during the call (restored afterwards); None leaves the setting alone.

    Returns
    -------
    TrainResult
        The model is left in eval mode on ``device``.

    Examples
    --------
    >>> import torch, memlens
    >>> ae = memlens.create_autoencoder("small", input_size=32)
    >>> images = torch.rand(6, 3, 32, 32)
    >>> res = memlens.fit_autoencoder(ae, images, mode="exposure", seed=0, device="cpu")  # one pass, batch 1
    >>> res.mode, res.n_images, res.exposure_losses.shape
    ('exposure', 6, (1, 6))
    """
    from ..metrics import make_loss

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
    ddp = context_for_training(mode, dev)  # None unless started by torchrun (WORLD_SIZE > 1)
    if ddp is not None:
        dev = ddp.device
    use_amp = resolve_precision(amp, dev) == "bf16"
    spec = getattr(model, "spec", None)
    multiple = int(getattr(spec, "size_multiple", 1) or 1)

    n_total = len(images.dataset) if isinstance(images, torch.utils.data.DataLoader) else len(images)
    if n_total == 0:
        raise DataError("no images to train on")
    if cache_images == "auto":
        cache = mode == "pretrain" and epochs > 1
    else:
        cache = bool(cache_images)
    src = TrainImages(images, multiple, cache=cache)
    if cache and cache_images == "auto":
        first = src.get(0)
        if first.numel() * 4 * len(src) > (1 << 30):
            src.cache = None

    # splits and orders: pure functions of the seed
    if mode == "pretrain" and val_fraction > 0 and n_total >= 2:
        n_val = min(n_total - 1, max(1, int(round(n_total * val_fraction))))
    else:
        n_val = 0
    split = seeded_permutation(n_total, seed, "val-split") if n_val else np.arange(n_total)
    val_idx = np.sort(split[:n_val]) if n_val else np.zeros(0, dtype=np.int64)
    train_idx = np.sort(split[n_val:]) if n_val else np.arange(n_total, dtype=np.int64)
    n_train = len(train_idx)
    given = _given_order(order, mode, n_total)
    if mode == "exposure" and given is not None:
        orders = np.stack([given] * epochs)
        batches_per_epoch = n_total
    elif mode == "exposure":
        orders = np.stack([seeded_permutation(n_total, seed, "exposure", p) for p in range(epochs)])
        batches_per_epoch = n_total
    else:
        orders = np.stack([train_idx[seeded_permutation(n_train, seed, "epoch", e)] for e in range(epochs)])
        batches_per_epoch = len(epoch_batches(n_train, batch_size, merge_single=bn == "train"))
        if ddp is not None:
            check_batches(epoch_batches(n_train, batch_size, merge_single=bn == "train"), ddp)
    total_steps = epochs * batches_per_epoch
    if checkpoint_every is None:
        checkpoint_every = DEFAULT_CHECKPOINT_EVERY.get(mode, batches_per_epoch)
    checkpoint_every = max(1, int(checkpoint_every))

    settings = {
        "mode": mode, "loss": loss_fn.spec, "lr": lr, "epochs": epochs, "batch_size": batch_size, "seed": int(seed),
        "val_fraction": float(val_fraction) if mode == "pretrain" else 0.0, "augment": bool(augment) and mode == "pretrain",
        "bn": bn, "freeze_encoder": bool(freeze_encoder), "weight_decay": float(weight_decay),
        "order": "random" if given is None else "given",
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

        state = TrainState(orders=orders, n_total=n_total, epochs=epochs, mode=mode)
        resumed_at = None
        ck_path = Path(checkpoint_path) if checkpoint_path is not None else None
        if resume and ck_path is not None and ck_path.is_file():
            saved = load_train_state(ck_path)
            check_same_run(saved, settings, ck_path)
            restore_state(saved, model, optimizer, state, dev)
            resumed_at = state.step
            log.info("resuming %s from %s at step %d of %d", mode, ck_path, state.step, total_steps)
        elif resume and ck_path is not None:
            log.info("no training state at %s: starting from the beginning", ck_path)

        train_model: nn.Module = model
        if ddp is not None:  # every rank starts from rank 0's state; DDP averages the gradients
            ddp.sync_training_state(model, optimizer, state)
            train_model = wrap_model(model, ddp, global_bn=bn == "train")
        loop_class = ExposureLoop if mode == "exposure" else PretrainLoop
        run = loop_class(model=train_model, optimizer=optimizer, loss_fn=loss_fn, src=src, dev=dev, amp=use_amp,
                         use_cl=use_cl, bn=bn, freeze_encoder=freeze_encoder, settings=settings, state=state,
                         ck_path=ck_path, ck_every=checkpoint_every, max_steps=max_steps, progress=progress,
                         total=total_steps, num_workers=num_workers, augment=bool(augment), seed=int(seed), lr=lr,
                         batches_per_epoch=batches_per_epoch, train_idx=train_idx, val_idx=val_idx, ddp=ddp)
        t0 = time.perf_counter()
        steps_before = state.step
        with deterministic_algorithms(deterministic), num_threads(threads if dev.type == "cpu" else None), \
                 torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            if state.rng is not None:
                set_rng_state(state.rng, dev)
            else:  # seed only the generators forked above (the global state is restored on exit)
                torch.default_generator.manual_seed(derive_seed(seed, "global"))
                if dev.type == "cuda":
                    torch.cuda.default_generators[dev.index or 0].manual_seed(derive_seed(seed, "global-cuda"))
            try:
                if isinstance(run, ExposureLoop):
                    fast_used = run.exposure(want_fast, fast)
                else:
                    fast_used = False
                    run.pretrain()
            except ValueError as exc:
                if bn == "train" and "more than 1 value per channel" in str(exc):
                    raise ConfigError(
                        f"bn='train' at batch size {1 if mode == 'exposure' else batch_size}: a batch-norm layer "
                        "sees a single value per channel (a 1x1 feature map), which has no batch statistics; use "
                        "a larger image size or bn='frozen'") from None
                raise
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
    finally:
        for p in frozen_params:
            p.requires_grad_(True)
        if ddp is not None:
            restore_batchnorm(model)
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
        precision="bf16 autocast" if use_amp else "float32",
    )
    log.info("%s: %d/%d steps in %.1f s (%.1f images/s) on %s%s", mode, state.step, total_steps, seconds,
             result.images_per_s, dev, " with the CUDA-graph path" if fast_used else "")
    return result


def resolve_precision(amp: bool | str, dev: torch.device) -> str:
    """``"bf16"`` or ``"float32"``: what ``fit_autoencoder(amp=...)`` runs the model in on ``dev``.

    ``True``/``"auto"``: bf16 autocast on CUDA, float32 elsewhere; ``"bf16"`` (or ``"bfloat16"``): bf16
    autocast, refused with a ``ConfigError`` on the CPU (memlens trains on the CPU in float32 only);
    ``False``/``"float32"``: float32.
    """
    key = ("auto" if amp else "float32") if isinstance(amp, bool) else str(amp)
    key = "bf16" if key == "bfloat16" else key
    if key == "auto":
        return "bf16" if dev.type == "cuda" else "float32"
    if key == "bf16":
        if dev.type != "cuda":
            raise ConfigError(f"amp bfloat16 needs a CUDA device; training on {dev} runs in float32 only "
                              "(use --amp auto or float32 there)")
        return "bf16"
    if key == "float32":
        return "float32"
    raise ConfigError(f"amp must be auto, bfloat16 or float32, got {amp!r}")


def _given_order(order: str | Sequence[int], mode: str, n: int) -> np.ndarray | None:
    """None for ``order="random"``, else the given presentation order checked to be a permutation of ``range(n)``."""
    if isinstance(order, str):
        if order != "random":
            raise ConfigError(f"order must be 'random' or a sequence of image indices, got {order!r}")
        return None
    if mode != "exposure":
        raise ConfigError("a given presentation order is for exposure mode only (pretraining shuffles every epoch)")
    arr = np.asarray(order)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or len(arr) != n or not np.array_equal(np.sort(arr), np.arange(n)):
        raise ConfigError(f"order must be a permutation of the {n} image indices (each exactly once)")
    return arr.astype(np.int64)
