"""Per-image scoring: plan -> execute -> write, in one direction.

==================  =====================================================================================
module              owns
==================  =====================================================================================
``plan``            :func:`prepare_run` -> :class:`ScoreJob`: the run's images, metrics, references, device
``sources``         every kind of image source (data set, table, paths, tensor, iterable) as batches
``batch``           :class:`~memlens.scoring.batch.BatchScorer`, the per-batch function every engine runs:
                    ``recon_<m>``, latents, pretrained features of one batch
``precision``       float32 / bfloat16 autocast / int8 copies of the autoencoders
``arrays``          streaming ``.npy`` row writers, reproducible ``.npz``
``execute``         :func:`score_images`: a source through the batch function, in this process
``write``           :func:`finish_run`: ``per_image.csv``, ``latent_ids.txt``, the run's ``score`` settings
``engines``         :func:`score_run`: plan + an engine (``local`` or ``ray``) + write
``ray_engine``      the Ray engine: shards of the table through :func:`score_images` in Ray actors
==================  =====================================================================================

Engines import the planner, the executor and the writer; nothing here imports an engine back.
"""

from __future__ import annotations

from .batch import CPU_CHUNK_PIXELS, FEATURE_SIZE, BatchScorer, pretrained_features, resolve_device
from .engines import ENGINES, INDEXES, score_run
from .execute import ScoreResult, score_images
from .plan import DEFAULT_METRICS, ScoreJob, default_metrics, prepare_run
from .precision import PRECISIONS
from .write import finish_run

__all__ = ["ScoreResult", "score_images", "score_run", "default_metrics", "resolve_device", "pretrained_features",
           "DEFAULT_METRICS", "FEATURE_SIZE", "CPU_CHUNK_PIXELS", "PRECISIONS", "ENGINES", "INDEXES", "ScoreJob",
           "prepare_run", "finish_run", "BatchScorer"]
