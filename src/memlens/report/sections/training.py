"""Section ``training``: the loss curves of visual experience and the single exposure, and the settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .. import figures as F
from ..context import ReportContext
from ..formatting import esc, finite_float, isnum, nested_get
from ..markup import figure_html, kv_table, missing_note, note


def _training_settings(ctx: ReportContext) -> list[tuple[str, Any]]:
    """What was trained and how, from config.json, dataset.json and manifest.json (train's files)."""
    cfg, ds, man = ctx.run.json("config.json"), ctx.run.json("dataset.json"), ctx.run.json("manifest.json")
    rows: list[tuple[str, Any]] = []

    def add(label: str, value: Any) -> None:
        if value is not None and value != "":
            rows.append((label, value))

    add("autoencoder", nested_get(man, "model", "backbone") or nested_get(cfg, "backbone"))
    add("initialisation", nested_get(man, "model", "init") or nested_get(cfg, "init"))
    params = nested_get(man, "model", "parameters")
    add("parameters", f"{int(params):,}" if isnum(params) else None)
    add("input size (px)", nested_get(man, "model", "spec", "input_size") or nested_get(cfg, "image_size"))
    add("mode", nested_get(man, "training", "mode") or nested_get(cfg, "mode"))
    add("loss", nested_get(cfg, "loss"))
    exp = nested_get(ds, "experience")
    if isinstance(exp, Mapping) and exp.get("source") not in (None, "none"):
        n = exp.get("n_images")
        add("visual experience", f"{exp.get('source')}" + (f" ({n} images)" if isnum(n) else ""))
        ep = nested_get(man, "training", "experience", "epochs") or nested_get(cfg, "pretrain_epochs")
        add("experience epochs", ep)
        add("experience learning rate", nested_get(man, "training", "experience", "settings", "lr"))
    elif isinstance(exp, Mapping) and exp.get("note"):
        add("visual experience", exp.get("note"))
    add("images exposed once", nested_get(ds, "exposed", "n_images"))
    add("exposure learning rate", nested_get(man, "training", "exposure", "settings", "lr"))
    add("exposure batch size", nested_get(man, "training", "exposure", "settings", "batch_size"))
    add("presentation order", nested_get(man, "training", "exposure", "order"))
    add("pretraining epochs", nested_get(man, "training", "pretrain", "epochs"))
    prec = nested_get(cfg, "score", "precision")
    if prec == "bfloat16":
        add("scoring arithmetic", "bfloat16 (approximate: per-image numbers move by about 0.1 % from float32)")
    elif prec == "int8":
        n, moved = nested_get(cfg, "score", "int8", "calibration_images"), nested_get(cfg, "score", "int8", "calibration_max_rel_mse")
        add("scoring arithmetic", "int8 (approximate" + (f": calibrated on {n} images, whose MSE moved by at most "
                                                        f"{100 * moved:.2g} % from float32" if isnum(moved) else "")
            + "; use float32 for numbers you report)")
    return rows


def section_training(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``training``, the training curves and settings: its HTML body and its numbers for results.json."""
    curve = ctx.run.csv("training_curve.csv")
    exposure = ctx.run.csv("exposure.csv")
    if curve is not None and "loss" not in curve.columns:
        ctx.run.problems.append("training_curve.csv: no loss column")
        curve = None
    if exposure is not None and "loss" not in exposure.columns:
        ctx.run.problems.append("exposure.csv: no loss column")
        exposure = None
    if curve is None and exposure is None:
        return missing_note("Training curve", ["training_curve.csv", "exposure.csv"], "memlens train"), {}
    res: dict[str, Any] = {}
    # training_curve.csv: one row per epoch for experience/pretrain, one row per image for the exposure
    epochs = curve
    if curve is not None and "phase" in curve.columns:
        is_exp = curve["phase"].astype(str) == "exposure"
        epochs = curve[~is_exp]
        if exposure is None and is_exp.any():
            e = curve[is_exp]
            order = pd.to_numeric(e["step"], errors="coerce") - 1 if "step" in e.columns else np.arange(len(e))
            exposure = pd.DataFrame({"order": order, "loss": pd.to_numeric(e["loss"], errors="coerce")})
    rows = []
    if epochs is not None and len(epochs):
        phases = list(epochs.groupby("phase", sort=False)) if "phase" in epochs.columns else [("training", epochs)]
        res["curve"] = {}
        for phase, g in phases:
            loss = pd.to_numeric(g["loss"], errors="coerce")
            n_ep = int(g["epoch"].nunique()) if "epoch" in g.columns else int(len(g))
            entry = {"epochs": n_ep, "first_loss": finite_float(loss.iloc[0]), "final_loss": finite_float(loss.iloc[-1]),
                     "final_val_loss": None}
            if "val_loss" in g.columns:
                v = pd.to_numeric(g["val_loss"], errors="coerce").dropna()
                entry["final_val_loss"] = finite_float(v.iloc[-1]) if len(v) else None
            res["curve"][str(phase)] = entry
            rows.append((str(phase), entry["epochs"], entry["first_loss"], entry["final_loss"], entry["final_val_loss"]))
    if exposure is not None:
        e = exposure.sort_values("order", kind="stable") if "order" in exposure.columns else exposure
        loss = pd.to_numeric(e["loss"], errors="coerce").to_numpy(dtype=float)
        k = max(1, len(loss) // 10)
        res["exposure"] = {"n_images": int(len(loss)), "mean_loss": finite_float(np.nanmean(loss)) if len(loss) else None,
                           "first_decile_mean": finite_float(np.nanmean(loss[:k])) if len(loss) else None,
                           "last_decile_mean": finite_float(np.nanmean(loss[-k:])) if len(loss) else None}
    settings = _training_settings(ctx)
    res["settings"] = {k: v for k, v in settings}
    parts = ['<p class="lead">The autoencoder first gains visual experience (several epochs on images that are not '
             "scored), then sees every scored image exactly once (the single exposure); the loss of an image at "
             "its exposure is recorded before the weights are updated.</p>"]
    parts.append(figure_html(F.training_curve(epochs if epochs is not None and len(epochs) else None, exposure,
                                              x="epoch"),
                             "training loss curves",
                             "Loss of the autoencoder during training (lower = better reconstruction)."))
    blocks = []
    for phase, n_ep, first, final, val in rows:
        kv = [("epochs", n_ep), ("loss, first epoch", first), ("loss, final epoch", final)]
        if val is not None:
            kv.append(("validation loss, final epoch", val))
        title = {"experience": "Visual experience", "pretrain": "Pretraining"}.get(phase, phase)
        blocks.append(f"<div><h3>{esc(title)}</h3>" + kv_table(kv) + "</div>")
    if "exposure" in res:
        x = res["exposure"]
        blocks.append("<div><h3>Single exposure</h3>" + kv_table([
            ("images seen once", x["n_images"]), ("mean loss at exposure", x["mean_loss"]),
            ("mean loss, first 10% of the pass", x["first_decile_mean"]),
            ("mean loss, last 10% of the pass", x["last_decile_mean"])]) + "</div>")
    if settings:
        blocks.append("<div><h3>Settings</h3>" + kv_table(settings) + "</div>")
    parts.append(f'<div class="kvgrid">{"".join(blocks)}</div>')
    if "exposure" not in res:
        parts.append(note("No single-exposure log (<code>exposure.csv</code>): the run used pretraining only.", missing=True))
    else:
        from ...train import experience_caution

        man = ctx.run.json("manifest.json")
        init = nested_get(man, "model", "init")
        val = None
        if epochs is not None and "val_loss" in epochs.columns and "phase" in epochs.columns:
            val = pd.to_numeric(epochs.loc[epochs["phase"].astype(str) == "experience", "val_loss"],
                                errors="coerce").dropna().tolist()
        caution = experience_caution(init, nested_get(man, "training", "experience"), val) if isinstance(init, str) else None
        if caution:
            res["caution"] = caution
            parts.append(note(esc("Caution: " + caution + "."), missing=True))
    return "".join(parts), res
