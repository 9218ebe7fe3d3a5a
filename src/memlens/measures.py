"""Per-image scoring: reconstruction errors, latent codes and pretrained features of a trained autoencoder.

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
224 x 224 image (:data:`CPU_CHUNK_PIXELS`) inside each batch: their activations then stay in cache, about
10% faster per image than batch 16 with oneDNN. ``precision="bfloat16"`` runs the autoencoder
forward passes under bf16 autocast (the fast path on GPUs and on CPUs with AVX512-BF16/AMX, about 2x on
the CPU measured); metrics are then still computed in float32, on the bf16 reconstruction, and per-image
numbers move by about 1e-3 relative, so float32 stays the default. ``precision="int8"`` (CPU only) runs
int8 copies of the autoencoders (:mod:`memlens.quantize`), calibrated on 8 of the images: about 4x float32
for vgg16 on CPUs with AVX512-VNNI, per-image numbers within a few percent of float32 (median about 0.1-0.5 %).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._io import atomic_path, reserve_disk
from .errors import ConfigError, DataError
from .metrics import Metric, get_metric

__all__ = ["ScoreResult", "score_images", "score_run", "default_metrics", "resolve_device",
           "pretrained_features", "DEFAULT_METRICS", "FEATURE_SIZE"]

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("mse", "l1", "dssim", "ms-dssim", "perceptual")
#: side (pixels) at which pretrained features are computed (ImageNet resolution)
FEATURE_SIZE = 224
_LATENT_DTYPES = {"float32": np.float32, "float16": np.float16}
#: accepted ``precision`` values -> autocast dtype (None: no autocast; int8 runs quantized copies instead)
_PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                                              "int8": None}


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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    return dev


# --------------------------------------------------------------------------------------------------------
# image sources


def _model_input_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None) or {}
    size = config.get("input_size") if isinstance(config, dict) else None
    spec = getattr(model, "spec", None)
    return int(size or getattr(spec, "input_size", 0) or 0) or None


def _as_paths(source: Any) -> tuple[list[str], list[str]] | None:
    """(ids, paths) for a Dataset, a DataFrame with ``path`` or a sequence of paths; None otherwise."""
    table = getattr(source, "table", None)
    if isinstance(table, pd.DataFrame):
        source = table
    if isinstance(source, pd.DataFrame):
        if "path" not in source.columns:
            raise DataError("the image table has no 'path' column")
        paths = [str(p) for p in source["path"]]
        ids = [str(i) for i in source["image_id"]] if "image_id" in source.columns else paths
        return ids, paths
    if isinstance(source, (str, os.PathLike)):
        raise DataError(f"{source}: pass a loaded data set (memlens.data.load_dataset) or a list of image paths")
    if isinstance(source, Sequence) and source and all(isinstance(p, (str, os.PathLike)) for p in source):
        paths = [str(p) for p in source]
        return paths, paths
    return None


def _path_batches(ids: list[str], paths: list[str], size: int, feature_size: int | None, batch_size: int,
                  num_workers: int, cache: Any,
                  pin_memory: bool = False) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]]:
    from .data import make_loader

    main = make_loader(paths, size, batch_size=batch_size, num_workers=num_workers, cache=cache,
                       pin_memory=pin_memory)
    feat = None
    if feature_size is not None and feature_size != size:
        feat = make_loader(paths, feature_size, batch_size=batch_size, num_workers=num_workers, cache=cache,
                           pin_memory=pin_memory)
    feat_iter = iter(feat) if feat is not None else None
    for images, idx in main:
        fimages = None
        if feat_iter is not None:
            fimages, fidx = next(feat_iter)
            if not torch.equal(torch.as_tensor(idx), torch.as_tensor(fidx)):  # pragma: no cover - loader bug
                raise RuntimeError("image loaders went out of step")
        yield [ids[int(i)] for i in idx], images, fimages


def _tensor_batches(images: Any, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor, None]]:
    n = len(images)
    for start in range(0, n, batch_size):
        chunk = torch.as_tensor(np.asarray(images[start : start + batch_size]) if isinstance(images, np.ndarray)
                                else images[start : start + batch_size])
        yield [str(i) for i in range(start, start + len(chunk))], chunk, None


def _iter_batches(items: Iterable[Any], batch_size: int) -> Iterator[tuple[list[str], torch.Tensor, None]]:
    """Batches from an iterable of ``(image_id, image)`` pairs or of bare images (ids ``0, 1, ...``)."""
    ids: list[str] = []
    imgs: list[torch.Tensor] = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2:
            image_id, image = item
        else:
            image_id, image = str(i), item
        t = torch.as_tensor(image)
        if t.ndim != 3:
            raise ValueError(f"image {image_id}: expected shape (3, H, W), got {tuple(t.shape)}")
        ids.append(str(image_id))
        imgs.append(t)
        if len(imgs) == batch_size:
            yield ids, torch.stack(imgs), None
            ids, imgs = [], []
    if imgs:
        yield ids, torch.stack(imgs), None


def _source_length(source: Any) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None


# --------------------------------------------------------------------------------------------------------
# pretrained features


def pretrained_features(device: torch.device | str = "cpu") -> nn.Module:
    """Module mapping images in [0, 1] to pooled ImageNet EfficientNet-Lite0 head features (N, 1280) float32."""
    from .models.efficientnet import pooled_feature_extractor

    return pooled_feature_extractor().to(device).eval()


def _pool_features(out: Any) -> torch.Tensor:
    """Last map of a list (or a single tensor): (N, C, h, w) -> mean over positions; (N, D) kept."""
    if isinstance(out, (list, tuple)):
        out = out[-1]
    if out.ndim == 4:
        out = out.mean(dim=(2, 3))
    return out.flatten(1).float()


# --------------------------------------------------------------------------------------------------------
# streaming .npy writer


class _NpyRows:
    """Write an (N, D) ``.npy`` row block by row block into a memory map (atomic: tmp file then rename).

    N must be known up front for the memory map; for sources of unknown length rows go to a raw side file
    first and are copied into the memory map in blocks at the end (memory stays bounded either way).
    """

    def __init__(self, tmp: Path, n: int | None, dtype: Any, final: Path | None = None):
        self.tmp, self.n, self.dtype = tmp, n, np.dtype(dtype)
        self.final = final or tmp  # the name errors give (the file the temporary one becomes)
        self.mm: np.memmap | None = None
        self.raw: Any = None
        self.rows = 0
        self.width: int | None = None

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if self.width is None:
            self.width = int(block.shape[1])
            if self.n is not None:
                self.mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=(self.n, self.width))
                reserve_disk(self.tmp, self.final)  # a full disk: ENOSPC now, not SIGBUS while writing
            else:
                self.raw = open(self.tmp.with_suffix(".raw"), "wb")  # noqa: SIM115 - closed in finish()
        if self.mm is not None:
            if self.rows + len(block) > self.mm.shape[0]:
                raise DataError(f"the image source yielded more than the {self.n} images it announced")
            self.mm[self.rows : self.rows + len(block)] = block
        else:
            self.raw.write(block.tobytes())
        self.rows += len(block)

    def finish(self) -> None:
        if self.width is None:
            raise DataError("no images to score")
        if self.mm is not None:
            if self.rows != self.mm.shape[0]:
                raise DataError(f"the image source yielded {self.rows} images but announced {self.n}")
            self.mm.flush()
            del self.mm
            self.mm = None
            return
        self.raw.close()
        raw_path = self.tmp.with_suffix(".raw")
        try:
            src = np.memmap(raw_path, dtype=self.dtype, mode="r", shape=(self.rows, self.width))
            dst = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=(self.rows, self.width))
            reserve_disk(self.tmp, self.final)
            step = max(1, (64 << 20) // max(1, self.width * self.dtype.itemsize))
            for s in range(0, self.rows, step):
                dst[s : s + step] = src[s : s + step]
            dst.flush()
            del dst, src
        finally:
            raw_path.unlink(missing_ok=True)

    def abort(self) -> None:
        if self.raw is not None and not self.raw.closed:
            self.raw.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.with_suffix(".raw").unlink()


class _MemRows:
    """In-memory counterpart of :class:`_NpyRows` (used when no path is given)."""

    def __init__(self, dtype: Any):
        self.dtype = np.dtype(dtype)
        self.blocks: list[np.ndarray] = []

    def write(self, block: np.ndarray) -> None:
        self.blocks.append(np.array(block, dtype=self.dtype))

    def result(self) -> np.ndarray:
        if not self.blocks:
            raise DataError("no images to score")
        return np.concatenate(self.blocks, axis=0)


# --------------------------------------------------------------------------------------------------------
# scoring


def _find_layer(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        names = [n for n in modules if n]
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        raise ConfigError(f"layer {layer!r} not found in the autoencoder; layers: {shown}")
    return modules[layer]


def _is_channels_last(model: nn.Module) -> bool:
    """Whether the first 4-d parameter of ``model`` is stored channels-last (False when it has none)."""
    for p in model.parameters():
        if p.ndim == 4:
            return bool(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous())
    return False


def _cpu_has_bf16() -> bool:
    """Whether oneDNN reports native bf16 support on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


#: on the CPU the autoencoders run on chunks of about this many pixels (one 224 x 224 image for vgg16): with
#: oneDNN, a chunk whose activations stay in cache is faster per image than a large batch (docs/benchmarks.md)
CPU_CHUNK_PIXELS = 224 * 224


def _forward_chunk(x: torch.Tensor, dev: torch.device) -> int:
    """Images per autoencoder forward pass: the whole batch on a GPU, about CPU_CHUNK_PIXELS on the CPU."""
    if dev.type != "cpu" or x.ndim != 4:
        return max(1, len(x))
    return max(1, CPU_CHUNK_PIXELS // max(1, x.shape[-1] * x.shape[-2]))


def _int8_models(model: nn.Module, before_model: nn.Module | None, batches: Iterator, calibration: Any,
                 size: int | None, paths: list[str] | None,
                 tensor: Any) -> tuple[nn.Module, nn.Module | None, Iterator, dict[str, Any]]:
    """Int8 copies of the autoencoders, calibrated on ``calibration`` or by default on the scored images.

    The default: :func:`memlens.quantize.calibration_indices` (8 images spread over the collection) of
    ``paths`` (a path source) or of ``tensor`` (an image tensor source); for any other source, the stream's
    first 8 images.

    Returns ``(model, before_model, batches, info)``; ``batches`` still yields every image (the ones
    peeked at for calibration are put back in front). Models that are int8 copies already are used as they
    are (one copy can serve many calls).
    """
    import itertools

    from .quantize import INT8_CALIBRATION_IMAGES, Int8Autoencoder, calibration_indices, quantize_autoencoder

    todo = [m for m in (model, before_model) if m is not None and not isinstance(m, Int8Autoencoder)]
    def info(q: Any, how: str) -> dict[str, Any]:
        return {"int8_calibration_images": q.calibration_images, "int8_calibration": how, "int8_engine": q.engine,
                "int8_activation_bits": q.activation_bits,
                "int8_calibration_max_rel_mse": q.calibration_error.get("max_rel_mse", float("nan")),
                "int8_calibration_median_rel_mse": q.calibration_error.get("median_rel_mse", float("nan"))}

    if not todo:  # quantized already (a caller reusing one int8 copy across calls)
        if calibration is not None:
            raise ConfigError("calibration= has no effect on a model that is an int8 copy already")
        return model, before_model, batches, info(model, "given int8 model")
    expected = (size, size) if paths is not None and size else \
        tuple(tensor.shape[-2:]) if tensor is not None else None
    how = "given"
    if calibration is None and paths is not None:
        calibration = [paths[i] for i in calibration_indices(len(paths))]
        how = "spread over the collection"
    elif calibration is None and tensor is not None:
        calibration = tensor[calibration_indices(len(tensor))]
        how = "spread over the collection"
    if isinstance(calibration, np.ndarray) and calibration.dtype.kind in "USO":
        calibration = calibration.tolist()  # an array of paths
    if calibration is None:
        peeked: list[Any] = []
        images: list[torch.Tensor] = []
        n = 0
        for item in batches:
            peeked.append(item)
            images.append(item[1][: INT8_CALIBRATION_IMAGES - n])
            n += len(images[-1])
            if n >= INT8_CALIBRATION_IMAGES:
                break
        batches = itertools.chain(peeked, batches)
        if not images:
            raise DataError("no images to score")
        cal = torch.cat(images).float()
        how = "first images scored"
    elif isinstance(calibration, (torch.Tensor, np.ndarray)):
        cal = torch.as_tensor(calibration).float()
        how += " images" if how == "given" else ""
    elif isinstance(calibration, (str, os.PathLike)) or not isinstance(calibration, Sequence) or not calibration:
        raise ConfigError("int8 calibration must be a non-empty list of image paths, a list of image tensors or "
                          "an image tensor (N, 3, H, W)")
    elif all(isinstance(c, torch.Tensor) for c in calibration):
        try:
            cal = torch.cat([c if c.ndim == 4 else c.unsqueeze(0) for c in calibration]).float()
        except RuntimeError as e:
            raise ConfigError(f"int8 calibration tensors do not stack into one batch: {e}") from None
        how += " images"
    elif all(isinstance(c, (str, os.PathLike)) for c in calibration):
        from .data import image_batch

        if size is None:
            raise ConfigError("image_size is needed to decode the int8 calibration images")
        try:
            cal = image_batch(calibration, size)
        except OSError as e:
            raise DataError(f"int8 calibration image: {e}") from None
        how += " paths" if how == "given" else ""
    else:
        raise ConfigError("int8 calibration must be all image paths or all image tensors, not a mix")
    if cal.ndim != 4 or len(cal) == 0 or cal.shape[1] != 3:
        raise ConfigError(f"int8 calibration images must be a non-empty (N, 3, H, W) batch, got {tuple(cal.shape)}")
    if expected is not None and tuple(cal.shape[-2:]) != expected:
        raise ConfigError(f"int8 calibration images are {tuple(cal.shape[-2:])} pixels but the scored images are "
                          f"{expected}: calibrate at the size you score")

    def q(m: nn.Module | None) -> nn.Module | None:
        return m if m is None or isinstance(m, Int8Autoencoder) else quantize_autoencoder(m, cal)

    qmodel, qbefore = q(model), q(before_model)
    return qmodel, qbefore, batches, info(qmodel, how)


def _encode_decode(model: nn.Module, x: torch.Tensor, chunk: int,
                   captured: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(encode(x), decode(encode(x)), hooked)`` computed ``chunk`` images at a time.

    ``captured``: the list a forward hook appends to; ``hooked`` is the first output it received in each
    chunk, concatenated (None without a hook).
    """
    zs, xs, hs = [], [], []
    for c in (x.split(chunk) if chunk < len(x) else (x,)):
        if captured is not None:
            captured.clear()
        zc = model.encode(c)
        zs.append(zc)
        xs.append(model.decode(zc))
        if captured:
            hs.append(captured[0])
    hooked = (hs[0] if len(hs) == 1 else torch.cat(hs)) if hs else None
    if len(zs) == 1:
        return zs[0], xs[0], hooked
    return torch.cat(zs), torch.cat(xs), hooked


def _latent_block(z: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "avg" and z.ndim >= 3:
        z = z.flatten(2).mean(2)
    return z.flatten(1)


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
        batches, on the CPU on chunks of about :data:`CPU_CHUNK_PIXELS` pixels (one image for vgg16 at
        224 px), which oneDNN runs faster per image than large batches.
    device : ``"auto"``, ``"cpu"``, ``"cuda"``...
    pool : ``"none"`` (latents flattened, C*h*w) or ``"avg"`` (mean over positions, C).
    latent_dtype : ``"float32"`` or ``"float16"`` for the stored latents.
    latents_path : ``.npy`` written through a memory map (atomically); None keeps the latents in memory.
    features : compute pretrained features (EfficientNet-Lite0 ImageNet, pooled, (N, 1280) float32).
    features_path : ``.npy`` for the features (memory-mapped, atomic); None keeps them in memory.
    feature_size : side in pixels at which features are computed (path sources are decoded again at this
        size; tensors are resized with antialiasing); None: the model's images.
    feature_model : module mapping images in [0, 1] to (N, D) or to a list of maps (the last one is
        average-pooled); default :func:`pretrained_features`.
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
    """
    if pool not in ("none", "avg"):
        raise ConfigError(f"pool must be 'none' or 'avg', got {pool!r}")
    if latent_dtype not in _LATENT_DTYPES:
        raise ConfigError(f"latent_dtype must be one of {', '.join(_LATENT_DTYPES)}, got {latent_dtype!r}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = int(batch_size)
    if precision not in _PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    amp_dtype = _PRECISIONS[precision]
    int8 = precision == "int8"
    from .quantize import Int8Autoencoder, check_int8_settings

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
    size = image_size or _model_input_size(model)
    as_paths = _as_paths(dataset_or_paths)
    resize_features = False
    if as_paths is not None:
        if size is None:
            raise ConfigError("image_size is needed: the model declares no input size")
        ids_all, paths = as_paths
        n_total: int | None = len(paths)
        fsize = feature_size if features else None
        batches: Iterator = _path_batches(ids_all, paths, size, fsize, batch_size, num_workers, cache,
                                          pin_memory=dev.type == "cuda")
    elif isinstance(dataset_or_paths, (torch.Tensor, np.ndarray)):
        if dataset_or_paths.ndim != 4:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(dataset_or_paths.shape)}")
        n_total = len(dataset_or_paths)
        batches = _tensor_batches(dataset_or_paths, batch_size)
        resize_features = True
    else:
        n_total = _source_length(dataset_or_paths)
        batches = _iter_batches(dataset_or_paths, batch_size)
        resize_features = True
    if n_total == 0:
        raise DataError("no images to score")
    if int8:
        check_int8_settings(device=dev)
    qinfo: dict[str, Any] = {}
    run_model, run_before = model, before_model
    if int8:  # before the models are touched: a backbone int8 cannot trace leaves them as they were
        tensor = dataset_or_paths if isinstance(dataset_or_paths, (torch.Tensor, np.ndarray)) else None
        run_model, run_before, batches, qinfo = _int8_models(model, before_model, batches, calibration, size,
                                                             as_paths[1] if as_paths is not None else None, tensor)

    # models: eval mode on the device, restored afterwards
    models = [run_model] + ([run_before] if run_before is not None else [])  # int8: the quantized copies
    saved = [(m, m.training, next(iter(m.parameters()), torch.empty(0)).device) for m in models]
    fmodel = None
    if features:
        fmodel = feature_model if feature_model is not None else pretrained_features(dev)
        saved.append((fmodel, fmodel.training, next(iter(fmodel.parameters()), torch.empty(0)).device))
    for m, _, _ in saved:
        m.to(dev).eval()
    # autoencoders in channels-last (restored afterwards unless they were channels-last already)
    to_contiguous = [m for m in models if channels_last and not int8 and not _is_channels_last(m)]
    if channels_last and not int8:  # int8 kernels choose their own layout
        for m in models:
            m.to(memory_format=torch.channels_last)
    if amp_dtype is not None and dev.type == "cpu" and not _cpu_has_bf16():
        log.warning("precision=%s on a CPU without native bf16 instructions (AVX512-BF16/AMX) is slow; "
                    "float32 is faster there", precision)

    def forward_ctx() -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=amp_dtype)

    captured: list[torch.Tensor] = []
    hook = None
    if layer:
        hook = _find_layer(model, layer).register_forward_hook(lambda _m, _i, out: captured.append(out))

    rows_ids: list[str] = []
    cols: dict[str, list[np.ndarray]] = {m.column: [] for m in metric_objs}
    if before_model is not None:
        cols.update({f"{m.column}_before": [] for m in metric_objs})
    latent_shape: tuple[int, ...] = ()
    np_dtype = _LATENT_DTYPES[latent_dtype]
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        lat_tmp = stack.enter_context(atomic_path(latents_path)) if latents_path is not None else None
        feat_tmp = stack.enter_context(atomic_path(features_path)) if (features and features_path is not None) else None
        lat_w: Any = _NpyRows(lat_tmp, n_total, np_dtype, latents_path) if lat_tmp is not None else _MemRows(np_dtype)
        feat_w: Any = None
        if features:
            feat_w = (_NpyRows(feat_tmp, n_total, np.float32, features_path) if feat_tmp is not None
                      else _MemRows(np.float32))
        try:
            with torch.inference_mode():
                for ids, images, fimages in batches:
                    x = images.to(dev, non_blocking=True)
                    if not x.is_floating_point():
                        raise ValueError(f"images must be float in [0, 1], got dtype {x.dtype}")
                    x = x.float()
                    if channels_last and x.ndim == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    chunk = _forward_chunk(x, dev)
                    with forward_ctx():
                        z, x_hat, hooked = _encode_decode(run_model, x, chunk, captured if layer else None)
                    x_hat = x_hat.float()
                    if layer and hooked is None:
                        raise ConfigError(f"layer {layer!r} was not called by the autoencoder's encode/decode")
                    lat = hooked if layer else z
                    if not latent_shape:
                        latent_shape = tuple(lat.shape[1:])
                    lat_w.write(_latent_block(lat, pool).float().cpu().numpy())
                    for m in metric_objs:
                        cols[m.column].append(m(x, x_hat).float().cpu().numpy())
                    if before_model is not None:
                        with forward_ctx():
                            xb = torch.cat([run_before(c) for c in x.split(chunk)]) if chunk < len(x) \
                                else run_before(x)
                        xb = xb.float()
                        for m in metric_objs:
                            cols[f"{m.column}_before"].append(m(x, xb).float().cpu().numpy())
                    if fmodel is not None:
                        fx = fimages.to(dev).float() if fimages is not None else x
                        if fimages is None and resize_features and feature_size and x.shape[-1] != feature_size:
                            fx = torch.nn.functional.interpolate(x, size=(feature_size, feature_size),
                                                                 mode="bilinear", align_corners=False,
                                                                 antialias=True).clamp(0, 1)
                        if channels_last and fx.ndim == 4:
                            fx = fx.contiguous(memory_format=torch.channels_last)
                        feat_w.write(_pool_features(fmodel(fx)).cpu().numpy())
                    rows_ids.extend(ids)
                    if progress is not None:
                        progress(len(ids))
            if isinstance(lat_w, _NpyRows):
                lat_w.finish()
            if isinstance(feat_w, _NpyRows):
                feat_w.finish()
        except BaseException:
            for w in (lat_w, feat_w):
                if isinstance(w, _NpyRows):
                    w.abort()
            raise
        finally:
            if hook is not None:
                hook.remove()
            for m, training, d in saved:
                m.to(d).train(training)
            for m in to_contiguous:
                m.to(memory_format=torch.contiguous_format)
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


# --------------------------------------------------------------------------------------------------------
# a whole run directory

#: ``per_image.csv`` columns that lead the table, in this order (when present)
_LEADING = ("image_id", "score", "category", "subcategory", "split")
_REFERENCES = ("all", "category", "split")


def _dataset_from_run(run: Path) -> Any:
    """Reload the data described by ``RUN/dataset.json`` (``source``, ``layout``, ``options``)."""
    from .data import load_run_dataset

    return load_run_dataset(run)


def _exposure_losses(run: Path) -> pd.DataFrame | None:
    """``exposure.csv`` by image id: ``loss`` (the loss at the single exposure) and ``order`` (its position in
    the exposure stream, when recorded); None without the file."""
    path = run / "exposure.csv"
    if not path.is_file():
        return None
    exp = pd.read_csv(path, dtype={"image_id": str})
    if "image_id" not in exp.columns or "loss" not in exp.columns:
        raise DataError(f"{path}: expected columns image_id, order, loss (found {', '.join(exp.columns)})")
    # an image exposed more than once keeps its first exposure
    if "order" in exp.columns:
        exp = exp.sort_values("order", kind="stable")
    exp = exp.drop_duplicates("image_id", keep="first").set_index("image_id")
    return exp[[c for c in ("loss", "order") if c in exp.columns]].astype(float)


def _reference_args(table: pd.DataFrame, reference: str) -> dict[str, Any]:
    if reference == "all":
        return {}
    if reference == "category":
        if "category" not in table.columns:
            raise ConfigError("distinctiveness reference 'category' needs a category column; this data has none")
        cat = table["category"]
        missing = (cat.isna() | (cat.astype(str).str.strip() == "")).to_numpy()
        labels = cat.astype(str).to_numpy(dtype=object)
        if missing.any():
            # an image without a category has no category to be compared within: a group of its own (NaN),
            # not one shared "nan" category of all unlabelled images
            log.warning("%d image(s) have no category: their within-category distinctiveness is NaN",
                        int(missing.sum()))
            for j in np.flatnonzero(missing):
                labels[j] = ("<no category>", int(j))
        return {"groups": labels}
    if reference == "split":
        if "split" not in table.columns:
            raise ConfigError("distinctiveness reference 'split' needs a split column; this data has none")
        mask = table["split"].astype(str).str.lower().str.startswith("train").to_numpy()
        if not mask.any():
            raise ConfigError("distinctiveness reference 'split': no image has a split starting with 'train'")
        return {"reference": mask}
    raise ConfigError(f"distinctiveness reference must be one of {', '.join(_REFERENCES)}, got {reference!r}")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic, byte-reproducible ``.npz`` (``np.savez`` stamps the current time into the zip entries)."""
    import io
    import zipfile

    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def _record_settings(run: Path, settings: dict[str, Any]) -> None:
    """Record how the run was scored as the ``score`` section of ``RUN/config.json`` (other sections kept)."""
    import json

    from ._io import atomic_write_json

    path = run / "config.json"
    config: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            log.warning("%s is not valid JSON; rewriting it with the score settings only", path)
    config["score"] = settings
    atomic_write_json(path, config)


def default_metrics() -> list[str]:
    """The metrics ``memlens score`` uses by default: :data:`DEFAULT_METRICS`, plus ``lpips`` when installed."""
    return list(DEFAULT_METRICS) + (["lpips"] if get_metric("lpips").available else [])


def score_run(
    run: str | os.PathLike,
    data: Any = None,
    *,
    metrics: Sequence[str] | None = None,
    batch_size: int = 32,
    layer: str | None = None,
    pool: str = "none",
    latent_dtype: str = "float32",
    distinct_k: int = 1,
    distinct_metric: str = "euclidean",
    distinct_reference: str = "all",
    num_workers: int = 0,
    device: str = "auto",
    cache: Any = None,
    feature_size: int | None = FEATURE_SIZE,
    progress: Callable[[int], Any] | None = None,
    precision: str = "float32",
) -> pd.DataFrame:
    """Score a run: write ``per_image.csv``, ``latents.npy`` + ``latent_ids.txt``, ``features.npy``.

    Parameters
    ----------
    run : the run directory; it must hold ``autoencoder.pt`` (``autoencoder_before.pt`` adds
        ``recon_<m>_before`` columns, ``exposure.csv`` the ``recon_exposure`` column).
    data : a folder/table for :func:`memlens.data.load_dataset`, a loaded ``Dataset``, or None to reload the
        data described by ``RUN/dataset.json``.
    metrics : metric names (default :func:`default_metrics`; an optional metric that cannot be built, e.g.
        lpips without its weights offline, is then skipped with a warning).
    distinct_k, distinct_metric, distinct_reference : neighbours for ``distinctiveness`` (latents) and
        ``distinctiveness_features`` (pretrained features); reference ``all``, ``category`` (within each
        category) or ``split`` (neighbours among the rows whose ``split`` starts with ``train``).
    precision : ``"float32"``, ``"bfloat16"`` or ``"int8"`` (CPU) for the autoencoders (see :func:`score_images`).
    Other parameters as in :func:`score_images`.

    Returns
    -------
    DataFrame
        The per-image table as written to ``RUN/per_image.csv``.
    """
    from .engines import _score_local

    # one implementation of "score the images, then write the run files": the engines' local path with the
    # exact neighbour search (memlens.neighbors.distinctiveness)
    return _score_local(run, data, index="exact", index_options=None, metrics=metrics, batch_size=batch_size,
                        layer=layer, pool=pool, latent_dtype=latent_dtype, distinct_k=distinct_k,
                        distinct_metric=distinct_metric, distinct_reference=distinct_reference,
                        feature_size=feature_size, progress=progress, precision=precision,
                        num_workers=num_workers, device=device, cache=cache)
