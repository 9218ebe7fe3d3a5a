"""``memlens predict``: memorability of new images with a fitted run (encoder + predictor head), or with a
pretrained model (``--model resmem``) for users without labelled images. A thin layer over
:func:`memlens.inference.predict_images` (what :func:`memlens.predict_images` returns as a DataFrame)."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import FiniteFloatRange, check_device, progress_updates


@click.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--run", "run", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory holding predictor.pt (memlens fit-predictor).")
@click.option("--model", "model", default=None, metavar="NAME",
              help="Instead of --run: a pretrained memorability model, resmem or vitmem (no labelled images "
                   "needed; see docs/baselines.md for its weights and licence).")
@click.option("--weights", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="--model: its weights file [default: MEMLENS_<NAME>_WEIGHTS, the installed resmem package, "
                   "torch hub's checkpoints folder].")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV to write (columns image, predicted_score) [default: print to stdout].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass (scores do not depend on it).")
@click.option("--device", default="auto", show_default=True, callback=check_device, help="auto, cpu, cuda or cuda:N.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: a Ray actor pool (pip install 'memlens[ray]').")
@click.option("--address", default=None, help="ray: the cluster address [default: a local Ray on 127.0.0.1].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="ray: number of actors.")
@click.option("--gpus-per-worker", type=FiniteFloatRange(min=0), default=None, help="ray: GPUs per actor.")
@click.option("--distinctiveness", is_flag=True, default=False,
              help="--run: add a distinctiveness column: each image's latent (the run's autoencoder, as memlens "
                   "score made them) against the run's latents, through the index saved by memlens score "
                   "--index ivf|hnsw (else an exact search).")
def predict(images: tuple[str, ...], run: Path | None, model: str | None, weights: Path | None, out: Path | None,
            batch_size: int, device: str, engine: str, address: str | None, workers: int | None,
            gpus_per_worker: float | None, distinctiveness: bool) -> int:
    """Predict the memorability of IMAGES (files and/or folders, searched recursively) with the predictor of
    --run RUN, or with a pretrained model (--model resmem).

    Files that cannot be read are listed on stderr and skipped; the rest are scored. Exit 1 when no image
    could be scored.
    """
    from .._io import atomic_path, check_output_path
    from ..inference import predict_images

    if (run is None) == (model is None):
        raise click.UsageError("give --run RUN (a fitted run) or --model NAME (a pretrained model: resmem, vitmem)")
    if model is not None and engine != "local":
        raise click.UsageError("--model runs in this process (--engine local)")
    if weights is not None and model is None:
        raise click.UsageError("--weights goes with --model NAME")
    if distinctiveness and run is None:
        raise click.UsageError("--distinctiveness needs --run RUN (its autoencoder and latents)")
    if model is not None:
        from ..baselines import baseline_info
        from ..errors import ConfigError

        try:
            baseline_info(model)  # an unknown name: a usage error, before anything is read
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from None
    if out is not None:
        check_output_path(out)  # before minutes of work, not after
    with progress_updates("predicting") as update:
        if engine == "ray":
            from ..inference_ray import predict_images_ray

            result = predict_images_ray(images, run, address=address, workers=workers,
                                        gpus_per_worker=gpus_per_worker, batch_size=batch_size, device=device,
                                        progress=update)
        else:
            result = predict_images(images, run, model=model, weights=weights, batch_size=batch_size, device=device,
                                    progress=update)
    for p in result.problems:
        click.echo(f"skipped: {p}", err=True)
    if not len(result.table):
        click.echo("no image could be scored" + (f"; {out} not written" if out is not None else ""), err=True)
        return 1
    if distinctiveness:
        from ..index_store import add_distinctiveness

        with progress_updates("distinctiveness") as update:
            how = add_distinctiveness(result.table, images, run, batch_size=batch_size, device=device,
                                      progress=update)
        click.echo(f"distinctiveness: {how}", err=True)
    if out is not None:
        with atomic_path(out) as tmp:
            result.table.to_csv(tmp, index=False, float_format="%.6f")
        click.echo(f"wrote {len(result.table)} predictions to {out}"
                   + (f" ({len(result.problems)} skipped)" if result.problems else ""), err=True)
    else:
        click.echo(result.table.to_csv(index=False, float_format="%.6f"), nl=False)
    return 0
