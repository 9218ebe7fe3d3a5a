"""memlens: model image memorability with autoencoders.

The public API is re-exported here; from a notebook, ``memlens.predict_images``, ``memlens.score`` and
``memlens.analyze`` return pandas DataFrames in one call. Heavy modules (torch, pandas, ...) are imported lazily on first
attribute access, so ``import memlens`` and ``memlens --version`` stay fast.

Conventions: images are float32 RGB in [0, 1], shape (N, 3, H, W); every ``recon_*`` measure is a
distance (higher = worse reconstruction); statistics use paired bootstraps with explicit seeds.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "MemlensError": "memlens.errors",
    "DataError": "memlens.errors",
    "ValidationError": "memlens.errors",
    "CheckpointError": "memlens.errors",
    "ConfigError": "memlens.errors",
    "RunDirError": "memlens.errors",
    "TrainingError": "memlens.errors",
    # data
    "load_dataset": "memlens.data",
    "validate_dataset": "memlens.data",
    "make_demo_set": "memlens.data",
    "load_split_halves": "memlens.data",
    # models and training
    "create_autoencoder": "memlens.models",
    "list_autoencoders": "memlens.models",
    "fit_autoencoder": "memlens.train",
    # metrics and measures
    "get_metric": "memlens.metrics",
    "list_metrics": "memlens.metrics",
    "distinctiveness": "memlens.neighbors",
    "score_images": "memlens.scoring",
    # statistics
    "correlate": "memlens.stats",
    "correlation_table": "memlens.stats",
    "split_half_reliability": "memlens.stats",
    # prediction and explanation
    "MemorabilityRegressor": "memlens.predict",
    "MemorabilitySVR": "memlens.predict",
    "MemorabilityModel": "memlens.predict",
    "extract_feature_set": "memlens.features",
    "list_feature_sets": "memlens.features",
    "integrated_gradients": "memlens.explain",
    "visual_descriptors": "memlens.explain",
    # one call from a notebook: DataFrames in, DataFrames out
    "predict_images": "memlens.api",
    "score": "memlens.api",
    "analyze": "memlens.api",
    # other memorability models (ResMem, ViTMem, memlens's own baselines)
    "list_baselines": "memlens.baselines",
    "get_baseline": "memlens.baselines",
    "baseline_info": "memlens.baselines",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name.startswith("_") or "." in name:  # private modules, dunder probes, dotted names: not attributes
            raise AttributeError(f"module 'memlens' has no attribute {name!r}")
        # a submodule (memlens.explain, memlens.stats, ...): available as an attribute without importing it first
        try:
            return importlib.import_module(f"memlens.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"memlens.{name}":
                raise
        raise AttributeError(f"module 'memlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
