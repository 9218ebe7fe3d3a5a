"""``memlens analyze``: correlate every per-image measure of a run with memorability."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import FiniteFloatRange


@click.command("analyze")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--by", default="auto", show_default=True,
              help="Group column for per-group and within-group rows ('auto': category if present).")
@click.option("--no-groups", is_flag=True, help="Pooled and partial rows only.")
@click.option("--method", type=click.Choice(["spearman", "pearson"]), default="spearman", show_default=True)
@click.option("--n-boot", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Paired bootstrap resamples per correlation (0: no interval).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--ci", "ci", type=click.Choice(["percentile", "bca"]), default="percentile",
              show_default=True, help="Bootstrap interval type.")
@click.option("--confidence", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=0.95,
              show_default=True)
@click.option("--permutation", type=click.IntRange(min=0), default=0, show_default=True,
              help="Permutations for permutation p-values (0: none).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="What to print (the files are always written).")
def analyze(run: Path, by: str, no_groups: bool, method: str, n_boot: int, seed: int, ci: str,
            confidence: float, permutation: int, fmt: str) -> None:
    """Correlate recon_* and distinctiveness columns of RUN/per_image.csv with the score.

    Pooled, per category, within category, between categories (the category means), and partial (each
    reconstruction error given distinctiveness and the reverse; the error after the exposure given the error
    before it) rows, and the difference of the after- and before-exposure correlations, with the noise ceiling
    (sqrt of the Spearman-Brown corrected split-half correlation) when RUN/split_halves.npz exists. Writes
    RUN/correlations.csv and RUN/correlations.json.
    """
    from ..stats import analyze_run, format_correlations

    table, payload = analyze_run(run, by=None if no_groups else by, method=method, n_boot=n_boot, seed=seed,
                                 ci=ci, confidence=confidence, permutation=permutation)
    if fmt == "json":
        click.echo(json.dumps(payload, indent=2, allow_nan=False))
        return
    ceil = payload["ceiling"]
    click.echo(f"{payload['n_images']} images, {method}, {n_boot} paired bootstrap resamples (seed {seed})"
               + (f", grouped by {payload['by']}" if payload["by"] else ""))
    if ceil:
        click.echo(f"noise ceiling {ceil['ceiling']:.3f} = sqrt(Spearman-Brown {ceil['spearman_brown']:.3f}) of the "
                   f"split-half {method} {ceil['split_half']:.3f} over {ceil['n_splits']} splits"
                   + (f"; halves of the {ceil['score']} score" if ceil.get("score") not in (None, "unspecified")
                      else ""))
    click.echo(format_correlations(table))
    click.echo(f"wrote {Path(run) / 'correlations.csv'} and {Path(run) / 'correlations.json'}")
