"""Memorability prediction: an MLP regressor (scikit-learn estimator, torch inside) and an image -> score model.

* :class:`MemorabilityRegressor` — a scikit-learn regressor: standardises inputs and target, trains a torch
  MLP (ReLU, dropout, AdamW weight decay) with early stopping on an inner validation split, and predicts in
  float64 with numpy from the learned weights (``coefs_``, ``intercepts_``; a row's prediction does not
  depend on the other rows). Deterministic for a given ``random_state``; the global torch RNG is untouched.
* :class:`MemorabilityModel` — an ``nn.Module``: images in [0, 1] (N, 3, H, W) -> (N,) predicted scores,
  through one or more encoders (an autoencoder's bottleneck, pretrained features), pooling, the input
  scaler, the MLP and the inverse target scaler, all as differentiable torch operations (Integrated
  Gradients flow from the score back to the pixels).
* :func:`save_predictor` / :func:`load_memorability_model` — ``RUN/predictor.pt``: a plain dict of tensors,
  numbers and strings (readable with ``torch.load(weights_only=True)``) holding the head and a recipe for
  each encoder (the autoencoder checkpoint it refers to, with its SHA-256, or a pretrained network's name).
* :func:`make_splits`, :func:`prediction_metrics`, :func:`cross_validate` — the evaluation used by
  ``memlens fit-predictor`` (:func:`fit_predictor_run`).

Modules: ``scaling`` (row-chunked z-scoring), ``mlp`` (:class:`MemorabilityRegressor`), ``svr``
(:class:`MemorabilitySVR`), ``predictor_file`` (the ``predictor.pt`` format), ``model``
(:class:`MemorabilityModel`, :func:`load_memorability_model`), ``evaluation`` (splits, metrics,
cross-validation, the untouched holdout), ``selection`` (honest estimates: the candidates, the choice, the
estimate with its CI), ``finetune`` (fine-tuned EfficientNet-Lite tails on cached trunk activations), ``inputs``
(what a run's predictor is fitted on), ``fitting`` (:func:`fit_predictor_run`).
"""

from __future__ import annotations

from .evaluation import (
    RIDGE_ALPHAS,
    CVResult,
    cross_validate,
    holdout_split,
    linear_head,
    make_splits,
    prediction_metrics,
    ridge_baseline,
    strata_labels,
    summarize_cv,
)
from .finetune import FineTunedLiteRegressor, TrunkActivations
from .fitting import DEFAULT_MODEL, MODELS, fit_predictor_run, saved_model
from .inputs import DEFAULT_INPUTS, RunInputs, load_run_inputs, run_feature_set
from .mlp import MemorabilityRegressor
from .model import MemorabilityModel, load_memorability_model
from .predictor_file import (
    PREDICTOR_FORMAT,
    PREDICTOR_VERSION,
    load_regressor,
    read_predictor,
    regressor_from_state,
    save_predictor,
    weights_sha256,
)
from .selection import estimate, paired_gains, resolve_holdout
from .svr import MemorabilitySVR

__all__ = [
    "MemorabilityRegressor",
    "MemorabilitySVR",
    "MemorabilityModel",
    "save_predictor",
    "load_memorability_model",
    "make_splits",
    "holdout_split",
    "prediction_metrics",
    "cross_validate",
    "CVResult",
    "fit_predictor_run",
    "load_run_inputs",
    "saved_model",
    "PREDICTOR_FORMAT",
    "DEFAULT_INPUTS",
    # also public (the CLI, tests and benchmarks import them from here)
    "RunInputs",
    "run_feature_set",
    "strata_labels",
    "ridge_baseline",
    "summarize_cv",
    "RIDGE_ALPHAS",
    "read_predictor",
    "load_regressor",
    "regressor_from_state",
    "weights_sha256",
    "PREDICTOR_VERSION",
    "DEFAULT_MODEL",
    "MODELS",
    "linear_head",
    "estimate",
    "paired_gains",
    "resolve_holdout",
    "FineTunedLiteRegressor",
    "TrunkActivations",
]
