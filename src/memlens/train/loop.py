"""What the exposure and pretraining loops share: the run's settings and state, one forward + loss, the
checkpoint write, the stop and progress rules, and the train/eval modes of the layers.

:class:`TrainLoop` holds everything one :func:`~memlens.train.fit_autoencoder` call trains with;
:class:`~memlens.train.exposure.ExposureLoop` and :class:`~memlens.train.pretrain.PretrainLoop` add the
loops themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.base import Autoencoder
from ..models.checkpoint import save_train_state
from .distributed import unwrap
from .images import TrainImages
from .runtime import model_autocast
from .state import TrainState, cpu_copy, rng_state

__all__ = ["TrainLoop", "ProgressFn", "set_train_modes"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, dict[str, Any]], None]


def _bn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_train_modes(model: nn.Module, bn: str, freeze_encoder: bool) -> None:
    """Training mode, except frozen BN layers (``bn="frozen"``) and a frozen encoder, which stay in eval mode."""
    model.train()
    if bn == "frozen":
        for m in _bn_layers(model):
            m.eval()
    if freeze_encoder:
        model.encoder.eval()


@dataclass
class TrainLoop:
    """The model, optimizer, data and settings of one training, and the steps both loops share."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Any
    src: TrainImages
    dev: torch.device
    amp: bool
    use_cl: bool
    bn: str
    freeze_encoder: bool
    settings: dict[str, Any]
    state: TrainState
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
    ddp: Any = None  # memlens.train.distributed.DistContext when training in several processes

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the training device (channels_last when the model is)."""
        x = x.to(self.dev, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.use_cl else x

    def forward_loss(self, x: torch.Tensor,
                     model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mean training objective of the batch ``x``, its per-image objectives, and its per-image
        distances (``model``: default the trained one).

        The objectives are what the optimiser minimises; the distances (higher = worse reconstruction) are
        what a run records. They are the same tensor unless the loss is a complement ``"1-<metric>"``
        (objective ``1 - d``).
        """
        model = self.model if model is None else model
        with model_autocast(self.dev, self.amp):
            out = model(x, check=False) if isinstance(unwrap(model), Autoencoder) else model(x)
        dist = self.loss_fn.per_image(x, out.float(), validate=False)
        per = self.loss_fn.objective(dist)
        return per.mean(), per, dist

    def save(self) -> None:
        """Write the training state checkpoint (rank 0 only; nothing without a checkpoint path)."""
        if self.ck_path is None or (self.ddp is not None and not self.ddp.is_main):
            return
        save_train_state(self.ck_path, {
            "settings": self.settings,
            "model": {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()},
            "optimizer": cpu_copy(self.optimizer.state_dict()),
            "scheduler": {"kind": self.settings["schedule"], "step": self.state.step, "total": self.total,
                          "base_lr": self.lr},
            "state": self.state.to_dict(),
            "rng": rng_state(self.dev),
        })
        log.debug("checkpoint at step %d -> %s", self.state.step, self.ck_path)

    def stop_now(self) -> bool:
        """Whether ``max_steps`` is reached."""
        return self.max_steps is not None and self.state.step >= self.max_steps

    def after_step(self, info: dict[str, Any]) -> None:
        """A checkpoint when one is due (not after the last step: the loop saves then), then the progress call."""
        st = self.state
        if st.step % self.ck_every == 0 and st.step < self.total:
            self.save()
        if self.progress is not None:
            self.progress(st.step, self.total, info)
