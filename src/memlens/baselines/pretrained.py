"""What the pretrained baselines share: finding their weights, and :class:`PretrainedBaseline`, which decodes,
preprocesses and batches images through a network and returns one score per image.

Weights are looked for, in this order: the ``weights=`` argument (``--weights NAME=PATH``), an environment
variable (``MEMLENS_RESMEM_WEIGHTS``, ``MEMLENS_VITMEM_WEIGHTS``), then a place of the model's own (ResMem: the
``model.pt`` inside an installed ``resmem`` distribution, found without importing it; ViTMem: torch hub's
checkpoints folder). Nothing is downloaded. When none is found the error is one line that says how to get them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, DataError, Problem, ValidationError
from .registry import BaselineInfo

__all__ = ["PretrainedBaseline", "WeightsNotFound", "resolve_device", "load_state_dict_file", "weights_stamp"]

log = logging.getLogger(__name__)


class WeightsNotFound(CheckpointError):
    """A pretrained baseline's weights are nowhere this machine can see (the message says how to get them)."""


def resolve_device(device: str) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        from ..errors import ConfigError

        raise ConfigError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return str(device)


def weights_stamp(path: str | os.PathLike) -> str:
    """A cheap identity of a weights file: its resolved path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def load_state_dict_file(path: Path, what: str) -> dict[str, Any]:
    """A plain state dict from ``path`` (``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper and a ``module.`` prefix are unwrapped). ``CheckpointError`` when unreadable."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        try:  # an old (non-zip) serialisation cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001
            raise CheckpointError(f"{path}: not a readable {what} weights file ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a {what} state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_strict(module: Any, state: dict[str, Any], path: Path, what: str) -> None:
    """Load ``state`` into ``module``, every key and shape; ``CheckpointError`` naming what differs."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                         f"{tuple(own[k].shape)} expected)")
        raise CheckpointError(f"{path}: not the {what} weights: {'; '.join(parts)} keys")
    module.load_state_dict(state, strict=True)


class PretrainedBaseline:
    """Base class of the pretrained adapters: ``predict(images)`` -> one score per image.

    Subclasses set :attr:`info`, :attr:`resize`, :attr:`crop`, and implement :meth:`find_weights` (a
    :class:`~pathlib.Path`, or :class:`WeightsNotFound`) and :meth:`build` (the network with its weights
    loaded, images (N, 3, crop, crop) in [0, 1] -> scores (N,)). The network is built on first use.

    Parameters
    ----------
    weights : a weights file, or None to look for it (module docstring).
    device : ``auto``, ``cpu``, ``cuda``...
    batch_size : images per forward pass (a score does not depend on it: the network is in eval mode).
    """

    info: BaselineInfo
    resize: int = 256
    crop: int = 224

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "auto", batch_size: int = 16):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.weights = weights
        self.device = device
        self.batch_size = int(batch_size)
        self._net: Any = None
        self.weights_path_: Path | None = None
        self.device_: str | None = None

    # -- to implement -----------------------------------------------------------------------------------
    def find_weights(self) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def build(self, path: Path) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------------
    def network(self) -> Any:
        """The network (built and its weights loaded on first call), in eval mode on the device."""
        if self._net is None:
            path = self.find_weights()
            t0 = time.perf_counter()
            net = self.build(path)
            self.device_ = resolve_device(self.device)
            self._net = net.to(self.device_).eval()
            self.weights_path_ = path
            log.info("%s: weights %s loaded in %.1f s", self.info.name, path, time.perf_counter() - t0)
        return self._net

    def preprocess(self, source: Any) -> np.ndarray:
        """One image as the model's authors prepare it: float32 (3, crop, crop) in [0, 1]."""
        from .preprocess import resize_center_crop

        return resize_center_crop(source, self.resize, self.crop)

    def predict_items(self, items: Sequence[tuple[str, Any]], *,
                      progress: Callable[[int], Any] | None = None) -> tuple[np.ndarray, list[Problem]]:
        """Scores of ``(label, source)`` pairs (:func:`memlens.data.collect_inputs`), NaN where a file could not
        be read (listed as problems)."""
        import torch

        net = self.network()
        dev = self.device_
        out = np.full(len(items), np.nan)
        problems: list[Problem] = []
        batch: list[np.ndarray] = []
        rows: list[int] = []

        def flush() -> None:
            if not batch:
                return
            x = torch.from_numpy(np.stack(batch)).to(dev).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                y = net(x).double().cpu().numpy().reshape(-1)
            out[rows] = y
            if progress is not None:
                progress(len(batch))
            batch.clear()
            rows.clear()

        for k, (label, src) in enumerate(items):
            try:
                batch.append(self.preprocess(src))
            except DataError as exc:
                problems.append(Problem(label, getattr(exc, "reason", None) or str(exc)))
                if progress is not None:
                    progress(1)
                continue
            rows.append(k)
            if len(batch) >= self.batch_size:
                flush()
        flush()
        return out, problems

    def predict(self, images: Any, *, progress: Callable[[int], Any] | None = None) -> np.ndarray:
        """Scores (N,) float64 for ``images``: paths, folders, PIL images or arrays in [0, 1] (one or a list;
        see :func:`memlens.data.collect_inputs`). A file that cannot be read raises
        :class:`memlens.errors.ValidationError` (one line per file)."""
        from ..data.inputs import collect_inputs

        items, problems = collect_inputs(images)
        if problems:
            raise ValidationError(problems)
        scores, problems = self.predict_items(items, progress=progress)
        if problems:
            raise ValidationError(problems)
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights!r}, device={self.device!r}, batch_size={self.batch_size})"
