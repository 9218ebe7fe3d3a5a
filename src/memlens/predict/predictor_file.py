"""The saved-model format, ``RUN/predictor.pt``: a plain dict of tensors, numbers and strings (no pickled
objects; read with ``torch.load(weights_only=True)``) holding the fitted head's state and one recipe per
encoder. Writing, validated reading, the head alone, and the weights checksum the recipes record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .mlp import MemorabilityRegressor
from .svr import MemorabilitySVR

PREDICTOR_FORMAT = "memlens.predictor"
PREDICTOR_VERSION = 1


def regressor_from_state(state: dict[str, Any]) -> Any:
    """A fitted head from its saved state: :class:`MemorabilitySVR` or :class:`MemorabilityRegressor`."""
    if state.get("type") == "svr":
        return MemorabilitySVR.from_state(state)
    return MemorabilityRegressor.from_state(state)



def save_predictor(path: str | os.PathLike, regressor: Any, recipe: list[dict[str, Any]],
                   info: dict[str, Any] | None = None, finetuned: Any = None, blend: float = 0.5,
                   holdout: dict[str, Any] | None = None) -> Path:
    """Write ``predictor.pt`` atomically: the head's state plus the encoder recipe (no pickled objects).

    ``recipe`` lists one dict per encoder, in the order of the head's input columns:
    ``{"kind": "autoencoder", "checkpoint": <path, relative to the file's folder>, "sha256": ...,
    "weights_sha256": ... (:func:`weights_sha256`; checked when present, else the file's ``sha256``), "pool":
    "none"|"avg", "layer": None|name, "size": int, "dim": int}`` or ``{"kind": "pretrained", "name":
    "efficientnet_lite0", "pool": "none", "size": 224, "dim": 1280}`` or ``{"kind": "featureset", "name":
    <a feature set of memlens.features>, "pool": "none", "size": None, "dim": int}``.

    ``finetuned`` (a fitted :class:`memlens.predict.finetune.FineTunedLiteRegressor`, with a feature-set
    recipe holding its network) adds fine-tuned tails whose mean prediction is blended with the head's:
    ``score = (1 - blend) * head + blend * tails`` (key ``"finetuned"``: its state and ``blend``).

    ``holdout`` (``{"head": fitted head, "finetuned": tails or None}``) stores the model of the honest estimate
    as well: the same configuration fitted on the selection images only, never on the held-out ones (key
    ``"holdout"``). ``memlens explain`` explains held-out images with it instead of refitting it.
    """
    from .._io import atomic_path
    from .._version import __version__

    dims = [int(r.get("dim", 0)) for r in recipe]
    if all(dims) and sum(dims) != regressor.n_features_in_:
        raise ValueError(f"the recipe's encoders give {sum(dims)} columns but the head expects "
                         f"{regressor.n_features_in_}")
    obj = {
        "format": PREDICTOR_FORMAT,
        "version": PREDICTOR_VERSION,
        "memlens_version": __version__,
        "recipe": [dict(r) for r in recipe],
        "head": regressor.get_state(),
        "info": _plain(info or {}),
    }
    if finetuned is not None:
        if len(recipe) != 1 or recipe[0].get("kind") != "featureset":
            raise ValueError("fine-tuned tails need a recipe of one feature set (their trunk's network)")
        obj["finetuned"] = {**finetuned.get_state(), "blend": float(blend)}
    if holdout is not None:
        entry: dict[str, Any] = {"head": holdout["head"].get_state()}
        if holdout.get("finetuned") is not None:
            entry["finetuned"] = {**holdout["finetuned"].get_state(), "blend": float(blend)}
        obj["holdout"] = entry
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def _plain(obj: Any) -> Any:
    """Only types ``torch.load(weights_only=True)`` accepts: dict/list/str/int/float/bool/None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def read_predictor(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and validate ``predictor.pt`` (``weights_only=True``); ``CheckpointError`` if foreign."""

    from ..errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"predictor not found: {path} (make it with: memlens fit-predictor RUN)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure is a bad file for the user
        raise CheckpointError(f"{path} is not a readable predictor file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != PREDICTOR_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a memlens predictor (format {found!r}, expected "
                              f"{PREDICTOR_FORMAT!r})")
    if not isinstance(obj.get("version"), int) or obj["version"] > PREDICTOR_VERSION:
        raise CheckpointError(f"{path}: unsupported predictor version {obj.get('version')!r}")
    if not isinstance(obj.get("recipe"), list) or not isinstance(obj.get("head"), dict):
        raise CheckpointError(f"{path}: malformed predictor (recipe or head missing)")
    return obj


def weights_sha256(module: Any) -> str:
    """SHA-256 of a module's state: every tensor's name, dtype, shape and values, in name order, and for an
    autoencoder its backbone name and configuration (input size, normalisation), which change what it computes.

    Two checkpoint files with the same model give the same value, whatever else they store (timings).
    """
    import hashlib
    import json

    h = hashlib.sha256()
    spec = getattr(module, "spec", None)
    if spec is not None or hasattr(module, "config"):
        h.update(json.dumps({"name": getattr(spec, "name", None), "config": getattr(module, "config", None)},
                            sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().resolve_conj().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()



def load_regressor(path: str | os.PathLike) -> Any:
    """Only the fitted head of ``predictor.pt`` (numpy inputs, no encoder needed)."""
    return regressor_from_state(read_predictor(path)["head"])

