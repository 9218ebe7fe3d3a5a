"""ViTMem (Hagen & Espeseth 2023) in plain torch: a ViT-B/16 with one sigmoid output.

The network is timm's ``vit_base_patch16_224_miil`` with ``num_classes=1``, written here so that neither timm
nor torchvision (which pip cannot install beside a CPU torch 2.13 without replacing it) is needed: 16 x 16
patches embedded by a convolution (768 channels), a class token and learned position embeddings (197 x 768),
12 pre-norm blocks (LayerNorm eps 1e-6; 12-head self-attention whose qkv projection has **no bias**, the MIIL
variant; an MLP 768-3072-768 with exact GELU), a final LayerNorm, the class token through a linear head, a
sigmoid: a score in [0, 1]. Module names are timm's under the prefix ``vit.``, as in the ViTMem checkpoint.
Input: 224 x 224 RGB in [0, 1] (its normalisation, mean 0 and std 1, is the identity).

The weights (``vitmem_base_patch16_224_miil_v1-f580d24a.pth``) are published on the authors' server, not on
PyPI; memlens never downloads them. Put the file in torch hub's checkpoints folder (where the ``vitmem``
package itself caches it) or give its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .pretrained import PretrainedBaseline, WeightsNotFound, load_state_dict_file, load_strict
from .registry import BaselineInfo, register_baseline

__all__ = ["VisionTransformer", "ViTMemNet", "ViTMem", "find_vitmem_weights", "VITMEM_ENV", "VITMEM_FILE",
           "VITMEM_URL", "INFO"]

VITMEM_ENV = "MEMLENS_VITMEM_WEIGHTS"
VITMEM_FILE = "vitmem_base_patch16_224_miil_v1-f580d24a.pth"
VITMEM_URL = f"https://brainpriority.com/models/{VITMEM_FILE}"

INFO = BaselineInfo(
    name="vitmem",
    description="ViTMem: ViT-B/16 (timm vit_base_patch16_224_miil), one sigmoid output (Hagen & Espeseth 2023)",
    inputs="RGB resized to 256 x 256 (aspect not kept, bilinear), centre 224 x 224, [0, 1] (mean 0, std 1)",
    license="the vitmem package's own licence (it does not allow reusing its code; check its terms for the "
            "weights before use); weights from the authors' server",
    trained_on=("LaMem", "MemCat"),
    needs_fit=False,
    reference="Hagen, T., & Espeseth, T. (2023). Image memorability prediction with vision transformers. "
              "arXiv:2301.08647.",
    order=20,
    weights=f"{VITMEM_FILE} ({VITMEM_URL}), placed in torch hub's checkpoints folder",
)


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _how_to_get() -> str:
    return (f"download {VITMEM_URL} on a machine with network and put {VITMEM_FILE} in {_hub_checkpoints()} "
            f"(torch hub's checkpoints folder), or give --weights vitmem=PATH (weights=PATH in Python; or "
            f"{VITMEM_ENV}=PATH)")


def find_vitmem_weights(weights: str | os.PathLike | None = None) -> Path:
    """The ViTMem weights: ``weights``, else ``$MEMLENS_VITMEM_WEIGHTS``, else
    ``<torch hub dir>/checkpoints/vitmem_base_patch16_224_miil_v1-f580d24a.pth``;
    :class:`~memlens.baselines.pretrained.WeightsNotFound` (one line) otherwise. Nothing is downloaded."""
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WeightsNotFound(f"vitmem weights {p}: no such file; {_how_to_get()}")
        return p
    env = os.environ.get(VITMEM_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise WeightsNotFound(f"{VITMEM_ENV}={env}: no such file; {_how_to_get()}")
        return p
    p = _hub_checkpoints() / VITMEM_FILE
    if p.is_file():
        return p
    raise WeightsNotFound(f"ViTMem weights not found ({VITMEM_FILE}): {_how_to_get()}")


def _available(weights: str | os.PathLike | None = None, **_kw: Any) -> tuple[bool, str]:
    try:
        find_vitmem_weights(weights)
    except WeightsNotFound as exc:
        return False, str(exc)
    return True, ""


# ------------------------------------------------------------------------------------------- the network
class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head dim)) v
        return self.proj(y.transpose(1, 2).reshape(n, t, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A ViT with a class token (timm's module names): images (N, 3, size, size) -> head outputs (N, n_out)."""

    def __init__(self, size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, n_out: int = 1, eps: float = 1e-6):
        super().__init__()
        self.patch_embed = _PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (size // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList([_Block(dim, heads, mlp_ratio, qkv_bias, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        return self.head(self.norm(t)[:, 0])


class ViTMemNet(nn.Module):
    """The ViTMem network: images (N, 3, 224, 224) in [0, 1] -> scores (N,) in [0, 1] (``vit.*`` keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = VisionTransformer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.vit(x)).reshape(-1)


class ViTMem(PretrainedBaseline):
    """ViTMem as a memlens baseline: ``ViTMem().predict(images)`` -> scores in [0, 1] (higher = more memorable).

    Parameters
    ----------
    weights : the ``.pth`` file; default: ``$MEMLENS_VITMEM_WEIGHTS``, then torch hub's checkpoints folder.
    device : ``auto``, ``cpu``, ``cuda``...
    batch_size : images per forward pass.
    """

    info = INFO
    resize = 256
    crop = 224

    def find_weights(self) -> Path:
        return find_vitmem_weights(self.weights)

    def build(self, path: Path) -> nn.Module:
        net = ViTMemNet()
        state = load_state_dict_file(path, "ViTMem")
        if state and not any(k.startswith("vit.") for k in state):  # a bare timm state dict
            state = {f"vit.{k}": v for k, v in state.items()}
        load_strict(net, state, path, "ViTMem")
        return net


register_baseline(INFO, lambda **kw: ViTMem(**kw), _available)
