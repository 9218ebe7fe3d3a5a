"""``memlens reliability``: split-half consistency of human scores (the noise ceiling)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click


@click.command("reliability")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(["spearman", "pearson"]), default="spearman", show_default=True,
              help="Correlation whose mean gives the ceiling and the Spearman-Brown value.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def reliability(source: Path, method: str, fmt: str) -> None:
    """Split-half consistency of the human scores in SOURCE.

    SOURCE is an .npz with arrays image, half1, half2 (n_splits x n_images), an LNSIM-layout folder
    (Random_splits/subject_hrs{1,2}.mat), a folder holding split_halves.npz (a data set or a run directory),
    or a data table with split_halves.npz beside it.
    """
    from ..data.halves import load_split_halves
    from ..errors import DataError
    from ..stats import split_half_reliability

    path = source
    if source.is_file() and source.suffix.lower() != ".npz":
        if not (source.parent / "split_halves.npz").is_file():
            raise DataError(f"{source}: a table without split-half scores (no split_halves.npz beside it)")
        path = source.parent / "split_halves.npz"
    elif source.is_dir() and not (source / "Random_splits").is_dir():
        if not (source / "split_halves.npz").is_file():
            raise DataError(f"{source}: no split-half scores here: expected split_halves.npz (a data set or run "
                            "folder) or Random_splits/subject_hrs1.mat and subject_hrs2.mat (the LNSIM layout)")
        path = source / "split_halves.npz"
    halves = load_split_halves(path)
    rel = {**split_half_reliability(halves, method=method), "source": str(path)}
    if not math.isfinite(rel["ceiling"]):
        raise DataError(f"{path}: no split-half correlation could be computed ({rel['n_images']} images, "
                        f"{rel['n_splits']} splits): each split needs at least 3 images with finite, non-constant "
                        "scores in both halves")
    if fmt == "json":
        clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in rel.items()}
        click.echo(json.dumps(clean, indent=2, allow_nan=False))
        return
    click.echo(f"split-half consistency of {path}")
    click.echo(f"  images: {rel['n_images']}, random splits: {rel['n_splits']}")
    click.echo(f"  Spearman between halves: mean {rel['spearman_mean']:.4f} (sd {rel['spearman_sd']:.4f})")
    click.echo(f"  Pearson between halves:  mean {rel['pearson_mean']:.4f} (sd {rel['pearson_sd']:.4f})")
    click.echo(f"  noise ceiling (the mean split-half {method}, what memlens divides by): {rel['ceiling']:.4f}")
    click.echo(f"  reliability of the full-group score (Spearman-Brown of that mean): {rel['spearman_brown']:.4f}")
