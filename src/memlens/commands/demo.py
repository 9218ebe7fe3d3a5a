"""``memlens demo``: generate the embedded synthetic set and run the whole pipeline on it.

The demo's memorability scores are SIMULATED by virtual observers (see docs/demo-set.md), not human: the
demo shows what memlens does and checks the pipeline against a known generative truth.
"""

from __future__ import annotations

from pathlib import Path

import click

# Settings that finish in about two minutes on a 2-core CPU. Every key is an option of that stage's command.
DEMO_OPTIONS: dict[str, dict[str, object]] = {
    # one thread: a small model trains as fast on one, and the demo's numbers then match on any machine and load
    "train": {"backbone": "small", "pretrain_epochs": 6, "seed": 0, "threads": "1"},
    "score": {"batch_size": 32, "feature_size": 96},  # the demo images are 96 px: no upsampling to 224
    "analyze": {"n_boot": 1000, "seed": 0},
    # on the autoencoder's latent codes, as in the paper; the SVR is saved (rho 0.51 on images it never saw, by
    # 5-fold CV: no choice is made, so plain k-fold is honest; the paper's MLP 0.30, shown beside it)
    "predictor": {"cv": 5, "seed": 0, "features": "latents", "model": "svr"},
    "explain": {"top": 3, "bottom": 3, "steps": 64, "seed": 0},
}


@click.command("demo")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("memlens-demo"),
              show_default=True, help="Folder for the demo data (OUT/data) and run (OUT/run).")
@click.option("--n-images", type=click.IntRange(min=40), default=240, show_default=True,
              help="Images in the demo set.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the demo set and every stage.")
@click.option("--force", is_flag=True, help="Regenerate the data and rerun every stage.")
@click.pass_context
def demo(ctx: click.Context, out: Path, n_images: int, seed: int, force: bool) -> None:
    """Generate the synthetic demo set in OUT/data and run the whole pipeline into OUT/run."""
    import json

    from .._io import check_output_path
    from ..data import make_demo_set
    from ._pipeline import run_pipeline
    from .run import summarize

    check_output_path(out, directory=True)
    data = out / "data"
    marker = data / "memcat_image_data.csv"
    spec = {"n_images": n_images, "seed": seed}
    spec_file = out / "demo.json"
    same = spec_file.exists() and marker.exists() and json.loads(spec_file.read_text()) == spec
    if force or not same:
        click.echo(f"generating the demo set ({n_images} images, seed {seed}) in {data}")
        # replaces an earlier demo set only; a folder of anything else is refused, never deleted
        make_demo_set(data, n_images=n_images, seed=seed, overwrite=True)
        from .._io import atomic_write_json

        atomic_write_json(spec_file, spec)
        force = True
    else:
        click.echo(f"using the demo set in {data}")
    click.echo("note: the demo's memorability scores are SIMULATED (virtual observers), not human data")
    options = {stage: {**opts, **({"seed": seed} if "seed" in opts else {})} for stage, opts in DEMO_OPTIONS.items()}
    record = run_pipeline(data, out / "run", options, force=force, obj=ctx.find_root().obj)
    summarize(out / "run", record)
