"""``memlens explain RUN``: IG overlays, aggregate maps, sanity check and visual descriptors."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from ._common import FiniteFloatRange, check_device, echo, progress_bar, progress_enabled


@click.command("explain")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--images",
    "images",
    multiple=True,
    metavar="ID_OR_PATH",
    help="Also explain this image (an image_id of the run or an image file); repeatable.",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Overlays for the N most memorable images (human score).",
)
@click.option(
    "--bottom",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Overlays for the N least memorable images (human score).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Integrated Gradients path steps.",
)
@click.option(
    "--baseline",
    type=click.Choice(["black", "blur", "mean"]),
    default="black",
    show_default=True,
    help="IG baseline: black image, Gaussian-blurred image, or the image's mean colour.",
)
@click.option(
    "--smoothgrad",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="SmoothGrad noisy samples per image (0 = plain IG).",
)
@click.option(
    "--smoothgrad-sigma",
    type=FiniteFloatRange(min=0.0),
    default=0.1,
    show_default=True,
    help="SD of the SmoothGrad noise, in [0, 1] image units.",
)
@click.option(
    "--internal-batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="IG path points per forward/backward pass [default: 8 on a CPU, 32 on a GPU].",
)
@click.option(
    "--aggregate-max",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="At most N images per quartile in the aggregate maps: the explained ones plus a seeded sample "
    "(0 = all).",
)
@click.option(
    "--aggregate-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Integrated Gradients steps of the maps that only enter the aggregate maps [default: half of --steps; "
    "their average is more accurate than each map].",
)
@click.option(
    "--sanity-max",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="At most N images in the weight-randomisation sanity check (0 = all the --images, --top and --bottom "
    "images).",
)
@click.option(
    "--sanity-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Steps of the randomised model's maps in the sanity check [default: half of --steps; a rank "
    "correlation needs no exact maps].",
)
@click.option(
    "--n-boot",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the descriptor correlations.",
)
@click.option(
    "--delta-tolerance",
    type=FiniteFloatRange(min=0.0),
    default=0.05,
    show_default=True,
    help="With --no-error-check: flag maps whose relative convergence delta exceeds this.",
)
@click.option(
    "--error-tolerance",
    type=FiniteFloatRange(min=0.0),
    default=0.1,
    show_default=True,
    help="Flag maps whose estimated error (from a pass at half the steps, relative to the map) exceeds this.",
)
@click.option(
    "--error-check/--no-error-check",
    default=True,
    show_default=True,
    help="Estimate the error of each map shown as an overlay from its difference to the half-step Gauss map "
         "(free with --rule gausskronrod, a second pass with gausslegendre; maps only in the aggregates are not "
         "judged).",
)
@click.option(
    "--rule",
    type=click.Choice(["gausskronrod", "gausslegendre"]),
    default="gausskronrod",
    show_default=True,
    help="Integration rule of the maps shown one by one: gausskronrod uses 2 (steps // 2) + 1 path points and "
         "checks itself against its embedded Gauss rule; gausslegendre uses --steps points plus half as many for "
         "the check. Aggregate-only and randomised maps use Gauss-Legendre.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed (aggregate sample, SmoothGrad, randomised head, bootstrap).",
)
@click.option(
    "--model-for",
    type=click.Choice(["oof", "final"]),
    default="oof",
    show_default=True,
    help="Which model explains each image of the run: oof = the cross-validation fold model that did not see it "
    "(fit-predictor's configuration refitted on that fold's training images, for the folds of explained images "
    "only); final = predictor.pt, fitted on every image (its maps and predictions are in-sample).",
)
@click.option("--device", default="auto", show_default=True, callback=check_device, help="auto, cpu, cuda or cuda:N.")
@click.pass_context
def explain(
    ctx: click.Context,
    run: Path,
    images: tuple[str, ...],
    top: int,
    bottom: int,
    steps: int,
    baseline: str,
    smoothgrad: int,
    smoothgrad_sigma: float,
    internal_batch_size: int | None,
    aggregate_max: int,
    aggregate_steps: int | None,
    sanity_max: int,
    sanity_steps: int | None,
    n_boot: int,
    delta_tolerance: float,
    error_tolerance: float,
    error_check: bool,
    rule: str,
    seed: int,
    model_for: str,
    device: str,
) -> None:
    """Explain the predictor of RUN: Integrated Gradients maps and visual descriptors.

    Writes RUN/attributions/ (overlay PNGs, aggregate maps of the top vs bottom quartile, attributions.npz,
    sanity.json with the weight-randomisation check, explain.json), RUN/descriptors.csv and
    RUN/descriptor_correlations.csv. By default each image of the run is explained with the cross-validation
    fold model that was not fitted on it (--model-for oof); explained_with in the outputs says which model.
    """
    from memlens.explain import explain_run

    with contextlib.ExitStack() as stack:
        factory = None
        if progress_enabled(ctx):

            def factory(stage: str, total: int):
                bar = stack.enter_context(progress_bar(stage, total, unit="step"))
                return bar.update

        summary = explain_run(
            run,
            images=images,
            top=top,
            bottom=bottom,
            n_steps=steps,
            rule=rule,
            baseline=baseline,
            smoothgrad=smoothgrad,
            smoothgrad_sigma=smoothgrad_sigma,
            internal_batch_size=internal_batch_size,
            seed=seed,
            aggregate_max=aggregate_max,
            aggregate_steps=aggregate_steps,
            sanity_max=sanity_max,
            sanity_steps=sanity_steps,
            n_boot=n_boot,
            delta_tolerance=delta_tolerance,
            error_tolerance=error_tolerance,
            error_check=error_check,
            device=device,
            model_for=model_for,
            progress=factory,
        )
    models = summary.get("models") or {}
    fits = models.get("fits") or {}
    if fits:
        chk = models.get("check") or {}
        agree = (f"; they reproduce predictor_oof.csv for {chk['n_images']} images (max difference "
                 f"{chk['max_abs_diff']:.2g})" if chk.get("passed") else
                 f"; WARNING: they differ from predictor_oof.csv by up to {chk['max_abs_diff']:.2g}"
                 if chk.get("passed") is False else "")
        n_stored = sum(1 for f in fits.values() if isinstance(f, dict) and f.get("stored"))
        how = (f"{len(fits) - n_stored} refitted" + (f" + {n_stored} stored by fit-predictor" if n_stored else ""))
        echo(f"explained with: {len(fits)} fold model(s) ({how}: {', '.join(fits)}), each not fitted on the "
             f"images it explains{agree}")
        if summary.get("chosen_from", "").startswith("the top"):
            echo(f"  {summary['chosen_from']}")
    n_in = models.get("n_in_sample") or 0
    if n_in:
        echo(f"explained with: the final model for {n_in} image(s) it was fitted on (in-sample)")
    ig = summary["integrated_gradients"]
    n_maps = ig["n_images"]
    checked = ig.get("flag_criterion") == "map_error"
    accuracy = (f"estimated map error median {100 * ig['median_map_error']:.1f}%, max "
                f"{100 * ig['max_map_error']:.1f}%; " if checked and ig.get("max_map_error") is not None else "")
    n_agg = ig.get("n_aggregate_only") or 0
    steps_note = (f"{n_maps - n_agg} at {ig['n_steps']} steps, {n_agg} only in the aggregates at "
                  f"{ig['aggregate_steps']}" if n_agg and n_agg < n_maps else
                  f"{ig['aggregate_steps'] if n_agg else ig['n_steps']} steps")
    echo(
        f"integrated gradients: {n_maps} maps ({ig['baseline']} baseline, {steps_note}), {accuracy}"
        f"{ig['n_flagged']} flagged as " + ("not accurate yet" if checked else "not converged")
    )
    if ig["n_flagged"]:
        echo(
            f"  {'not accurate yet' if checked else 'not converged'} (rerun with more --steps): "
            f"{', '.join(summary['flagged_ids'][:10])}" + (" ..." if len(summary["flagged_ids"]) > 10 else "")
        )
    sanity = summary["sanity"]
    if sanity.get("mean_spearman") is not None:
        verdict = (
            "below 0.5: the maps depend on the learned weights"
            if sanity.get("passed")
            else "NOT below 0.5: much of the maps' structure survives randomising the weights, so it comes "
            "from the image or the encoder rather than what the predictor learned"
        )
        echo(
            f"sanity check: mean Spearman(trained, randomised {sanity.get('randomized_module') or 'model'}) "
            f"= {sanity['mean_spearman']:.3f} over {sanity['n_images']} images ({verdict})"
        )
    echo(
        f"descriptors: {summary['n_images']} images -> {run / 'descriptors.csv'}, correlations -> "
        f"{run / 'descriptor_correlations.csv'}"
    )
    echo(f"maps and figures: {run / 'attributions'} ({summary['timings_s']['total']:.1f} s)")
