"""``memlens fit-predictor``: cross-validate the memorability MLP (with a ridge baseline) and fit the final one."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click

from ._common import check_device, progress_enabled


def _hidden(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in str(value).replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer widths such as 256 or 512,128; got {value!r}") from None
    if any(s < 1 for s in sizes):
        raise click.BadParameter(f"layer widths must be positive, got {value!r}")
    return sizes


def _fmt(v: float, digits: int = 3) -> str:
    return "  n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


@click.command("fit-predictor")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path, file_okay=False))
@click.option("--cv", type=click.IntRange(min=1), default=None,
              help="Folds for --split kfold [default: 5]; repeated random splits for --split paper [default: 1].")
@click.option("--split", type=click.Choice(["kfold", "paper"]), default="kfold", show_default=True,
              help="kfold: K stratified folds (early stopping inside the training folds); paper: 60/10/30 "
                   "train/val/test stratified by category x above/below-median score.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the splits and the MLP.")
@click.option("--features", "features",
              type=click.Choice(["lite01", "lite01-flip", "lite0-crop", "latents", "features", "both"]),
              default="lite01", show_default=True,
              help="Inputs: a pretrained feature set (lite01: EfficientNet-Lite0 + Lite1, multi-stage, aspect kept; "
                   "extracted from the run's images and cached there), the autoencoder's latents, "
                   "features.npy from memlens score, or latents + features.npy (both).")
@click.option("--model", type=click.Choice(["svr", "mlp"]), default="svr", show_default=True,
              help="Model saved in predictor.pt: support-vector regression (per feature block, averaged) or the MLP. "
                   "Both are cross-validated, with a ridge baseline.")
@click.option("--hidden", callback=_hidden, default="256", show_default=True,
              help="Hidden layer widths, comma-separated (e.g. 512,128).")
@click.option("--max-epochs", type=click.IntRange(min=1), default=200, show_default=True,
              help="Upper bound on training epochs (early stopping usually ends sooner).")
@click.option("--device", default="cpu", show_default=True, callback=check_device, help="cpu, cuda or auto (training the MLP).")
def fit_predictor(run_dir: Path, cv: int | None, split: str, seed: int, features: str, model: str,
                  hidden: tuple[int, ...], max_epochs: int, device: str) -> None:
    """Cross-validate a memorability predictor on RUN and fit the final model on every image.

    Reads RUN/per_image.csv (image_id, score, category), RUN/latent_ids.txt and RUN/features.npy and/or
    RUN/latents.npy. Writes RUN/predictor_cv.csv (Spearman, Pearson, MSE and above/below-median AUC per fold
    for the SVR, the MLP and a ridge baseline, the noise ceiling when RUN/split_halves.npz exists, and mean
    rows),
    RUN/predictor_oof.csv (out-of-fold predictions) and RUN/predictor.pt (for memlens predict and explain).
    """
    from ..predict import fit_predictor_run

    show = progress_enabled()
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if show:
            click.echo(f"  {msg}", err=True)

    res = fit_predictor_run(run_dir, cv=cv, split=split, seed=seed, inputs=features, hidden=hidden,
                            max_epochs=max_epochs, device=device, model=model, progress=progress)
    table = res["table"]
    folds = table[table["fold"] != "mean"]
    n_folds = folds["fold"].nunique()
    click.echo(f"{res['n_images']} images, {res['n_features']} inputs ({features}), {split} split x{n_folds}, "
               f"seed {seed}")
    click.echo(f"{'model':<8}{'spearman':>16}{'pearson':>10}{'mse':>10}{'auc':>8}")
    for name, g in folds.groupby("model", sort=False):
        rho = g["spearman"].astype(float)
        sd = rho.std(ddof=1) if len(rho) > 1 else float("nan")
        sd_txt = f" ± {sd:.3f}" if math.isfinite(sd) else ""
        click.echo(f"{name:<8}{_fmt(rho.mean()) + sd_txt:>16}{_fmt(g['pearson'].astype(float).mean()):>10}"
                   f"{_fmt(g['mse'].astype(float).mean(), 4):>10}{_fmt(g['auc'].astype(float).mean()):>8}")
    ceil = res.get("ceiling") or {}
    if ceil:
        click.echo(f"noise ceiling: human consistency (split-half Spearman) {_fmt(ceil['human_consistency'])}; "
                   f"reliability of the full-group score (Spearman-Brown) {_fmt(ceil['spearman_brown'])}")
    else:
        click.echo("noise ceiling: n/a (no split_halves.npz in the run)")
    click.echo(f"predictor.pt holds the {model} model")
    click.echo(f"wrote {', '.join(str(p) for p in res['paths'])} ({time.perf_counter() - t0:.1f} s)")
