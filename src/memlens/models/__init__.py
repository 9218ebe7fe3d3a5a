"""Autoencoders: the registry, the backbones and checkpoint I/O.

``create_autoencoder(name, init="scratch"|"imagenet"|PATH, **kw)``, ``list_autoencoders()``,
``get_spec(name)``; ``save_autoencoder(path, model, extra=None)``, ``load_autoencoder(path)``.
Every model maps images in [0, 1] (N, 3, H, W) to reconstructions in [0, 1].
"""

from __future__ import annotations

from .base import Autoencoder, BackboneSpec, check_image_range
from .checkpoint import read_checkpoint, save_autoencoder
from .registry import create_autoencoder, get_spec, list_autoencoders, load_autoencoder, register_autoencoder

__all__ = [
    "Autoencoder",
    "BackboneSpec",
    "check_image_range",
    "create_autoencoder",
    "list_autoencoders",
    "get_spec",
    "register_autoencoder",
    "save_autoencoder",
    "load_autoencoder",
    "read_checkpoint",
]
