"""Deprecated: per-image scoring moved to :mod:`memlens.scoring` (this alias goes in a later release)."""

from __future__ import annotations

import warnings

from .scoring import (
    CPU_CHUNK_PIXELS,
    DEFAULT_METRICS,
    FEATURE_SIZE,
    ScoreResult,
    default_metrics,
    pretrained_features,
    resolve_device,
    score_images,
    score_run,
)

__all__ = ["ScoreResult", "score_images", "score_run", "default_metrics", "resolve_device",
           "pretrained_features", "DEFAULT_METRICS", "FEATURE_SIZE", "CPU_CHUNK_PIXELS"]

warnings.warn("memlens.measures is deprecated: import from memlens.scoring", DeprecationWarning, stacklevel=2)
