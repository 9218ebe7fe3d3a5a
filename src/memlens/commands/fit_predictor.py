"""``memlens fit-predictor``: choose a memorability predictor, estimate it on images no choice saw, save it."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import click

from ._common import check_device, progress_bar, progress_enabled


def _hidden(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in str(value).replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer widths such as 256 or 512,128; got {value!r}") from None
    if any(s < 1 for s in sizes):
        raise click.BadParameter(f"layer widths must be positive, got {value!r}")
    return sizes


def _holdout(ctx: click.Context, param: click.Parameter, value: str) -> str | float:
    from ..errors import ConfigError
    from ..predict.selection import resolve_holdout

    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return resolve_holdout(value, 0)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _fmt(v: float, digits: int = 3) -> str:
    return "  n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


@click.command("fit-predictor")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path, file_okay=False))
@click.option("--cv", type=click.IntRange(min=1), default=None,
              help="Folds for --split kfold [default: 5]; repeated random splits for --split paper [default: 1].")
@click.option("--split", type=click.Choice(["kfold", "paper"]), default="kfold", show_default=True,
              help="kfold: K stratified folds (early stopping inside the training folds); paper: 60/10/30 "
                   "train/val/test, stratified as --stratify says.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the splits and the MLP.")
@click.option("--features", "features",
              type=click.Choice(["lite01", "lite01-flip", "lite0-crop", "latents", "features", "both"]),
              default="lite01", show_default=True,
              help="Inputs: a pretrained feature set (lite01: EfficientNet-Lite0 + Lite1, multi-stage, aspect kept; "
                   "extracted from the run's images and cached there), the autoencoder's latents, "
                   "features.npy from memlens score, or latents + features.npy (both).")
@click.option("--model", type=click.Choice(["auto", "svr", "mlp", "ridge", "svr+finetune"]), default="auto",
              show_default=True,
              help="Model saved in predictor.pt: auto (the best of svr, mlp and ridge by cross-validation on the "
                   "images not held out), support-vector regression (per feature block, averaged), the MLP, or "
                   "ridge regression. All are evaluated on the same folds.")
@click.option("--finetune", type=click.Choice(["auto", "none", "lite0", "lite1"]), default="auto", show_default=True,
              help="Also fine-tune the last stages of this network of the feature set on the scores (from cached "
                   "activations of its frozen first stages) and blend it with the SVR (svr+finetune, a "
                   "candidate of --model auto). auto: lite0 when the feature set has it and there are 1,000 scored "
                   "images or more. Minutes per fit on a CPU (a GPU with --device cuda).")
@click.option("--finetune-seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fine-tuned tails per fit, each from its own seed; their predictions are averaged (each "
                   "one costs as much time as the first).")
@click.option("--finetune-stage", type=click.IntRange(1, 7), default=None,
              help="The last frozen stage of the fine-tuned network (1-7): the stages after it, the head convolution "
                   "and the output are fine-tuned. Lower is deeper and slower (worth a GPU). [default: 5]")
@click.option("--blend", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Weight of the fine-tuned tails in svr+finetune; the SVR has the rest. [default: 0.3]")
@click.option("--holdout", callback=_holdout, default="auto", show_default=True,
              help="Fraction of the images set aside, seeded and stratified, before any choice; the figure "
                   "reported for the saved model is its score on them. auto: 0.2 from 1,000 images on, else 0 "
                   "(0: nested cross-validation, every choice made inside the training folds).")
@click.option("--hidden", callback=_hidden, default="256", show_default=True,
              help="Hidden layer widths, comma-separated (e.g. 512,128).")
@click.option("--max-epochs", type=click.IntRange(min=1), default=200, show_default=True,
              help="Upper bound on training epochs (early stopping usually ends sooner).")
@click.option("--device", default="cpu", show_default=True, callback=check_device, help="cpu, cuda or auto (training the MLP).")
@click.option("--stratify", type=click.Choice(["category", "subcategory", "auto", "none"]), default="category",
              show_default=True,
              help="Strata of the folds, the paper split and the holdout: category (x above/below-median score); "
                   "subcategory: category > subcategory > score half, as the paper's authors split (subcategories "
                   "smaller than the folds merged into their category's rest); auto: subcategory when per_image.csv "
                   "has a subcategory column, else category; none.")
def fit_predictor(run_dir: Path, cv: int | None, split: str, seed: int, features: str, model: str,
                  finetune: str, finetune_seeds: int, finetune_stage: int | None, blend: float | None,
                  holdout: str | float,
                  hidden: tuple[int, ...], max_epochs: int, device: str, stratify: str) -> None:
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
    bar: Any = None

    def progress(msg: str) -> None:
        if not show:
            return
        if bar is not None:
            bar.set_postfix_str(msg[:60], refresh=False)
        else:
            click.echo(f"  {msg}", err=True)

    def on_step(done: int, total: int) -> None:
        nonlocal bar
        if not show:
            return
        if bar is None:
            bar = progress_bar("fit-predictor", total, unit="fit")
        bar.update(done - bar.n)

    try:
        res = fit_predictor_run(run_dir, cv=cv, split=split, seed=seed, inputs=features, hidden=hidden,
                                max_epochs=max_epochs, device=device, model=model, holdout=holdout,
                                finetune=None if finetune == "none" else finetune,
                                finetune_params={"n_seeds": finetune_seeds},
                                **({} if blend is None else {"blend": blend}),
                                **({} if finetune_stage is None else {"finetune_stage": finetune_stage}),
                                stratify=stratify,
                                progress=progress, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
    table = res["table"]
    est = res["estimate"]
    n_hold = int(round(res["n_images"] * res["holdout"]))
    folds = table[table["fold"] != "mean"]
    n_folds = folds[folds["estimate"] != "holdout"]["fold"].nunique()
    click.echo(f"{res['n_images']} images, {res['n_features']} inputs ({features}), {split} split x{n_folds}, "
               f"seed {seed}")
    if est["kind"] == "holdout":
        click.echo(f"{n_hold} images ({res['holdout']:.0%}) set aside before any choice; the models were "
                   f"cross-validated on the other {res['n_images'] - n_hold}")
    else:
        click.echo("nested cross-validation: every choice made inside the training folds")
    inner = folds[folds["estimate"] == "inner-cv"]
    honest = folds[folds["estimate"] == est["kind"]]
    mean_rows = table[(table["fold"] == "mean") & (table["estimate"] == est["kind"])].set_index("model")
    label = {"holdout": "held-out rho [95% CI]", "outer-cv": "outer-CV rho [95% CI]"}[est["kind"]]
    head = f"{'model':<13}" + (f"{'inner-CV rho':>16}" if len(inner) else "") + f"{label:>28}{'auc':>8}"
    click.echo(head)
    for name, g in honest.groupby("model", sort=False):
        line = f"{name:<13}"
        if len(inner):
            r = inner[inner["model"] == name]["spearman"].astype(float)
            sd = r.std(ddof=1) if len(r) > 1 else float("nan")
            line += f"{(_fmt(r.mean()) + (f' ± {sd:.3f}' if math.isfinite(sd) else '')) if len(r) else '':>16}"
        m = mean_rows.loc[name] if name in mean_rows.index else None
        ci = (f"{_fmt(m['spearman_pooled'])} [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]"
              if m is not None and "ci_low" in m else "")
        line += f"{ci:>28}{_fmt(g['auc'].astype(float).mean()):>8}"
        click.echo(line)
    ceil = res.get("ceiling") or {}
    if ceil:
        sb = ceil.get("spearman_brown")
        root = sb ** 0.5 if isinstance(sb, (int, float)) and sb == sb and sb > 0 else float("nan")
        click.echo(f"noise ceiling {_fmt(root)} = sqrt of the full-group score's Spearman-Brown reliability "
                   f"{_fmt(sb)} (human split-half Spearman {_fmt(ceil['human_consistency'])})")
    else:
        click.echo("noise ceiling: n/a (no split_halves.npz in the run)")
    how = {"holdout": f"on the {est['n']} held-out images no choice saw",
           "outer-cv": f"on {est['n']} images, each predicted by a model whose choice and fit never saw it"}
    chosen = ("chosen by --model auto on the selection figures" if model == "auto" else "given by --model")
    click.echo(f"predictor.pt holds the {res['model']} model ({chosen}), refitted on every image")
    click.echo(f"estimate for new images of this kind: Spearman {_fmt(est['spearman'])} "
               f"[{_fmt(est['ci_low'])}, {_fmt(est['ci_high'])}] {how[est['kind']]}")
    versus = est.get("versus") or {}
    if versus:  # the saved model against the others on the same images: paired, so narrower than two CIs
        def gain(name: str, v: dict[str, Any]) -> str:
            if not math.isfinite(v["diff"]):
                return f"{name} n/a"
            ci = (f" [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"
                  if math.isfinite(v["ci_low"]) and math.isfinite(v["ci_high"]) else "")
            return f"{name} {v['diff']:+.3f}{ci}" + (f" (n={v['n']})" if v["n"] != est["n"] else "")

        click.echo(f"  the same {est['n']} images, {est['procedure']} minus each other model ({est['kind']}: "
                   f"{how[est['kind']].removeprefix('on ')}; Spearman difference, paired bootstrap 95% CI): "
                   + "; ".join(gain(k, v) for k, v in versus.items()))
    if "within" in est:  # categories: the same predictions within categories and of the category means
        w, b = est["within"], est.get("between")
        click.echo(f"  the same {est['n']} images ({est['kind']}), within category (category means removed): "
                   f"Spearman {_fmt(w['r'])} "
                   f"[{_fmt(w['ci_low'])}, {_fmt(w['ci_high'])}]"
                   + (f"; between categories ({b['n_groups']} category means): {_fmt(b['r'])} "
                      f"[{_fmt(b['ci_low'])}, {_fmt(b['ci_high'])}]" if b else ""))
    click.echo(f"wrote {', '.join(str(p) for p in res['paths'])} ({time.perf_counter() - t0:.1f} s)")
