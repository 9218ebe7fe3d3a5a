"""Deprecated: moved to :mod:`memlens.scoring.ray_engine` (scoring), :mod:`memlens.inference_ray` (prediction)
and :mod:`memlens.ray_cluster` (Ray sessions); this alias goes in a later release."""

from __future__ import annotations

import warnings

from ..inference_ray import predict_images_ray
from ..ray_cluster import ray_session, require_ray, shard_plan
from ..scoring.ray_engine import DEFAULT_SHARD_SIZE, score_run_ray

__all__ = ["score_run_ray", "predict_images_ray", "require_ray", "ray_session", "shard_plan", "DEFAULT_SHARD_SIZE"]

warnings.warn("memlens.engines.ray_engine is deprecated: import from memlens.scoring.ray_engine or "
              "memlens.inference_ray", DeprecationWarning, stacklevel=2)
