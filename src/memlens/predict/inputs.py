"""What a predictor is fitted on: a run's rows aligned by image id (:func:`load_run_inputs`) from its latents,
``features.npy`` or a pretrained feature set (:func:`run_feature_set`, cached in the run), each with the
recipe that rebuilds its encoder for new images."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import wrap_encoder
from .predictor_file import weights_sha256

log = logging.getLogger(__name__)

#: default inputs of ``memlens fit-predictor`` (chosen by measurement, see docs/predictor.md)
DEFAULT_INPUTS = "lite01"  # a feature set of memlens.features (see docs/predictor.md)


@dataclass
class RunInputs:
    """What ``fit-predictor`` learns from: rows aligned by image id."""

    image_ids: list[str]
    X: np.ndarray
    y: np.ndarray
    categories: list[Any] | None
    recipe: list[dict[str, Any]]
    inputs: str
    #: frozen-trunk activations for fine-tuning (``{variant: TrunkActivations}``), when asked for
    trunk: dict[str, Any] | None = None


def _read_ids(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _latent_recipe(run: Path, dim: int) -> dict[str, Any]:
    """How the latents of ``run`` were made: the autoencoder checkpoint, pooling and input size."""
    import json

    from .._io import file_sha256
    from ..errors import RunDirError
    from ..models import load_autoencoder

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
        z = wrap_encoder(ae, layer)(torch.zeros(1, 3, size, size))
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
                    progress: Callable[[str], Any] | None = None, trunk: dict[str, int] | None = None) -> Any:
    """Feature-set columns of a run's images (rows in ``image_ids`` order), cached in the run directory.

    The images are found through ``RUN/dataset.json``. The cache is ``RUN/featureset_<name>.npy`` with
    ``RUN/featureset_<name>_ids.txt`` (one ``id<TAB>size<TAB>mtime_ns`` line per row); it is reused when it
    holds every requested id with its file unchanged (same size and modification time), else rebuilt.

    ``trunk`` (``{variant: stage}``) also returns the frozen-trunk activations of those networks (from the same
    forward passes; :mod:`memlens.predict.finetune`), cached beside as
    ``RUN/featureset_<name>_trunk_<variant>.npz`` in the rows of the ids file: ``(X, {variant: activations})``.
    """
    from .._io import atomic_path, atomic_write_text
    from ..data import load_run_dataset
    from ..errors import DataError
    from ..features import extract_feature_set, get_feature_set

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
            take = [pos[i] for i in image_ids]
            acts = _cached_trunk(run, fs.name, trunk, len(rows))
            if acts is not None:
                log.info("feature set %s: read from %s", fs.name, cache)
                X = np.asarray(mat[take], dtype=np.float32)
                return (X, {v: a[np.asarray(take)] for v, a in acts.items()}) if trunk else X
        log.info("feature set %s: %s is stale or incomplete; extracting again", fs.name, cache)
    t0 = time.perf_counter()
    if progress is not None:
        progress(f"extracting {fs.name} features of {len(image_ids)} images"
                 + (f" (and the trunk activations of {', '.join(trunk)})" if trunk else ""))
    res = extract_feature_set([paths[i] for i in image_ids], fs, trunk=trunk)
    X, acts = (res[0], res[1]) if trunk else (res, {})
    log.info("feature set %s: %d images in %.1f s", fs.name, len(image_ids), time.perf_counter() - t0)
    for v, a in acts.items():
        a.save(_trunk_path(run, fs.name, v))
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, X)
    atomic_write_text(cache_ids, "".join(f"{i}\t{stamps[i]}\n" for i in image_ids))
    return (X, acts) if trunk else X


def _trunk_path(run: Path, name: str, variant: str) -> Path:
    return run / f"featureset_{name}_trunk_{variant}.npz"


def _cached_trunk(run: Path, name: str, trunk: dict[str, int] | None, n_rows: int) -> dict[str, Any] | None:
    """The cached trunk activations asked for ({} when none are), or None when one is missing or stale."""
    from .finetune import TrunkActivations

    out = {}
    for v, stage in (trunk or {}).items():
        path = _trunk_path(run, name, v)
        try:
            acts = TrunkActivations.load(path) if path.is_file() else None
        except (ValueError, OSError, KeyError, EOFError):
            acts = None
        if acts is None or len(acts) != n_rows or acts.stage != int(stage) or acts.variant != v:
            return None
        out[v] = acts
    return out


def load_run_inputs(run: str | os.PathLike, inputs: str = DEFAULT_INPUTS, *,
                    need_recipe: bool = True, trunk: dict[str, int] | None = None,
                    progress: Callable[[str], Any] | None = None) -> RunInputs:
    """Read ``per_image.csv`` and ``latents.npy``/``features.npy`` (+ ``latent_ids.txt``), aligned by id.

    Rows without a finite score are dropped. ``need_recipe=False`` skips loading the autoencoder (the
    recipe is then incomplete and the result cannot be saved as a predictor). ``trunk`` (``{variant:
    stage}``, feature sets only) also loads the frozen-trunk activations fine-tuning needs (``RunInputs.trunk``).
    """
    import pandas as pd

    from .._io import read_run_table
    from ..errors import DataError, RunDirError
    from ..features import FEATURE_SETS

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
    if trunk and inputs not in FEATURE_SETS:
        from ..errors import ConfigError

        raise ConfigError(f"fine-tuning needs a feature set's images (--features {', '.join(sorted(FEATURE_SETS))}), "
                          f"not {inputs!r}")
    if inputs in FEATURE_SETS:
        res = run_feature_set(run, inputs, df["image_id"].tolist(), trunk=trunk, progress=progress)
        X, acts = (res[0], res[1]) if trunk else (res, None)
        cats = df["category"].astype(str).tolist() if "category" in df.columns and df["category"].notna().any() \
            else None
        recipe = [{"kind": "featureset", "name": inputs, "pool": "none", "layer": None, "size": None,
                   "dim": int(X.shape[1])}]
        return RunInputs(df["image_id"].tolist(), X, df["score"].to_numpy(dtype=float), cats, recipe, inputs, acts)
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
            from ..scoring.batch import FEATURE_SIZE

            recipe.append({"kind": "pretrained", "name": "efficientnet_lite0", "pool": "none",
                           "layer": None, "size": FEATURE_SIZE, "dim": int(mat.shape[1])})
    X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    cats = df["category"].astype(str).tolist() if "category" in df.columns and df["category"].notna().any() \
        else None
    return RunInputs(df["image_id"].tolist(), X, df["score"].to_numpy(dtype=float), cats, recipe, inputs)

