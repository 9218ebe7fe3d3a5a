"""Execute scoring in this process: stream a source through :class:`~memlens.scoring.batch.BatchScorer`.

:func:`score_images` streams images through the model once, in batches, and produces

* one row per image with ``image_id`` and ``recon_<metric>`` (and ``recon_<metric>_before`` for the weights
  before exposure), every value a distance (higher = worse reconstruction);
* the latent matrix (N, D): the bottleneck ``encode(x)`` (or the output of ``layer``), flattened or
  average-pooled over positions, written row block by row block into a memory-mapped ``.npy``;
* pretrained features (N, 1280) float32: EfficientNet-Lite0 (ImageNet weights) pooled over positions, for
  ``distinctiveness_features``.

Memory: images are never held beyond one batch; the latents and features go to memory-mapped files when
paths are given. What grows with N is only the per-image table (a few floats per image) and the id list, so
scoring 60,000 images needs the same working memory as 1,000 apart from the latent file.

An image's numbers do not depend on batch size or on the other images of its batch: models run in eval mode
(batch norm uses running statistics) under ``torch.inference_mode`` and every metric is computed per image.

Speed: the autoencoders and the image batches use the channels-last memory format (oneDNN and cuDNN
convolutions avoid a layout reorder per layer: on a CPU about 20% less time per image for vgg16 at batch
8-16, and 30-45% less for the perceptual, SSIM and feature-extractor passes; docs/benchmarks.md); results
equal the contiguous-format ones up to float rounding. On the CPU the autoencoders run on chunks of about one
224 x 224 image (:data:`~memlens.scoring.batch.CPU_CHUNK_PIXELS`) inside each batch: their activations then
stay in cache, about 10% faster per image than batch 16 with oneDNN. ``precision="bfloat16"`` runs the
autoencoder forward passes under bf16 autocast (the fast path on GPUs and on CPUs with AVX512-BF16/AMX, about
2x on the CPU measured); metrics are then still computed in float32, on the bf16 reconstruction, and per-image
numbers move by about 1e-3 relative, so float32 stays the default. ``precision="int8"`` (CPU only) runs
int8 copies of the autoencoders (:mod:`memlens.quantize`), calibrated on 8 of the images: about 4x float32
for vgg16 on CPUs with AVX512-VNNI, per-image numbers within a few percent of float32 (median about 0.1-0.5 %).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._io import atomic_path
from ..errors import ConfigError, DataError
from ..metrics import Metric, get_metric
from .arrays import MemRows, NpyRows
from .batch import (
    FEATURE_SIZE,
    LATENT_DTYPES,
    BatchScorer,
    check_batch_settings,
    is_channels_last,
    pretrained_features,
    resolve_device,
)
from .plan import DEFAULT_METRICS
from .precision import PRECISIONS, cpu_has_bf16, int8_models
from .sources import (
    all_files,
    as_paths,
    iter_batches,
    located_calibration,
    model_input_size,
    path_batches,
    source_length,
    tensor_batches,
)

__all__ = ["ScoreResult", "score_images", "scoring_session"]

log = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    """What :func:`score_images` produced.

    Attributes
    ----------
    table : DataFrame with ``image_id`` and ``recon_<m>`` (+ ``recon_<m>_before``) columns, input order.
    latents : (N, D) array (a read-only memory map when written to ``latents_path``).
    latents_path : where the latents were written, or None.
    latent_shape : shape of one image's latent before flattening/pooling, e.g. (C, h, w).
    features : (N, F) float32 pretrained features, or None.
    features_path : where the features were written, or None.
    info : device, timings (``seconds``, ``images_per_s``), metric names, pool, latent dtype.
    """

    table: pd.DataFrame
    latents: np.ndarray
    latents_path: Path | None
    latent_shape: tuple[int, ...]
    features: np.ndarray | None = None
    features_path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def image_ids(self) -> list[str]:
        return self.table["image_id"].tolist()


@contextlib.contextmanager
def scoring_session(model: nn.Module, metrics: Sequence[Metric], *, device: torch.device,
                    before_model: nn.Module | None = None, feature_model: nn.Module | None = None,
                    pool: str = "none", layer: str | None = None, layer_model: nn.Module | None = None,
                    amp_dtype: torch.dtype | None = None, channels_last: bool = True,
                    feature_size: int | None = FEATURE_SIZE, resize_features: bool = False,
                    int8: bool = False) -> Iterator[BatchScorer]:
    """The :class:`BatchScorer` of :func:`score_images`, its models in eval mode on ``device`` (autoencoders
    channels-last when ``channels_last``, unless they are ``int8`` copies, whose kernels choose their own
    layout) for the duration of the ``with`` block, restored afterwards.

    Engines that feed decoded batches themselves (the Ray engine's model actors) score through this, so a
    per-image number is computed the same way everywhere.
    """
    models = [model] + ([before_model] if before_model is not None else [])
    saved = [(m, m.training, next(iter(m.parameters()), torch.empty(0)).device)
             for m in models + ([feature_model] if feature_model is not None else [])]
    # autoencoders in channels-last (restored afterwards unless they were channels-last already)
    convert = channels_last and not int8
    to_contiguous = [m for m in models if convert and not is_channels_last(m)]
    try:
        for m, _, _ in saved:
            m.to(device).eval()
        if convert:
            for m in models:
                m.to(memory_format=torch.channels_last)
        yield BatchScorer(model, list(metrics), device=device, before_model=before_model,
                          feature_model=feature_model, pool=pool, layer=layer, layer_model=layer_model or model,
                          amp_dtype=amp_dtype, channels_last=channels_last, feature_size=feature_size,
                          resize_features=resize_features)
    finally:
        for m, training, d in saved:
            m.to(d).train(training)
        for m in to_contiguous:
            m.to(memory_format=torch.contiguous_format)


def score_images(
    model: nn.Module,
    dataset_or_paths: Any,
    *,
    metrics: Sequence[str | Metric] = DEFAULT_METRICS,
    before_model: nn.Module | None = None,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    pool: str = "none",
    latent_dtype: str = "float32",
    latents_path: str | os.PathLike | None = None,
    features: bool = True,
    features_path: str | os.PathLike | None = None,
    feature_size: int | None = FEATURE_SIZE,
    feature_model: nn.Module | None = None,
    layer: str | None = None,
    image_size: int | None = None,
    num_workers: int = 0,
    cache: Any = None,
    progress: Callable[[int], Any] | None = None,
    precision: str = "float32",
    channels_last: bool = True,
    calibration: Any = None,
) -> ScoreResult:
    """Score every image once: reconstruction errors, latent code and pretrained features.

    Parameters
    ----------
    model : Autoencoder
        ``encode``/``decode`` in [0, 1] (any module with those methods). Put in eval mode for the call (its
        previous mode and device are restored afterwards).
    dataset_or_paths : Dataset, DataFrame, list of paths, tensor or iterable
        A :class:`memlens.data.Dataset` (its ``image_id``/``path`` columns), a DataFrame with ``path`` (and
        ``image_id``), a list of image paths (the id is the path), a float tensor/array (N, 3, H, W) in
        [0, 1] (ids ``0..N-1``), or any iterable of ``(image_id, image)`` pairs or of images (3, H, W),
        consumed lazily one batch at a time.
    metrics : names of registered metrics (``memlens.metrics.list_metrics()``); columns ``recon_<name>``.
    before_model : the weights before exposure; adds ``recon_<name>_before`` columns.
    batch_size : images per batch (results do not depend on it); on a GPU the autoencoders run on whole
        batches, on the CPU on chunks of about :data:`~memlens.scoring.batch.CPU_CHUNK_PIXELS` pixels (one
        image for vgg16 at 224 px), which oneDNN runs faster per image than large batches.
    device : ``"auto"``, ``"cpu"``, ``"cuda"``...
    pool : ``"none"`` (latents flattened, C*h*w) or ``"avg"`` (mean over positions, C).
    latent_dtype : ``"float32"`` or ``"float16"`` for the stored latents.
    latents_path : ``.npy`` written through a memory map (atomically); None keeps the latents in memory.
    features : compute pretrained features (EfficientNet-Lite0 ImageNet, pooled, (N, 1280) float32).
    features_path : ``.npy`` for the features (memory-mapped, atomic); None keeps them in memory.
    feature_size : side in pixels at which features are computed (path sources are decoded again at this
        size; tensors are resized with antialiasing); None: the model's images.
    feature_model : module mapping images in [0, 1] to (N, D) or to a list of maps (the last one is
        average-pooled); default :func:`~memlens.scoring.batch.pretrained_features`.
    layer : name of a module of ``model`` whose output replaces the bottleneck as the latent.
    image_size : side in pixels for path sources (default: the model's ``config['input_size']`` or
        ``spec.input_size``).
    num_workers, cache : passed to :func:`memlens.data.make_loader` for path sources.
    progress : called with the number of images after each batch (the CLI passes a progress bar's update).
    precision : ``"float32"`` (default), ``"bfloat16"`` (``"bf16"``): autocast dtype of the autoencoder
        forward passes, or ``"int8"`` (CPU only): the autoencoders run as int8 copies made by
        :func:`memlens.quantize.quantize_autoencoder` (about 2x bf16 and 4x float32 for vgg16 on a CPU with
        AVX512-VNNI; reconstruction errors within a few percent of float32). Metrics, latents and features
        are float32 either way.
    channels_last : run the autoencoders in the channels-last memory format (faster convolutions; the
        models' memory format is restored afterwards).
    calibration : int8 only: the images the activation ranges are observed on, a float tensor (N, 3, H, W)
        in [0, 1] or a list of image paths (decoded like the scored ones). Default:
        8 images spread over the collection (:func:`memlens.quantize.calibration_indices`; for a lazy iterable,
        its first 8). Engines that split a collection pass the collection's own choice, so every shard uses
        the same int8 model.

    Returns
    -------
    ScoreResult

    Examples
    --------
    >>> import torch, memlens
    >>> ae = memlens.create_autoencoder("small", input_size=32)
    >>> res = memlens.score_images(ae, torch.rand(3, 3, 32, 32), metrics=["mse", "dssim"], features=False,
    ...                            device="cpu")
    >>> list(res.table.columns), res.latents.shape
    (['image_id', 'recon_mse', 'recon_dssim'], (3, 512))
    """
    check_batch_settings(pool, latent_dtype, batch_size)
    batch_size = int(batch_size)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    amp_dtype = PRECISIONS[precision]
    int8 = precision == "int8"
    from ..quantize import Int8Autoencoder, check_int8_settings

    if not int8 and any(isinstance(m, Int8Autoencoder) for m in (model, before_model)):
        raise ConfigError(f"the model is an int8 copy (memlens.quantize); score it with precision='int8', not "
                          f"{precision!r}")
    if calibration is not None and not int8:
        raise ConfigError(f"calibration= is for precision int8 only (precision is {precision!r})")
    if int8:
        check_int8_settings(layer=layer)
    metric_objs = [get_metric(m) for m in metrics]
    names = [m.name for m in metric_objs]
    if len(set(names)) != len(names):
        raise ConfigError(f"metrics listed twice: {', '.join(names)}")
    dev = resolve_device("cpu" if int8 and device in (None, "auto") else device)  # int8 kernels: CPU

    # the image stream
    size = image_size or model_input_size(model)
    path_source = as_paths(dataset_or_paths)
    resize_features = False
    if path_source is not None:
        if size is None:
            raise ConfigError("image_size is needed: the model declares no input size")
        ids_all, paths = path_source
        n_total: int | None = len(paths)
        fsize = feature_size if features else None
        batches: Iterator = path_batches(ids_all, paths, size, fsize, batch_size, num_workers, cache,
                                         pin_memory=dev.type == "cuda")
    elif isinstance(dataset_or_paths, (torch.Tensor, np.ndarray)):
        if dataset_or_paths.ndim != 4:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(dataset_or_paths.shape)}")
        n_total = len(dataset_or_paths)
        batches = tensor_batches(dataset_or_paths, batch_size)
        resize_features = True
    else:
        n_total = source_length(dataset_or_paths)
        batches = iter_batches(dataset_or_paths, batch_size)
        resize_features = True
    if n_total == 0:
        raise DataError("no images to score")
    if int8:
        check_int8_settings(device=dev)
    qinfo: dict[str, Any] = {}
    run_model, run_before = model, before_model
    if int8:  # before the models are touched: a backbone int8 cannot trace leaves them as they were
        tensor = dataset_or_paths if isinstance(dataset_or_paths, (torch.Tensor, np.ndarray)) else None
        if calibration is None and path_source is not None and not all_files(path_source[1]):
            calibration = located_calibration(path_source[1], size)  # Parquet cells, URLs: decoded here
        run_model, run_before, batches, qinfo = int8_models(model, before_model, batches, calibration, size,
                                                            path_source[1] if path_source is not None else None,
                                                            tensor)

    if amp_dtype is not None and dev.type == "cpu" and not cpu_has_bf16():
        log.warning("precision=%s on a CPU without native bf16 instructions (AVX512-BF16/AMX) is slow; "
                    "float32 is faster there", precision)
    session = scoring_session(run_model, metric_objs, device=dev, before_model=run_before,
                              feature_model=(feature_model if feature_model is not None else pretrained_features(dev))
                              if features else None, pool=pool, layer=layer, layer_model=model,
                              amp_dtype=amp_dtype, channels_last=channels_last, feature_size=feature_size,
                              resize_features=resize_features, int8=int8)
    rows_ids: list[str] = []
    latent_shape: tuple[int, ...] = ()
    np_dtype = LATENT_DTYPES[latent_dtype]
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        scorer = stack.enter_context(session)
        cols: dict[str, list[np.ndarray]] = {c: [] for c in scorer.columns}
        lat_tmp = stack.enter_context(atomic_path(latents_path)) if latents_path is not None else None
        feat_tmp = stack.enter_context(atomic_path(features_path)) if (features and features_path is not None) else None
        lat_w: Any = NpyRows(lat_tmp, n_total, np_dtype, latents_path) if lat_tmp is not None else MemRows(np_dtype)
        feat_w: Any = None
        if features:
            feat_w = (NpyRows(feat_tmp, n_total, np.float32, features_path) if feat_tmp is not None
                      else MemRows(np.float32))
        try:
            with torch.inference_mode(), scorer.hooked():
                for ids, images, fimages in batches:
                    numbers = scorer(images, fimages)
                    if not latent_shape:
                        latent_shape = numbers.latent_shape
                    lat_w.write(numbers.latents)
                    for col, values in numbers.columns.items():
                        cols[col].append(values)
                    if feat_w is not None:
                        feat_w.write(numbers.features)
                    rows_ids.extend(ids)
                    if progress is not None:
                        progress(len(ids))
            if isinstance(lat_w, NpyRows):
                lat_w.finish()
            if isinstance(feat_w, NpyRows):
                feat_w.finish()
        except BaseException:
            for w in (lat_w, feat_w):
                if isinstance(w, NpyRows):
                    w.abort()
            raise
    seconds = time.perf_counter() - t0
    if not rows_ids:
        raise DataError("no images to score")

    if latents_path is not None:
        latents: np.ndarray = np.load(latents_path, mmap_mode="r")
    else:
        latents = lat_w.result()
    feats: np.ndarray | None = None
    if features:
        feats = np.load(features_path, mmap_mode="r") if features_path is not None else feat_w.result()
    table = pd.DataFrame({"image_id": rows_ids})
    for col, parts in cols.items():
        table[col] = np.concatenate(parts)
    info = {
        "device": str(dev),
        "n_images": len(rows_ids),
        "seconds": seconds,
        "images_per_s": len(rows_ids) / seconds if seconds > 0 else float("nan"),
        "metrics": names,
        "pool": pool,
        "latent_dtype": latent_dtype,
        "layer": layer or "bottleneck",
        "image_size": size,
        "feature_size": feature_size if features else None,
        "precision": "int8" if int8 else "bfloat16" if amp_dtype is not None else "float32",
        **qinfo,
        "channels_last": bool(channels_last) and not int8,
        "batch_size": batch_size,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
    }
    log.info("scored %d images in %.1f s (%.1f images/s) on %s", len(rows_ids), seconds, info["images_per_s"], dev)
    return ScoreResult(table, latents, Path(latents_path) if latents_path is not None else None, latent_shape,
                       feats, Path(features_path) if (features and features_path is not None) else None, info)
