"""Int8 post-training quantization of an autoencoder for fast CPU scoring.

``precision="int8"`` in :func:`memlens.measures.score_images` (``memlens score --precision int8``) runs the
autoencoder's encoder and decoder as int8 graphs: weights quantized per output channel (symmetric), activations
per tensor with 8 bits (7 on x86 CPUs without VNNI). Activation ranges are the min/max observed on a few
calibration images (by default :data:`INT8_CALIBRATION_IMAGES` images spread over the collection, plus an
all-black and an all-white image), widened by :data:`INT8_RANGE_MARGIN`: an image brighter or busier than the
calibration ones is then not clipped. (Torch's default, ranges fitted to the calibration images' histogram,
moved single lnsim-dev images' MSE by up to 20 % when the 8 calibration images lacked such an image; widened
min/max ranges keep every image within a few percent.) On a CPU with AVX512-VNNI the vgg16 autoencoder runs
about 4x faster than in float32 and 2x faster than in bfloat16 (docs/benchmarks.md); on 250 lnsim-dev images
that took no part in choosing the margin, per-image reconstruction errors stayed within 1.8 % of float32
(median 0.17 %; Intel Xeon, 2026-12; the x2 margin chosen earlier on an AMD EPYC reached 5.2 % there). How far int8 moved the calibration
images' own errors is measured on every quantization (:attr:`Int8Autoencoder.calibration_error`, recorded in the
run's config) and a warning is logged above :data:`INT8_WARN_REL_MSE`: some models quantize worse than others.

Only CPUs run it (torch's int8 kernels: fbgemm/oneDNN on x86, qnnpack on ARM), and only autoencoders whose
encoder and decoder can be traced by ``torch.fx`` (vgg16 and small; the EfficientNet autoencoders compute
their padding from the input shape, which tracing cannot follow). The quantized copy is new; the float
model is never modified. Uses ``torch.ao.quantization``'s FX graph mode, which torch marks as deprecated
(successor: torchao); if a torch release drops it, int8 raises :class:`~memlens.errors.ConfigError` and
``bfloat16`` remains.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["INT8_CALIBRATION_IMAGES", "Int8Autoencoder", "calibration_indices", "check_int8_settings", "int8_engine",
           "quantize_autoencoder"]

#: images the activation ranges are observed on when no calibration set is given
INT8_CALIBRATION_IMAGES = 8
#: a warning is logged when int8 moves a calibration image's MSE by more than this (relative)
INT8_WARN_REL_MSE = 0.05
#: activation ranges are the calibration images' min/max times this (8-bit activations); chosen on half of 500
#: lnsim-dev images on an Intel Xeon (docs/benchmarks.md), where x2 moved one image's MSE by 5.2 %
INT8_RANGE_MARGIN = 2.5
#: the same with 7-bit activations (x86 CPUs without VNNI), where a wider range costs more resolution
INT8_RANGE_MARGIN_7BIT = 1.5


def calibration_indices(n: int, k: int = INT8_CALIBRATION_IMAGES) -> list[int]:
    """``k`` indices spread evenly over ``0..n-1`` (all of them when ``n <= k``): the default calibration images.

    Spread rather than the first ``k``: collections are often ordered by category, and ranges observed on one
    category clip the activations of another.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if n <= k:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


#: what int8 did on an x86 CPU whose int8 kernels run without VNNI (AMD EPYC capped with
#: ONEDNN_MAX_CPU_ISA=AVX2; vgg16, 100 lnsim-dev images; docs/benchmarks.md)
NO_VNNI_MEASURED = "an image's MSE moved by 5.1 % with 8-bit and 5.2 % with 7-bit activations, at 1.75x the reference"


def check_int8_settings(layer: str | None = None, device: str | torch.device | None = None) -> None:
    """ConfigError for settings int8 scoring cannot run with: a hooked ``layer``, a device other than the CPU,
    an x86 CPU whose int8 kernels run without VNNI (there int8 breaks its 5 % bound; see :data:`NO_VNNI_MEASURED`)."""
    if layer:
        raise ConfigError("layer= is not available with precision int8 (the quantized graph has no hooks); "
                          "use float32 or bfloat16")
    kind = device.type if isinstance(device, torch.device) else str(device or "cpu").split(":")[0]
    if kind not in ("auto", "cpu"):
        raise ConfigError(f"precision int8 runs on the CPU only (device {device}); on a GPU use bfloat16")
    engines = list(torch.backends.quantized.supported_engines)
    if ("x86" in engines or "fbgemm" in engines) and not _has_vnni():
        capped = "" if _isa_cap_allows_vnni() else " (ONEDNN_MAX_CPU_ISA caps oneDNN below it)"
        raise ConfigError("precision int8 needs VNNI int8 instructions (AVX512-VNNI, AVX-VNNI or AMX), which this "
                          f"CPU's int8 kernels lack{capped}: without them {NO_VNNI_MEASURED}, past int8's 5 % "
                          "bound; use float32 (or bfloat16 on a CPU with AVX512-BF16/AMX)")


def int8_engine() -> str:
    """The quantized-kernel engine for this CPU: ``x86`` (fbgemm + oneDNN), ``fbgemm`` or ``qnnpack`` (ARM)."""
    engines = list(torch.backends.quantized.supported_engines)
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    raise ConfigError(f"precision int8: this torch build has no int8 CPU kernels (engines: {engines}); "
                      "use bfloat16")


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    old = torch.backends.quantized.engine
    if old != name:
        torch.backends.quantized.engine = name
    try:
        yield
    finally:
        if torch.backends.quantized.engine != old:
            torch.backends.quantized.engine = old


def _fx() -> tuple[Any, Any, Any]:
    """``(get_default_qconfig_mapping, prepare_fx, convert_fx)``, or ConfigError when torch has dropped them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as e:  # pragma: no cover - depends on the torch release
        raise ConfigError(f"precision int8 needs torch.ao.quantization, which torch {torch.__version__} lacks "
                          f"({e}); use bfloat16") from None
    return get_default_qconfig_mapping, prepare_fx, convert_fx


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) that keep VNNI: the VNNI ISAs and every one above them
_VNNI_ISA_WORDS = ("VNNI", "AMX", "BF16", "FP16", "AVX10")


def _isa_cap_allows_vnni() -> bool:
    """False when ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) caps oneDNN below VNNI (``AVX2``,
    ``AVX512_CORE``, ...): its int8 kernels then sum pairs of products in 16 bits, whatever the CPU has."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(var, "").strip().upper()
        if cap and cap not in ("ALL", "DEFAULT"):
            return any(word in cap for word in _VNNI_ISA_WORDS)
    return True


def _has_vnni() -> bool:
    """Whether int8 kernels here use VNNI (int8 dot products into int32, no 16-bit intermediate to overflow):
    the CPU has it and oneDNN is not capped below it (``ONEDNN_MAX_CPU_ISA``)."""
    if not _isa_cap_allows_vnni():
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False


def activation_bits(engine: str) -> int:
    """8, or 7 on x86 CPUs without VNNI, whose int8 kernels sum pairs of products in 16 bits and can overflow."""
    return 8 if engine == "qnnpack" or _has_vnni() else 7


def _qconfig_mapping(engine: str, bits: int) -> Any:
    """Per-channel symmetric int8 weights; per-tensor activations with min/max ranges widened by the margin."""
    from functools import partial

    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    get_mapping, _, _ = _fx()
    margin = INT8_RANGE_MARGIN if bits == 8 else INT8_RANGE_MARGIN_7BIT

    class _WidenedMinMax(MinMaxObserver):
        # the observed range times ``margin``: images brighter or busier than the calibration ones are not
        # clipped (clipping, not rounding, is what moves an image's error by tens of percent)
        def calculate_qparams(self):  # noqa: ANN202 - torch's signature
            return self._calculate_qparams(self.min_val * margin, self.max_val * margin)

    weight = partial(PerChannelMinMaxObserver, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    activation = partial(_WidenedMinMax, reduce_range=bits == 7)
    return get_mapping(engine).set_global(QConfig(activation=activation, weight=weight))


def _quantize_module(module: nn.Module, inputs: Sequence[torch.Tensor], engine: str, what: str,
                     backbone: str, bits: int) -> tuple[nn.Module, list[torch.Tensor]]:
    """``(int8 copy of module, float outputs for inputs)``: traced, observed on ``inputs`` one at a time."""
    _, prepare_fx, convert_fx = _fx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the FX API's deprecation notice and observer chatter
        mapping = _qconfig_mapping(engine, bits)
        try:
            prepared = prepare_fx(copy.deepcopy(module).cpu().eval(), mapping, example_inputs=(inputs[0],))
        except Exception as e:  # noqa: BLE001 - tracing failures come as many exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"precision int8 is not available for backbone {backbone!r}: its {what} cannot be "
                              f"traced by torch.fx ({first}); use bfloat16") from None
        outputs = []
        with torch.no_grad():
            for x in inputs:
                outputs.append(prepared(x))
        quantized = convert_fx(prepared)
    return quantized.eval(), outputs


class Int8Autoencoder(nn.Module):
    """An autoencoder whose encoder and decoder run as int8 graphs (CPU inference only).

    Same interface as :class:`memlens.models.Autoencoder` for inference: ``encode(x)`` (images in [0, 1]
    -> latent, dequantized to float32), ``decode(z)`` (-> images in [0, 1]), ``forward``. Built by
    :func:`quantize_autoencoder`. Attributes ``spec``, ``config`` and ``normalize`` are the float model's;
    ``calibration_images`` is the number of images the activation ranges were observed on, and
    ``calibration_error`` how far int8 moved their reconstruction error (``max_rel_mse``, ``median_rel_mse``).
    """

    def __init__(self, source: nn.Module, encoder: nn.Module, decoder: nn.Module, engine: str,
                 calibration_images: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.engine = engine
        self.calibration_images = int(calibration_images)
        #: relative change of the per-image MSE (float32 -> int8) on the calibration images: max and median
        self.calibration_error: dict[str, float] = {}
        #: activation precision: 8, or 7 on x86 CPUs without VNNI
        self.activation_bits = 8
        self.spec = getattr(source, "spec", None)
        self.config = dict(getattr(source, "config", {}) or {})
        self.normalize = getattr(source, "normalize", "none")
        mean = getattr(source, "_mean", torch.zeros(1, 3, 1, 1))
        std = getattr(source, "_std", torch.ones(1, 3, 1, 1))
        self.register_buffer("_mean", mean.detach().float().cpu().clone(), persistent=False)
        self.register_buffer("_std", std.detach().float().cpu().clone(), persistent=False)
        super().train(False)

    def _prepare(self, x: torch.Tensor, check: bool) -> torch.Tensor:
        if check:  # the float model's input contract
            from .models.base import check_image_range

            check_image_range(x)
            m = getattr(self.spec, "size_multiple", 1)
            if x.shape[-1] % m or x.shape[-2] % m:
                raise ValueError(f"{self.spec.name} needs image sides that are multiples of {m}; got "
                                 f"{tuple(x.shape[-2:])}")
        x = x.float()
        if self.normalize == "none":
            return x
        return (x - self._mean) / self._std

    def encode(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] -> latent (N, C, h, w), float32."""
        with _engine(self.engine):
            return self.encoder(self._prepare(x, check))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (N, C, h, w) -> reconstructed images (N, 3, H, W) in [0, 1], float32.

        ``encode``/``decode`` switch ``torch.backends.quantized.engine`` (a process-wide setting) for the
        call and restore it: do not run int8 models of different engines in threads of one process.
        """
        with _engine(self.engine):
            return torch.sigmoid(self.decoder(z.float()))

    def forward(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Reconstruct images: ``decode(encode(x))``."""
        return self.decode(self.encode(x, check=check))

    def train(self, mode: bool = True) -> Int8Autoencoder:
        if mode:
            raise RuntimeError("an int8 autoencoder is for inference only; train the float model")
        return super().train(False)


def quantize_autoencoder(model: nn.Module, calibration: torch.Tensor | Sequence[torch.Tensor], *,
                         engine: str | None = None, anchors: bool = True,
                         bits: int | None = None) -> Int8Autoencoder:
    """An int8 copy of ``model`` (an :class:`~memlens.models.Autoencoder`) for CPU inference.

    Parameters
    ----------
    model : the float autoencoder (not modified; it may live on any device, the copy is on the CPU).
    calibration : images in [0, 1], a tensor (N, 3, H, W) or a sequence of (3, H, W) / (1, 3, H, W)
        tensors, at the size that will be scored. Each is passed through the network on its own, so the
        observed ranges do not depend on any batch size. :data:`INT8_CALIBRATION_IMAGES` (8) images spread
        over the collection (:func:`calibration_indices`) are enough for vgg16 (docs/benchmarks.md).
    engine : torch's quantized engine; default :func:`int8_engine`.
    bits : activation bits, 8 or 7; default :func:`activation_bits` for this CPU (a Ray driver decides once
        for all its actors).
    anchors : also observe an all-black and an all-white image (default True): flat, saturated images drive
        activations to extremes that a few natural images may not reach. On the test suite's small demo
        model the largest change of a per-image MSE went from 2.0-2.3 % to 1.1 % with them for two of three
        calibration sets (1.9 % to 2.4 % for the third). They are not counted in ``calibration_images`` nor
        in ``calibration_error``.

    Raises
    ------
    ConfigError
        when the backbone cannot be traced, no calibration image is given, or torch lacks int8 kernels.
    """
    from .models.base import Autoencoder

    cls = type(model)
    if not isinstance(model, Autoencoder) or cls.encode is not Autoencoder.encode \
            or cls.decode is not Autoencoder.decode:
        raise ConfigError(f"precision int8 needs a memlens Autoencoder with the standard encode/decode "
                          f"(encoder, decoder, sigmoid); got {cls.__name__}")
    items = list(calibration.split(1)) if isinstance(calibration, torch.Tensor) else list(calibration)
    if not all(isinstance(x, torch.Tensor) and x.ndim in (3, 4) for x in items):
        raise ConfigError("int8 calibration images must be float tensors (N, 3, H, W) or (3, H, W) in [0, 1]")
    images = [one for x in items for one in (x if x.ndim == 4 else x.unsqueeze(0)).split(1)]
    if not images:
        raise ConfigError("precision int8 needs at least one calibration image")
    if bits not in (None, 7, 8):
        raise ConfigError(f"int8 activation bits must be 7 or 8, got {bits}")
    engine = engine or int8_engine()
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    prepare = getattr(model, "_prepare", None)
    if anchors:
        shape = (1, *images[0].shape[1:])
        images = images + [torch.zeros(shape), torch.ones(shape)]
    n_real = len(images) - (2 if anchors else 0)
    with torch.no_grad():
        dev = next(iter(model.parameters()), torch.empty(0)).device
        xs = []
        for x in images:
            x = x.detach().float().cpu().contiguous()
            if prepare is not None:  # the float model's own normalisation (and its input checks)
                x = prepare(x.to(dev), True).float().cpu()
            xs.append(x)
    with _engine(engine):
        bits = bits or activation_bits(engine)
        qenc, zs = _quantize_module(model.encoder, xs, engine, "encoder", name, bits)
        qdec, logits = _quantize_module(model.decoder, [z.float() for z in zs], engine, "decoder", name, bits)
    qmodel = Int8Autoencoder(model, qenc, qdec, engine, n_real)
    qmodel.activation_bits = bits
    # how far int8 moves the reconstruction error, on the calibration images themselves (float outputs
    # came with the calibration pass; the int8 pass is cheap)
    with torch.no_grad():
        rel = []
        for raw, lo in zip(images[:n_real], logits[:n_real], strict=True):
            raw = raw.detach().float().cpu()
            f = float(((torch.sigmoid(lo.float()) - raw) ** 2).mean())
            q = float(((qmodel(raw, check=False) - raw) ** 2).mean())
            rel.append(abs(q - f) / max(f, 1e-12))
    qmodel.calibration_error = {"max_rel_mse": max(rel), "median_rel_mse": float(sorted(rel)[len(rel) // 2])}
    log.info("int8 %s: activation ranges from %d calibration image(s), engine %s; per-image MSE moves by at most "
             "%.2g relative on them", name, n_real, engine, max(rel))
    if max(rel) > INT8_WARN_REL_MSE:
        log.warning("int8 %s moves the reconstruction error of a calibration image by %.0f %% (float32 vs int8); "
                    "this model quantizes poorly, use bfloat16 or float32 for numbers you report",
                    name, 100 * max(rel))
    return qmodel
