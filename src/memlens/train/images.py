"""The images a training reads: validated access to a tensor, a sequence or a Dataset, and batches of them.

:class:`TrainImages` checks each image once (shape, size multiple, value range) and optionally caches the
decoded tensors across epochs; :func:`iter_batches` stacks batches in order, decoding in worker processes
when asked.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..models.base import check_image_range

__all__ = ["TrainImages", "iter_batches"]

class TrainImages:
    """Uniform, validated access to a tensor, a sequence of tensors or a torch Dataset of images."""

    def __init__(self, images: Any, size_multiple: int, cache: bool):
        if isinstance(images, torch.utils.data.DataLoader):
            images = images.dataset
        if torch.is_tensor(images):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
            check_image_range(images)
        elif not hasattr(images, "__getitem__") or not hasattr(images, "__len__"):
            raise TypeError("images must be a tensor (N, 3, H, W), a sequence of (3, H, W) tensors or a Dataset")
        self.src = images
        self.n = len(images)
        self.multiple = size_multiple
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.shape: tuple[int, ...] | None = None
        self._checked: set[int] = set()
        if torch.is_tensor(images):  # validated as a whole above: no per-image reads (GPU syncs) later
            if images.shape[2] % size_multiple or images.shape[3] % size_multiple:
                raise ValueError(f"image sides must be multiples of {size_multiple} for this model, got "
                                 f"{tuple(images.shape[2:])}")
            self.shape = tuple(images.shape[1:])
            self._checked = set(range(self.n))

    def __len__(self) -> int:
        return self.n

    def get(self, i: int) -> torch.Tensor:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        item = self.src[i]
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not torch.is_tensor(item):
            item = torch.as_tensor(np.asarray(item))
        x = item if item.dtype == torch.float32 else item.to(torch.float32)
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if i not in self._checked:
            if x.ndim != 3 or x.shape[0] != 3:
                raise ValueError(f"image {i}: expected a (3, H, W) tensor, got shape {tuple(x.shape)}")
            if self.shape is None:
                self.shape = tuple(x.shape)
                if x.shape[1] % self.multiple or x.shape[2] % self.multiple:
                    raise ValueError(f"image sides must be multiples of {self.multiple} for this model, got "
                                     f"{tuple(x.shape[1:])}")
            elif tuple(x.shape) != self.shape:
                raise ValueError(f"image {i} has shape {tuple(x.shape)}, the first had {self.shape}; resize all "
                                 "images to one size")
            check_image_range(x[None], what=f"image {i}")
            self._checked.add(i)
        if self.cache is not None:
            self.cache[i] = x
        return x

    def batch(self, idx: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.get(int(i)) for i in idx])


def iter_batches(images: TrainImages, batches: Sequence[Sequence[int]], num_workers: int) -> Iterator[torch.Tensor]:
    """Yield stacked batches in order; with workers, decode in background processes (order kept)."""
    cache = images.cache
    on_gpu = isinstance(images.src, (list, tuple)) and any(torch.is_tensor(t) and t.is_cuda for t in images.src)
    if num_workers <= 0 or torch.is_tensor(images.src) or on_gpu or (
            cache is not None and all(int(i) in cache for b in batches for i in b)):
        for b in batches:
            yield images.batch(b)
        return
    loader = torch.utils.data.DataLoader(
        _Indexed(images), batch_sampler=[list(b) for b in batches], num_workers=num_workers,
        collate_fn=_collate)
    for b, x in zip(batches, loader, strict=True):
        if cache is not None:  # workers decoded (and validated) them: keep them for the next epochs
            for j, i in enumerate(b):
                cache[int(i)] = x[j]
        yield x


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, images: TrainImages):
        self.images = images

    def __len__(self) -> int:
        return self.images.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images.get(i)


def _collate(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(items)
