"""Checkpoint I/O: memlens autoencoder files, training states, and strict key-mapped loading (and, to
reproduce the paper's released scripts on request, their non-strict load: :func:`load_state_dict_as_scripts`).

A memlens autoencoder file is a ``torch.save``-d dict::

    {"format": "memlens.autoencoder", "version": 1, "name": <registry name>, "config": {...},
     "init": <where the weights started from>, "state_dict": {...}, "extra": {...}}

Every file is read with ``torch.load(weights_only=True)`` (no arbitrary code runs) and written atomically.
Foreign or malformed files raise :class:`~memlens.errors.CheckpointError`. Loading weights into a model
always goes through :func:`load_mapped_state_dict`, which maps keys explicitly and refuses to load unless
every parameter and buffer of the target found a tensor of the right shape and no source key was left over.
Rebuilding a model from its file (``load_autoencoder``) needs the backbone registry, so it lives in
:mod:`memlens.models.registry`; this module does not depend on the registry.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._io import atomic_path
from ..errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from .base import Autoencoder

__all__ = [
    "FORMAT",
    "VERSION",
    "TRAIN_STATE_FORMAT",
    "save_autoencoder",
    "read_checkpoint",
    "torch_load_safe",
    "read_state_dict",
    "load_mapped_state_dict",
    "load_state_dict_as_scripts",
    "strip_prefix",
    "save_train_state",
    "load_train_state",
]

log = logging.getLogger(__name__)

FORMAT = "memlens.autoencoder"
VERSION = 1
TRAIN_STATE_FORMAT = "memlens.train_state"
_MAX_LISTED = 12


def torch_load_safe(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: no code in the file runs, and every failure (missing file,
    a pickle that needs more than tensors and plain data, a damaged or foreign file) is a ``CheckpointError``
    naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} cannot be loaded safely (weights_only=True refused it: {first}); it is not a plain "
            "tensor checkpoint"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def strip_prefix(sd: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Remove a leading ``prefix`` (DataParallel's ``module.``) from every key that carries it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def read_state_dict(path: str | os.PathLike, *, strip_module_prefix: bool = True) -> dict[str, torch.Tensor]:
    """Read a state dict from a file: a plain one, one under ``state_dict``/``model``, or a memlens file.

    ``module.`` prefixes are removed (``strip_module_prefix=False``: the keys as written in the file).
    Raises ``CheckpointError`` when no tensor dict is found.
    """
    obj = torch_load_safe(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        obj = obj.get("state_dict")
    elif isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and _is_tensor_dict(obj[key]):
                obj = obj[key]
                break
    if not _is_tensor_dict(obj):
        kind = type(obj).__name__
        keys = list(obj)[:8] if isinstance(obj, Mapping) else []
        raise CheckpointError(
            f"{path} holds no state dict (found a {kind}{f' with keys {keys}' if keys else ''}; expected "
            "a dict of tensors, possibly under 'state_dict')"
        )
    return strip_prefix(obj) if strip_module_prefix else dict(obj)


def _listing(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{shown}{more}"


def load_mapped_state_dict(
    module: torch.nn.Module,
    source: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str],
    *,
    what: str = "checkpoint",
    ignore: Iterable[str] = (),
    keep: Iterable[str] = (),
) -> dict[str, Any]:
    """Load ``source`` into ``module`` through an explicit ``mapping`` (target key -> source key).

    Refuses (``CheckpointError`` listing the keys) unless every key of ``module.state_dict()`` is mapped
    to a source tensor of the same shape and every source key is used or named in ``ignore`` (prefixes).
    Target keys starting with a prefix in ``keep`` are deliberately left as they are (e.g. a classifier
    that is not loaded). The only tolerated gap is a missing ``num_batches_tracked`` counter (older files lack it).

    Returns ``{"n_loaded": int, "n_ignored": int}``.
    """
    keep = tuple(keep)
    full = module.state_dict()
    own = {k: v for k, v in full.items() if not (keep and k.startswith(keep))}
    ignore = tuple(ignore)
    unmapped = [k for k in own if k not in mapping]
    def tolerated(k: str) -> bool:  # a counter missing from a file whose BN statistics are present
        sibling = k[: -len("num_batches_tracked")] + "running_mean"
        return k.endswith("num_batches_tracked") and mapping.get(sibling) in source

    missing_src = [f"{k} (from {mapping[k]})" if mapping[k] != k else k
                   for k in own if k in mapping and mapping[k] not in source and not tolerated(k)]
    missing = unmapped + missing_src
    used = {mapping[k] for k in own if k in mapping}
    unexpected = [k for k in source if k not in used and not k.startswith(ignore)]
    shape = [f"{k}: model {tuple(own[k].shape)} vs file {tuple(source[mapping[k]].shape)}"
             for k in own if k in mapping and mapping[k] in source
             and tuple(own[k].shape) != tuple(source[mapping[k]].shape)]
    if missing or unexpected or shape:
        lines = [f"{what}: refusing a partial load ({len(own) - len(missing) - len(shape)} of {len(own)} "
                 f"tensors match)"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if shape:
            lines.append(f"shape mismatches ({len(shape)}): {_listing(shape)}")
        raise CheckpointError("\n".join(lines))
    new = dict(full)
    for k, v in own.items():
        src = source.get(mapping[k])
        if src is None:  # a tolerated num_batches_tracked gap
            new[k] = v
        else:
            new[k] = src.to(dtype=v.dtype)
    module.load_state_dict(new, strict=True)
    n_loaded = sum(1 for k in own if mapping[k] in source)
    n_ignored = sum(1 for k in source if k not in used)
    log.info("%s: loaded %d of %d tensors%s", what, n_loaded, len(own), f", ignored {n_ignored}" if n_ignored else "")
    return {"n_loaded": n_loaded, "n_expected": len(own), "n_ignored": n_ignored}


def load_state_dict_as_scripts(
    module: torch.nn.Module,
    source: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str],
    *,
    what: str = "checkpoint",
) -> dict[str, Any]:
    """A non-strict load by exact key, as the paper's released scripts loaded their checkpoint.

    The released scripts of Bagheri & Mohsenzadeh called ``model.load_state_dict(checkpoint, strict=False)``
    on a model whose keys lack the checkpoint's DataParallel ``module.`` prefix. This does the same through
    an explicit ``mapping`` (target key -> the key the scripts' model would have): a target tensor is replaced
    only when ``source`` (keys as written in the file, **no prefix removed**) holds exactly that key; every
    other tensor keeps its current (e.g. random initial) value, and nothing is reported as an error -- except
    a shape mismatch on a matching key, which torch's non-strict load refuses too (``CheckpointError``).

    Logs a WARNING unless every tensor loaded, saying how many did. Returns ``{"load": "scripts",
    "n_loaded", "n_expected", "n_unmatched_file_keys", "loaded_by_part": {top-level module: [loaded,
    total]}}``.
    """
    full = module.state_dict()
    matched = [k for k in full if mapping.get(k) in source]
    shape = [f"{k}: model {tuple(full[k].shape)} vs file {tuple(source[mapping[k]].shape)}"
             for k in matched if tuple(full[k].shape) != tuple(source[mapping[k]].shape)]
    if shape:
        raise CheckpointError(f"{what}: shape mismatches ({len(shape)}), which a non-strict load refuses too: "
                              f"{_listing(shape)}")
    new = dict(full)
    for k in matched:
        new[k] = source[mapping[k]].to(dtype=full[k].dtype)
    module.load_state_dict(new, strict=True)
    used = {mapping[k] for k in matched}
    hit = set(matched)
    parts: dict[str, list[int]] = {}
    for k in full:
        part = parts.setdefault(k.split(".", 1)[0], [0, 0])
        part[1] += 1
        part[0] += k in hit
    n, total = len(matched), len(full)
    report = {"load": "scripts", "n_loaded": n, "n_expected": total,
              "n_unmatched_file_keys": sum(1 for k in source if k not in used), "loaded_by_part": parts}
    if n == total:
        log.info("%s: non-strict load as in the released scripts: %d of %d tensors loaded", what, n, total)
    else:
        prefixed = sum(1 for k in source if k.startswith("module."))
        why = (f"; {prefixed} of the file's {len(source)} keys carry a 'module.' prefix the model's keys lack"
               if prefixed else "")
        rest = ("the model starts from random weights, as the released scripts did" if n == 0 else
                f"the other {total - n} keep their initial values, as in the released scripts")
        log.warning("%s: non-strict load as in the released scripts: %d of %d tensors loaded%s: %s",
                    what, n, total, why, rest)
    return report


# -- memlens autoencoder files ---------------------------------------------------------------------


def save_autoencoder(path: str | os.PathLike, model: Autoencoder, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (name, config, weights) and ``extra`` (plain Python data) atomically to ``path``."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "name": model.spec.name,
        "config": dict(model.config),
        "init": str(getattr(model, "init", "")),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and validate a memlens autoencoder file; returns its dict (``CheckpointError`` if foreign)."""
    obj = torch_load_safe(path, map_location)
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not a memlens autoencoder checkpoint (format {found!r}, expected {FORMAT!r}); "
            "to start from foreign weights use create_autoencoder(name, init=PATH)"
        )
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {version!r} (this memlens reads <= {VERSION})")
    problems = [k for k, t in (("name", str), ("config", Mapping), ("state_dict", Mapping)) if not isinstance(obj.get(k), t)]
    if problems or not _is_tensor_dict(obj["state_dict"]):
        raise CheckpointError(f"{path}: malformed memlens checkpoint (bad or missing {problems or ['state_dict']})")
    return dict(obj)


# -- training states (resume) ----------------------------------------------------------------------


def save_train_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically write a training state (model/optimizer/scheduler/RNG states, position)."""
    payload = {"format": TRAIN_STATE_FORMAT, "version": VERSION, **state}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training state written by :func:`save_train_state` (``CheckpointError`` when foreign)."""
    obj = torch_load_safe(path)
    if not isinstance(obj, Mapping) or obj.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path} is not a memlens training state (cannot resume from it)")
    return dict(obj)
