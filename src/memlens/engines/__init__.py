"""Deprecated: the engines moved to :mod:`memlens.scoring` (``score_run``, ``prepare_run``, ``finish_run``) and
:mod:`memlens.scoring.ray_engine`; this alias goes in a later release."""

from __future__ import annotations

import warnings

from ..scoring import ENGINES, INDEXES, ScoreJob, finish_run, prepare_run, score_run

__all__ = ["ENGINES", "INDEXES", "ScoreJob", "score_run", "prepare_run", "finish_run"]

warnings.warn("memlens.engines is deprecated: import from memlens.scoring", DeprecationWarning, stacklevel=2)
