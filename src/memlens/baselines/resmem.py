"""ResMem (Needell & Bainbridge 2022) in plain torch, with its published weights.

The network: a ResNet-152 (the torchvision layout: bottleneck blocks [3, 8, 36, 3] with the stride in the 3 x 3
convolution, its 1000 ImageNet logits kept as features) beside an AlexNet-like branch (conv 11 x 11 / 4 -> 48,
max-pool 3/2, local response normalisation over 5 channels; conv 5 x 5 -> 256 in 2 groups, pool, LRN; three
3 x 3 convs -> 384, 384, 256 in 2 groups; pool: 256 x 6 x 6 = 9,216 values; ReLU after each conv), the
branch's features and the ResNet's logits concatenated (10,216) and an MLP 4096-4096-2048-1024-512-256-1 with
ReLUs and a sigmoid: a score in [0, 1]. Input: 227 x 227 RGB in [0, 1], not normalised.

The weights are the ``model.pt`` of the ``resmem`` wheel on PyPI (a plain state dict, 956 tensors, 528 MB;
ResMem Non-commercial License, (c) 2021 The University of Chicago). They are loaded with
``torch.load(weights_only=True)`` into this implementation, strictly (every key and shape). The ``resmem``
package itself is never imported: it imports torchvision, which pip cannot install beside a CPU torch 2.13
without replacing it (docs/baselines.md). Install the weights with ``pip install --no-deps resmem``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .pretrained import PretrainedBaseline, WeightsNotFound, load_state_dict_file, load_strict
from .registry import BaselineInfo, register_baseline

__all__ = ["ResMemNet", "ResNet152", "ResMem", "find_resmem_weights", "RESMEM_ENV", "INFO"]

#: environment variable naming the weights file
RESMEM_ENV = "MEMLENS_RESMEM_WEIGHTS"
#: how to get the weights (every "not found" message says it)
HOW_TO_GET = ("pip install --no-deps resmem (its wheel holds model.pt, 528 MB; --no-deps keeps your torch: the "
              "package's torchvision requirement would replace it), or give --weights resmem=PATH "
              f"(weights=PATH in Python; or {RESMEM_ENV}=PATH)")

INFO = BaselineInfo(
    name="resmem",
    description="ResMem: ResNet-152 + AlexNet-like features, MLP head, sigmoid (Needell & Bainbridge 2022)",
    inputs="RGB resized to 256 x 256 (aspect not kept, bilinear), centre 227 x 227, [0, 1], no normalisation",
    license="ResMem Non-commercial License (c) 2021 The University of Chicago: non-commercial use only",
    trained_on=("LaMem", "MemCat"),
    needs_fit=False,
    reference="Needell, C. D., & Bainbridge, W. A. (2022). Embracing new techniques in deep learning for "
              "estimating image memorability. Computational Brain & Behavior, 5, 168-184.",
    order=10,
    weights="model.pt of the resmem wheel (PyPI, version 1.1.6): pip install --no-deps resmem",
)


# ------------------------------------------------------------------------------------------- the network
class _Bottleneck(nn.Module):
    """ResNet bottleneck (torchvision's v1.5: the stride sits in the 3 x 3 convolution)."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))  # for models.base.fold_batchnorm

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet152(nn.Module):
    """ResNet-152 with torchvision's module names (``conv1``, ``bn1``, ``layer1``-``layer4``, ``fc``): images
    (N, 3, H, W) -> the ``fc`` outputs (N, 1000)."""

    conv_bn_pairs = (("conv1", "bn1"),)  # for models.base.fold_batchnorm

    def __init__(self, blocks: tuple[int, int, int, int] = (3, 8, 36, 3), n_out: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            layer = []
            for j in range(n):
                layer.append(_Bottleneck(cin, width, stride=2 if (j == 0 and i > 0) else 1))
                cin = width * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(cin, n_out)

    def fold_batchnorm(self) -> ResNet152:
        """Fold every batch norm into the convolution before it (inference only: the module can no longer be
        trained or loaded from a state dict); the outputs stay equal up to float rounding."""
        from ..models.base import fold_batchnorm

        fold_batchnorm(self, inplace=True)  # the stem, every bottleneck and the downsample Sequentials
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResMemNet(nn.Module):
    """The ResMem network: images (N, 3, 227, 227) in [0, 1] -> scores (N,) in [0, 1]. Module names are those of
    the published state dict (``features.*`` the ResNet-152, ``conv1``-``conv5`` the branch, ``fc6``-``fc12``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = ResNet152()
        self.conv1 = nn.Conv2d(3, 48, 11, stride=4)
        self.conv2 = nn.Conv2d(48, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1, groups=2)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.lrn = nn.LocalResponseNorm(5)
        widths = (256 * 6 * 6 + 1000, 4096, 4096, 2048, 1024, 512, 256, 1)
        for k, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            setattr(self, f"fc{k + 6}", nn.Linear(a, b))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The AlexNet-like features (N, 9216)."""
        x = self.lrn(F.max_pool2d(F.relu(self.conv1(x)), 3, stride=2))
        x = self.lrn(F.max_pool2d(F.relu(self.conv2(x)), 3, stride=2))
        x = F.relu(self.conv5(F.relu(self.conv4(F.relu(self.conv3(x))))))
        return torch.flatten(F.max_pool2d(x, 3, stride=2), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.branch(x), self.features(x)], dim=1)
        for k in range(6, 12):
            h = F.relu(getattr(self, f"fc{k}")(h))
        return torch.sigmoid(self.fc12(h)).reshape(-1)


# ------------------------------------------------------------------------------------------- the weights
def _installed_weights() -> list[Path]:
    """``model.pt`` of an installed ``resmem`` distribution, found without importing the package."""
    found: list[Path] = []
    try:
        dist = importlib.metadata.distribution("resmem")
        found.append(Path(str(dist.locate_file("resmem/model.pt"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        spec = importlib.util.find_spec("resmem")  # locates the package; does not run its __init__
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in list(spec.submodule_search_locations or []) + ([str(Path(spec.origin).parent)] if spec.origin else []):
            found.append(Path(loc) / "model.pt")
    return list(dict.fromkeys(found))


def find_resmem_weights(weights: str | os.PathLike | None = None) -> Path:
    """The ResMem weights file: ``weights``, else ``$MEMLENS_RESMEM_WEIGHTS``, else the installed ``resmem``
    distribution's ``model.pt``. :class:`~memlens.baselines.pretrained.WeightsNotFound` (one line saying how to
    get them) when none exists."""
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WeightsNotFound(f"resmem weights {p}: no such file; {HOW_TO_GET}")
        return p
    env = os.environ.get(RESMEM_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise WeightsNotFound(f"{RESMEM_ENV}={env}: no such file; {HOW_TO_GET}")
        return p
    for p in _installed_weights():
        if p.is_file():
            return p
    raise WeightsNotFound(f"ResMem weights not found (no {RESMEM_ENV}, no installed resmem package): {HOW_TO_GET}")


def _available(weights: str | os.PathLike | None = None, **_kw: Any) -> tuple[bool, str]:
    try:
        find_resmem_weights(weights)
    except WeightsNotFound as exc:
        return False, str(exc)
    return True, ""


class ResMem(PretrainedBaseline):
    """ResMem as a memlens baseline: ``ResMem().predict(images)`` -> scores in [0, 1] (higher = more memorable).

    Parameters
    ----------
    weights : the ``model.pt`` file; default: ``$MEMLENS_RESMEM_WEIGHTS``, then the installed ``resmem``
        distribution's (``pip install --no-deps resmem``).
    device : ``auto``, ``cpu``, ``cuda``...
    batch_size : images per forward pass.
    """

    info = INFO
    resize = 256
    crop = 227

    def find_weights(self) -> Path:
        return find_resmem_weights(self.weights)

    def build(self, path: Path) -> nn.Module:
        net = ResMemNet()
        load_strict(net, load_state_dict_file(path, "ResMem"), path, "ResMem")
        net.eval()
        net.features.fold_batchnorm()  # inference only: one pass less per layer (equal up to float rounding)
        return net.to(memory_format=torch.channels_last)


register_baseline(INFO, lambda **kw: ResMem(**kw), _available)
