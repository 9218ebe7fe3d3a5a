"""``memlens train``: visual experience + single exposure (or pretraining) into a run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ._common import (
    FiniteFloatRange,
    LayoutChoice,
    check_backbone,
    check_device,
    progress_bar,
    progress_enabled,
)

# kept here (not imported from memlens) so that importing this module stays light
_BACKBONES_HINT = "small, vgg16, efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2"


class _Bar:
    """A click progress bar per phase showing images/s (only in an interactive terminal)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.phase: str | None = None
        self.t0 = 0.0
        self.last = 0
        self.images = 0

    def __call__(self, phase: str, done: int, total: int, info: dict[str, Any]) -> None:
        if phase != self.phase:
            self.close()
            self.phase, self.t0, self.last, self.images = phase, time.perf_counter(), done - 1, 0
            label = {"experience": "visual experience", "exposure": "single exposure"}.get(phase, phase)
            self.bar = progress_bar(label, total, unit="step", initial=max(done - 1, 0))
        self.images += int(info.get("batch", 1))
        rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
        loss = info.get("loss")
        self.bar.set_postfix_str(f"{rate:.1f} images/s" + (f"  loss {loss:.4g}" if isinstance(loss, float) else ""),
                                 refresh=False)
        self.bar.update(done - self.last)
        self.last = done
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.phase = None


@click.command("train")
@click.argument("data", type=click.Path(path_type=str))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option("--backbone", default="efficientnet_lite0", show_default=True, callback=check_backbone,
              help=f"Autoencoder backbone: {_BACKBONES_HINT}.")
@click.option("--init", default=None, metavar="scratch|imagenet|PATH",
              help="Initial weights [default: the backbone's: imagenet for efficientnet_lite*, scratch otherwise]; "
                   "PATH = a memlens or imagenet-autoencoder checkpoint.")
@click.option("--weights", default=None, type=click.Path(path_type=str),
              help="Local ImageNet weight file for --init imagenet (vgg16: torchvision's vgg16_bn-6c64b313.pth).")
@click.option("--download-weights", is_flag=True,
              help="vgg16 --init imagenet: allow fetching torchvision's weights (hash-checked).")
@click.option("--mode", type=click.Choice(["exposure", "pretrain"]), default="exposure", show_default=True,
              help="exposure: visual experience then a single exposure (the paper); pretrain: multi-epoch.")
@click.option("--experience", default=None, metavar="DIR|TABLE",
              help="Images for visual experience before exposure, disjoint from DATA [default: DATA/experience/ "
                   "when present, else a seeded 25% of DATA held out from exposure].")
@click.option("--experience-fraction", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=0.25,
              show_default=True, help="Held-out fraction when no experience corpus exists.")
@click.option("--pretrain-epochs", type=click.IntRange(min=0), default=10, show_default=True,
              help="Epochs of visual experience (0 = none).")
@click.option("--pretrain-lr", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Learning rate of visual experience [default: 1e-3, cosine schedule].")
@click.option("--freeze-encoder/--train-encoder", default=None,
              help="During visual experience / pretrain: fit only the decoder [default: frozen for --init imagenet].")
@click.option("--loss", default="mse", show_default=True,
              help="Loss from the metric registry: mse, l1, dssim, ms-dssim, perceptual, lpips, lpips-squeeze, or "
                   "a weighted sum such as mse+0.5*dssim; 1-METRIC (e.g. 1-lpips-squeeze, the released scripts') "
                   "minimises 1 - d, i.e. maximises the distance (exposure with --pretrain-epochs 0 only). "
                   "exposure.csv always records the distance d.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="exposure: passes (default 1, the paper); pretrain: epochs (default 10).")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Learning rate [default: 1e-5 for exposure, 1e-3 for pretrain].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Mini-batch of visual experience / pretrain (exposure always uses 1).")
@click.option("--image-size", type=click.IntRange(min=8), default=None,
              help="Square input size [default: the backbone's, 64 for small, 224 otherwise].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, order, splits.")
@click.option("--order", type=click.Choice(["random", "category"]), default="random", show_default=True,
              help="Exposure order: random = a permutation seeded by --seed; category = sorted by category, then "
                   "image id, unshuffled (as the paper's released scripts fed the images).")
@click.option("--bn", type=click.Choice(["frozen", "train"]), default="frozen", show_default=True,
              help="Batch norm during exposure: frozen = running statistics fixed (eval mode; scale and shift "
                   "learn); train = train mode at batch 1 (each image normalised with its own statistics, running "
                   "statistics updated; the released scripts'). Visual experience and pretrain always train BN.")
@click.option("--init-load", type=click.Choice(["strict", "scripts"]), default="strict", show_default=True,
              help="How --init PATH loads: strict = every tensor must load, or stop; scripts = the released "
                   "scripts' non-strict load, which keeps the file's module. prefix, so often nothing loads and the "
                   "model starts from random weights (a warning and manifest.json say how many tensors loaded).")
@click.option("--amp", type=click.Choice(["auto", "bfloat16", "float32"]), default="auto", show_default=True,
              help="Training precision: auto = bf16 autocast on CUDA, float32 on the CPU; bfloat16 = bf16 autocast "
                   "(CUDA only, refused on the CPU); float32 = no autocast. Recorded in manifest.json.")
@click.option("--device", default="auto", show_default=True, callback=check_device, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out (same settings).")
@click.option("--layout", type=LayoutChoice(), default="auto", show_default=True,
              help="Data layout of DATA (see docs/datasets.md).")
@click.option("--image-col", default=None, metavar="C", help="Table column with the image paths.")
@click.option("--score-col", default=None, metavar="C", help="Table column with the memorability scores.")
@click.option("--category-col", default=None, metavar="C", help="Table column with the categories.")
@click.option("--score-variant", type=click.Choice(["corrected", "uncorrected"]), default=None,
              help="memcat: false-alarm corrected score (default) or the uncorrected hit rate.")
@click.option("--split", "split", multiple=True, metavar="NAME",
              help="lamem: a split file to read, e.g. train_1 (repeat the option for several).")
@click.option("--overwrite", is_flag=True,
              help="Remove the outputs of later stages (per_image.csv, predictor.pt, ...) of an earlier run in --out.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Image-decoding worker processes.")
@click.option("--threads", default="auto", show_default=True,
              help="CPU threads for torch: a number, or auto (torch's count: the usable cores, or OMP_NUM_THREADS; "
                   "results depend slightly on it, and manifest.json records it).")
def train(data: str, out: Path, backbone: str, init: str | None, weights: str | None, download_weights: bool,
          mode: str, experience: str | None, experience_fraction: float, pretrain_epochs: int,
          pretrain_lr: float | None, freeze_encoder: bool | None, loss: str, epochs: int | None, lr: float | None,
          batch_size: int, image_size: int | None, seed: int, device: str, resume: bool, layout: str,
          image_col: str | None, score_col: str | None, category_col: str | None, score_variant: str | None,
          split: tuple[str, ...], overwrite: bool, workers: int, threads: str, order: str, bn: str,
          init_load: str, amp: str) -> None:
    """Train an autoencoder on DATA and write the run directory --out.

    exposure mode: (1) visual experience -- pretraining on images disjoint from DATA, saved as
    autoencoder_before.pt; (2) a single exposure of DATA: one pass, batch size 1, seeded random order,
    Adam (lr 1e-5), batch norm frozen; each image's loss at its exposure goes to exposure.csv (image_id,
    order, loss). Also written: autoencoder.pt, config.json, dataset.json, manifest.json,
    training_curve.csv/.png. Recorded losses are distances: higher = worse reconstruction (with
    --loss 1-METRIC too). --order category, --bn train, --init-load scripts and --loss 1-METRIC reproduce the
    paper's released scripts (config bagheri2026-scripts; docs/reproduce-paper.md).
    """
    from ..train import train_run

    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        raise click.BadParameter(f"expected a positive number or 'auto', got {threads!r}", param_hint="--threads")
    bar = _Bar() if progress_enabled() else None
    t0 = time.perf_counter()
    try:
        manifest = train_run(
            data, out, backbone=backbone, init=init, weights=weights, download=download_weights, mode=mode,
            experience=experience, experience_fraction=experience_fraction, pretrain_epochs=pretrain_epochs,
            pretrain_lr=pretrain_lr, freeze_encoder=freeze_encoder, loss=loss, epochs=epochs, lr=lr,
            batch_size=batch_size, image_size=image_size, seed=seed, device=device, resume=resume, layout=layout,
            image_col=image_col, score_col=score_col, category_col=category_col, score_variant=score_variant,
            splits=list(split) or None, num_workers=workers, threads=threads if threads == "auto" else int(threads),
            overwrite=overwrite, progress=bar, order=order, bn=bn, init_load=init_load, amp=amp,
        )
    finally:
        if bar is not None:
            bar.close()
    rep = manifest["model"].get("init_report") or {}
    if "n_loaded" in rep:
        kind = f" ({rep['kind']})" if rep.get("kind") else ""
        if rep.get("load") == "scripts":
            extra = ", non-strict as in the released scripts" + (
                "" if rep["n_loaded"] == rep["n_expected"] else
                "; the model keeps its random initial weights" if rep["n_loaded"] == 0 else
                "; the others keep their random initial values")
        else:
            extra = "" if rep["n_loaded"] == rep["n_expected"] else " (missing BN counters kept)"
        click.echo(f"init {manifest['model']['init']}: {rep['n_loaded']} of {rep['n_expected']} tensors loaded "
                   f"from {rep.get('path')}{kind}{extra}")
    tr = manifest["training"]
    exp = tr.get("experience") or {}
    if mode == "exposure":
        src = exp.get("source", "none")
        if src != "none":
            click.echo(f"visual experience: {exp.get('n_images')} images ({src}), {exp.get('epochs')} epochs, "
                       f"final validation loss {_fmt(exp.get('final_val_loss'))}")
        else:
            click.echo("visual experience: none")
        ex = tr["exposure"]
        click.echo(f"single exposure: {ex['n_images']} images on {ex['device']} ({ex['images_per_s']:.1f} images/s"
                   f"{', CUDA graph' if ex.get('fast_path') else ''})")
    else:
        pt = tr["pretrain"]
        click.echo(f"pretrain: {pt['n_train']} images x {pt['epochs']} epochs, final validation loss "
                   f"{_fmt(pt.get('final_val_loss'))}")
    click.echo(f"wrote {out} ({time.perf_counter() - t0:.1f} s)")


def _fmt(v: Any) -> str:
    return f"{v:.5g}" if isinstance(v, (int, float)) else "n/a"
