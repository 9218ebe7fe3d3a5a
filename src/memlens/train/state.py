"""The resumable part of a training: the loop state, RNG states, and restoring them from a checkpoint.

:class:`TrainState` is everything that changes during training besides model and optimizer; a training
state checkpoint (``memlens.models.checkpoint.save_train_state``) holds it with the model, the optimizer
and the RNG states (:func:`rng_state`). Resuming checks that the checkpoint was written by the same run
(:func:`check_same_run`) and restores it (:func:`restore_state`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["TrainState", "rng_state", "set_rng_state", "check_same_run", "restore_state", "cpu_copy"]


class TrainState:
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
        """The checkpointed form (numpy arrays as tensors)."""
        return {
            "step": self.step,
            "curve": [dict(r) for r in self.curve],
            "losses": torch.from_numpy(self.losses.copy()),
            "epoch_loss_sum": float(self.epoch_loss_sum),
            "epoch_loss_n": int(self.epoch_loss_n),
            "orders": torch.from_numpy(self.orders.copy()),
        }


def rng_state(dev: torch.device) -> dict[str, Any]:
    """The global torch RNG state (and the CUDA one of ``dev`` on a GPU), for a checkpoint."""
    out = {"torch": torch.get_rng_state()}
    if dev.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(dev)
    return out


def set_rng_state(rng: dict[str, Any], dev: torch.device) -> None:
    """Restore the RNG states :func:`rng_state` returned."""
    torch.set_rng_state(rng["torch"])
    if dev.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], dev)


#: settings added to training states later, with the value that states written before them had
_ADDED = {"order": "random"}


def check_same_run(saved: dict[str, Any], settings: dict[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` unless the training state ``saved`` was written with ``settings``."""
    old = saved.get("settings")
    if not isinstance(old, dict):
        raise CheckpointError(f"{path}: training state without settings (cannot resume)")
    # a setting added after the state was written had its default value then
    diff = [f"{k} ({old.get(k, _ADDED.get(k))!r} -> {settings.get(k)!r})" for k in settings
            if old.get(k, _ADDED.get(k)) != settings.get(k)]
    if diff:
        raise CheckpointError(f"{path} was written by a different run; it differs in: {', '.join(diff)} "
                              "(remove it or restore the original settings to resume)")


def restore_state(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                  dev: torch.device) -> None:
    """Load a training state into ``model``, ``optimizer`` and ``state`` (:class:`CheckpointError` if malformed)."""
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


def cpu_copy(obj: Any) -> Any:
    """``obj`` (tensors in nested dicts, lists, tuples) with every tensor detached and on the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(cpu_copy(v) for v in obj)
    return obj
