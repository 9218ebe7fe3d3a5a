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
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .models.base import check_image_range

__all__ = [
    "MemorabilityRegressor",
    "MemorabilitySVR",
    "MemorabilityModel",
    "save_predictor",
    "load_memorability_model",
    "make_splits",
    "prediction_metrics",
    "cross_validate",
    "CVResult",
    "fit_predictor_run",
    "load_run_inputs",
    "saved_model",
    "PREDICTOR_FORMAT",
    "DEFAULT_INPUTS",
]

log = logging.getLogger(__name__)

PREDICTOR_FORMAT = "memlens.predictor"
PREDICTOR_VERSION = 1
#: default inputs of ``memlens fit-predictor`` (chosen by measurement, see docs/predictor.md)
DEFAULT_INPUTS = "lite01"  # a feature set of memlens.features (see docs/predictor.md)
DEFAULT_MODEL = "svr"
MODELS = ("svr", "mlp")
#: ridge baseline penalties (on standardised inputs; RidgeCV picks one by efficient leave-one-out)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 6, 15))
_PRED_CHUNK = 2048
_PRETRAINED_WIDTH = 1280  # pooled EfficientNet-Lite head features


# ==========================================================================================================
# the estimator
# ==========================================================================================================
def _standardised_chunks(est: Any, X: Any) -> Any:
    """Validate ``X`` for a fitted estimator and yield ``(rows, z-scored float64 rows, output array)`` in
    chunks of :data:`_PRED_CHUNK` (a row's prediction never depends on the other rows)."""
    X = validate_data(est, X, dtype=[np.float64, np.float32], reset=False)
    out = np.empty(len(X))
    if len(X) == 0:
        yield slice(0, 0), np.empty((0, X.shape[1])), out
    for a in range(0, len(X), _PRED_CHUNK):
        sl = slice(a, a + _PRED_CHUNK)
        yield sl, (np.asarray(X[sl], dtype=np.float64) - est.x_mean_) / est.x_scale_, out


class MemorabilityRegressor(RegressorMixin, BaseEstimator):
    """Multi-layer perceptron regressor with early stopping (scikit-learn API, torch training).

    Parameters
    ----------
    hidden : sequence of int
        Hidden layer widths (``()`` gives a linear model).
    dropout : float
        Dropout probability after each hidden layer (training only).
    weight_decay : float
        AdamW decoupled weight decay.
    lr : float
        AdamW learning rate.
    max_epochs : int
        Upper bound on passes over the training data.
    batch_size : int
        Minibatch size.
    patience : int
        Stop after this many epochs without a lower validation loss; the best epoch's weights are kept.
    val_fraction : float
        Fraction of the training rows held out (at random) for early stopping when ``fit`` gets no
        ``validation_data``; 0 disables early stopping (all ``max_epochs`` are run).
    standardize : bool
        Z-score inputs (per column) and target with statistics of the training rows.
    random_state : int, RandomState or None
        Seeds the weight initialisation, the minibatch order, dropout and the inner split.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (training only; prediction runs in numpy).
    num_threads : int or None
        CPU threads torch may use while fitting (its setting is restored afterwards). Small MLPs train
        fastest on one thread, and several threads slow down badly on a shared, busy CPU; None keeps
        torch's current setting.

    Attributes
    ----------
    n_features_in_ : int
    coefs_, intercepts_ : list of ndarray
        Layer weights ``(in, out)`` and biases (float32), as in scikit-learn's ``MLPRegressor``.
    x_mean_, x_scale_ : ndarray (n_features,)
    y_mean_, y_scale_ : float
    n_epochs_ : int
        Epochs run.
    best_epoch_ : int
        Epoch (1-based) whose weights were kept.
    best_val_loss_ : float
        Validation MSE (standardised target) at ``best_epoch_``; NaN without validation.
    loss_curve_, val_loss_curve_ : list of float
        Training and validation MSE per epoch (standardised target).
    """

    def __init__(self, hidden: Sequence[int] = (256,), dropout: float = 0.2, weight_decay: float = 1e-4,
                 lr: float = 1e-3, max_epochs: int = 200, batch_size: int = 64, patience: int = 20,
                 val_fraction: float = 0.1, standardize: bool = True, random_state: Any = None,
                 device: str = "cpu", num_threads: int | None = 1):
        self.hidden = hidden
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.patience = patience
        self.val_fraction = val_fraction
        self.standardize = standardize
        self.random_state = random_state
        self.device = device
        self.num_threads = num_threads

    # -- parameters ----------------------------------------------------------------------------------
    def _check_params(self) -> tuple[int, ...]:
        hidden = (self.hidden,) if isinstance(self.hidden, (int, np.integer)) else tuple(self.hidden)
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive integers, got {self.hidden!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr!r}, {self.weight_decay!r}")
        for name in ("max_epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        return tuple(int(h) for h in hidden)

    # -- fit -----------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, validation_data: tuple[Any, Any] | None = None) -> MemorabilityRegressor:
        """Fit on ``X`` (n, d) and ``y`` (n,); early stopping on ``validation_data`` or an inner split.

        Parameters
        ----------
        X, y : array-like
        validation_data : (X_val, y_val), optional
            Rows used only for early stopping (e.g. the validation split of the paper's 60/10/30 design).
            Without it, ``val_fraction`` of the training rows are held out at random.
        """
        hidden = self._check_params()
        threads = torch.get_num_threads()
        if self.num_threads is not None and self.num_threads != threads:
            torch.set_num_threads(max(1, int(self.num_threads)))
        try:
            return self._fit(X, y, validation_data, hidden)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    def _fit(self, X: Any, y: Any, validation_data: tuple[Any, Any] | None,
             hidden: tuple[int, ...]) -> MemorabilityRegressor:
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], y_numeric=True,
                             ensure_min_samples=1)
        y = np.asarray(y, dtype=np.float64)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(0, 2**31 - 1))

        if validation_data is not None:
            Xv, yv = validation_data
            Xv = validate_data(self, Xv, dtype=[np.float32, np.float64], reset=False)
            yv = np.asarray(yv, dtype=np.float64).ravel()
            if len(yv) != len(Xv):
                raise ValueError(f"validation_data: {len(Xv)} rows in X but {len(yv)} in y")
            X_tr, y_tr, X_val, y_val = X, y, Xv, yv
        else:
            n_val = int(round(self.val_fraction * len(X)))
            if n_val >= 1 and len(X) - n_val >= 2:
                perm = rng.permutation(len(X))
                va, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
                X_tr, y_tr, X_val, y_val = X[tr], y[tr], X[va], y[va]
            else:
                X_tr, y_tr, X_val, y_val = X, y, None, None

        if self.standardize:
            self.x_mean_ = np.mean(X_tr, axis=0, dtype=np.float64)
            sd = np.std(X_tr, axis=0, dtype=np.float64)
            self.x_scale_ = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(self.x_mean_)), sd, 1.0)
            self.y_mean_ = float(np.mean(y_tr))
            ysd = float(np.std(y_tr))
            self.y_scale_ = ysd if ysd > 1e-12 * max(1.0, abs(self.y_mean_)) else 1.0
        else:
            self.x_mean_ = np.zeros(X.shape[1])
            self.x_scale_ = np.ones(X.shape[1])
            self.y_mean_, self.y_scale_ = 0.0, 1.0

        dev = _torch_device(self.device)
        Xt = torch.from_numpy(self._scale_x(X_tr)).to(dev)
        yt = torch.from_numpy(((y_tr - self.y_mean_) / self.y_scale_).astype(np.float32)).to(dev)
        if X_val is not None:
            Xvt = torch.from_numpy(self._scale_x(X_val)).to(dev)
            yvt = torch.from_numpy(((y_val - self.y_mean_) / self.y_scale_).astype(np.float32)).to(dev)

        fork_devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed + 1)
            net = _build_mlp(X.shape[1], hidden, float(self.dropout)).to(dev)
            opt = torch.optim.AdamW(net.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
            best_state = copy.deepcopy(net.state_dict())
            best, best_epoch, bad = math.inf, 0, 0
            curve: list[float] = []
            val_curve: list[float] = []
            n_tr, bs = len(Xt), int(self.batch_size)
            epoch = 0
            for epoch in range(1, int(self.max_epochs) + 1):
                net.train()
                perm = torch.randperm(n_tr, generator=gen).to(dev)
                total = 0.0
                for a in range(0, n_tr, bs):
                    idx = perm[a:a + bs]
                    loss = torch.mean((net(Xt[idx]).squeeze(1) - yt[idx]) ** 2)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                curve.append(total / n_tr)
                if not math.isfinite(curve[-1]):
                    raise ValueError("training diverged (non-finite loss); lower lr or check the inputs")
                if X_val is None:
                    best_epoch = epoch
                    continue
                net.eval()
                with torch.no_grad():
                    vl = float(torch.mean((net(Xvt).squeeze(1) - yvt) ** 2))
                val_curve.append(vl)
                if vl < best:
                    best, best_epoch, bad = vl, epoch, 0
                    best_state = copy.deepcopy(net.state_dict())
                else:
                    bad += 1
                    if bad >= int(self.patience):
                        break
            if X_val is not None:
                net.load_state_dict(best_state)
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        self.coefs_ = [m.weight.detach().cpu().numpy().T.copy() for m in linears]
        self.intercepts_ = [m.bias.detach().cpu().numpy().copy() for m in linears]
        self.n_epochs_ = int(epoch)
        self.best_epoch_ = int(best_epoch)
        self.best_val_loss_ = float(best) if X_val is not None else math.nan
        self.loss_curve_ = curve
        self.val_loss_curve_ = val_curve
        return self

    def _scale_x(self, X: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape, dtype=np.float32)
        for a in range(0, len(X), _PRED_CHUNK):
            out[a:a + _PRED_CHUNK] = (X[a:a + _PRED_CHUNK] - self.x_mean_) / self.x_scale_
        return out

    # -- predict -------------------------------------------------------------------------------------
    def predict(self, X: Any) -> np.ndarray:
        """Predicted scores (n,), float64, in the units of the training target."""
        check_is_fitted(self, "coefs_")
        out = np.empty(0)
        for sl, h, out in _standardised_chunks(self, X):
            for i, (w, b) in enumerate(zip(self.coefs_, self.intercepts_, strict=True)):
                h = h @ w.astype(np.float64) + b.astype(np.float64)
                if i < len(self.coefs_) - 1:
                    np.maximum(h, 0, out=h)
            out[sl] = h[:, 0] * self.y_scale_ + self.y_mean_
        return out

    # -- torch / serialisation -----------------------------------------------------------------------
    def to_torch(self) -> nn.Module:
        """The fitted predictor as a differentiable torch module: (N, d) -> (N,), scalers included."""
        check_is_fitted(self, "coefs_")
        return _Head.from_arrays(self.coefs_, self.intercepts_, self.x_mean_, self.x_scale_, self.y_mean_,
                                 self.y_scale_, float(self.dropout))

    def get_state(self) -> dict[str, Any]:
        """Parameters and fitted arrays as a ``torch.save``/``weights_only``-compatible dict."""
        check_is_fitted(self, "coefs_")
        params = self.get_params()
        params["hidden"] = [int(h) for h in ((params["hidden"],) if isinstance(params["hidden"], int)
                                              else params["hidden"])]
        rs = params["random_state"]
        params["random_state"] = int(rs) if isinstance(rs, (int, np.integer)) else None
        return {
            "params": params,
            "coefs": [torch.from_numpy(np.ascontiguousarray(w)) for w in self.coefs_],
            "intercepts": [torch.from_numpy(np.ascontiguousarray(b)) for b in self.intercepts_],
            "x_mean": torch.from_numpy(np.asarray(self.x_mean_, dtype=np.float64)),
            "x_scale": torch.from_numpy(np.asarray(self.x_scale_, dtype=np.float64)),
            "y_mean": float(self.y_mean_),
            "y_scale": float(self.y_scale_),
            "n_features_in": int(self.n_features_in_),
            "n_epochs": int(self.n_epochs_),
            "best_epoch": int(self.best_epoch_),
            "best_val_loss": float(self.best_val_loss_),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MemorabilityRegressor:
        """Rebuild a fitted estimator from :meth:`get_state`'s dict."""
        params = dict(state["params"])
        params["hidden"] = tuple(params.get("hidden", (256,)))
        est = cls(**params)
        est.coefs_ = [np.asarray(w.cpu().numpy(), dtype=np.float32) for w in state["coefs"]]
        est.intercepts_ = [np.asarray(b.cpu().numpy(), dtype=np.float32) for b in state["intercepts"]]
        est.x_mean_ = state["x_mean"].cpu().numpy().astype(np.float64)
        est.x_scale_ = state["x_scale"].cpu().numpy().astype(np.float64)
        est.y_mean_, est.y_scale_ = float(state["y_mean"]), float(state["y_scale"])
        est.n_features_in_ = int(state["n_features_in"])
        est.n_epochs_ = int(state.get("n_epochs", 0))
        est.best_epoch_ = int(state.get("best_epoch", 0))
        est.best_val_loss_ = float(state.get("best_val_loss", math.nan))
        est.loss_curve_, est.val_loss_curve_ = [], []
        return est


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
        for sl, z, out in _standardised_chunks(self, X):
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
            d2 = torch.cdist(z[:, a:b], sv).pow(2)
            total = total + w * (torch.exp(-g * d2) @ dual + b0)
            wsum += w
        return total / wsum * self.y_scale + self.y_mean


def regressor_from_state(state: dict[str, Any]) -> Any:
    """A fitted head from its saved state: :class:`MemorabilitySVR` or :class:`MemorabilityRegressor`."""
    if state.get("type") == "svr":
        return MemorabilitySVR.from_state(state)
    return MemorabilityRegressor.from_state(state)


def _torch_device(device: str) -> Any:


    from .errors import ConfigError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA device")
    return dev


def _build_mlp(d_in: int, hidden: tuple[int, ...], dropout: float) -> Any:
    from torch import nn

    layers: list[nn.Module] = []
    prev = d_in
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU(), nn.Dropout(dropout)]
        prev = h
    layers.append(nn.Linear(prev, 1))
    return nn.Sequential(*layers)


class _Head(nn.Module):
    """Input scaler -> MLP -> inverse target scaler, all torch ops: (N, d) -> (N,)."""

    def __init__(self, mlp: nn.Sequential, x_mean: torch.Tensor, x_scale: torch.Tensor, y_mean: float,
                 y_scale: float):
        super().__init__()
        self.mlp = mlp
        self.register_buffer("x_mean", x_mean.float())
        self.register_buffer("x_scale", x_scale.float())
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_scale", torch.tensor(float(y_scale)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp((z - self.x_mean) / self.x_scale).squeeze(1) * self.y_scale + self.y_mean

    @classmethod
    def from_arrays(cls, coefs: list[np.ndarray], intercepts: list[np.ndarray], x_mean: np.ndarray,
                    x_scale: np.ndarray, y_mean: float, y_scale: float, dropout: float = 0.0) -> _Head:
        mlp = _build_mlp(coefs[0].shape[0], tuple(w.shape[1] for w in coefs[:-1]), dropout)
        linears = [m for m in mlp if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, coefs, intercepts, strict=True):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(w, np.float32).T)))
                lin.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))
        head = cls(mlp, torch.as_tensor(np.asarray(x_mean)), torch.as_tensor(np.asarray(x_scale)), y_mean, y_scale)
        return head.eval()


# ==========================================================================================================
# image -> score
# ==========================================================================================================
class _Encode(nn.Module):
    """An autoencoder as an encoder: images -> ``encode(x)`` (or the output of a named layer)."""

    def __init__(self, ae: nn.Module, layer: str | None):
        super().__init__()
        self.autoencoder = ae
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ae = self.autoencoder
        if self.layer is None:
            return ae.encode(x, check=False) if hasattr(ae, "encode") else ae(x)
        target = dict(ae.named_modules()).get(self.layer)
        if target is None:
            from .errors import ConfigError

            raise ConfigError(f"layer {self.layer!r} not found in the autoencoder")
        captured: list[torch.Tensor] = []
        hook = target.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            z = ae.encode(x, check=False) if hasattr(ae, "encode") else ae(x)
            if not captured and hasattr(ae, "decode"):
                ae.decode(z)
        finally:
            hook.remove()
        return captured[0]


def _encode_wrapper(encoder: nn.Module, layer: str | None) -> nn.Module:
    if layer is None and not hasattr(encoder, "encode"):
        return encoder
    return _Encode(encoder, layer)


def _per_branch(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: one value per encoder ({n}) expected, got {len(value)}")
        return list(value)
    return [value] * n


class MemorabilityModel(nn.Module):
    """Images in [0, 1] (N, 3, H, W) -> predicted memorability (N,): encoder(s) + pooling + regression head.

    Parameters
    ----------
    encoder : nn.Module or sequence of nn.Module
        Maps images to a latent (N, C, h, w) or features (N, D). An autoencoder is used through its
        ``encode``. Several encoders are concatenated in order (e.g. latents and pretrained features).
    head : MemorabilitySVR, MemorabilityRegressor or nn.Module
        A fitted regressor (the SVR, memlens's default, or the MLP; converted with its ``to_torch``) or a
        module (N, D) -> (N,).
    pool : {"none", "avg"} or a sequence of them
        ``none`` flattens each latent, ``avg`` averages over positions first (as ``memlens score --pool``).
    sizes : int or sequence of int, optional
        Square side each encoder expects; other inputs are resized (bilinear, antialiased) first.
    layer : str or sequence, optional
        Module of an autoencoder whose output is the latent (as ``memlens score --layer``).
    recipe : list of dict, optional
        How to rebuild each encoder when saving/loading (set by :func:`load_memorability_model`).

    Attributes
    ----------
    encoder : nn.Module (a ``ModuleList`` for several encoders)
    head : nn.Module (input scaler, SVR kernel expansion or MLP, inverse target scaler)
    regressor : the fitted :class:`MemorabilitySVR` or :class:`MemorabilityRegressor`, when given
    input_size : the side images should have (the first encoder's), or None

    Encoders always stay in eval mode (batch-norm statistics are part of the fitted pipeline), so a
    score never depends on the other images of a batch.
    """

    def __init__(self, encoder: Any, head: Any, pool: Any = "none", *, sizes: Any = None, layer: Any = None,
                 recipe: list[dict[str, Any]] | None = None):
        super().__init__()
        encoders = list(encoder) if isinstance(encoder, (list, tuple, nn.ModuleList)) else [encoder]
        if not encoders:
            raise ValueError("at least one encoder is needed")
        n = len(encoders)
        pools = _per_branch(pool, n, "pool")
        bad = [p for p in pools if p not in ("none", "avg")]
        if bad:
            raise ValueError(f"pool must be 'none' or 'avg', got {bad[0]!r}")
        layers = _per_branch(layer, n, "layer")
        wrapped = [_encode_wrapper(e, lay) for e, lay in zip(encoders, layers, strict=True)]
        self.encoder = wrapped[0] if n == 1 else nn.ModuleList(wrapped)
        self.pools = pools
        self.sizes = [int(s) if s else None for s in _per_branch(sizes, n, "sizes")]
        if isinstance(head, (MemorabilityRegressor, MemorabilitySVR)):
            self.regressor: MemorabilityRegressor | None = head
            head = head.to_torch()
        else:
            self.regressor = None
        self.head = head
        self.recipe = recipe
        self.info: dict[str, Any] = {}
        self.input_size = self.sizes[0]
        fs = getattr(wrapped[0], "feature_set", None)
        #: how ``memlens predict`` decodes files: ("square", side) or ("aspect", shorter side) for feature
        #: sets that keep the aspect ratio (images of different shapes then go one shape at a time)
        self.image_spec = ("aspect", fs.load_size) if (fs is not None and fs.aspect == "keep") else \
            ("square", self.input_size or (fs.load_size if fs is not None else None))
        self.eval()

    def _encoders(self) -> list[nn.Module]:
        return list(self.encoder) if isinstance(self.encoder, nn.ModuleList) else [self.encoder]

    def features(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The head's input (N, D): every encoder's pooled, flattened output, concatenated."""
        if check:
            check_image_range(x)
        parts = []
        for enc, pool, size in zip(self._encoders(), self.pools, self.sizes, strict=True):
            xi = x
            if size and tuple(x.shape[-2:]) != (size, size):
                h, w = x.shape[-2:]
                if h != w:  # the centre square, as the data pipeline crops
                    m = min(h, w)
                    xi = x[..., (h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
                xi = F.interpolate(xi, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True).clamp(0, 1)
            z = enc(xi)
            if isinstance(z, (list, tuple)):
                z = z[-1]
            if pool == "avg" and z.ndim >= 3:
                z = z.flatten(2).mean(2)
            parts.append(z.flatten(1).float())
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Predicted scores (N,) for images (N, 3, H, W) in [0, 1]; differentiable."""
        return self.head(self.features(x, check=check))

    def train(self, mode: bool = True) -> MemorabilityModel:
        """Only the head follows ``mode``; encoders stay in eval mode."""
        super().train(mode)
        for enc in self._encoders():
            enc.eval()
        return self

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int = 32) -> np.ndarray:
        """Scores (N,) as float64 numpy for images (N, 3, H, W) in [0, 1], in batches."""
        was = self.training
        self.eval()
        dev = next(iter(self.head.parameters()), torch.empty(0)).device
        x = torch.as_tensor(images)
        out = [self(x[a:a + batch_size].to(dev).float()).double().cpu().numpy()
               for a in range(0, len(x), batch_size)]
        self.train(was)
        return np.concatenate(out) if out else np.zeros(0)

    def save(self, path: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
        """Write ``predictor.pt`` (needs ``recipe`` and a fitted ``regressor``)."""
        if self.recipe is None or self.regressor is None:
            raise ValueError("this model has no encoder recipe or regressor; build it with "
                             "fit_predictor_run or load_memorability_model to save it")
        return save_predictor(path, self.regressor, self.recipe, info=info if info is not None else self.info)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: Any = "cpu") -> MemorabilityModel:
        """Read ``predictor.pt`` (see :func:`load_memorability_model`)."""
        return load_memorability_model(path, map_location=map_location)


# ==========================================================================================================
# predictor.pt
# ==========================================================================================================
def save_predictor(path: str | os.PathLike, regressor: Any, recipe: list[dict[str, Any]],
                   info: dict[str, Any] | None = None) -> Path:
    """Write ``predictor.pt`` atomically: the head's state plus the encoder recipe (no pickled objects).

    ``recipe`` lists one dict per encoder, in the order of the head's input columns:
    ``{"kind": "autoencoder", "checkpoint": <path, relative to the file's folder>, "sha256": ...,
    "weights_sha256": ... (:func:`weights_sha256`; checked when present, else the file's ``sha256``), "pool":
    "none"|"avg", "layer": None|name, "size": int, "dim": int}`` or ``{"kind": "pretrained", "name":
    "efficientnet_lite0", "pool": "none", "size": 224, "dim": 1280}`` or ``{"kind": "featureset", "name":
    <a feature set of memlens.features>, "pool": "none", "size": None, "dim": int}``.
    """
    from ._io import atomic_path
    from ._version import __version__

    dims = [int(r.get("dim", 0)) for r in recipe]
    if all(dims) and sum(dims) != regressor.n_features_in_:
        raise ValueError(f"the recipe's encoders give {sum(dims)} columns but the head expects "
                         f"{regressor.n_features_in_}")
    obj = {
        "format": PREDICTOR_FORMAT,
        "version": PREDICTOR_VERSION,
        "memlens_version": __version__,
        "recipe": [dict(r) for r in recipe],
        "head": regressor.get_state(),
        "info": _plain(info or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def _plain(obj: Any) -> Any:
    """Only types ``torch.load(weights_only=True)`` accepts: dict/list/str/int/float/bool/None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def read_predictor(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and validate ``predictor.pt`` (``weights_only=True``); ``CheckpointError`` if foreign."""

    from .errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"predictor not found: {path} (make it with: memlens fit-predictor RUN)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure is a bad file for the user
        raise CheckpointError(f"{path} is not a readable predictor file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != PREDICTOR_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a memlens predictor (format {found!r}, expected "
                              f"{PREDICTOR_FORMAT!r})")
    if not isinstance(obj.get("version"), int) or obj["version"] > PREDICTOR_VERSION:
        raise CheckpointError(f"{path}: unsupported predictor version {obj.get('version')!r}")
    if not isinstance(obj.get("recipe"), list) or not isinstance(obj.get("head"), dict):
        raise CheckpointError(f"{path}: malformed predictor (recipe or head missing)")
    return obj


def weights_sha256(module: Any) -> str:
    """SHA-256 of a module's state: every tensor's name, dtype, shape and values, in name order, and for an
    autoencoder its backbone name and configuration (input size, normalisation), which change what it computes.

    Two checkpoint files with the same model give the same value, whatever else they store (timings).
    """
    import hashlib
    import json

    h = hashlib.sha256()
    spec = getattr(module, "spec", None)
    if spec is not None or hasattr(module, "config"):
        h.update(json.dumps({"name": getattr(spec, "name", None), "config": getattr(module, "config", None)},
                            sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().resolve_conj().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _build_encoder(r: dict[str, Any], folder: Path, map_location: Any) -> Any:
    from ._io import file_sha256
    from .errors import CheckpointError

    kind = r.get("kind")
    if kind == "autoencoder":
        from .models import load_autoencoder

        ck = Path(r["checkpoint"])
        ck = ck if ck.is_absolute() else folder / ck
        if not ck.is_file():
            raise CheckpointError(f"the predictor needs the autoencoder {ck}, which is missing")
        want, want_weights = r.get("sha256"), r.get("weights_sha256")
        if want and not want_weights and file_sha256(ck) != want:  # a predictor saved before weights_sha256
            raise CheckpointError(f"{ck} changed since the predictor was fitted (SHA-256 differs); "
                                  "refit it: memlens fit-predictor RUN")
        model = load_autoencoder(ck, map_location=map_location)
        # the weights, not the file: a checkpoint also holds timings, so the same weights saved twice differ
        if want_weights and weights_sha256(model) != want_weights:
            raise CheckpointError(f"{ck} holds other weights than the autoencoder the predictor was fitted on; "
                                  "refit it: memlens fit-predictor RUN")
        return model
    if kind == "pretrained":
        from .models.efficientnet import pooled_feature_extractor

        return pooled_feature_extractor(r.get("name", "efficientnet_lite0"))
    if kind == "featureset":
        from .features import FeatureSetExtractor, get_feature_set

        return FeatureSetExtractor(get_feature_set(r["name"]))
    raise CheckpointError(f"unknown encoder kind {kind!r} in the predictor recipe")


def load_memorability_model(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Rebuild the image -> score :class:`MemorabilityModel` saved at ``path`` (in eval mode).

    Autoencoder checkpoints named in the recipe are resolved relative to the file's folder and checked
    against their recorded SHA-256. ``model.info`` holds the file's ``info`` dict (CV summary, inputs...).
    """
    obj = read_predictor(path, map_location)
    folder = Path(path).resolve().parent
    recipe = obj["recipe"]
    encoders = [_build_encoder(r, folder, map_location) for r in recipe]
    head = regressor_from_state(obj["head"])
    model = MemorabilityModel(encoders, head, pool=[r.get("pool", "none") for r in recipe],
                              sizes=[r.get("size") for r in recipe], layer=[r.get("layer") for r in recipe],
                              recipe=recipe)
    model.info = obj.get("info", {})
    # pretrained features are pooled head activations (1280 for EfficientNet-Lite); autoencoder widths were
    # measured at fit time on the very checkpoint whose SHA-256 was just verified
    width = sum(_recipe_width(r) for r in recipe)
    if width != head.n_features_in_:
        from .errors import CheckpointError

        raise CheckpointError(f"{path}: its encoders give {width} columns but its head expects "
                              f"{head.n_features_in_} (the features it was fitted on came from another network)")
    return model.to(map_location).eval()


def _recipe_width(r: dict[str, Any]) -> int:
    if r.get("kind") == "pretrained":
        return _PRETRAINED_WIDTH
    if r.get("kind") == "featureset":
        from .features import get_feature_set

        return get_feature_set(r["name"]).n_features
    return int(r.get("dim", 0))


def load_regressor(path: str | os.PathLike) -> Any:
    """Only the fitted head of ``predictor.pt`` (numpy inputs, no encoder needed)."""
    return regressor_from_state(read_predictor(path)["head"])


# ==========================================================================================================
# evaluation
# ==========================================================================================================
def strata_labels(scores: np.ndarray, categories: Sequence[Any] | None = None) -> np.ndarray:
    """Stratum per image: category x (score above the median or not), as strings."""
    scores = np.asarray(scores, dtype=float)
    above = np.where(scores > np.median(scores), "hi", "lo")
    if categories is None:
        return above.astype(object)
    return np.array([f"{c}|{a}" for c, a in zip(categories, above, strict=True)], dtype=object)


def make_splits(strata: Sequence[Any], split: str = "kfold", n_splits: int = 5,
                seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Stratified, disjoint train/val/test index sets.

    Rows are ordered stratum by stratum (random order within each stratum, strata in random order) and
    dealt out in that order: ``kfold`` gives fold ``j`` the rows at positions ``j, j + K, ...`` (each row is
    tested exactly once; ``val`` is empty: early stopping splits the training folds); ``paper`` deals a
    repeating pattern of 6 train, 1 validation and 3 test rows (60/10/30), ``n_splits`` times with different
    seeds. Either way every stratum is spread over the sets in the same proportions (up to one row).

    Returns a list of dicts with sorted ``train``, ``val``, ``test`` index arrays.
    """
    strata = np.asarray(list(strata), dtype=object)
    n = len(strata)
    if split not in ("kfold", "paper"):
        raise ValueError(f"split must be 'kfold' or 'paper', got {split!r}")
    if n_splits < 1 or (split == "kfold" and n_splits < 2):
        raise ValueError(f"n_splits must be >= 2 for kfold and >= 1 for paper, got {n_splits}")

    def dealt_order(rng: np.random.Generator) -> np.ndarray:
        labels = sorted(set(strata.tolist()), key=str)
        labels = [labels[i] for i in rng.permutation(len(labels))]
        return np.concatenate([rng.permutation(np.flatnonzero(strata == lab)) for lab in labels]) \
            if labels else np.zeros(0, dtype=int)

    out: list[dict[str, np.ndarray]] = []
    if split == "kfold":
        if n < n_splits:
            raise ValueError(f"{n} rows cannot make {n_splits} folds")
        rng = np.random.default_rng(seed)
        order = dealt_order(rng)
        fold = np.empty(n, dtype=int)
        fold[order] = (np.arange(n) + int(rng.integers(n_splits))) % n_splits
        for j in range(n_splits):
            out.append({"train": np.flatnonzero(fold != j), "val": np.zeros(0, dtype=int),
                        "test": np.flatnonzero(fold == j)})
        return out
    pattern = np.array(["train", "test", "train", "train", "val", "test", "train", "train", "test", "train"])
    for r in range(n_splits):
        rng = np.random.default_rng([seed, r])
        order = dealt_order(rng)
        role = np.empty(n, dtype=object)
        role[order] = pattern[(np.arange(n) + int(rng.integers(len(pattern)))) % len(pattern)]
        out.append({k: np.flatnonzero(role == k) for k in ("train", "val", "test")})
    return out


def prediction_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Spearman, Pearson, MSE and the AUC of telling above- from below-median images (test median)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import roc_auc_score

    yt = np.asarray(y_true, dtype=float)
    yp = np.asarray(y_pred, dtype=float)
    out = {"n": int(len(yt)), "spearman": math.nan, "pearson": math.nan,
           "mse": float(np.mean((yt - yp) ** 2)) if len(yt) else math.nan, "auc": math.nan}
    if len(yt) >= 3 and np.ptp(yt) > 0 and np.ptp(yp) > 0:
        out["spearman"] = float(spearmanr(yt, yp)[0])
        out["pearson"] = float(pearsonr(yt, yp)[0])
    labels = yt > np.median(yt) if len(yt) else yt
    if len(yt) and 0 < labels.sum() < len(labels):
        out["auc"] = float(roc_auc_score(labels, yp))
    return out


def ridge_baseline(alphas: Sequence[float] = RIDGE_ALPHAS) -> Any:
    """Standardise + RidgeCV (alpha by efficient leave-one-out on the training rows)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=tuple(alphas)))


def _blas_threads(n: int | None) -> Any:
    """Limit BLAS/LAPACK threads (restored on exit); None: leave them alone."""
    import contextlib

    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(n)), user_api="blas")


@dataclass
class CVResult:
    """Per-fold metrics of each model (``table``) and out-of-fold predictions (``oof``)."""

    table: Any  # DataFrame: fold, model, n_train, n_val, n_test, spearman, pearson, mse, auc, ...
    oof: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (N,) predictions (NaN if never tested)
    estimators: list[dict[str, Any]] = field(default_factory=list)  # per split: model -> fitted estimator


def cross_validate(X: Any, y: Any, splits: list[dict[str, np.ndarray]], *,
                   regressor: MemorabilityRegressor | None = None, ridge: bool = True,
                   svr: MemorabilitySVR | None = None, mlp: bool = True,
                   ceiling: Callable[[np.ndarray], dict[str, float]] | None = None,
                   progress: Callable[[str], Any] | None = None, return_estimators: bool = False) -> CVResult:
    """Fit the MLP, the kernel model (``svr``) and the ridge baseline on each split's training rows; score
    its test rows (``mlp=False`` skips the MLP).

    The MLP stops early on the split's ``val`` rows when there are any, else on its own inner split of the
    training rows (nested: test rows never influence training). Ridge fits on train + val (its penalty is
    chosen by leave-one-out inside them; BLAS threads follow the regressor's ``num_threads``). Every scaler
    is fitted inside the training rows.
    ``ceiling(test_index)`` may return ``{"human_consistency": ..., "spearman_brown": ...}`` for the fold.
    ``return_estimators`` keeps the fitted models (``CVResult.estimators``).
    """
    import pandas as pd

    y = np.asarray(y, dtype=float)
    base = regressor if regressor is not None else MemorabilityRegressor()
    rows: list[dict[str, Any]] = []
    oof = {"mlp": np.full(len(y), np.nan)} if mlp else {}
    if svr is not None:
        oof["svr"] = np.full(len(y), np.nan)
    if ridge:
        oof["ridge"] = np.full(len(y), np.nan)
    fitted: list[dict[str, Any]] = []
    for j, sp in enumerate(splits):
        tr, va, te = sp["train"], sp["val"], sp["test"]
        extra = ceiling(te) if ceiling is not None else {}
        fold_fits: dict[str, Any] = {}
        if mlp:
            t0 = time.perf_counter()
            est = clone(base)
            if base.random_state is not None:
                est.set_params(random_state=int(base.random_state) + j)
            vd = (X[va], y[va]) if len(va) else None
            est.fit(X[tr], y[tr], validation_data=vd)
            pred = est.predict(X[te])
            oof["mlp"][te] = pred
            metrics = prediction_metrics(y[te], pred)
            metrics.pop("n")
            rows.append({"fold": j, "model": "mlp", "n_train": len(tr), "n_val": len(va), "n_test": len(te),
                         **metrics, **extra, "epochs": est.best_epoch_,
                         "seconds": time.perf_counter() - t0})
            fold_fits["mlp"] = est
        if svr is not None:
            t0 = time.perf_counter()
            fit_rows = np.concatenate([tr, va])
            sv = clone(svr).fit(X[fit_rows], y[fit_rows])
            pred_s = sv.predict(X[te])
            oof["svr"][te] = pred_s
            metrics = prediction_metrics(y[te], pred_s)
            metrics.pop("n")
            rows.append({"fold": j, "model": "svr", "n_train": len(fit_rows), "n_val": 0, "n_test": len(te),
                         **metrics, **extra, "seconds": time.perf_counter() - t0})
            fold_fits["svr"] = sv
        if ridge:
            t0 = time.perf_counter()
            fit_rows = np.concatenate([tr, va])
            with _blas_threads(base.num_threads):
                rg = ridge_baseline().fit(X[fit_rows], y[fit_rows])
            pred_r = rg.predict(X[te])
            oof["ridge"][te] = pred_r
            metrics = prediction_metrics(y[te], pred_r)
            metrics.pop("n")
            rows.append({"fold": j, "model": "ridge", "n_train": len(fit_rows), "n_val": 0, "n_test": len(te),
                         **metrics, **extra,
                         "alpha": float(rg[-1].alpha_), "seconds": time.perf_counter() - t0})
        if ridge:
            fold_fits["ridge"] = rg
        if return_estimators:
            fitted.append(fold_fits)
        if progress is not None:
            last = [r for r in rows if r["fold"] == j]
            progress(f"fold {j + 1}/{len(splits)}: " + ", ".join(
                f"{r['model']} rho={r['spearman']:.3f}" for r in last))
    table = pd.DataFrame(rows)
    return CVResult(table, oof, fitted)


def summarize_cv(table: Any) -> Any:
    """Append one ``fold="mean"`` row per model (means over folds; ``n_*`` summed)."""
    import pandas as pd

    means = []
    for model, g in table.groupby("model", sort=False):
        row: dict[str, Any] = {"fold": "mean", "model": model}
        for c in g.columns:
            if c in ("fold", "model"):
                continue
            v = pd.to_numeric(g[c], errors="coerce")
            if v.notna().any():
                row[c] = int(v.sum()) if c.startswith("n_") else float(v.mean())
        means.append(row)
    out = pd.concat([table.astype({"fold": object}), pd.DataFrame(means)], ignore_index=True)
    return out


# ==========================================================================================================
# a run directory
# ==========================================================================================================
@dataclass
class RunInputs:
    """What ``fit-predictor`` learns from: rows aligned by image id."""

    image_ids: list[str]
    X: np.ndarray
    y: np.ndarray
    categories: list[Any] | None
    recipe: list[dict[str, Any]]
    inputs: str


def _read_ids(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _latent_recipe(run: Path, dim: int) -> dict[str, Any]:
    """How the latents of ``run`` were made: the autoencoder checkpoint, pooling and input size."""
    import json

    from ._io import file_sha256
    from .errors import RunDirError
    from .models import load_autoencoder

    ckpt = run / "autoencoder.pt"
    if not ckpt.is_file():
        raise RunDirError(f"{run}: no autoencoder.pt: the latents cannot be reproduced for new images")
    cfg: dict[str, Any] = {}
    cfg_path = run / "config.json"
    if cfg_path.is_file():
        try:
            cfg = (json.loads(cfg_path.read_text()) or {}).get("score") or {}
        except (ValueError, AttributeError):
            cfg = {}
    layer = cfg.get("layer") or None
    ae = load_autoencoder(ckpt)
    size = int((ae.config or {}).get("input_size") or ae.spec.input_size)
    ae.eval()
    with torch.no_grad():
        z = _encode_wrapper(ae, layer)(torch.zeros(1, 3, size, size))
    full = int(np.prod(z.shape[1:]))
    chans = int(z.shape[1])
    pool = cfg.get("pool")
    if pool not in ("none", "avg"):
        pool = "none" if dim == full else ("avg" if dim == chans else None)
    want = full if pool == "none" else chans
    if pool is None or want != dim:
        raise RunDirError(f"{run}/latents.npy has {dim} columns but the autoencoder's latent "
                          f"{tuple(z.shape[1:])} gives {full} (flattened) or {chans} (pooled); "
                          "rescore the run (memlens score) or record score.layer in config.json")
    return {"kind": "autoencoder", "checkpoint": "autoencoder.pt", "sha256": file_sha256(ckpt),
            "weights_sha256": weights_sha256(ae), "pool": pool, "layer": layer, "size": size, "dim": dim,
            "name": ae.spec.name}


def run_feature_set(run: str | os.PathLike, name: str, image_ids: Sequence[str], *,
                    progress: Callable[[str], Any] | None = None) -> np.ndarray:
    """Feature-set columns of a run's images (rows in ``image_ids`` order), cached in the run directory.

    The images are found through ``RUN/dataset.json``. The cache is ``RUN/featureset_<name>.npy`` with
    ``RUN/featureset_<name>_ids.txt`` (one ``id<TAB>size<TAB>mtime_ns`` line per row); it is reused when it
    holds every requested id with its file unchanged (same size and modification time), else rebuilt.
    """
    from ._io import atomic_path, atomic_write_text
    from .data import load_run_dataset
    from .errors import DataError
    from .features import extract_feature_set, get_feature_set

    run = Path(run)
    fs = get_feature_set(name)
    cache, cache_ids = run / f"featureset_{fs.name}.npy", run / f"featureset_{fs.name}_ids.txt"
    table = load_run_dataset(run).table
    paths = dict(zip(table["image_id"].astype(str), table["path"], strict=True))
    missing = [i for i in image_ids if i not in paths]
    if missing:
        raise DataError(f"{len(missing)} images of the run are not in its data set (e.g. {missing[0]!r})")

    def stamp(i: str) -> str:
        try:
            st = os.stat(paths[i])
        except OSError:
            return "missing"
        return f"{st.st_size}\t{st.st_mtime_ns}"

    stamps = {i: stamp(i) for i in image_ids}
    if cache.is_file() and cache_ids.is_file():
        rows = [line.split("\t", 1) for line in _read_ids(cache_ids)]
        pos = {r[0]: k for k, r in enumerate(rows)}
        old = {r[0]: (r[1] if len(r) > 1 else "") for r in rows}
        try:
            mat = np.load(cache, mmap_mode="r")
        except (ValueError, OSError, EOFError):  # unreadable or empty: extract again
            mat = None
        if (mat is not None and mat.shape == (len(rows), fs.n_features)
                and all(i in pos and old[i] == stamps[i] for i in image_ids)):
            log.info("feature set %s: read from %s", fs.name, cache)
            return np.asarray(mat[[pos[i] for i in image_ids]], dtype=np.float32)
        log.info("feature set %s: %s is stale or incomplete; extracting again", fs.name, cache)
    t0 = time.perf_counter()
    if progress is not None:
        progress(f"extracting {fs.name} features of {len(image_ids)} images")
    X = extract_feature_set([paths[i] for i in image_ids], fs)
    log.info("feature set %s: %d images in %.1f s", fs.name, len(image_ids), time.perf_counter() - t0)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, X)
    atomic_write_text(cache_ids, "".join(f"{i}\t{stamps[i]}\n" for i in image_ids))
    return X


def load_run_inputs(run: str | os.PathLike, inputs: str = DEFAULT_INPUTS, *,
                    need_recipe: bool = True) -> RunInputs:
    """Read ``per_image.csv`` and ``latents.npy``/``features.npy`` (+ ``latent_ids.txt``), aligned by id.

    Rows without a finite score are dropped. ``need_recipe=False`` skips loading the autoencoder (the
    recipe is then incomplete and the result cannot be saved as a predictor).
    """
    import pandas as pd

    from ._io import read_run_table
    from .errors import DataError, RunDirError
    from .features import FEATURE_SETS

    if inputs not in ("latents", "features", "both") and inputs not in FEATURE_SETS:
        raise ValueError(f"inputs must be latents, features, both or a feature set "
                         f"({', '.join(sorted(FEATURE_SETS))}), got {inputs!r}")
    run = Path(run)
    table_path = run / "per_image.csv"
    df = read_run_table(table_path, f"memlens score DATA --run {run}")
    for col in ("image_id", "score"):
        if col not in df.columns:
            raise DataError(f"{table_path}: no {col!r} column (found: {', '.join(map(str, df.columns))})")
    df["image_id"] = df["image_id"].astype(str)
    score = pd.to_numeric(df["score"], errors="coerce")
    keep = np.isfinite(score.to_numpy(dtype=float))
    if (~keep).any():
        log.info("%d images without a score are left out of the predictor", int((~keep).sum()))
    df = df[keep].reset_index(drop=True)
    if len(df) < 10:
        raise DataError(f"{table_path}: {len(df)} images with scores; the predictor needs at least 10")
    if df["image_id"].duplicated().any():
        raise DataError(f"{table_path}: image_id {df['image_id'][df['image_id'].duplicated()].iloc[0]!r} "
                        "appears twice")
    if inputs in FEATURE_SETS:
        X = run_feature_set(run, inputs, df["image_id"].tolist())
        cats = df["category"].astype(str).tolist() if "category" in df.columns and df["category"].notna().any() \
            else None
        recipe = [{"kind": "featureset", "name": inputs, "pool": "none", "layer": None, "size": None,
                   "dim": int(X.shape[1])}]
        return RunInputs(df["image_id"].tolist(), X, df["score"].to_numpy(dtype=float), cats, recipe, inputs)
    ids_path = run / "latent_ids.txt"
    if not ids_path.is_file():
        raise RunDirError(f"{ids_path} not found (memlens score writes it with latents.npy)")
    ids = _read_ids(ids_path)
    pos = {i: k for k, i in enumerate(ids)}
    missing = [i for i in df["image_id"] if i not in pos]
    if missing:
        raise DataError(f"{len(missing)} images of per_image.csv have no row in {ids_path}, e.g. {missing[0]!r}; "
                        "rescore the run")
    rows = np.array([pos[i] for i in df["image_id"]], dtype=np.int64)
    order = np.argsort(rows, kind="stable")  # sorted reads from the memory maps
    blocks: list[np.ndarray] = []
    recipe: list[dict[str, Any]] = []
    names = ["latents", "features"] if inputs == "both" else [inputs]
    for name in names:
        f = run / f"{name}.npy"
        if not f.is_file():
            raise RunDirError(f"{f} not found (memlens score writes it)")
        try:
            mat = np.load(f, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{f}: not a readable .npy file ({exc})") from None
        if mat.ndim != 2 or mat.shape[0] != len(ids):
            raise DataError(f"{f}: shape {mat.shape} does not match the {len(ids)} ids of {ids_path}")
        block = np.empty((len(rows), mat.shape[1]), dtype=np.float32)
        block[order] = mat[rows[order]]
        if not np.isfinite(block).all():
            raise DataError(f"{f}: contains NaN or infinite values")
        blocks.append(block)
        if name == "latents":
            recipe.append(_latent_recipe(run, mat.shape[1]) if need_recipe else
                          {"kind": "autoencoder", "dim": int(mat.shape[1])})
        else:
            from .measures import FEATURE_SIZE

            recipe.append({"kind": "pretrained", "name": "efficientnet_lite0", "pool": "none",
                           "layer": None, "size": FEATURE_SIZE, "dim": int(mat.shape[1])})
    X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    cats = df["category"].astype(str).tolist() if "category" in df.columns and df["category"].notna().any() \
        else None
    return RunInputs(df["image_id"].tolist(), X, df["score"].to_numpy(dtype=float), cats, recipe, inputs)


def _ceiling_fn(run: Path, image_ids: list[str]) -> tuple[Callable[[np.ndarray], dict[str, float]] | None,
                                                          dict[str, float]]:
    """Per-fold noise ceiling from RUN/split_halves.npz (when it and memlens.stats exist)."""
    path = run / "split_halves.npz"
    if not path.is_file():
        return None, {}
    try:
        from .stats import split_half_reliability
    except ImportError:  # pragma: no cover - stats is optional for this module
        log.warning("memlens.stats is unavailable: no noise ceiling")
        return None, {}
    from .data.halves import load_split_halves
    from .errors import DataError

    try:
        halves = load_split_halves(path).subset(image_ids)
    except DataError as exc:
        log.warning("no noise ceiling: %s", exc)
        return None, {}

    def one(idx: np.ndarray) -> dict[str, float]:
        sub = halves.subset([image_ids[i] for i in idx])
        rel = split_half_reliability(sub)
        return {"human_consistency": float(rel["spearman_mean"]), "spearman_brown": float(rel["spearman_brown"])}

    return one, one(np.arange(len(image_ids)))


def fit_predictor_run(run: str | os.PathLike, *, cv: int | None = None, split: str = "kfold", seed: int = 0,
                      inputs: str = DEFAULT_INPUTS, hidden: Sequence[int] = (256,), max_epochs: int = 200,
                      device: str = "cpu", regressor_params: dict[str, Any] | None = None,
                      model: str = DEFAULT_MODEL, progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Cross-validate the SVR, the MLP and the ridge baseline on a run, then fit ``model`` on every image.

    Writes ``RUN/predictor_cv.csv`` (one row per fold and model, then one ``fold="mean"`` row per model;
    columns ``fold, model, n_train, n_val, n_test, spearman, pearson, mse, auc``, when
    ``RUN/split_halves.npz`` exists the test images' ``human_consistency`` (mean split-half Spearman: the
    noise ceiling memlens compares with, as ``memlens analyze`` does) and ``spearman_brown`` (its
    Spearman-Brown value, the reliability of the full-group score), ``epochs`` (MLP), ``alpha`` (ridge),
    ``seconds``, ``saved``), ``RUN/predictor_oof.csv`` (out-of-fold predictions) and ``RUN/predictor.pt``
    (see :func:`save_predictor`), all atomically.

    Parameters
    ----------
    cv : number of folds (``kfold``, default 5) or of repeated random 60/10/30 splits (``paper``, default 1).
    split : ``kfold`` or ``paper`` (stratified by category x above/below-median score).
    inputs : a feature set of :mod:`memlens.features` (default ``lite01``: pretrained multi-stage features of
        two ImageNet networks, extracted from the run's images and cached in the run), ``latents`` (the
        autoencoder's), ``features`` (``features.npy``: pooled Lite0 head features from ``memlens score``)
        or ``both`` (latents and features.npy, concatenated).
    model : the model saved in ``predictor.pt``: ``svr`` (support-vector regression; with a feature set,
        one per feature block, averaged) or ``mlp`` (:class:`MemorabilityRegressor`). Both are
        cross-validated, with the ridge baseline, whichever is saved.

    Returns
    -------
    dict with ``table`` (the CV DataFrame incl. mean rows), ``summary`` (model -> mean metrics), ``ceiling``,
    ``paths``, ``n_images``, ``seconds``.
    """
    from ._io import atomic_path

    run = Path(run)
    t0 = time.perf_counter()
    from .errors import ConfigError, DataError

    n_splits = int(cv) if cv is not None else (5 if split == "kfold" else 1)
    if split == "kfold" and n_splits < 2:
        raise ConfigError(f"--cv {n_splits}: k-fold cross-validation needs at least 2 folds")
    if model not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    _torch_device(device)  # fail early on a bad device
    data = load_run_inputs(run, inputs)
    from .features import FEATURE_SETS

    svr_base = MemorabilitySVR(blocks=FEATURE_SETS[inputs].blocks() if inputs in FEATURE_SETS else None)
    if split == "kfold" and n_splits > len(data.y) // 2:
        raise DataError(f"{len(data.y)} images are too few for {n_splits} folds")
    strata = strata_labels(data.y, data.categories)
    splits = make_splits(strata, split=split, n_splits=n_splits, seed=seed)
    params = {"hidden": tuple(hidden), "max_epochs": int(max_epochs), "device": device, **(regressor_params or {})}
    base = MemorabilityRegressor(random_state=seed, **params)
    ceiling, overall = _ceiling_fn(run, data.image_ids)
    log.info("fit-predictor: %d images, %d columns (%s), %s x%d", len(data.y), data.X.shape[1], inputs, split,
             n_splits)
    res = cross_validate(data.X, data.y, splits, regressor=base, svr=svr_base, ceiling=ceiling, progress=progress)
    table = summarize_cv(res.table)
    for k, v in overall.items():  # the mean row: the ceiling of all images
        table.loc[table["fold"] == "mean", k] = v
    table.insert(2, "inputs", inputs)
    table.insert(3, "split", split)
    table["saved"] = table["model"] == model  # the model kept in predictor.pt
    with atomic_path(run / "predictor_cv.csv") as tmp:
        table.to_csv(tmp, index=False)
    import pandas as pd

    oof = pd.DataFrame({"image_id": data.image_ids, "score": data.y,
                        **{f"predicted_{m}": v for m, v in res.oof.items()}})
    with atomic_path(run / "predictor_oof.csv") as tmp:
        oof.to_csv(tmp, index=False)

    if progress is not None:
        progress("fitting the final model on every image")
    final = (clone(svr_base) if model == "svr" else MemorabilityRegressor(random_state=seed, **params)
             ).fit(data.X, data.y)
    mean_rows = table[table["fold"] == "mean"].set_index("model")
    summary = {m: {c: _num(mean_rows.loc[m, c]) for c in ("spearman", "pearson", "mse", "auc")
                   if c in mean_rows.columns} for m in mean_rows.index}
    info = {"inputs": inputs, "model": model, "split": split, "n_splits": n_splits, "seed": seed,
            "n_images": len(data.y), "cv": summary, "ceiling": overall,
            "final_epochs": getattr(final, "best_epoch_", None)}
    save_predictor(run / "predictor.pt", final, data.recipe, info=info)
    seconds = time.perf_counter() - t0
    return {"table": table, "summary": summary, "ceiling": overall, "n_images": len(data.y), "model": model,
            "n_features": int(data.X.shape[1]), "seconds": seconds,
            "paths": [run / "predictor_cv.csv", run / "predictor_oof.csv", run / "predictor.pt"]}


def saved_model(cv_table: Any) -> str:
    """The model kept in ``predictor.pt``, from ``predictor_cv.csv`` (a DataFrame, or None): the ``model`` of the
    rows whose ``saved`` column is true; ``"mlp"`` for tables without that column (runs before it existed, when
    the MLP was always the one saved)."""
    if cv_table is not None and {"saved", "model"} <= set(cv_table.columns):
        saved = cv_table[cv_table["saved"].astype(str).str.lower().isin(["true", "1"])]["model"]
        if len(saved):
            return str(saved.iloc[0])
    return "mlp"


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
