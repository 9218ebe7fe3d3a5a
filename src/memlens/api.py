"""memlens in one call from a notebook: functions that take images or a run and return pandas DataFrames.

* :func:`predict_images` -- predicted memorability of images (paths, folders, PIL images or arrays) with a run's
  predictor or a pretrained model (``model="resmem"``); ``memlens predict`` is this function's CLI.
* :func:`score` -- a run's per-image measures (reconstruction errors before and after the exposure, latent
  distinctiveness among the run's images) for new images, without touching the run.
* :func:`analyze` -- the correlation table of a run (``memlens analyze``).

In the examples, ``data`` is a demo set folder (:func:`memlens.make_demo_set`), ``run`` a run directory made
from it (``memlens run data --out run``) and ``images`` a few of its image files.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["predict_images", "score", "analyze"]

log = logging.getLogger(__name__)


def predict_images(images: Any, run: str | os.PathLike | None = None, *, model: Any = None, batch_size: int = 32,
                   device: str = "auto", weights: str | os.PathLike | None = None, errors: str = "raise",
                   progress: Callable[[int], Any] | None = None) -> Any:
    """Predicted memorability of images: a DataFrame with columns ``image`` and ``predicted_score``.

    Parameters
    ----------
    images : an image file or folder (searched recursively), a PIL image, an array (H, W, 3) in [0, 1] (or
        ``uint8``), a batch array (N, H, W, 3) / (N, 3, H, W), or a list of any of these.
    run : a run directory with ``predictor.pt`` (``memlens fit-predictor``): its predictor scores the images.
    model : instead of ``run``: the name of a pretrained model (``"resmem"``, ``"vitmem"``; see
        :func:`memlens.list_baselines` and docs/baselines.md), or a :class:`memlens.MemorabilityModel`.
    batch_size, device : images per forward pass (scores do not depend on it); ``auto``, ``cpu``, ``cuda``.
    weights : the pretrained model's weights file (default: found as docs/baselines.md says).
    errors : ``"raise"`` (default): an unreadable file raises :class:`memlens.ValidationError` listing every
        one; ``"skip"``: they are left out (logged, and listed in ``table.attrs["problems"]``).
    progress : called with the number of images done after each batch.

    Returns
    -------
    DataFrame
        ``image`` (the path as given, ``folder/relative/path`` for files found in a folder, ``<image K>`` for
        in-memory images) and ``predicted_score`` (higher = more memorable), in input order.

    Examples
    --------
    >>> import memlens
    >>> # run: a run directory (memlens run DATA --out RUN); images: a list of image files
    >>> table = memlens.predict_images(images, run=run)
    >>> list(table.columns), len(table) == len(images)
    (['image', 'predicted_score'], True)
    >>> from PIL import Image
    >>> import numpy as np
    >>> arr = np.asarray(Image.open(images[0]).convert("RGB")) / 255.0     # an array scores as its file
    >>> same = memlens.predict_images([images[0], arr], run=run)
    >>> bool(abs(same.predicted_score[0] - same.predicted_score[1]) < 1e-6)
    True

    Pretrained models need no run (``pip install --no-deps resmem`` installs ResMem's weights)::

        memlens.predict_images(["a.jpg", "b.jpg"], model="resmem")
    """
    from .errors import ConfigError, ValidationError
    from .inference import predict_images as _predict

    if errors not in ("raise", "skip"):
        raise ConfigError(f"errors must be 'raise' or 'skip', got {errors!r}")
    res = _predict(images, run, model=model, batch_size=batch_size, device=device, weights=weights,
                   progress=progress)
    if res.problems and errors == "raise":
        raise ValidationError(res.problems)
    table = res.table.reset_index(drop=True)
    table.attrs["problems"] = [str(p) for p in res.problems]
    return table


def _run_settings(run: Path) -> dict[str, Any]:
    try:
        return (json.loads((run / "config.json").read_text(encoding="utf-8")) or {}).get("score") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def score(data: Any, run: str | os.PathLike, *, batch_size: int = 32, device: str = "auto",
          progress: Callable[[int], Any] | None = None) -> Any:
    """The run's per-image measures for new images, as a DataFrame (nothing in the run is changed).

    Each image goes through the run's autoencoder as ``memlens score`` sent the run's own images (its metrics,
    pooling, layer and input size from ``RUN/config.json``): ``recon_<metric>`` after the exposure and, when the
    run kept the weights from before it, ``recon_<metric>_before`` (distances: higher = worse reconstruction).
    ``distinctiveness`` is the mean distance of the image's latent code to its ``k`` nearest codes among the
    **run's** images (``latents.npy``; an image of the run finds itself at distance 0), and
    ``distinctiveness_features`` the same with the pretrained features (``features.npy``).

    Parameters
    ----------
    data : a data set (a folder or table, or a loaded :func:`memlens.load_dataset`; its score and category
        columns are kept), image files, or in-memory images (PIL images or arrays in [0, 1], prepared like files).
    run : a scored run directory (``autoencoder.pt``; ``latents.npy``/``features.npy`` for distinctiveness).
    batch_size, device : as :func:`memlens.score_images`.

    Returns
    -------
    DataFrame
        ``image_id`` (+ ``score``, ``category`` for a data set), ``recon_*``, ``recon_*_before``,
        ``distinctiveness``, ``distinctiveness_features``.

    Examples
    --------
    >>> import memlens
    >>> # run: a run directory (memlens run DATA --out RUN); images: a list of image files
    >>> measures = memlens.score(images, run=run)
    >>> [c for c in measures.columns if c.startswith("recon_mse")]
    ['recon_mse', 'recon_mse_before']
    >>> bool((measures["distinctiveness"] >= 0).all())
    True
    """
    import torch

    from .data import load_dataset, prepare_image
    from .data.inputs import as_pil, collect_inputs
    from .errors import RunDirError, ValidationError
    from .models import load_autoencoder
    from .neighbors import distinctiveness
    from .scoring import score_images

    run = Path(run)
    ckpt = run / "autoencoder.pt"
    if not ckpt.is_file():
        raise RunDirError(f"{run}: no autoencoder.pt (train first: memlens train DATA --out {run})")
    cfg = _run_settings(run)
    model = load_autoencoder(ckpt)
    before_path = run / "autoencoder_before.pt"
    before = load_autoencoder(before_path) if before_path.is_file() else None
    size = int(cfg.get("image_size") or (model.config or {}).get("input_size") or model.spec.input_size)
    meta = None
    if hasattr(data, "table") or (isinstance(data, (str, os.PathLike)) and (
            Path(data).is_dir() or Path(data).suffix.lower() in (".csv", ".tsv", ".txt"))):
        ds = data if hasattr(data, "table") else load_dataset(data)
        source: Any = ds
        meta = ds.table[[c for c in ("image_id", "score", "category") if c in ds.table.columns]]
    else:
        items, problems = collect_inputs(data)
        if problems:
            raise ValidationError(problems)
        if all(isinstance(src, Path) for _, src in items):
            source = [str(src) for _, src in items]
        else:
            arr = np.stack([prepare_image(as_pil(src), size) for _, src in items])
            source = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
        labels = [lab for lab, _ in items]
    metrics = cfg.get("metrics") or None
    kw: dict[str, Any] = {} if metrics is None else {"metrics": metrics}
    res = score_images(model, source, before_model=before, batch_size=batch_size, device=device,
                       pool=cfg.get("pool") or "none", layer=cfg.get("layer") or None, features=True,
                       feature_size=cfg.get("feature_size", 224), image_size=size, progress=progress, **kw)
    table = res.table.copy()
    if meta is not None:
        table = meta.reset_index(drop=True).merge(table, on="image_id", how="right")
    else:
        table["image_id"] = labels
    k = int(cfg.get("distinct_k") or 1)
    metric = cfg.get("distinct_metric") or "euclidean"
    for col, name, new in (("distinctiveness", "latents.npy", res.latents),
                           ("distinctiveness_features", "features.npy", res.features)):
        ref_path = run / name
        if new is None or not ref_path.is_file():
            log.warning("%s: not found; %s left out", ref_path, col)
            continue
        ref = np.load(ref_path, mmap_mode="r")
        new = np.asarray(new, dtype=np.float32)
        if ref.ndim != 2 or ref.shape[1] != new.shape[1] or len(ref) <= k - 1:
            log.warning("%s has %s columns, the new images %d: %s left out (rescore the run)", ref_path,
                        ref.shape[1:] or "no", new.shape[1], col)
            continue
        both = np.concatenate([new, np.asarray(ref, dtype=np.float32)])
        d = distinctiveness(both, k=k, metric=metric, reference=np.arange(len(new), len(both)))
        table[col] = d[:len(new)]
    return table


def analyze(run: str | os.PathLike, *, by: str | None = "auto", method: str = "spearman", n_boot: int = 2000,
            seed: int | None = 0, ci: str = "percentile", confidence: float = 0.95, permutation: int = 0) -> Any:
    """The correlation table of a run (``memlens analyze``): every per-image measure against memorability.

    Pooled, per-category, within- and between-category and partial correlations with paired bootstrap CIs
    (:func:`memlens.stats.analyze_run`); like the command, it writes ``RUN/correlations.csv`` and
    ``RUN/correlations.json``. ``by=None`` gives the pooled and partial rows only.

    Returns
    -------
    DataFrame
        One row per measure and scope (columns ``x, y, scope, group, n, r, ci_low, ci_high, p_value``, ...).

    Examples
    --------
    >>> import memlens
    >>> # run: a run directory (memlens run DATA --out RUN)
    >>> table = memlens.analyze(run, n_boot=100)
    >>> {"x", "scope", "r", "ci_low", "ci_high"} <= set(table.columns)
    True
    >>> "pooled" in set(table["scope"])
    True
    """
    from .stats import analyze_run

    table, _payload = analyze_run(run, by=by, method=method, n_boot=n_boot, seed=seed, ci=ci, confidence=confidence,
                                  permutation=permutation)
    return table
