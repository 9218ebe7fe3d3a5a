"""Memorability models to compare memlens with: a registry of adapters with one method, ``predict(images)``.

==============  ===========  ====================================================================================
name            needs fit    what
==============  ===========  ====================================================================================
``resmem``      no           ResMem (Needell & Bainbridge 2022): ResNet-152 + AlexNet-like branch, MLP head;
                             weights from ``pip install --no-deps resmem``; **non-commercial licence**
``vitmem``      no           ViTMem (Hagen & Espeseth 2023): ViT-B/16; weights from the authors' server, put in
                             torch hub's checkpoints folder by hand (never downloaded by memlens)
``ridge-lite0`` yes          ridge regression on EfficientNet-Lite0 multi-stage features (``lite0-crop``)
``paper-mlp``   yes          the paper's MLP on a run's autoencoder latents
==============  ===========  ====================================================================================

>>> import memlens
>>> memlens.list_baselines()
['resmem', 'vitmem', 'ridge-lite0', 'paper-mlp']

``get_baseline(name, **kw)`` returns the adapter (``.info``: name, inputs, licence, ``trained_on``, ``needs_fit``);
pretrained ones predict at once (``get_baseline("resmem").predict(paths)``), the others after
``fit(images, scores)``. ``memlens baselines RUN`` (:func:`compare_baselines`) puts them beside the run's
predictor on the same images and folds. Both pretrained networks are implemented here in plain torch (no
torchvision, no timm: those would replace a CPU torch 2.13 when pip installs them) and load the published
weights strictly. Preprocessing is the authors' (:mod:`memlens.baselines.preprocess`). See docs/baselines.md.
"""

from __future__ import annotations

from . import fitted as _fitted  # noqa: F401 - registers ridge-lite0 and paper-mlp
from . import resmem as _resmem  # noqa: F401 - registers resmem
from . import vitmem as _vitmem  # noqa: F401 - registers vitmem
from .compare import BaselineComparison, compare_baselines, resolve_models, training_overlap
from .fitted import PaperMLP, RidgeLite0
from .pretrained import PretrainedBaseline, WeightsNotFound
from .registry import (
    BASELINES,
    BaselineInfo,
    baseline_available,
    baseline_info,
    get_baseline,
    list_baselines,
    register_baseline,
)
from .resmem import ResMem, find_resmem_weights
from .vitmem import ViTMem, find_vitmem_weights

__all__ = [
    "list_baselines",
    "get_baseline",
    "baseline_info",
    "baseline_available",
    "register_baseline",
    "BaselineInfo",
    "BASELINES",
    "compare_baselines",
    "BaselineComparison",
    "resolve_models",
    "training_overlap",
    "ResMem",
    "ViTMem",
    "RidgeLite0",
    "PaperMLP",
    "PretrainedBaseline",
    "WeightsNotFound",
    "find_resmem_weights",
    "find_vitmem_weights",
]
