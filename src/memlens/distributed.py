"""DDP training under ``torchrun``: the old import path of :mod:`memlens.train.distributed`, which owns it."""

from __future__ import annotations

from .train.distributed import (
    DistContext,
    DistributedBatchSampler,
    GlobalBatchNorm,
    check_batches,
    context_for_training,
    convert_batchnorm,
    current,
    init_from_env,
    launched,
    part_bounds,
    restore_batchnorm,
    scratch_output,
    shutdown,
    unwrap,
    wrap_model,
)

__all__ = ["DistContext", "GlobalBatchNorm", "DistributedBatchSampler", "launched", "init_from_env",
           "context_for_training", "current", "convert_batchnorm", "restore_batchnorm", "wrap_model", "unwrap",
           "part_bounds", "scratch_output", "shutdown", "check_batches"]
