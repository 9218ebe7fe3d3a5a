"""Training autoencoders: single ``exposure`` (the paper's memory experiment) and ``pretrain`` (visual experience).

``fit_autoencoder(model, images, mode=...)`` trains ``model`` in place and returns a :class:`TrainResult`
(the two modes are described in :mod:`memlens.train.fit`); ``train_run(source, out, ...)`` is the library
form of ``memlens train`` and writes a whole run directory.

Modules
-------
fit : :func:`fit_autoencoder`, the one training call (validation, splits and orders, resume, the loop).
exposure, pretrain : the two loops (:class:`ExposureLoop`: batch 1 in the seeded order, CUDA-graph fast
    path; :class:`PretrainLoop`: augmented mini-batch epochs, cosine schedule, validation).
loop : what both loops share (forward + loss, checkpoint writes, progress, layer modes).
state : the checkpointed loop state, RNG states, resuming from a training state.
images, augment, seeding, runtime : the images read, the augmentation, seed-derived randomness, and the
    device / threads / determinism settings.
distributed : DDP pretraining under ``torchrun`` (also importable as ``memlens.distributed``).
training_run : :func:`train_run` (and the released scripts' switches: ``order="category"``, ``bn="train"``,
    ``init_load="scripts"``, a ``"1-<metric>"`` loss); with experience (the visual-experience corpus and its caution), rundir
    (run-directory files, setting an earlier run aside) and records (orders, training curve, table hash).
"""

from __future__ import annotations

from .augment import CROP_RATIO, CROP_SCALE, augment_batch
from .experience import MAX_VAL_LOSS_RATIO, MIN_SCRATCH_EXPERIENCE_STEPS, experience_caution
from .fit import DEFAULT_CHECKPOINT_EVERY, DEFAULT_LR, fit_autoencoder, resolve_precision
from .loop import ProgressFn
from .records import table_sha256
from .result import TrainResult
from .rundir import LATER_OUTPUTS, RUN_FILES, TRAIN_STATES, has_resumable_state, later_outputs
from .runtime import auto_threads, busy_machine_note, resolve_device
from .seeding import derive_seed, seeded_generator, seeded_permutation
from .training_run import (
    DEFAULT_EXPERIENCE_FRACTION,
    DEFAULT_PRETRAIN_BATCH,
    DEFAULT_PRETRAIN_EPOCHS,
    category_order,
    train_run,
    untrained_decoder,
)

__all__ = [
    "fit_autoencoder", "train_run", "TrainResult", "resolve_device", "augment_batch", "DEFAULT_LR",
    # also public: used by the CLI, the report, the engines, tests
    "DEFAULT_CHECKPOINT_EVERY", "CROP_SCALE", "CROP_RATIO", "ProgressFn", "auto_threads", "busy_machine_note",
    "derive_seed", "seeded_generator", "seeded_permutation", "table_sha256", "experience_caution",
    "MIN_SCRATCH_EXPERIENCE_STEPS", "MAX_VAL_LOSS_RATIO", "LATER_OUTPUTS", "TRAIN_STATES", "RUN_FILES",
    "has_resumable_state", "later_outputs", "DEFAULT_EXPERIENCE_FRACTION", "DEFAULT_PRETRAIN_EPOCHS",
    "DEFAULT_PRETRAIN_BATCH", "resolve_precision", "category_order", "untrained_decoder",
]
