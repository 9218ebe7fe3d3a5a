"""``memlens score``: per-image reconstruction errors, latent codes and distinctiveness of a trained run."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ._common import FiniteFloatRange, check_device, progress_updates


def _split_metrics(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter("give at least one metric name, e.g. mse,dssim")
    return names


@click.command("score")
@click.argument("data", required=False, type=click.Path(path_type=str))  # str: a URI keeps its "//"
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path),
              help="Run directory holding autoencoder.pt (outputs are written there).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass (the numbers do not depend on it).")
@click.option("--metrics", callback=_split_metrics, default=None,
              help="Comma-separated metrics [default: mse,l1,dssim,ms-dssim,perceptual (+lpips if installed)].")
@click.option("--layer", default=None, help="Module of the autoencoder whose output is the latent "
              "[default: the bottleneck].")
@click.option("--pool", type=click.Choice(["none", "avg"]), default="none", show_default=True,
              help="Latents flattened or averaged over positions.")
@click.option("--latent-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--distinct-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Neighbours averaged for distinctiveness.")
@click.option("--distinct-metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean",
              show_default=True)
@click.option("--distinct-reference", type=click.Choice(["all", "category", "split"]), default="all",
              show_default=True, help="Neighbours among all images, within the category, or among the "
              "training split (split starting with 'train').")
@click.option("--feature-size", type=click.IntRange(min=32), default=224, show_default=True,
              help="Side in pixels at which the pretrained features (distinctiveness_features) are computed.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Image-decoding worker processes; with --engine ray: model actors (0: one per GPU, else "
              "one per CPU).")
@click.option("--device", default="auto", show_default=True, callback=check_device, help="auto, cpu, cuda or cuda:N.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Score in this process, or on a Ray cluster (needs memlens[ray]).")
@click.option("--address", default=None, help="--engine ray: the Ray cluster (auto, HOST:6379, ray://HOST:10001) "
              "[default: a local Ray instance on 127.0.0.1].")
@click.option("--gpus-per-worker", type=FiniteFloatRange(min=0), default=None,
              help="--engine ray: GPUs per model actor [default: 1 when the cluster has GPUs, else 0].")
@click.option("--layout", type=click.Choice(["auto", "csv", "memcat", "lamem", "lnsim", "folder", "parquet"]),
              default="auto", show_default=True, help="Layout of DATA; parquet: a Parquet data set (folder, glob or "
              "URI such as s3://bucket/images/) whose rows hold the image bytes or paths.")
@click.option("--merge/--no-merge", default=None, help="--engine ray: merge the output parts into per_image.csv, "
              "latents.npy and features.npy [default: below 1,000,000 images]; --no-merge keeps RUN/per_image/, "
              "RUN/latents/, RUN/features/ as Parquet/.npy parts.")
@click.option("--cpus-per-decoder", type=FiniteFloatRange(min=0.01), default=1, show_default=True,
              help="--engine ray: CPUs reserved by each image-decoding task (decoders use the CPUs the model "
              "actors leave).")
@click.option("--index", "index", type=click.Choice(["exact", "flat", "ivf", "hnsw"]), default="exact",
              show_default=True, help="Neighbour search for distinctiveness: exact, or FAISS flat (exact), ivf or "
              "hnsw (approximate; recall written to RUN/index.json; needs memlens[faiss]).")
@click.option("--index-memory-mb", type=FiniteFloatRange(min=1), default=2048, show_default=True,
              help="Memory budget of the FAISS index (ivf/hnsw pick a compressed encoding to fit it).")
@click.option("--nlist", type=click.IntRange(min=1), default=None,
              help="--index ivf: k-means lists [default: sqrt(N)].")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="--index ivf: lists scanned per query [default: 32; docs/scale.md has the recall/time curve].")
@click.option("--pq-bytes", type=click.IntRange(min=1), default=None,
              help="--index ivf/hnsw: product-quantised codes of this many bytes per vector (the largest divisor "
                   "of the width not above it) [default: the best encoding that fits --index-memory-mb].")
@click.option("--hnsw-m", type=click.IntRange(min=2), default=None, help="--index hnsw: links per vector [default: 32].")
@click.option("--ef-search", type=click.IntRange(min=1), default=None,
              help="--index hnsw: search beam [default: max(64, 2 x candidates)].")
@click.option("--index-shards", type=click.IntRange(min=1), default=None,
              help="--index flat/ivf/hnsw: one index per shard of the rows, searched and merged [default: one].")
@click.option("--precision", type=click.Choice(["float32", "bfloat16", "int8"]), default="float32",
              show_default=True,
              help="Arithmetic of the autoencoder passes: bfloat16 is 2-2.5x faster on CPUs with AVX512-BF16/AMX "
                   "and on GPUs; int8 (CPU only; vgg16 and small) runs quantized copies calibrated on 8 of the "
                   "images, about 4x float32 on CPUs with AVX512-VNNI. The stored numbers stay float32; "
                   "docs/benchmarks.md shows how far they move.")
def score(data: str | None, run_dir: Path, batch_size: int, metrics: list[str] | None, layer: str | None,
          pool: str, latent_dtype: str, distinct_k: int, distinct_metric: str, distinct_reference: str,
          feature_size: int, workers: int, device: str, engine: str, address: str | None,
          gpus_per_worker: float | None, layout: str, merge: bool | None, cpus_per_decoder: float, index: str,
          index_memory_mb: float, nlist: int | None, nprobe: int | None,
          pq_bytes: int | None, hnsw_m: int | None, ef_search: int | None, index_shards: int | None,
          precision: str) -> None:
    """Score every image of DATA with the autoencoder of RUN.

    Writes RUN/per_image.csv (image_id, score, category, subcategory, split, recon_<metric>...,
    recon_<metric>_before..., recon_exposure, exposure_order, role, distinctiveness, distinctiveness_features,
    source columns; see docs/metrics.md), RUN/latents.npy with
    RUN/latent_ids.txt, RUN/features.npy and, when the data has them, RUN/split_halves.npz. Every recon_*
    column is a distance: higher = worse reconstruction. Without DATA the data recorded in RUN/dataset.json
    is used. --engine ray spreads shards of the images over Ray actors (same numbers); --index picks the
    neighbour search behind distinctiveness.
    """
    from ..errors import ConfigError
    from ..index_store import index_options
    from ..scoring import score_run

    try:  # before minutes of scoring
        index_opts = index_options(index, index_memory_mb, nlist=nlist, nprobe=nprobe, pq_bytes=pq_bytes,
                                   hnsw_m=hnsw_m, ef_search=ef_search, shards=index_shards)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    extra: dict = {}
    if engine != "local" or index != "exact":
        extra = {"engine": engine, "index": index}
        if index != "exact":
            extra["index_options"] = index_opts
        if engine == "ray":  # --workers counts model actors here; decoding is a stage of its own
            extra.update(workers=workers or None, address=address, gpus_per_worker=gpus_per_worker)
            workers = 0
    if engine == "ray":  # the Ray engine's own options (layout, merge, decoders)
        extra.update(layout=layout, merge=merge, cpus_per_decoder=cpus_per_decoder)
    elif merge is False:
        raise click.UsageError("--no-merge is for --engine ray (the local engine writes per_image.csv)")
    elif layout != "auto" and data is not None:
        from ..data import load_dataset

        data = load_dataset(data, layout)

    t0 = time.perf_counter()
    with progress_updates("scoring") as update:
        table = score_run(run_dir, data, metrics=metrics, batch_size=batch_size, layer=layer, pool=pool,
                       latent_dtype=latent_dtype, distinct_k=distinct_k, distinct_metric=distinct_metric,
                       distinct_reference=distinct_reference, device=device, feature_size=feature_size,
                       progress=update, precision=precision, **extra,
                       **({"num_workers": workers} if engine != "ray" else {}))
    info = table.attrs.get("info", {})
    recon = [c for c in table.columns if c.startswith("recon_")]
    click.echo(f"scored {info.get('n_images', len(table))} images on {info.get('device', device)} "
               f"({info.get('images_per_s', float('nan')):.1f} images/s, {time.perf_counter() - t0:.1f} s total)")
    click.echo(f"columns: {', '.join(recon + ['distinctiveness', 'distinctiveness_features'])}")
    if info.get("merge") is False:
        click.echo(f"wrote {info['outputs']['parts']} parts: {run_dir / 'per_image'}/part-*.parquet, "
                   f"{run_dir / 'latents'}/part-*.npy, {run_dir / 'features'}/part-*.npy (not merged: --merge "
                   "writes per_image.csv, which analyze/report read)")
    else:
        click.echo(f"wrote {run_dir / 'per_image.csv'}, {run_dir / 'latents.npy'} (+ latent_ids.txt), "
                   f"{run_dir / 'features.npy'}")
    if info.get("precision") == "int8" and "int8_calibration_max_rel_mse" in info:
        click.echo(f"int8: activation ranges from {info.get('int8_calibration_images')} images; on them the "
                   f"per-image MSE moved by at most {100 * info['int8_calibration_max_rel_mse']:.2g} % from float32")
    ctx = click.get_current_context(silent=True)
    in_pipeline = bool(ctx is not None and (ctx.find_root().obj or {}).get("pipeline"))
    stale = [n for n in ("correlations.json", "predictor.pt", "descriptors.csv", "report.html") if (run_dir / n).exists()]
    if stale and not in_pipeline:  # memlens run reruns them itself
        click.echo(f"note: {', '.join(stale)} in {run_dir} were made from the previous scores; rerun the stages after "
                   f"score (memlens analyze / fit-predictor / explain / report, or memlens run)", err=True)
    for col, rep in (info.get("index_reports") or {}).items():
        if rep.get("recall") is not None:
            per = rep.get("query_seconds_per_image")
            click.echo(f"{col}: {index} index ({rep['encoding']}), recall@{rep['recall_k']} = {rep['recall']:.4f} "
                       f"on {rep['recall_sample']} sampled queries"
                       + (f", {1000 * per:.3g} ms per query" if per is not None else "")
                       + (f", saved in {run_dir / rep['saved_to']}" if rep.get("saved_to") else "")
                       + f" (see {run_dir / 'index.json'})")
