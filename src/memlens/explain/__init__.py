"""Explanations: Integrated Gradients maps, overlays, aggregate maps, a randomisation sanity check, and
the visual descriptors of memorable images.

The model explained is any ``nn.Module`` mapping images in [0, 1], shape (N, 3, H, W), to one score per
image, shape (N,) (the :class:`memlens.predict.MemorabilityModel`: the frozen encoder(s) of the predictor's
inputs, e.g. the ImageNet EfficientNet-Lite networks of a feature set or an autoencoder's encoder, then the
fitted head). :func:`explain_run` explains each scored image of a run with the cross-validation fold model that
was not fitted on it (``model_for="oof"``, refitted) or with the final model (``"final"``). Definitions
(IG, baselines, convergence delta, the sanity check, every descriptor) are in ``docs/explain.md``.

The science functions (:func:`integrated_gradients`, :func:`aggregate_maps`, :func:`randomization_check`,
the figures) take tensors/arrays and do no I/O; :func:`explain_run` is the edge that reads a run directory
and writes ``RUN/attributions/``, ``RUN/descriptors.csv`` and ``RUN/descriptor_correlations.csv``.

Modules: ``gradients`` (IG core) -> ``maps`` (normalisation, aggregates, figures) and ``sanity`` (the
randomisation check); ``models`` (which model explains each image: fold models or the final one) -> ``stage``
(:func:`explain_run`, the run-directory edge). The descriptors themselves are
:mod:`memlens.descriptors`.
"""

from __future__ import annotations

from ..descriptors import DESCRIPTOR_COLUMNS, center_share, visual_descriptors
from .gradients import (
    BASELINES,
    DELTA_ABS_FLOOR,
    IGResult,
    default_blur_sigma,
    gaussian_blur,
    integrated_gradients,
    make_baseline,
)
from .maps import (
    AggregateMaps,
    aggregate_figure,
    aggregate_maps,
    normalize_maps,
    overlay_figure,
    quartile_groups,
    save_figure,
)
from .sanity import SANITY_THRESHOLD, RandomizationCheck, randomization_check, randomize_weights
from .stage import explain_run

__all__ = [
    "IGResult",
    "RandomizationCheck",
    "AggregateMaps",
    "BASELINES",
    "integrated_gradients",
    "make_baseline",
    "gaussian_blur",
    "default_blur_sigma",
    "normalize_maps",
    "aggregate_maps",
    "overlay_figure",
    "aggregate_figure",
    "save_figure",
    "randomize_weights",
    "randomization_check",
    "visual_descriptors",
    "center_share",
    "DESCRIPTOR_COLUMNS",
    "explain_run",
    "quartile_groups",
    "DELTA_ABS_FLOOR",
    "SANITY_THRESHOLD",
]
