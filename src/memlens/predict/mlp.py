"""The MLP estimator: :class:`MemorabilityRegressor` (scikit-learn API, torch training, numpy prediction), its
differentiable torch form and the training-device check."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .scaling import PRED_CHUNK, standardised_chunks


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

    Examples
    --------
    >>> import numpy as np, memlens
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(150, 5))
    >>> y = np.tanh(X[:, 0]) + 0.1 * rng.normal(size=150)
    >>> model = memlens.MemorabilityRegressor(hidden=(16,), max_epochs=60, random_state=0).fit(X, y)
    >>> model.predict(X[:3]).shape, bool(model.score(X, y) > 0.5)
    ((3,), True)
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

        dev = torch_device(self.device)
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
        for a in range(0, len(X), PRED_CHUNK):
            out[a:a + PRED_CHUNK] = (X[a:a + PRED_CHUNK] - self.x_mean_) / self.x_scale_
        return out

    # -- predict -------------------------------------------------------------------------------------
    def predict(self, X: Any) -> np.ndarray:
        """Predicted scores (n,), float64, in the units of the training target."""
        check_is_fitted(self, "coefs_")
        out = np.empty(0)
        for sl, h, out in standardised_chunks(self, X):
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


def torch_device(device: str) -> Any:
    """The ``torch.device`` for ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; ``ConfigError`` if unknown
    or if CUDA is asked for but unavailable."""
    from ..errors import ConfigError

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

