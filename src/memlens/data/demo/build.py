"""Writing the demo set: :func:`make_demo_set` draws the scenes, computes the true memorability, runs the
simulated experiment, renders the images and writes everything in the ``memcat`` layout (plus the ground
truth, the split halves, the experience images, a README and ``demo_config.json``), atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from ..._version import __version__
from ...errors import ConfigError, DataError
from .observers import sigmoid, simulate_observers
from .rendering import JPEG_QUALITY, jpeg_bytes, render_scene
from .scenes import (
    DEMO_CATEGORIES,
    DEMO_MODEL,
    PARAM_COLUMNS,
    assignments,
    parameter_distinctiveness,
    sample_params,
)

__all__ = ["make_demo_set", "MEMCAT_COLUMNS", "GENERATOR", "GENERATOR_VERSION", "SOURCE", "MARKER_FILE"]

logger = logging.getLogger(__package__)  # "memlens.data.demo", as before the package split

GENERATOR = "memlens-demo"
GENERATOR_VERSION = 1
SOURCE = "memlens-demo (simulated)"
MARKER_FILE = "demo_config.json"

MEMCAT_COLUMNS = (
    "", "image_file", "category", "subcategory", "current_height", "current_width", "source", "searched_label",
    "resize_factor", "H", "FA", "n_resp", "memorability_wo_fa_correction", "memorability_w_fa_correction",
)


def _fmt(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(int(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return repr(round(float(x), 10))
    return str(x)


def _write_csv(path: Path, header: list[str], rows: list[list], quote: bool = False) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        if quote:  # like MemCat's file: strings quoted, numbers not
            w = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
            w.writerow(header)
            for row in rows:
                w.writerow([float(x) if isinstance(x, (float, np.floating)) else
                            int(x) if isinstance(x, (int, np.integer)) else x for x in row])
        else:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(header)
            for row in rows:
                w.writerow([_fmt(x) for x in row])


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz like numpy.savez, but byte-identical across runs (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def _readme(seed: int, n_images: int, n_experience: int, n_observers: int, n_splits: int, size: int,
            stats: dict) -> str:
    m = DEMO_MODEL
    cats = ", ".join(f"{c.name} ({', '.join(s.name for s in c.subs)}; b_cat={c.offset:+.2f})"
                     for c in DEMO_CATEGORIES)
    return f"""memlens demo set (generator {GENERATOR} v{GENERATOR_VERSION}, memlens {__version__})
=====================================================================

THE MEMORABILITY SCORES IN THIS FOLDER ARE SIMULATED. They come from virtual observers in a simulated
repeat-detection memory game, NOT from human participants. Never report them as human data.

Made by memlens.data.make_demo_set(seed={seed}, n_images={n_images}, image_size={size},
n_experience={n_experience}, n_observers={n_observers}, n_splits={n_splits}).
The same arguments give byte-identical files.

Images: procedurally generated {size}x{size} scenes in 5 categories:
  {cats}.

Generative model of the true memorability p_i (no autoencoder is involved):
  logit p_i = b0 + b_dist * D_i + b_sal * S_i + b_cat[category] + e_i,   e_i ~ N(0, sigma_img^2)
  b0={m['b0']}, b_dist={m['b_dist']}, b_sal={m['b_sal']}, sigma_img={m['sigma_img']}
  D_i = distinctiveness: distance of the image's standardised hidden-parameter vector to the nearest other
        image of the set (colour triplets weighted 1/3 per channel), z-scored over the set.
  S_i = contrast (0..1) of the salient high-contrast object (ball, sign, kite, balloon); 0 if none
        (an image has one with probability {m['p_salient']}).

Simulated experiment: {n_observers} observers, each sees {m['view_fraction']:.0%} of the images twice.
  hit on the repeat:            P = sigmoid(logit p_i + a_j),             a_j ~ N(0, {m['sigma_obs_hit']}^2)
  false alarm on the first one: P = sigmoid({m['f0']} - {m['f_typ']} * D_i + f_j), f_j ~ N(0, {m['sigma_obs_fa']}^2)
  memorability_wo_fa_correction = H / n_resp;  memorability_w_fa_correction = (H - FA) / n_resp

Files
  memcat_image_data.csv    MemCat layout: one row per image, hits, false alarms, responses, both scores
  <category>/<subcategory>/demo_NNNN.jpg   the images (JPEG quality {JPEG_QUALITY})
  split_halves.npz         image, half1, half2: hit rates of {n_splits} random observer splits (n_splits x N);
                           fa-corrected__half1/2: the same splits' false-alarm corrected scores
  demo_truth.csv           ground truth: hidden parameters, D, S, true p, ... per image
  experience/exp_NNNN.jpg  {n_experience} further images from the same generator, no scores (visual experience)
  experience_truth.csv     hidden parameters of the experience images
  demo_config.json         the arguments and model coefficients

Measured on this set: split-half Spearman (mean over splits) = {stats['split_half_spearman']:.3f};
Spearman(true p, FA-corrected score) = {stats['spearman_truth_corrected']:.3f}.
"""


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok])[0])


def _prepare_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder; choose another place for the demo set")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise DataError(f"{root}: folder exists and is not empty; choose an empty or new folder, "
                            "or pass overwrite=True to replace an earlier demo set")
        if not (root / MARKER_FILE).is_file():
            raise DataError(f"{root}: not replaced even with overwrite=True: it is not empty and has no "
                            f"{MARKER_FILE}, so it does not look like a memlens demo set")


def _validate_args(n_images: int, seed: int, image_size: int, n_experience: int, n_observers: int,
                   n_splits: int) -> None:
    problems = []
    if not isinstance(n_images, (int, np.integer)) or n_images < 2:
        problems.append(f"n_images must be an integer >= 2, got {n_images!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        problems.append(f"image_size must be an integer >= 16, got {image_size!r}")
    if not isinstance(n_experience, (int, np.integer)) or n_experience < 0:
        problems.append(f"n_experience must be an integer >= 0, got {n_experience!r}")
    if not isinstance(n_observers, (int, np.integer)) or n_observers < 2:
        problems.append(f"n_observers must be an integer >= 2, got {n_observers!r}")
    if not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        problems.append(f"n_splits must be an integer >= 1, got {n_splits!r}")
    if problems:
        raise ConfigError("make_demo_set: " + "; ".join(problems))


def make_demo_set(root: str | os.PathLike, n_images: int = 240, seed: int = 0, image_size: int = 96,
                  n_experience: int = 160, n_observers: int = 200, n_splits: int = 25,
                  overwrite: bool = False) -> Path:
    """Generate the synthetic demo set with SIMULATED memorability scores, in the ``memcat`` layout.

    Parameters
    ----------
    root : path
        Folder to create. It must not exist or be empty; with ``overwrite=True`` an earlier demo set (a
        folder holding ``demo_config.json``) is replaced. The set is built in a temporary sibling folder
        and moved into place only when complete.
    n_images : int
        Images with scores, spread evenly over 5 categories and their subcategories.
    seed : int
        Seed of everything; the same arguments give byte-identical files.
    image_size : int
        Side of the square images in pixels.
    n_experience : int
        Further unscored images from the same generator, written to ``root/experience/``.
    n_observers : int
        Virtual observers in the simulated repeat-detection game (each sees 40% of the images).
    n_splits : int
        Random splits of the observers into halves written to ``root/split_halves.npz``.
    overwrite : bool
        Replace an earlier demo set at ``root``.

    Returns
    -------
    Path
        ``root``.

    Raises
    ------
    DataError
        ``root`` is a file, or a non-empty folder that may not be replaced.
    ConfigError
        An argument is out of range.

    Examples
    --------
    >>> import tempfile, memlens
    >>> root = memlens.make_demo_set(tempfile.mkdtemp() + "/demo", n_images=20, image_size=32, n_experience=4,
    ...                              n_observers=20, n_splits=3)
    >>> ds = memlens.load_dataset(root)
    >>> ds.layout, len(ds)
    ('memcat', 20)
    """
    _validate_args(n_images, seed, image_size, n_experience, n_observers, n_splits)
    root = Path(root).expanduser().absolute()
    _prepare_root(root, overwrite)
    t0 = time.perf_counter()
    ss_params, ss_exp, ss_noise, ss_obs = np.random.SeedSequence([GENERATOR_VERSION, int(seed)]).spawn(4)

    # hidden parameters and the true memorability
    rng = np.random.default_rng(ss_params)
    params = [sample_params(rng, c, s) for c, s in assignments(n_images)]
    vectors = np.stack([p.vector for p in params])
    dist_raw = parameter_distinctiveness(vectors)
    sd = dist_raw.std()
    dist = (dist_raw - dist_raw.mean()) / (sd if sd > 0 else 1.0)
    sal = np.array([p.salient_contrast for p in params])
    cat_off = np.array([DEMO_CATEGORIES[p.cat].offset for p in params])
    noise = np.random.default_rng(ss_noise).normal(0.0, DEMO_MODEL["sigma_img"], n_images)
    logit_p = DEMO_MODEL["b0"] + DEMO_MODEL["b_dist"] * dist + DEMO_MODEL["b_sal"] * sal + cat_off + noise
    p_true = sigmoid(logit_p)
    fa_logit = DEMO_MODEL["f0"] - DEMO_MODEL["f_typ"] * dist
    sim = simulate_observers(np.random.default_rng(ss_obs), logit_p, fa_logit, n_observers, n_splits)
    exp_rng = np.random.default_rng(ss_exp)
    exp_params = [sample_params(exp_rng, c, s) for c, s in assignments(n_experience)]
    exp_params = [exp_params[i] for i in exp_rng.permutation(n_experience)]

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        ids, files, measured = [], [], []
        for i, p in enumerate(params):
            cat = DEMO_CATEGORIES[p.cat]
            name = f"demo_{i + 1:04d}.jpg"
            rel = f"{cat.name}/{cat.subs[p.sub].name}/{name}"
            arr, contrast = render_scene(p, image_size)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(jpeg_bytes(arr))
            ids.append(rel)
            files.append(name)
            measured.append(contrast)
        (tmp / "experience").mkdir()
        for i, p in enumerate(exp_params):
            arr, _ = render_scene(p, image_size)
            (tmp / "experience" / f"exp_{i + 1:04d}.jpg").write_bytes(jpeg_bytes(arr))

        H, FA, n_resp = sim["H"], sim["FA"], sim["n_resp"]
        with np.errstate(invalid="ignore", divide="ignore"):
            wo = np.where(n_resp > 0, H / n_resp, np.nan)
            w = np.where(n_resp > 0, (H - FA) / n_resp, np.nan)
        rows = []
        for i, p in enumerate(params):
            cat = DEMO_CATEGORIES[p.cat]
            sub = cat.subs[p.sub].name
            rows.append([i + 1, files[i], cat.name, sub, image_size, image_size, SOURCE, sub, 1,
                         int(H[i]), int(FA[i]), int(n_resp[i]), float(wo[i]), float(w[i])])
        _write_csv(tmp / "memcat_image_data.csv", list(MEMCAT_COLUMNS), rows, quote=True)

        truth_header = ["image_id", "image_file", "category", "subcategory", *PARAM_COLUMNS, "atypicality",
                        "salient", "salient_kind", "salient_contrast", "salient_size", "salient_x",
                        "salient_contrast_measured", "distinctiveness_raw", "distinctiveness",
                        "category_offset", "image_noise", "logit_p", "p_true", "fa_prob"]
        truth_rows = []
        for i, p in enumerate(params):
            cat = DEMO_CATEGORIES[p.cat]
            truth_rows.append([ids[i], files[i], cat.name, cat.subs[p.sub].name, *p.vector, p.atypicality,
                               p.salient, p.salient_kind if p.salient else "", p.salient_contrast,
                               p.salient_size if p.salient else 0.0, p.salient_x if p.salient else 0.0,
                               measured[i], dist_raw[i], dist[i], cat_off[i], noise[i], logit_p[i], p_true[i],
                               sigmoid(fa_logit[i])])
        _write_csv(tmp / "demo_truth.csv", truth_header, truth_rows)
        exp_rows = [[f"experience/exp_{i + 1:04d}.jpg", DEMO_CATEGORIES[p.cat].name,
                     DEMO_CATEGORIES[p.cat].subs[p.sub].name, *p.vector] for i, p in enumerate(exp_params)]
        _write_csv(tmp / "experience_truth.csv", ["image_id", "category", "subcategory", *PARAM_COLUMNS],
                   exp_rows)
        _write_npz(tmp / "split_halves.npz", {"image": np.array(ids), "half1": sim["half1"],
                                               "half2": sim["half2"], "kind": np.array("hit rate"),
                                               "fa-corrected__half1": sim["corrected1"],
                                               "fa-corrected__half2": sim["corrected2"]})

        split_r = [_spearman(sim["half1"][s], sim["half2"][s]) for s in range(n_splits)]
        stats = {
            "split_half_spearman": float(np.mean(finite)) if (finite := [r for r in split_r if math.isfinite(r)])
            else float("nan"),
            "spearman_truth_corrected": _spearman(p_true, w),
            "spearman_truth_uncorrected": _spearman(p_true, wo),
        }
        config = {
            "generator": GENERATOR, "generator_version": GENERATOR_VERSION, "memlens_version": __version__,
            "scores": "SIMULATED by virtual observers, not human",
            "arguments": {"n_images": n_images, "seed": seed, "image_size": image_size,
                          "n_experience": n_experience, "n_observers": n_observers, "n_splits": n_splits},
            "model": DEMO_MODEL,
            "categories": {c.name: {"offset": c.offset, "subcategories": [s.name for s in c.subs]}
                           for c in DEMO_CATEGORIES},
            "param_columns": list(PARAM_COLUMNS),
            "measured": {k: round(v, 6) if math.isfinite(v) else None for k, v in stats.items()},
        }
        (tmp / MARKER_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.txt").write_text(
            _readme(seed, n_images, n_experience, n_observers, n_splits, image_size, stats), encoding="utf-8")
        _install(tmp, root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("demo set: %d images + %d experience images written to %s in %.1f s (split-half Spearman "
                "%.3f; scores are simulated)", n_images, n_experience, root, time.perf_counter() - t0,
                stats["split_half_spearman"])
    return root


def _install(tmp: Path, root: Path, overwrite: bool) -> None:
    """Move the finished set from ``tmp`` to ``root``, replacing an earlier demo set only when allowed."""
    _prepare_root(root, overwrite)  # again: the folder may have changed while we worked
    os.chmod(tmp, 0o755)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if not root.exists():
        os.replace(tmp, root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
    old.rmdir()
    os.replace(root, old)
    try:
        os.replace(tmp, root)
    except BaseException:
        os.replace(old, root)
        raise
    shutil.rmtree(old, ignore_errors=True)
