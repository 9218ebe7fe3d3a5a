"""Fine-tuned EfficientNet-Lite memorability regressors, trained on cached trunk activations.

An ImageNet EfficientNet-Lite is split after one of its stages (1-7; :data:`TRUNK_STAGE`, stage 5, by default):
the *trunk* (stem to that stage) stays frozen with its ImageNet weights, the *tail* (the remaining stages,
the 1x1 head convolution and a new linear output on the global average) is fine-tuned on the memorability
target. Because the trunk is frozen, its activations are computed once per image (and once for the mirrored
image) and cached; training the tail then costs a fraction of end-to-end fine-tuning, which makes it practical
on a 2-core CPU.

* :class:`TrunkActivations` -- the cached activations of a set of images (any aspect ratio: maps of different
  sizes), indexable like an array so that cross-validation can subset it.
* :func:`trunk_activations` -- computes them for image files, decoded as a feature set decodes them.
* :class:`FineTunedLiteRegressor` -- a scikit-learn-style estimator on :class:`TrunkActivations`: trains one
  tail per seed (AdamW, one-cycle schedule, a fixed number of epochs, random crops of the activation map and
  mirrored images as augmentation, MSE on the z-scored target plus an optional pairwise ranking term) and
  predicts the mean over seeds and over the image and its mirror image (test-time augmentation).
* :class:`LiteTail` -- one fine-tuned tail as a module (activations -> score), used by
  :class:`memlens.predict.MemorabilityModel` to predict from images.

The batch-norm layers of the tail keep their ImageNet statistics (eval mode) and are folded into the
convolutions after training: a score never depends on the other images of a batch.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: the trunk ends after this stage (``EfficientNetLite.forward_stages`` index: 0 stem, 1-7 stages, 8 head)
TRUNK_STAGE = 5
#: EfficientNet-Lite's stages: a trunk ends after one of stages 1 to 7 (after 7 only the head is fine-tuned)
N_STAGES = 7


class TrunkActivations:
    """Frozen-trunk activations of N images: for each image a float16 array (2, C, h, w), the image and its
    mirror image. Index it with an integer array (``acts[idx]``) to get a subset, like a numpy array."""

    def __init__(self, maps: Sequence[np.ndarray], variant: str, stage: int = TRUNK_STAGE):
        self.maps = list(maps)
        self.variant = variant
        self.stage = int(stage)

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, idx: Any) -> TrunkActivations:
        idx = np.arange(len(self.maps))[idx]
        return TrunkActivations([self.maps[int(i)] for i in np.atleast_1d(idx)], self.variant, self.stage)

    @property
    def channels(self) -> int:
        return int(self.maps[0].shape[1])

    def save(self, path: Any) -> None:
        """One ``.npz``: the maps flattened into one float16 array, with their shapes."""
        from .._io import atomic_path

        shapes = np.array([m.shape for m in self.maps], dtype=np.int64).reshape(-1, 4)
        flat = np.concatenate([m.reshape(-1) for m in self.maps]) if self.maps else np.zeros(0, np.float16)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, flat=flat.astype(np.float16), shapes=shapes, variant=np.array(self.variant),
                     stage=np.array(self.stage))

    @classmethod
    def load(cls, path: Any) -> TrunkActivations:
        with np.load(path, allow_pickle=False) as z:
            flat, shapes = z["flat"], z["shapes"]
            variant, stage = str(z["variant"]), int(z["stage"])
        maps, pos = [], 0
        for s in shapes:
            n = int(np.prod(s))
            maps.append(flat[pos:pos + n].reshape(tuple(int(v) for v in s)))
            pos += n
        return cls(maps, variant, stage)


class LiteTail(nn.Module):
    """The fine-tuned part of an EfficientNet-Lite: the stages after the trunk, the head convolution, a
    global average and a linear output, then the target scaling: activations (N, C, h, w) -> scores (N,)."""

    def __init__(self, variant: str = "efficientnet_lite0", stage: int = TRUNK_STAGE, *, net: nn.Module | None = None):
        super().__init__()
        from ..models.efficientnet import efficientnet_lite

        if not 1 <= int(stage) <= N_STAGES:
            raise ValueError(f"a tail starts after stage 1-{N_STAGES} of the trunk, got stage {stage}")
        if net is None:
            net = efficientnet_lite(variant, weights=None)
        end = net.stage_ends[int(stage) - 1]
        self.variant, self.stage = variant, int(stage)
        self.blocks = nn.ModuleList(list(net.blocks)[end + 1:])
        self.head = net.head
        self.out = nn.Linear(1280, 1)
        self.register_buffer("y_mean", torch.tensor(0.0))
        self.register_buffer("y_scale", torch.tensor(1.0))

    def forward_z(self, a: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        for b in self.blocks:
            a = b(a)
        h = self.head(a).mean(dim=(2, 3))
        return self.out(F.dropout(h, dropout, self.training and dropout > 0)).squeeze(1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.forward_z(a) * self.y_scale + self.y_mean

    def train(self, mode: bool = True) -> LiteTail:
        """Batch norm stays in eval mode (ImageNet statistics) whatever ``mode`` is."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def trunk_activations(images: Any, variant: str, *, stage: int = TRUNK_STAGE, batch_size: int = 16,
                      device: str = "cpu", progress: Callable[[int], Any] | None = None) -> TrunkActivations:
    """Frozen-trunk activations of images: an iterable of float32 arrays/tensors (3, H, W) in [0, 1] at the
    network's resolution (its shorter side; any aspect), each with its mirror image. Images of one shape are
    batched; the result does not depend on the batching."""
    from ..models.efficientnet import efficientnet_lite, fuse_batchnorm, normalize_lite

    net = fuse_batchnorm(efficientnet_lite(variant).eval()).to(device)
    maps: list[np.ndarray] = []
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.stack([t for _, t in pending]).to(device).float()
        with torch.inference_mode():
            a = net.forward_stages(normalize_lite(torch.cat([x, x.flip(3)])), until=stage)[stage]
        a = a.half().cpu().numpy()
        n = len(pending)
        for k in range(n):
            maps.append(np.stack([a[k], a[n + k]]))
        if progress is not None:
            progress(n)
        pending.clear()

    for img in images:
        t = torch.as_tensor(img)
        if pending and (t.shape != pending[0][1].shape or len(pending) >= batch_size):
            flush()
        pending.append((len(maps) + len(pending), t))
    flush()
    return TrunkActivations(maps, variant, stage)


#: the default training window on a map of the default trunk stage: 12 of the 14 positions of a 224 px square
DEFAULT_CROP = 12


@functools.cache
def stage_stride(stage: int) -> int:
    """How many input pixels one position of ``stage``'s map spans (the same for every Lite variant: the stem
    and the stages' strides of :func:`memlens.models.efficientnet.stage_plan`)."""
    from ..models.efficientnet import LITE_VARIANTS, stage_plan

    plan = stage_plan(LITE_VARIANTS["efficientnet_lite0"])
    return 2 * math.prod(s for _, _, s, _, _ in plan[:int(stage)])  # the stem halves the input


def crop_side(crop: float | None, h: int, w: int, stage: int = TRUNK_STAGE) -> int:
    """The side of a training window on an ``h`` x ``w`` map of ``stage``: ``None`` (the default) is
    :data:`DEFAULT_CROP` positions at the default stage's stride (16: stages 4-5), scaled to the stage's
    (:func:`stage_stride`; 24 at stage 3, 6 at stages 6-7);
    a ``crop`` in (0, 1) is a fraction of the map's shorter side (rounded); 1 or more a number of positions.
    Never more than the shorter side."""
    if crop is None:
        c = DEFAULT_CROP * stage_stride(TRUNK_STAGE) // stage_stride(stage)
    elif 0 < crop < 1:
        c = int(round(float(crop) * min(h, w)))
    else:
        c = int(crop)
    return max(1, min(c, h, w))


def _batch(maps: list[np.ndarray], flip: np.ndarray, crop: float | None, stage: int,
           rng: np.random.Generator) -> torch.Tensor:
    """Random square windows (:func:`crop_side`; of the image or its mirror) from maps of any size."""
    out = []
    for m, f in zip(maps, flip, strict=True):
        a = m[1 if f else 0]
        h, w = a.shape[-2:]
        c = crop_side(crop, h, w, stage)
        top, left = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        out.append(a[:, top:top + c, left:left + c])
    return torch.from_numpy(np.stack(out).astype(np.float32))


class FineTunedLiteRegressor:
    """Fine-tunes the tail of an ImageNet EfficientNet-Lite on :class:`TrunkActivations` (scikit-learn style:
    ``__init__`` stores parameters, ``fit`` returns self, fitted attributes end in ``_``).

    Parameters
    ----------
    variant : EfficientNet-Lite variant whose trunk made the activations.
    epochs : training epochs (fixed: no early stopping, whose small validation split was too noisy to choose
        an epoch on ~1,500 images).
    lr : peak learning rate of the pretrained layers (one-cycle schedule); the new output layer gets 10x.
    batch_size, weight_decay, dropout : AdamW minibatch training; dropout before the output layer.
    crop : side of the random square window cut from each activation map while training (:func:`crop_side`):
        ``None`` (default) 12 positions at stages 4-5 (of the 14 x 14 map of a square image at 224 px), scaled
        with the stage's stride elsewhere (24 at stage 3, 6 at stages 6-7); a number in (0, 1) a fraction of the
        map's shorter side; 1 or more a number of positions.
    rank_weight : weight of a pairwise logistic ranking loss added to the MSE (0: MSE only).
    n_seeds : tails trained with different seeds; predictions are their mean.
    random_state : base seed.
    num_threads : torch CPU threads while fitting (restored afterwards); None leaves them.
    """

    def __init__(self, variant: str = "efficientnet_lite0", epochs: int = 8, lr: float = 3e-4, batch_size: int = 32,
                 weight_decay: float = 1e-2, dropout: float = 0.3, crop: float | None = None, rank_weight: float = 0.0,
                 n_seeds: int = 1, random_state: int = 0, device: str = "cpu", num_threads: int | None = None):
        self.variant = variant
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.crop = crop
        self.rank_weight = rank_weight
        self.n_seeds = n_seeds
        self.random_state = random_state
        self.device = device
        self.num_threads = num_threads

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("variant", "epochs", "lr", "batch_size", "weight_decay", "dropout",
                                              "crop", "rank_weight", "n_seeds", "random_state", "device",
                                              "num_threads")}

    def set_params(self, **params: Any) -> FineTunedLiteRegressor:
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def fit(self, acts: TrunkActivations, y: Any, validation_data: Any = None) -> FineTunedLiteRegressor:
        y = np.asarray(y, dtype=np.float64)
        if len(acts) != len(y):
            raise ValueError(f"{len(acts)} activation maps but {len(y)} targets")
        if acts.variant != self.variant:
            raise ValueError(f"activations of {acts.variant}, regressor for {self.variant}")
        if self.crop is not None and not (math.isfinite(float(self.crop)) and float(self.crop) > 0):
            raise ValueError(f"crop must be None, a fraction in (0, 1) or a number of positions, got {self.crop}")
        old = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        try:
            self.tails_ = [self._fit_one(acts, y, int(self.random_state) + 1000 * k) for k in range(int(self.n_seeds))]
        finally:
            torch.set_num_threads(old)
        self.n_features_in_ = acts.channels
        self.stage_ = acts.stage
        return self

    def _fit_one(self, acts: TrunkActivations, y: np.ndarray, seed: int) -> LiteTail:
        from ..models.efficientnet import efficientnet_lite
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rng = np.random.default_rng(seed)
            crop = None if self.crop is None else float(self.crop)
            tail = LiteTail(self.variant, acts.stage, net=efficientnet_lite(self.variant))
            nn.init.zeros_(tail.out.weight)
            nn.init.zeros_(tail.out.bias)
            y_mean, y_scale = float(y.mean()), float(y.std()) or 1.0
            tail.y_mean.fill_(y_mean)
            tail.y_scale.fill_(y_scale)
            z = torch.from_numpy((y - y_mean) / y_scale).float()
            dev = torch.device(self.device)
            tail.to(dev)
            pre = [p for n, p in tail.named_parameters() if not n.startswith("out.")]
            opt = torch.optim.AdamW([{"params": pre, "lr": self.lr}, {"params": tail.out.parameters(),
                                                                      "lr": self.lr * 10}],
                                    weight_decay=self.weight_decay)
            bs = int(self.batch_size)
            steps = int(self.epochs) * math.ceil(len(y) / bs)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[self.lr, self.lr * 10], total_steps=steps,
                                                        pct_start=0.15)
            tail.train()
            for _ in range(int(self.epochs)):
                order = rng.permutation(len(y))
                for a in range(0, len(order), bs):
                    b = order[a:a + bs]
                    x = _batch([acts.maps[i] for i in b], rng.random(len(b)) < 0.5, crop, acts.stage, rng).to(dev)
                    t = z[b].to(dev)
                    p = tail.forward_z(x, float(self.dropout))
                    loss = F.mse_loss(p, t)
                    if self.rank_weight > 0 and len(b) > 1:
                        d = p[:, None] - p[None, :]
                        s = torch.sign(t[:, None] - t[None, :])
                        loss = loss + self.rank_weight * (F.softplus(-s * d) * (s != 0)).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
            tail.eval()
            if not all(torch.isfinite(p).all() for p in tail.parameters()):
                from ..errors import TrainingError

                raise TrainingError(f"fine-tuning {self.variant} diverged (lr {self.lr:g}); lower it")
        return fold_tail(tail.cpu())

    def predict(self, acts: TrunkActivations, batch_size: int = 64) -> np.ndarray:
        """Mean over seeds and over each image and its mirror image, in the target's units (float64)."""
        out = np.zeros(len(acts))
        shapes: dict[tuple[int, ...], list[int]] = {}
        for i, m in enumerate(acts.maps):
            shapes.setdefault(tuple(m.shape), []).append(i)
        with torch.inference_mode():
            for idx in shapes.values():
                for a in range(0, len(idx), batch_size):
                    b = idx[a:a + batch_size]
                    x = torch.from_numpy(np.stack([acts.maps[i] for i in b]).astype(np.float32))
                    n = len(b)
                    x = x.reshape(n * 2, *x.shape[2:])
                    s = torch.stack([t(x) for t in self.tails_]).mean(0).double().reshape(n, 2).mean(1)
                    out[b] = s.numpy()
        return out

    # -- serialisation (plain tensors, no pickles) -----------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        params = {k: v for k, v in self.get_params().items() if k not in ("device", "num_threads")}
        return {"type": "finetuned-lite", "params": params, "stage": int(self.stage_),
                "n_features_in": int(self.n_features_in_),
                "tails": [{k: v.detach().clone() for k, v in t.state_dict().items()} for t in self.tails_]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FineTunedLiteRegressor:
        est = cls(**state["params"])
        est.stage_ = int(state["stage"])
        est.n_features_in_ = int(state["n_features_in"])
        est.tails_ = []
        for sd in state["tails"]:
            tail = folded_tail_skeleton(est.variant, est.stage_)
            tail.load_state_dict(sd)
            est.tails_.append(tail.eval())
        return est


def fold_tail(tail: LiteTail) -> LiteTail:
    """The tail with every batch norm folded into its convolution (eval-mode equivalent, fewer operations)."""
    from ..models.efficientnet import fuse_batchnorm

    tail = copy.deepcopy(tail).eval()
    fuse_batchnorm(tail)
    for p in tail.parameters():
        p.requires_grad_(False)
    return tail


def folded_tail_skeleton(variant: str, stage: int) -> LiteTail:
    """An untrained tail with folded batch norm: the shape :meth:`FineTunedLiteRegressor.from_state` loads."""
    return fold_tail(LiteTail(variant, stage))
