"""``memlens baselines RUN``: memlens's predictor beside ResMem, ViTMem and memlens's own baselines, on the
same images and folds, with paired bootstrap CIs."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import check_device, progress_updates


def _split_weights(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in value or ():
        name, sep, path = str(item).partition("=")
        if not sep or not name.strip() or not path.strip():
            raise click.BadParameter(f"{item!r}: expected NAME=PATH, e.g. resmem=/data/model.pt")
        out[name.strip().lower()] = path.strip()
    return out


@click.command("baselines")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--models", default="all-installed", show_default=True,
              help="Comma-separated baselines (resmem, vitmem, ridge-lite0, paper-mlp) or all-installed: every "
                   "one whose weights are found and whose inputs the run has.")
@click.option("--weights", "weights", multiple=True, callback=_split_weights, metavar="NAME=PATH",
              help="A pretrained baseline's weights file, e.g. resmem=/data/model.pt (repeatable) [default: "
                   "MEMLENS_<NAME>_WEIGHTS, the installed resmem package, torch hub's checkpoints folder].")
@click.option("--n-boot", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Paired bootstrap resamples (the same images for every model).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap and of the fitted baselines.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per forward pass of the pretrained networks (scores do not depend on it).")
@click.option("--device", default="auto", show_default=True, callback=check_device, help="auto, cpu, cuda or cuda:N.")
def baselines(run: Path, models: str, weights: dict[str, str], n_boot: int, seed: int, batch_size: int,
              device: str) -> None:
    """Compare the run's predictor with other memorability models on the images of its honest estimate.

    Pretrained models (ResMem, ViTMem) score those images (cached in RUN/baseline_<name>.csv); ridge-lite0 and
    paper-mlp are fitted on the predictor's own outer folds. Writes RUN/baselines.csv (model, inputs, spearman,
    ci_low, ci_high, n, trained_on, overlap, ...), RUN/baselines_diff.csv (memlens minus each baseline, paired
    bootstrap CI) and RUN/baselines.json. A pretrained model trained on this data set (ResMem saw LaMem and
    MemCat) is flagged: its figure is optimistic.
    """
    from ..baselines import compare_baselines
    from ..report.formatting import fmt_ci, fmt_r

    with progress_updates("baselines") as tick:
        res = compare_baselines(run, models, weights=weights, n_boot=n_boot, seed=seed, batch_size=batch_size,
                                device=device, progress=lambda m: click.echo(m, err=True), tick=tick)
    for name, why in res.skipped.items():
        click.echo(f"not run: {name}: {why}", err=True)
    click.echo(f"on the {res.info['evaluated_on']}; Spearman with the human scores, paired bootstrap 95% CI "
               f"({n_boot} resamples, seed {seed}):")
    width = max(len(m) for m in res.table["model"])
    for row in res.table.itertuples(index=False):
        flag = "  [trained on this data set: optimistic]" if bool(row.overlap) else ""
        click.echo(f"  {row.model:<{width}}  rho = {fmt_r(row.spearman)} {fmt_ci(row.ci_low, row.ci_high)}  "
                   f"n = {row.n}{flag}")
    for row in res.diff.itertuples(index=False):
        click.echo(f"  memlens minus {row.model:<{width}}  {fmt_r(row.difference)} {fmt_ci(row.ci_low, row.ci_high)}"
                   f"  (p_boot {row.p_boot:.3g})")
    for name, why in res.info.get("overlap", {}).items():
        click.echo(f"note: {name} may have seen these images: {why}", err=True)
    click.echo(f"wrote {run / 'baselines.csv'}, {run / 'baselines_diff.csv'}, {run / 'baselines.json'}")
