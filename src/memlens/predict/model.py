"""The image -> score model: :class:`MemorabilityModel` (encoders, pooling and the fitted head as one
differentiable ``nn.Module``) and :func:`load_memorability_model`, which rebuilds it from ``predictor.pt``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import check_image_range
from .mlp import MemorabilityRegressor
from .predictor_file import read_predictor, regressor_from_state, save_predictor, weights_sha256
from .svr import MemorabilitySVR

_PRETRAINED_WIDTH = 1280  # pooled EfficientNet-Lite head features


class _Encode(nn.Module):
    """An autoencoder as an encoder: images -> ``encode(x)`` (or the output of a named layer)."""

    def __init__(self, ae: nn.Module, layer: str | None):
        super().__init__()
        self.autoencoder = ae
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ae = self.autoencoder
        if self.layer is None:
            return ae.encode(x, check=False) if hasattr(ae, "encode") else ae(x)
        target = dict(ae.named_modules()).get(self.layer)
        if target is None:
            from ..errors import ConfigError

            raise ConfigError(f"layer {self.layer!r} not found in the autoencoder")
        captured: list[torch.Tensor] = []
        hook = target.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            z = ae.encode(x, check=False) if hasattr(ae, "encode") else ae(x)
            if not captured and hasattr(ae, "decode"):
                ae.decode(z)
        finally:
            hook.remove()
        return captured[0]


def wrap_encoder(encoder: nn.Module, layer: str | None) -> nn.Module:
    """``encoder`` as a module images -> latent: an autoencoder through its ``encode`` (or the output of its
    module ``layer``), any other module unchanged."""
    if layer is None and not hasattr(encoder, "encode"):
        return encoder
    return _Encode(encoder, layer)


def _per_branch(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: one value per encoder ({n}) expected, got {len(value)}")
        return list(value)
    return [value] * n


class MemorabilityModel(nn.Module):
    """Images in [0, 1] (N, 3, H, W) -> predicted memorability (N,): encoder(s) + pooling + regression head.

    Parameters
    ----------
    encoder : nn.Module or sequence of nn.Module
        Maps images to a latent (N, C, h, w) or features (N, D). An autoencoder is used through its
        ``encode``. Several encoders are concatenated in order (e.g. latents and pretrained features).
    head : MemorabilitySVR, MemorabilityRegressor or nn.Module
        A fitted regressor (the SVR, memlens's default, or the MLP; converted with its ``to_torch``) or a
        module (N, D) -> (N,).
    pool : {"none", "avg"} or a sequence of them
        ``none`` flattens each latent, ``avg`` averages over positions first (as ``memlens score --pool``).
    sizes : int or sequence of int, optional
        Square side each encoder expects; other inputs are resized (bilinear, antialiased) first.
    layer : str or sequence, optional
        Module of an autoencoder whose output is the latent (as ``memlens score --layer``).
    recipe : list of dict, optional
        How to rebuild each encoder when saving/loading (set by :func:`load_memorability_model`).

    Attributes
    ----------
    encoder : nn.Module (a ``ModuleList`` for several encoders)
    head : nn.Module (input scaler, SVR kernel expansion or MLP, inverse target scaler)
    regressor : the fitted :class:`MemorabilitySVR` or :class:`MemorabilityRegressor`, when given
    input_size : the side images should have (the first encoder's), or None

    Encoders always stay in eval mode (batch-norm statistics are part of the fitted pipeline), so a
    score never depends on the other images of a batch.

    Examples
    --------
    >>> import numpy as np, torch, memlens
    >>> ae = memlens.create_autoencoder("small", input_size=32)
    >>> with torch.no_grad():
    ...     Z = ae.encode(torch.rand(20, 3, 32, 32)).flatten(1).numpy()
    >>> head = memlens.MemorabilitySVR().fit(Z, np.linspace(0, 1, 20))
    >>> model = memlens.MemorabilityModel(ae, head, sizes=32)  # images in [0, 1] -> scores, differentiable
    >>> tuple(model(torch.rand(2, 3, 32, 32)).shape), model.predict(torch.rand(5, 3, 48, 48)).shape
    ((2,), (5,))
    """

    def __init__(self, encoder: Any, head: Any, pool: Any = "none", *, sizes: Any = None, layer: Any = None,
                 recipe: list[dict[str, Any]] | None = None, finetuned: Any = None, blend: float = 0.5):
        super().__init__()
        encoders = list(encoder) if isinstance(encoder, (list, tuple, nn.ModuleList)) else [encoder]
        if not encoders:
            raise ValueError("at least one encoder is needed")
        n = len(encoders)
        pools = _per_branch(pool, n, "pool")
        bad = [p for p in pools if p not in ("none", "avg")]
        if bad:
            raise ValueError(f"pool must be 'none' or 'avg', got {bad[0]!r}")
        layers = _per_branch(layer, n, "layer")
        wrapped = [wrap_encoder(e, lay) for e, lay in zip(encoders, layers, strict=True)]
        self.encoder = wrapped[0] if n == 1 else nn.ModuleList(wrapped)
        self.pools = pools
        self.sizes = [int(s) if s else None for s in _per_branch(sizes, n, "sizes")]
        if isinstance(head, (MemorabilityRegressor, MemorabilitySVR)):
            self.regressor: MemorabilityRegressor | None = head
            head = head.to_torch()
        else:
            self.regressor = None
        self.head = head
        self.recipe = recipe
        self.info: dict[str, Any] = {}
        self.input_size = self.sizes[0]
        fs = getattr(wrapped[0], "feature_set", None)
        #: how ``memlens predict`` decodes files: ("square", side) or ("aspect", shorter side) for feature
        #: sets that keep the aspect ratio (images of different shapes then go one shape at a time)
        self.image_spec = ("aspect", fs.load_size) if (fs is not None and fs.aspect == "keep") else \
            ("square", self.input_size or (fs.load_size if fs is not None else None))
        #: fine-tuned tails (:mod:`memlens.predict.finetune`) fed by the feature set's own trunk activations;
        #: their mean prediction is blended with the head's: (1 - blend) * head + blend * tails
        self.finetuned = finetuned
        self.tails = nn.ModuleList(finetuned.tails_) if finetuned is not None else None
        self.blend = float(blend)
        if finetuned is not None:
            if n != 1 or fs is None or finetuned.variant not in [v for v, _ in fs.backbones]:
                raise ValueError("fine-tuned tails need one feature-set encoder that runs their network")
            self.trunk = {finetuned.variant: int(finetuned.stage_)}
        self.eval()

    def _encoders(self) -> list[nn.Module]:
        return list(self.encoder) if isinstance(self.encoder, nn.ModuleList) else [self.encoder]

    def features(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The head's input (N, D): every encoder's pooled, flattened output, concatenated."""
        if check:
            check_image_range(x)
        parts = []
        for enc, pool, size in zip(self._encoders(), self.pools, self.sizes, strict=True):
            xi = x
            if size and tuple(x.shape[-2:]) != (size, size):
                h, w = x.shape[-2:]
                if h != w:  # the centre square, as the data pipeline crops
                    m = min(h, w)
                    xi = x[..., (h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
                xi = F.interpolate(xi, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True).clamp(0, 1)
            z = enc(xi)
            if isinstance(z, (list, tuple)):
                z = z[-1]
            if pool == "avg" and z.ndim >= 3:
                z = z.flatten(2).mean(2)
            parts.append(z.flatten(1).float())
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Predicted scores (N,) for images (N, 3, H, W) in [0, 1]; differentiable."""
        if self.tails is None:
            return self.head(self.features(x, check=check))
        if check:
            check_image_range(x)
        cols, acts = self._encoders()[0](x, check=False, trunk=self.trunk)
        a = next(iter(acts.values()))  # (N, 2, C, h, w): the image and its mirror image
        n = a.shape[0]
        flat = a.reshape(n * 2, *a.shape[2:]).float()
        tails = torch.stack([t(flat) for t in self.tails]).mean(0).reshape(n, 2).mean(1)
        return (1 - self.blend) * self.head(cols.float()) + self.blend * tails

    def train(self, mode: bool = True) -> MemorabilityModel:
        """Only the head follows ``mode``; encoders (and fine-tuned tails) stay in eval mode."""
        super().train(mode)
        for enc in self._encoders():
            enc.eval()
        if self.tails is not None:
            self.tails.eval()
        return self

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int = 32) -> np.ndarray:
        """Scores (N,) as float64 numpy for images (N, 3, H, W) in [0, 1], in batches."""
        was = self.training
        self.eval()
        dev = next(iter(self.head.parameters()), torch.empty(0)).device
        x = torch.as_tensor(images)
        out = [self(x[a:a + batch_size].to(dev).float()).double().cpu().numpy()
               for a in range(0, len(x), batch_size)]
        self.train(was)
        return np.concatenate(out) if out else np.zeros(0)

    def save(self, path: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
        """Write ``predictor.pt`` (needs ``recipe`` and a fitted ``regressor``)."""
        if self.recipe is None or self.regressor is None:
            raise ValueError("this model has no encoder recipe or regressor; build it with "
                             "fit_predictor_run or load_memorability_model to save it")
        return save_predictor(path, self.regressor, self.recipe, info=info if info is not None else self.info,
                              finetuned=self.finetuned, blend=self.blend)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: Any = "cpu") -> MemorabilityModel:
        """Read ``predictor.pt`` (see :func:`load_memorability_model`)."""
        return load_memorability_model(path, map_location=map_location)


def _build_encoder(r: dict[str, Any], folder: Path, map_location: Any) -> Any:
    from .._io import file_sha256
    from ..errors import CheckpointError

    kind = r.get("kind")
    if kind == "autoencoder":
        from ..models import load_autoencoder

        ck = Path(r["checkpoint"])
        ck = ck if ck.is_absolute() else folder / ck
        if not ck.is_file():
            raise CheckpointError(f"the predictor needs the autoencoder {ck}, which is missing")
        want, want_weights = r.get("sha256"), r.get("weights_sha256")
        if want and not want_weights and file_sha256(ck) != want:  # a predictor saved before weights_sha256
            raise CheckpointError(f"{ck} changed since the predictor was fitted (SHA-256 differs); "
                                  "refit it: memlens fit-predictor RUN")
        model = load_autoencoder(ck, map_location=map_location)
        # the weights, not the file: a checkpoint also holds timings, so the same weights saved twice differ
        if want_weights and weights_sha256(model) != want_weights:
            raise CheckpointError(f"{ck} holds other weights than the autoencoder the predictor was fitted on; "
                                  "refit it: memlens fit-predictor RUN")
        return model
    if kind == "pretrained":
        from ..models.efficientnet import pooled_feature_extractor

        return pooled_feature_extractor(r.get("name", "efficientnet_lite0"))
    if kind == "featureset":
        from ..features import FeatureSetExtractor, get_feature_set

        return FeatureSetExtractor(get_feature_set(r["name"]))
    raise CheckpointError(f"unknown encoder kind {kind!r} in the predictor recipe")


def load_memorability_model(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Rebuild the image -> score :class:`MemorabilityModel` saved at ``path`` (in eval mode).

    Autoencoder checkpoints named in the recipe are resolved relative to the file's folder and checked
    against their recorded SHA-256. ``model.info`` holds the file's ``info`` dict (CV summary, inputs...).
    """
    obj = read_predictor(path, map_location)
    folder = Path(path).resolve().parent
    recipe = obj["recipe"]
    encoders = [_build_encoder(r, folder, map_location) for r in recipe]
    head = regressor_from_state(obj["head"])
    ft, blend = None, 0.5
    if obj.get("finetuned") is not None:
        from .finetune import FineTunedLiteRegressor

        try:
            ft = FineTunedLiteRegressor.from_state(obj["finetuned"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            from ..errors import CheckpointError

            raise CheckpointError(f"{path}: its fine-tuned network cannot be rebuilt ({exc})") from None
        blend = float(obj["finetuned"].get("blend", 0.5))
    model = MemorabilityModel(encoders, head, pool=[r.get("pool", "none") for r in recipe],
                              sizes=[r.get("size") for r in recipe], layer=[r.get("layer") for r in recipe],
                              recipe=recipe, finetuned=ft, blend=blend)
    model.info = obj.get("info", {})
    # pretrained features are pooled head activations (1280 for EfficientNet-Lite); autoencoder widths were
    # measured at fit time on the very checkpoint whose SHA-256 was just verified
    width = sum(_recipe_width(r) for r in recipe)
    if width != head.n_features_in_:
        from ..errors import CheckpointError

        raise CheckpointError(f"{path}: its encoders give {width} columns but its head expects "
                              f"{head.n_features_in_} (the features it was fitted on came from another network)")
    return model.to(map_location).eval()


def _recipe_width(r: dict[str, Any]) -> int:
    if r.get("kind") == "pretrained":
        return _PRETRAINED_WIDTH
    if r.get("kind") == "featureset":
        from ..features import get_feature_set

        return get_feature_set(r["name"]).n_features
    return int(r.get("dim", 0))


