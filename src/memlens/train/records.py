"""The records a training writes next to its model: presentation orders, the training curve (table and
figure), and the content hash of the data set's table for the manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_path, atomic_write_text
from .result import TrainResult

__all__ = ["table_sha256", "phase_info", "write_curve"]


def table_sha256(table: Any) -> str:
    """sha256 of a data set's table content (every column but the absolute ``path``)."""
    cols = [c for c in table.columns if c != "path"]
    return hashlib.sha256(table[cols].to_csv(index=False).encode()).hexdigest()


def phase_info(res: TrainResult, ids: Sequence[str], out: Path, order_file: str) -> dict[str, Any]:
    """Summary of a pretrain phase, and its presentation order written to ``order_file``."""
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


def write_curve(out: Path, curves: list[dict[str, Any]]) -> None:
    """``training_curve.csv`` (every phase's curve rows) and ``training_curve.png`` (one panel per phase)."""
    import pandas as pd

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
