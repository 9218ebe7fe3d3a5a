"""The registry of memorability baselines: :class:`BaselineInfo` (what a model is, what it saw, its licence),
:func:`register_baseline`, :func:`list_baselines`, :func:`get_baseline`, :func:`baseline_info`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["BaselineInfo", "register_baseline", "list_baselines", "get_baseline", "baseline_info", "BASELINES"]


@dataclass(frozen=True)
class BaselineInfo:
    """What a baseline is.

    Attributes
    ----------
    name : registry name (``get_baseline(name)``, ``memlens baselines --models NAME``).
    description : one line.
    inputs : what the model sees, e.g. ``"image 227 x 227 (resized to 256 x 256, centre crop)"``.
    license : licence of the model's weights (and code, where they differ).
    trained_on : data sets whose images the model was fitted on (pretrained models); empty for models that
        ``memlens baselines`` fits on the run itself (cross-validated).
    needs_fit : True when the model is fitted on the run's images (cross-validated on the predictor's folds),
        False for pretrained models applied as they are.
    reference : the paper to cite.
    weights : where the weights come from.
    order : position in :func:`list_baselines` (then registration order).
    """

    name: str
    description: str
    inputs: str
    license: str
    trained_on: tuple[str, ...] = ()
    needs_fit: bool = False
    reference: str = ""
    weights: str = ""
    order: int = 100

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trained_on"] = list(self.trained_on)
        return d


#: name -> (info, factory(**kw) -> adapter, available(**kw) -> (bool, reason))
BASELINES: dict[str, tuple[BaselineInfo, Callable[..., Any], Callable[..., tuple[bool, str]]]] = {}


def register_baseline(info: BaselineInfo, factory: Callable[..., Any],
                      available: Callable[..., tuple[bool, str]] | None = None) -> BaselineInfo:
    """Add a baseline: ``factory(**kw)`` builds its adapter (an object with ``info`` and ``predict(images)``);
    ``available(**kw) -> (ok, reason)`` says, without loading anything heavy, whether it can run here (e.g. its
    weights are found); default: always."""
    if info.name in BASELINES:
        raise ConfigError(f"baseline {info.name!r} is registered already")
    BASELINES[info.name] = (info, factory, available or (lambda **_kw: (True, "")))
    ordered = sorted(BASELINES.items(), key=lambda kv: kv[1][0].order)  # stable: then registration order
    BASELINES.clear()
    BASELINES.update(ordered)
    return info


def _entry(name: str) -> tuple[BaselineInfo, Callable[..., Any], Callable[..., tuple[bool, str]]]:
    key = str(name).strip().lower()
    if key not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")
    return BASELINES[key]


def list_baselines(available: bool = False, **kw: Any) -> list[str]:
    """Names of the registered baselines, in registration order; ``available=True``: only those that can run
    here (pretrained weights found; ``kw`` as for :func:`get_baseline`, e.g. ``weights={"resmem": PATH}``).

    Examples
    --------
    >>> import memlens
    >>> memlens.list_baselines()
    ['resmem', 'vitmem', 'ridge-lite0', 'paper-mlp']
    >>> memlens.baseline_info("resmem").trained_on
    ('LaMem', 'MemCat')
    """
    if not available:
        return list(BASELINES)
    weights = kw.pop("weights", None) or {}
    return [n for n, (_info, _f, ok) in BASELINES.items() if ok(weights=weights.get(n), **kw)[0]]


def baseline_info(name: str) -> BaselineInfo:
    """The :class:`BaselineInfo` of a registered baseline (``ConfigError`` for an unknown name).

    Examples
    --------
    >>> import memlens
    >>> info = memlens.baseline_info("resmem")
    >>> info.trained_on, info.needs_fit, info.license.startswith("ResMem Non-commercial")
    (('LaMem', 'MemCat'), False, True)
    """
    return _entry(name)[0]


def baseline_available(name: str, **kw: Any) -> tuple[bool, str]:
    """``(True, "")`` when the baseline can run here, else ``(False, why and how to fix it)``."""
    return _entry(name)[2](**kw)


def get_baseline(name: str, **kw: Any) -> Any:
    """The adapter of a registered baseline: ``.info`` (:class:`BaselineInfo`) and ``.predict(images)``.

    Keyword arguments go to its constructor: for the pretrained models ``weights`` (a file; default: found as
    docs/baselines.md says), ``device`` and ``batch_size``; for the fitted ones their settings (``seed``, ...).
    Nothing heavy is loaded until the first prediction.

    Examples
    --------
    >>> import memlens
    >>> ridge = memlens.get_baseline("ridge-lite0")
    >>> ridge.info.needs_fit, ridge.info.license
    (True, 'BSD-3-Clause (memlens); EfficientNet-Lite0 weights Apache-2.0')
    """
    return _entry(name)[1](**kw)
