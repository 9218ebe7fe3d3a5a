"""The kernel estimator: :class:`MemorabilitySVR` (RBF support-vector regression on standardised inputs, one
per column block, averaged) and its differentiable torch form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .scaling import standardised_chunks


class MemorabilitySVR(RegressorMixin, BaseEstimator):
    """Support-vector regressor (RBF kernel) on standardised inputs and target; optionally an ensemble.

    With ``blocks`` (``[(start, stop, weight), ...]`` column ranges, which may overlap) one SVR is fitted
    per block and the prediction is their weighted mean: a cheap ensemble over feature groups (e.g. one
    block per pretrained network, see :meth:`memlens.features.FeatureSet.blocks`). Each block's columns are
    z-scored with training statistics; ``gamma="scale"`` is scikit-learn's ``1 / (n_columns * var)``.

    Parameters
    ----------
    C, epsilon : float
        SVR penalty and tube width, in units of the standardised target.
    gamma : "scale" or float
    blocks : sequence of (int, int, float), optional
        Column blocks; None: one SVR on every column.

    Attributes
    ----------
    n_features_in_, y_mean_, y_scale_, blocks_ (list of (start, stop, weight)), x_mean_, x_scale_ (per
    column), support_vectors_, dual_coef_, intercept_, gamma_ (one entry per block).

    Examples
    --------
    >>> import numpy as np, memlens
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(150, 5))
    >>> y = np.tanh(X[:, 0]) + 0.1 * rng.normal(size=150)
    >>> model = memlens.MemorabilitySVR().fit(X, y)
    >>> model.predict(X[:3]).shape, bool(model.score(X, y) > 0.5)
    ((3,), True)
    """

    def __init__(self, C: float = 2.2, epsilon: float = 0.075, gamma: Any = "scale",
                 blocks: Sequence[Sequence[float]] | None = None):
        self.C = C
        self.epsilon = epsilon
        self.gamma = gamma
        self.blocks = blocks

    def fit(self, X: Any, y: Any, validation_data: Any = None) -> MemorabilitySVR:
        """Fit on (n, d) inputs and (n,) targets (``validation_data`` is accepted and ignored)."""
        from sklearn.svm import SVR

        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        d = X.shape[1]
        blocks = [(0, d, 1.0)] if self.blocks is None else [(int(a), int(b), float(w)) for a, b, w in self.blocks]
        for a, b, w in blocks:
            if not (0 <= a < b <= d) or not w > 0:
                raise ValueError(f"block ({a}, {b}, {w}) does not fit {d} columns with a positive weight")
        self.blocks_ = blocks
        self.y_mean_ = float(y.mean())
        sd = float(y.std())
        self.y_scale_ = sd if sd > 0 else 1.0
        yz = (y - self.y_mean_) / self.y_scale_
        self.x_mean_ = X.mean(axis=0).astype(np.float64)
        scale = X.std(axis=0).astype(np.float64)
        scale[scale == 0] = 1.0
        self.x_scale_ = scale
        Z = ((X - self.x_mean_) / self.x_scale_).astype(np.float64)
        self.support_vectors_, self.dual_coef_, self.intercept_, self.gamma_ = [], [], [], []
        for a, b, _ in blocks:
            svr = SVR(C=self.C, epsilon=self.epsilon, gamma=self.gamma).fit(Z[:, a:b], yz)
            self.support_vectors_.append(np.asarray(svr.support_vectors_, dtype=np.float32))
            self.dual_coef_.append(np.asarray(svr.dual_coef_[0], dtype=np.float64))
            self.intercept_.append(float(svr.intercept_[0]))
            self.gamma_.append(float(svr._gamma))
        return self

    def _decision(self, Z: np.ndarray) -> np.ndarray:
        total = np.zeros(len(Z))
        wsum = 0.0
        for (a, b, w), sv, dual, b0, g in zip(self.blocks_, self.support_vectors_, self.dual_coef_,
                                               self.intercept_, self.gamma_, strict=True):
            zb = Z[:, a:b]
            sv64 = sv.astype(np.float64)
            d2 = (zb * zb).sum(1)[:, None] + (sv64 * sv64).sum(1)[None, :] - 2.0 * zb @ sv64.T
            total += w * (np.exp(-g * np.maximum(d2, 0.0)) @ dual + b0)
            wsum += w
        return total / wsum

    def predict(self, X: Any) -> np.ndarray:
        """Predicted scores (n,), float64, in the units of the training target."""
        check_is_fitted(self, "support_vectors_")
        out = np.empty(0)
        for sl, z, out in standardised_chunks(self, X):
            out[sl] = self._decision(z) * self.y_scale_ + self.y_mean_
        return out

    def to_torch(self) -> nn.Module:
        """The fitted predictor as a differentiable torch module: (N, d) -> (N,)."""
        check_is_fitted(self, "support_vectors_")
        return _KernelHead(self)

    def get_state(self) -> dict[str, Any]:
        """Parameters and fitted arrays as a ``torch.save``/``weights_only``-compatible dict."""
        check_is_fitted(self, "support_vectors_")
        gamma = self.gamma if isinstance(self.gamma, str) else float(self.gamma)
        return {
            "type": "svr",
            "params": {"C": float(self.C), "epsilon": float(self.epsilon), "gamma": gamma,
                       "blocks": [list(b) for b in self.blocks_] if self.blocks is not None else None},
            "blocks": [list(b) for b in self.blocks_],
            "x_mean": torch.from_numpy(self.x_mean_), "x_scale": torch.from_numpy(self.x_scale_),
            "y_mean": self.y_mean_, "y_scale": self.y_scale_, "n_features_in": int(self.n_features_in_),
            "support_vectors": [torch.from_numpy(np.ascontiguousarray(v)) for v in self.support_vectors_],
            "dual_coef": [torch.from_numpy(v) for v in self.dual_coef_],
            "intercept": list(self.intercept_), "gamma": list(self.gamma_),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MemorabilitySVR:
        """Rebuild a fitted estimator from :meth:`get_state`'s dict."""
        p = dict(state["params"])
        est = cls(C=p["C"], epsilon=p["epsilon"], gamma=p["gamma"],
                  blocks=[tuple(b) for b in p["blocks"]] if p.get("blocks") is not None else None)
        est.blocks_ = [(int(a), int(b), float(w)) for a, b, w in state["blocks"]]
        est.x_mean_ = state["x_mean"].cpu().numpy().astype(np.float64)
        est.x_scale_ = state["x_scale"].cpu().numpy().astype(np.float64)
        est.y_mean_, est.y_scale_ = float(state["y_mean"]), float(state["y_scale"])
        est.n_features_in_ = int(state["n_features_in"])
        est.support_vectors_ = [v.cpu().numpy().astype(np.float32) for v in state["support_vectors"]]
        est.dual_coef_ = [v.cpu().numpy().astype(np.float64) for v in state["dual_coef"]]
        est.intercept_ = [float(v) for v in state["intercept"]]
        est.gamma_ = [float(v) for v in state["gamma"]]
        return est


class _KernelHead(nn.Module):
    """Differentiable form of a fitted :class:`MemorabilitySVR` (float32)."""

    def __init__(self, est: MemorabilitySVR):
        super().__init__()
        self.register_buffer("x_mean", torch.tensor(est.x_mean_, dtype=torch.float32))
        self.register_buffer("x_scale", torch.tensor(est.x_scale_, dtype=torch.float32))
        self.blocks = [(a, b, w) for a, b, w in est.blocks_]
        self.sv = nn.ParameterList(nn.Parameter(torch.from_numpy(v.copy()), requires_grad=False)
                                   for v in est.support_vectors_)
        self.dual = nn.ParameterList(nn.Parameter(torch.tensor(v, dtype=torch.float32), requires_grad=False)
                                     for v in est.dual_coef_)
        self.intercepts = list(est.intercept_)
        self.gammas = list(est.gamma_)
        self.y_mean, self.y_scale = est.y_mean_, est.y_scale_

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.float() - self.x_mean) / self.x_scale
        total = torch.zeros(len(z), dtype=z.dtype, device=z.device)
        wsum = 0.0
        for (a, b, w), sv, dual, b0, g in zip(self.blocks, self.sv, self.dual, self.intercepts, self.gammas,
                                               strict=True):
            # pairwise, not through a matrix product: an image's score must not depend on its row in the batch
            # (the matrix-product form rounds rows differently: two copies of one image scored 1e-6 apart)
            d2 = torch.cdist(z[:, a:b], sv, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
            total = total + w * ((torch.exp(-g * d2) * dual).sum(dim=1) + b0)
            wsum += w
        return total / wsum * self.y_scale + self.y_mean

