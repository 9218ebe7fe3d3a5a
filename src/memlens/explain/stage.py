"""``memlens explain`` on a run directory: choose the images, load the predictor, attribute, check, write
``RUN/attributions/``, ``RUN/descriptors.csv`` and ``RUN/descriptor_correlations.csv``."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..descriptors import DESCRIPTOR_COLUMNS
from .gradients import IGResult, ScalarOutput, integrated_gradients, kronrod_points
from .maps import (
    aggregate_figure,
    aggregate_maps,
    overlay_figure,
    quartile_groups,
    save_figure,
    single_map_figure,
)
from .models import FINAL, MODEL_FOR, explaining_models
from .sanity import SANITY_THRESHOLD, RandomizationCheck, randomization_check

if TYPE_CHECKING:  # pragma: no cover
    pass

#: one logger for the package ("memlens.explain"), as before the split
log = logging.getLogger("memlens.explain")


# ------------------------------------------------------------------------------ run directory (edge)
def safe_name(image_id: str, max_len: int = 60) -> str:
    """A file-name-safe, collision-free stem for an image id: ``[A-Za-z0-9._-]`` + an 8-hex hash."""
    import re

    stem = str(image_id).rsplit(".", 1)[0] if "." in str(image_id).rsplit("/", 1)[-1] else str(image_id)
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    digest = hashlib.sha1(str(image_id).encode("utf-8")).hexdigest()[:8]
    return f"{clean[:max_len]}_{digest}"


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        from ..errors import ConfigError

        raise ConfigError(f"unknown device {device!r} (use auto, cpu or cuda)") from exc


def load_predictor(path: Any, device: torch.device) -> nn.Module:
    """Load ``RUN/predictor.pt`` as the image -> score :class:`memlens.predict.MemorabilityModel`."""
    from ..predict import load_memorability_model

    return load_memorability_model(path, map_location=device).eval()


def predictor_input_size(model: nn.Module, run: Any) -> int:
    """The square side images are loaded at: the model's ``input_size`` (the first encoder's), else its
    autoencoder's ``spec.input_size``, else ``image_size`` in ``RUN/dataset.json``."""
    import json

    spec = getattr(model, "image_spec", None)  # a feature-set predictor: its decoding side (centre squares here)
    if spec and spec[1]:
        return int(spec[1])
    enc = getattr(model, "encoder", None)
    for obj in (model, enc, getattr(enc, "autoencoder", None)):
        if obj is None:
            continue
        size = getattr(obj, "input_size", None) or getattr(getattr(obj, "spec", None), "input_size", None)
        if size:
            return int(size)
    ds_path = run / "dataset.json"
    if ds_path.is_file():
        try:
            size = json.loads(ds_path.read_text(encoding="utf-8")).get("image_size")
        except (ValueError, AttributeError):
            size = None
        if size:
            return int(size)
    from ..errors import RunDirError

    raise RunDirError(
        f"cannot tell the input size of the predictor in {run} (no input_size on the model, no image_size "
        "in dataset.json)"
    )


def load_run_data(run: Any) -> Any:
    """Reload the run's data set from ``RUN/dataset.json`` (see :func:`memlens.data.load_run_dataset`)."""
    from ..data import load_run_dataset

    return load_run_dataset(run)


def _select_requested(requested: Sequence[str], ids: list[str], root: Any) -> list[tuple[str, str | None]]:
    """Match ``--images`` values to image ids of the run (or to image files outside it).

    Returns (image_id, external_path) pairs: ``external_path`` is None for images of the run.
    """
    from pathlib import Path

    from ..errors import DataError

    known = set(ids)
    out, missing = [], []
    root_path = Path(root).resolve() if root else None
    for req in requested:
        if req in known:
            out.append((req, None))
            continue
        p = Path(req).expanduser()
        if p.is_file():
            rp = p.resolve()
            if root_path is not None:
                try:
                    rel = rp.relative_to(root_path).as_posix()
                except ValueError:
                    rel = None
                if rel in known:
                    out.append((rel, None))
                    continue
            out.append((str(p), str(rp)))
            continue
        missing.append(req)
    if missing:
        raise DataError(
            "\n".join(
                f"--images {m}: neither an image id of the run (per_image.csv) nor an image file"
                for m in missing
            )
        )
    seen: set[str] = set()
    return [(i, e) for i, e in out if not (i in seen or seen.add(i))]


# fields of a memlens.stats.correlate result written to descriptor_correlations.csv
_CORR_FIELDS = ("n", "r", "ci_low", "ci_high", "p_value", "method", "ci_method", "confidence", "n_boot", "seed")


#: IG path points per forward/backward pass on a CPU: with the default predictor (two EfficientNet-Lite networks at
#: 224/240 px) 8 points took 110 ms each and 16 points 147 ms (2-core AMD EPYC, 2026-12-07; docs/benchmarks.md)
CPU_INTERNAL_BATCH = 8
#: on a GPU, larger passes keep it busy
GPU_INTERNAL_BATCH = 32


def explain_run(
    run_dir: Any,
    *,
    images: Sequence[str] = (),
    top: int = 4,
    bottom: int = 4,
    n_steps: int = 32,
    rule: str = "gausskronrod",
    baseline: str = "black",
    smoothgrad: int = 0,
    smoothgrad_sigma: float = 0.1,
    internal_batch_size: int | None = None,
    seed: int = 0,
    aggregate_max: int = 16,
    aggregate_steps: int | None = None,
    sanity_max: int = 4,
    sanity_steps: int | None = None,
    n_boot: int = 1000,
    delta_tolerance: float = 0.05,
    error_tolerance: float = 0.1,
    error_check: bool = True,
    check_aggregates: bool = False,
    channels_last: bool = True,
    device: str = "auto",
    model_for: str = "oof",
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """Explain a run: IG overlays, aggregate maps, the sanity check, descriptors and their correlations.

    Reads ``RUN/predictor.pt`` (the image -> score model), ``RUN/per_image.csv`` and ``RUN/dataset.json`` (and,
    for the fold models, ``RUN/predictor_oof.csv`` and the predictor's inputs); writes ``RUN/attributions/``
    (``overlay_*.png``, ``aggregate_*.png``, ``attributions.npz``, ``sanity.json``, ``explain.json``),
    ``RUN/descriptors.csv`` and ``RUN/descriptor_correlations.csv``.

    Parameters
    ----------
    run_dir
        The run directory.
    images
        Extra images to explain: image ids of the run or image files.
    top, bottom
        Overlays for the N most and least memorable images (human score).
    rule
        Integration rule of the maps shown one by one (``images``, ``top``, ``bottom``; ``method`` of
        :func:`integrated_gradients`): ``gausskronrod`` (default: 33 path points for 32 steps, the error check
        from its embedded 16-point Gauss rule at no extra cost) or ``gausslegendre`` (32 points, and 16 more for
        the check). The aggregate-only and randomised maps use Gauss-Legendre; with SmoothGrad every map does.
    n_steps, baseline, smoothgrad, smoothgrad_sigma, internal_batch_size, seed, delta_tolerance, error_tolerance,
    error_check
        Integrated Gradients settings (:func:`integrated_gradients`); ``internal_batch_size`` defaults to
        :data:`CPU_INTERNAL_BATCH` path points per pass on a CPU (cache-sized: about 1.3x faster per point than 16
        for the default predictor) and :data:`GPU_INTERNAL_BATCH` on a GPU. The error check runs on the maps shown
        one by one (``images``, ``top``, ``bottom``); the randomisation check's maps are not error-checked (a
        rank correlation needs no exact maps).
    check_aggregates
        Also error-check the maps that only enter the aggregate maps (about 50 % more time for them).
    channels_last
        On a CPU, run the model in channels-last memory format (1.35x faster per IG step for the default
        predictor; the maps agree with the default format to float rounding).
    aggregate_max
        At most this many images per quartile in the aggregate maps (0 = all): the quartile's images that
        are explained anyway (``top``, ``bottom``, ``images``) plus a seeded random sample of the others.
    aggregate_steps
        Integrated Gradients steps of the maps that only enter the aggregate maps (default ``n_steps // 2``):
        an average of normalised maps is more accurate than each of its maps (docs/explain.md measures it).
        Maps that are also shown one by one keep ``n_steps``.
    sanity_max
        At most this many images in the randomisation check (0 = all explained ones): ``images`` first,
        then the most and least memorable alternately.
    sanity_steps
        Steps of the randomised model's maps in that check (default ``n_steps // 2``): a rank correlation
        needs no exact maps.
    n_boot
        Bootstrap resamples of the descriptor correlations (:func:`memlens.stats.correlate`).
    device
        ``auto``, ``cpu`` or ``cuda``.
    model_for
        ``oof`` (default): each scored image of the run is explained with a model not fitted on it, the
        cross-validation fold model that held it out (the saved predictor's configuration refitted on that
        fold's training rows, only for the folds of explained images: :mod:`memlens.explain.models`); images
        without a score or outside the run with the final model, which never saw them either. ``final``: the
        final model of ``predictor.pt`` for every image (in-sample for the scored ones). Each explained image's
        ``explained_with`` (explain.json, attributions.npz, descriptors.csv) says which model, and its
        ``predicted_score`` is that model's prediction.
    progress
        Optional ``progress(stage, total) -> advance(n)`` factory (CLI progress bars).

    Returns
    -------
    dict
        The summary also written to ``RUN/attributions/explain.json``.
    """
    import time
    from pathlib import Path

    import pandas as pd

    from .._io import atomic_path, atomic_write_json, read_run_table
    from ..data import load_image
    from ..errors import DataError, RunDirError
    from ..stats import fdr_bh
    from ..stats.correlation import collected_warnings

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"run directory {run} not found")
    for name, made_by in (("predictor.pt", "memlens fit-predictor"), ("per_image.csv", "memlens score")):
        if not (run / name).exists():
            raise RunDirError(f"{run / name} not found (written by {made_by})")
    if min(top, bottom, aggregate_max, sanity_max) < 0:
        raise ValueError("top, bottom, aggregate_max and sanity_max must be >= 0")
    aggregate_steps = max(1, n_steps // 2) if aggregate_steps is None else int(aggregate_steps)
    sanity_steps = max(1, n_steps // 2) if sanity_steps is None else int(sanity_steps)
    if min(n_steps, aggregate_steps, sanity_steps) < 1:
        raise ValueError("n_steps, aggregate_steps and sanity_steps must be >= 1")
    if rule not in ("gausskronrod", "gausslegendre"):
        raise ValueError(f"rule must be 'gausskronrod' or 'gausslegendre', got {rule!r}")
    if smoothgrad:
        rule = "gausslegendre"  # SmoothGrad goes through captum's NoiseTunnel and its rules
    if model_for not in MODEL_FOR:
        from ..errors import ConfigError

        raise ConfigError(f"model_for must be one of {', '.join(MODEL_FOR)}, got {model_for!r}")

    def _tick(stage: str, total: int) -> Callable[[int], None]:
        return progress(stage, total) if progress is not None else (lambda k: None)

    dev = _resolve_device(device)
    if internal_batch_size is None:
        internal_batch_size = CPU_INTERNAL_BATCH if dev.type == "cpu" else GPU_INTERNAL_BATCH
    model = load_predictor(run / "predictor.pt", dev)
    if channels_last and dev.type == "cpu":  # depthwise convolutions: 1.35x faster per IG step
        model = model.to(memory_format=torch.channels_last)
    size = predictor_input_size(model, run)
    table = read_run_table(run / "per_image.csv", f"memlens score DATA --run {run}")
    if "image_id" not in table.columns:
        raise RunDirError(f"{run / 'per_image.csv'} has no image_id column")
    table["image_id"] = table["image_id"].astype(str)
    ds = load_run_data(run)
    paths = dict(zip(ds.table["image_id"].astype(str), ds.table["path"].astype(str), strict=True))
    missing = [i for i in table["image_id"] if i not in paths]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} image(s) of {run / 'per_image.csv'} are not in the data set at "
            f"{ds.root}: {shown}"
        )
    ids = table["image_id"].tolist()
    score = (
        pd.to_numeric(table["score"], errors="coerce").to_numpy(float)
        if "score" in table.columns
        else np.full(len(ids), np.nan)
    )
    score_of = dict(zip(ids, score, strict=True))
    timings["load"] = time.perf_counter() - t_start

    # ---- which images get maps
    has_score = np.isfinite(score)
    scored = np.flatnonzero(has_score)
    # out-of-fold explanations of a run with a held-out set: the images come from it, so that one model explains
    # them all -- the honest estimate's own model, which fit-predictor stored (no refit)
    pool_note = None
    if model_for != FINAL:
        held = _held_out_ids(run)
        if held:
            in_pool = np.array([i in held for i in ids], dtype=bool)
            has_score = has_score & in_pool
            pool_note = (f"the top, bottom and quartile images are chosen among the {int(has_score.sum())} images "
                         "fit-predictor held out (explained by its holdout model, which never saw them)")
    pool = np.flatnonzero(has_score)
    # ties keep the order of per_image.csv in both directions
    ranked = [ids[i] for i in pool[np.argsort(-score[pool], kind="stable")]]
    ranked_low = [ids[i] for i in pool[np.argsort(score[pool], kind="stable")]]
    chosen = _select_requested(list(images), ids, getattr(ds, "root", None))
    groups: dict[str, list[str]] = {
        "image": [i for i, _ in chosen],
        "top": ranked[:top],
        "bottom": ranked_low[:bottom],
    }
    external = {i: e for i, e in chosen if e is not None}
    agg_sets: dict[str, list[str]] = {"top_quartile": [], "bottom_quartile": []}
    agg_note = None
    if has_score.sum() >= 4:
        tq, bq, hi, lo = quartile_groups(np.where(has_score, score, np.nan))
        rng = np.random.default_rng(seed)
        for key, mask in (("top_quartile", tq), ("bottom_quartile", bq)):
            members = [ids[i] for i in np.flatnonzero(mask)]
            if aggregate_max and len(members) > aggregate_max:
                # images explained anyway (--top/--bottom/--images) are reused; a seeded sample fills the rest
                done = set(groups["image"] + groups["top"] + groups["bottom"])
                keep = [m for m in members if m in done][:aggregate_max]
                rest = [m for m in members if m not in done]
                k = aggregate_max - len(keep)
                pick = set(keep) | {rest[i] for i in rng.choice(len(rest), k, replace=False)}
                members = [m for m in members if m in pick]
            agg_sets[key] = members
    else:
        agg_note = "fewer than 4 scored images: no aggregate maps"
    needed = list(
        dict.fromkeys(
            groups["image"]
            + groups["top"]
            + groups["bottom"]
            + agg_sets["top_quartile"]
            + agg_sets["bottom_quartile"]
        )
    )

    # ---- the model of each image: its fold model (not fitted on it), or the final one
    t0 = time.perf_counter()
    ex = explaining_models(
        run, model, needed, scored={ids[k] for k in scored}, external=set(external), model_for=model_for,
        device=dev, progress=lambda m: log.info("%s", m),
    )
    if channels_last and dev.type == "cpu":
        ex.models = {k: m.to(memory_format=torch.channels_last) for k, m in ex.models.items()}
    timings["fold_models"] = time.perf_counter() - t0

    # ---- integrated gradients
    t0 = time.perf_counter()

    def _load(i: str) -> np.ndarray:
        return load_image(external.get(i) or paths[i], size)

    x = (
        torch.from_numpy(
            np.stack([_load(i) for i in needed]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        )
        if needed
        else torch.zeros(0, 3, size, size)
    )
    if channels_last and dev.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    ig_kw = dict(
        baseline=baseline,
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
        smoothgrad=smoothgrad,
        smoothgrad_sigma=smoothgrad_sigma,
        delta_tolerance=delta_tolerance,
        error_tolerance=error_tolerance,
        error_check=error_check,
    )
    # the error check (half the steps again) on the maps shown one by one; the maps that only enter the
    # aggregate averages are not judged (their errors partly average out; the delta is no guide)
    shown = set(groups["image"] + groups["top"] + groups["bottom"])
    checked = [bool(error_check) and (check_aggregates or i in shown) for i in needed]
    keys = [ex.of[i].key for i in needed]
    tick_ig = _tick("integrated gradients", len(needed))
    parts = []
    # one call per model and step count: the maps shown one by one at n_steps, aggregate-only maps at
    # aggregate_steps
    steps_of = [n_steps if i in shown else aggregate_steps for i in needed]
    for key, steps in dict.fromkeys(zip(keys, steps_of, strict=True)) or [(FINAL, n_steps)]:
        rows = [k for k, kk in enumerate(keys) if kk == key and steps_of[k] == steps]
        chk = [checked[k] for k in rows]
        judged = {"error_check": chk if any(checked) else bool(error_check)}
        if any(checked) and not any(chk):  # maps not judged while others are error-checked: no delta warning
            judged["delta_tolerance"] = math.inf
        part = integrated_gradients(
            ex.models[key], x[rows] if needed else x, seed=seed, progress=tick_ig,
            label=None if key == FINAL else f"{key} model",
            **{**ig_kw, "n_steps": steps, "method": rule if steps == n_steps else "gausslegendre", **judged},
        )
        parts.append((rows, part))
    res = _merge_results(parts, len(needed))
    res.n_steps = int(n_steps if shown else aggregate_steps)
    res.delta_tolerance = float(delta_tolerance)
    shown_points = kronrod_points(n_steps) if rule == "gausskronrod" else n_steps
    res.settings = {**res.settings, "method": rule, "points_per_map": shown_points,
                    "points_per_checked_map": shown_points if rule == "gausskronrod" else n_steps + n_steps // 2,
                    "aggregate_steps": int(aggregate_steps),
                    "aggregate_method": rule if aggregate_steps == n_steps else "gausslegendre",
                    "n_aggregate_only": int(sum(1 for i in needed if i not in shown))}
    timings["integrated_gradients"] = time.perf_counter() - t0
    row_of = {i: k for k, i in enumerate(needed)}

    # ---- sanity check
    t0 = time.perf_counter()
    # --images first, then the most and least memorable alternately, at most sanity_max images
    pairs = [
        g[k]
        for k in range(max(len(groups["top"]), len(groups["bottom"])))
        for g in (groups["top"], groups["bottom"])
        if k < len(g)
    ]
    sanity_ids = list(dict.fromkeys(groups["image"] + pairs)) or list(needed)
    if sanity_max:
        sanity_ids = sanity_ids[:sanity_max]
    sanity: dict[str, Any]
    if sanity_ids:
        module = "head" if isinstance(getattr(model, "head", None), nn.Module) else None
        if module and isinstance(getattr(model, "tails", None), nn.Module):
            module = "head+tails"  # a blend: both learned parts (the fine-tuned tails and the head)
        tick_s = _tick("sanity check", len(sanity_ids))
        rho = np.full(len(sanity_ids), np.nan)
        check = None
        skeys = [ex.of[i].key for i in sanity_ids]
        for key in dict.fromkeys(skeys):  # each image's own model, randomised
            at = [k for k, kk in enumerate(skeys) if kk == key]
            rows = [row_of[sanity_ids[k]] for k in at]
            check = randomization_check(
                ex.models[key],
                x[rows],
                module=module,
                maps=res.maps[rows],
                seed=seed,
                progress=tick_s,
                # ranks, not exact maps
                **{**ig_kw, "n_steps": sanity_steps, "error_check": False, "delta_tolerance": math.inf},
            )
            rho[at] = check.spearman
        check = RandomizationCheck(spearman=rho, module=check.module, seed=check.seed, settings=check.settings)
        sanity = check.to_dict()
        sanity["image_ids"] = sanity_ids
        sanity["explained_with"] = [ex.of[i].label for i in sanity_ids]
        sanity["passed"] = bool(np.isfinite(check.mean) and check.mean < SANITY_THRESHOLD)
        sanity["threshold"] = SANITY_THRESHOLD
    else:
        sanity = {
            "test": "model randomisation (Adebayo et al. 2018)",
            "n_images": 0,
            "note": "no image was explained (no --top, --bottom, --images or aggregate images)",
        }
    timings["sanity_check"] = time.perf_counter() - t0

    # ---- figures
    t0 = time.perf_counter()
    att = run / "attributions"
    att.mkdir(parents=True, exist_ok=True)
    for old in list(att.glob("overlay_*.png")) + list(att.glob("aggregate_*.png")):
        old.unlink()  # a rerun with other images must not leave stale overlays behind
    files: dict[str, str] = {}
    for g in ("image", "top", "bottom"):
        for rank, i in enumerate(groups[g], start=1):
            k = row_of[i]
            label = g if g == "image" else f"{g}{rank:02d}"
            fname = f"overlay_{label}_{safe_name(i)}.png"
            s = score_of.get(i, np.nan)
            w = ex.of[i]
            by = "in-sample" if w.in_sample else (w.key if w.key != FINAL else "final model")
            title = (
                f"{i} | score {s:.3f} | predicted {res.scores[k]:.3f} ({by})"
                if np.isfinite(s)
                else f"{i} | predicted {res.scores[k]:.3f} ({by})"
            )
            if res.flagged[k]:
                title += (f" | NOT ACCURATE YET (est. error {100 * res.map_error[k]:.1f}%)"
                          if np.isfinite(res.map_error[k]) else
                          f" | NOT CONVERGED (rel. delta {res.relative_delta[k]:.2g})")
            save_figure(overlay_figure(x[k], res.maps[k], title=title), att / fname)
            files.setdefault(i, fname)
    agg_info: dict[str, Any] = {"note": agg_note} if agg_note else {}
    if not agg_note:
        agg_ids = agg_sets["top_quartile"] + agg_sets["bottom_quartile"]
        agg_rows = [row_of[i] for i in agg_ids]
        agg = aggregate_maps(
            res.maps[agg_rows], np.array([score_of[i] for i in agg_ids]), quantile=0.25, thresholds=(hi, lo)
        )
        save_figure(aggregate_figure(agg), att / "aggregate_quartiles.png")
        for key, m, cm, signed in (
            ("most_memorable", agg.top, "inferno", False),
            ("least_memorable", agg.bottom, "inferno", False),
            ("difference", agg.difference, "RdBu_r", True),
        ):
            save_figure(
                single_map_figure(m, key.replace("_", " "), cm, signed), att / f"aggregate_{key}.png"
            )
        agg_info = {
            **agg.to_dict(),
            "top_quartile_ids": agg_sets["top_quartile"],
            "bottom_quartile_ids": agg_sets["bottom_quartile"],
            "max_per_group": aggregate_max,
        }
    timings["figures"] = time.perf_counter() - t0

    # ---- arrays
    def _grp(i: str) -> str:
        return "+".join(g for g, lst in (*groups.items(), *agg_sets.items()) if i in lst)

    with atomic_path(att / "attributions.npz") as tmp:
        extra = {}
        if not agg_note:
            extra = {
                "aggregate_top": agg.top.astype(np.float32),
                "aggregate_bottom": agg.bottom.astype(np.float32),
                "aggregate_difference": agg.difference.astype(np.float32),
            }
        np.savez_compressed(
            tmp,
            image_ids=np.array(needed, dtype=str),
            groups=np.array([_grp(i) for i in needed], dtype=str),
            maps=res.maps,
            signed_maps=res.signed_maps,
            deltas=res.delta,
            relative_deltas=res.relative_delta,
            map_errors=res.map_error,
            flagged=res.flagged,
            scores=np.array([score_of.get(i, np.nan) for i in needed], dtype=np.float64),
            predicted_scores=res.scores,
            baseline_scores=res.baseline_scores,
            explained_with=np.array([ex.of[i].label for i in needed], dtype=str),
            in_sample=np.array([ex.of[i].in_sample for i in needed], dtype=bool),
            **extra,
        )
    atomic_write_json(att / "sanity.json", sanity)

    # ---- descriptors for every image of the run
    t0 = time.perf_counter()
    predicted, predicted_source = _stored_predictions(run, table)
    tick = _tick("descriptors", len(ids))
    rows_out, preds = [], []
    batch: list[torch.Tensor] = []

    def _flush() -> None:
        if batch:
            with torch.no_grad():
                xb = torch.stack(batch).to(dev)
                preds.extend(ScalarOutput(model)(xb).detach().cpu().numpy().astype(float).tolist())
            batch.clear()

    def _describe(i: str) -> tuple[np.ndarray | None, dict[str, float]]:
        arr = _load(i)
        d = _descriptor_row(arr, res.maps[row_of[i]] if i in row_of else None)
        return (arr if predicted is None else None), d

    # decoding and skimage release the GIL for much of their time: threads (1.2-1.45x on 2 cores), results in
    # the run's order, a bounded number of images in flight
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(ids), 16 * workers):
            for arr, d in pool.map(_describe, ids[start:start + 16 * workers]):
                rows_out.append(d)
                if arr is not None:
                    batch.append(torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32) / 255.0))
                    if len(batch) >= 32:
                        _flush()
                tick(1)
    if predicted is None:
        _flush()
        predicted = np.asarray(preds, dtype=float)
        predicted_source = "predictor.pt (in-sample: the predictor was fitted on these images)"
    desc = pd.DataFrame(rows_out, columns=DESCRIPTOR_COLUMNS)
    desc.insert(0, "image_id", ids)
    desc.insert(1, "score", score)
    desc.insert(2, "predicted_score", predicted)
    # which model each map (ig_center_share) comes from; empty for images without a map
    desc["explained_with"] = [ex.of[i].label if i in row_of else "" for i in ids]
    with atomic_path(run / "descriptors.csv") as tmp:
        desc.to_csv(tmp, index=False)
    timings["descriptors"] = time.perf_counter() - t0

    # ---- correlations
    t0 = time.perf_counter()
    corr_rows = []
    cats = _categories(table)
    with collected_warnings() as troubles:  # one line for the whole table, the details at debug level
        _descriptor_correlations(desc, cats, n_boot, seed, corr_rows)
    for message in troubles:
        log.debug("%s", message)
    if troubles:
        log.warning("%d warning(s) over the %d descriptor correlations (e.g. %s); every message at debug level "
                    "(memlens -vv)", len(troubles), len(corr_rows), troubles[0])
    corr = pd.DataFrame(corr_rows, columns=["descriptor", "target", "scope", *_CORR_FIELDS, "n_groups"])
    corr["n_groups"] = corr["n_groups"].astype("Int64")
    # every row of the file is one test of one family: Benjamini-Hochberg over all of them
    corr.insert(corr.columns.get_loc("p_value") + 1, "p_fdr", fdr_bh(corr["p_value"].to_numpy(float)))
    with atomic_path(run / "descriptor_correlations.csv") as tmp:
        corr.to_csv(tmp, index=False)
    timings["correlations"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    oof_of = _stored_oof(run, needed)
    summary = {
        "run": str(run),
        "model_for": model_for,
        "chosen_from": pool_note or "every scored image of the run",
        "device": str(dev),
        "input_size": size,
        "n_images": len(ids),
        "integrated_gradients": res.summary(),
        "explained": {
            g: [
                {
                    "image_id": i,
                    "file": files.get(i),
                    "score": score_of.get(i),
                    "predicted_score": float(res.scores[row_of[i]]),
                    "explained_with": ex.of[i].label,
                    "model": ex.of[i].key,
                    "in_sample": ex.of[i].in_sample,
                    "oof_predicted_score": oof_of.get(i),
                    "relative_delta": float(res.relative_delta[row_of[i]]),
                    "map_error": float(res.map_error[row_of[i]]) if np.isfinite(res.map_error[row_of[i]]) else None,
                    "flagged": bool(res.flagged[row_of[i]]),
                }
                for i in lst
            ]
            for g, lst in groups.items()
        },
        "flagged_ids": [i for i in needed if res.flagged[row_of[i]]],
        "aggregate": agg_info,
        "sanity": {
            k: sanity.get(k)
            for k in (
                "mean_spearman",
                "median_spearman",
                "passed",
                "threshold",
                "randomized_module",
                "n_images",
            )
        },
        "predicted_score_source": predicted_source,
        "models": {
            **ex.info,
            "explained_with": {i: ex.of[i].label for i in needed},
            "n_in_sample": int(sum(ex.of[i].in_sample for i in needed)),
        },
        "descriptor_correlations": {"n_boot": n_boot, "seed": seed, "file": "descriptor_correlations.csv"},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    atomic_write_json(att / "explain.json", summary)
    log.info(
        "explained %d images (%d flagged) and described %d in %.1f s",
        len(needed),
        res.n_flagged,
        len(ids),
        timings["total"],
    )
    return summary


def _merge_results(parts: list[tuple[list[int], IGResult]], n: int) -> IGResult:
    """One :class:`IGResult` in the rows of ``needed`` from the results of each model's rows. As one call would:
    when some map was error-checked, the maps of a model none of whose maps was are not judged (not flagged)."""
    import dataclasses

    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]
    checked = any(r.error_checked for _, r in parts)

    def cat(name: str) -> np.ndarray:
        a0 = np.asarray(getattr(first, name))
        out = np.empty((n, *a0.shape[1:]), dtype=a0.dtype)
        for rows, r in parts:
            out[rows] = np.asarray(getattr(r, name))
        return out

    flagged = np.zeros(n, dtype=bool)
    for rows, r in parts:
        flagged[rows] = r.flagged if (r.error_checked or not checked) else False
    fields = {k: cat(k) for k in ("attributions", "maps", "signed_maps", "delta", "relative_delta", "scores",
                                    "baseline_scores", "map_error")}
    settings = {**first.settings, "n_error_checked": int(sum(r.settings.get("n_error_checked", 0) for _, r in parts))}
    return dataclasses.replace(first, **fields, flagged=flagged, error_checked=checked, settings=settings)


def _stored_oof(run: Any, image_ids: Sequence[str]) -> dict[str, float]:
    """The out-of-fold predictions of ``predictor_oof.csv`` (the saved model's column) of these images."""
    import pandas as pd

    from ..predict import saved_model

    path = run / "predictor_oof.csv"
    if not image_ids or not path.is_file():
        return {}
    try:
        cv_path = run / "predictor_cv.csv"
        col = f"predicted_{saved_model(pd.read_csv(cv_path) if cv_path.is_file() else None)}"
        oof = pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError):
        return {}
    if not {"image_id", col} <= set(oof.columns):
        return {}
    vals = dict(zip(oof["image_id"], pd.to_numeric(oof[col], errors="coerce"), strict=True))
    return {i: float(vals[i]) for i in image_ids if i in vals and np.isfinite(vals[i])}


def _stored_predictions(run: Any, table: Any) -> tuple[np.ndarray | None, str | None]:
    """Predicted scores already in the run: ``per_image.csv`` ``predicted_score``, else the out-of-fold
    predictions of the model saved in ``predictor.pt`` (``predictor_oof.csv`` column ``predicted_<model>``,
    the model named by ``predictor_cv.csv``; ``memlens fit-predictor``); (None, None) when neither."""
    import pandas as pd

    from ..predict import saved_model

    if "predicted_score" in table.columns:
        v = pd.to_numeric(table["predicted_score"], errors="coerce").to_numpy(float)
        if np.isfinite(v).any():
            return v, "per_image.csv (predicted_score)"
    oof_path = run / "predictor_oof.csv"
    if oof_path.is_file():
        cv_path = run / "predictor_cv.csv"
        col = f"predicted_{saved_model(pd.read_csv(cv_path) if cv_path.is_file() else None)}"
        oof = pd.read_csv(oof_path)
        if {"image_id", col} <= set(oof.columns):
            by_id = dict(
                zip(
                    oof["image_id"].astype(str),
                    pd.to_numeric(oof[col], errors="coerce"),
                    strict=True,
                )
            )
            v = np.array([by_id.get(i, np.nan) for i in table["image_id"]], dtype=float)
            if np.isfinite(v).any():
                return v, f"predictor_oof.csv ({col}, out-of-fold)"
        log.warning("%s has no usable %s column; predicting in-sample with predictor.pt", oof_path, col)
    return None, None

def _descriptor_row(image_u8: np.ndarray, attribution_map: np.ndarray | None) -> dict[str, float]:
    from ..descriptors import image_descriptors

    return image_descriptors(image_u8, attribution_map)


def _categories(table: Any) -> np.ndarray | None:
    """The run's categories aligned with ``table`` (None when it has fewer than two)."""
    if "category" not in table.columns:
        return None
    cats = table["category"].where(table["category"].notna() & (table["category"].astype(str).str.strip() != ""))
    if cats.dropna().nunique() < 2:
        return None
    return cats.astype(object).where(cats.notna(), None).to_numpy(dtype=object)


def _descriptor_correlations(desc: Any, cats: np.ndarray | None, n_boot: int, seed: int,
                             corr_rows: list[dict[str, Any]]) -> None:
    """Append each descriptor's correlation with each target: pooled, and within/between categories."""
    from ..stats import between_groups, correlate

    for target in ("score", "predicted_score"):
        y = desc[target].to_numpy(float)
        if not np.isfinite(y).any():
            continue
        for dname in DESCRIPTOR_COLUMNS:
            x = desc[dname].to_numpy(float)
            found = [("pooled", correlate(x, y, method="spearman", n_boot=n_boot, seed=seed,
                                          label=f"{dname} vs {target}"))]
            if cats is not None:  # the parts a category-structured set needs (issue 23): within and between
                found.append(("within", correlate(x, y, method="spearman", n_boot=n_boot, seed=seed, groups=cats,
                                                  label=f"{dname} vs {target} (within category)")))
                if len(set(cats) - {None}) >= 3:
                    found.append(("between", between_groups(x, y, cats, method="spearman", n_boot=n_boot,
                                                            seed=seed, label=f"{dname} vs {target} (between)")))
            for scope, res_ in found:
                r = res_.to_dict()
                corr_rows.append({"descriptor": dname, "target": target, "scope": scope,
                                  **{k: r[k] for k in _CORR_FIELDS}, "n_groups": r.get("n_groups")})


def _held_out_ids(run: Any) -> set[str]:
    """The images of ``predictor_oof.csv`` whose part is ``holdout`` (empty without one)."""
    import pandas as pd

    path = run / "predictor_oof.csv"
    if not path.is_file():
        return set()
    try:
        oof = pd.read_csv(path, dtype={"image_id": str}, usecols=lambda c: c in ("image_id", "part"))
    except (OSError, ValueError):
        return set()
    if "part" not in oof.columns:
        return set()
    return set(oof.loc[oof["part"].astype(str) == "holdout", "image_id"].astype(str))
