"""What a training call returns: :class:`TrainResult` (orders, per-image exposure losses, curve, timings)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TrainResult"]


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
    precision : what the model ran in: ``"bf16 autocast"`` or ``"float32"``.
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
    precision: str = "float32"

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
            "precision": self.precision,
            "n_train": int(len(self.train_indices)), "n_val": int(len(self.val_indices)),
            "resumed_at": self.resumed_at, "settings": dict(self.settings),
            "final_val_loss": next((r["val_loss"] for r in reversed(self.curve) if r.get("val_loss") is not None), None),
        }
