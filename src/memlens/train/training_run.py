"""A whole training into a run directory (``memlens train``): :func:`train_run`.

Checks the data, the model settings and the run directory before anything is written, chooses the visual
experience, runs the phases (visual experience then single exposure, or pretraining) with
:func:`~memlens.train.fit_autoencoder`, and writes the models, tables, training curve and manifest -- an
earlier run's files set aside until the new training completes (:mod:`memlens.train.rundir`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import check_output_path
from ..errors import ConfigError, DataError, RunDirError, TrainingError
from .distributed import context_for_training, scratch_output
from .experience import choose_experience, experience_caution
from .fit import fit_autoencoder, resolve_precision
from .loop import ProgressFn
from .records import phase_info, table_sha256, write_curve
from .result import TrainResult
from .rundir import RUN_FILES, TRAIN_STATES, has_resumable_state, later_outputs, recover_set_aside, set_aside
from .runtime import auto_threads, busy_machine_note, resolve_device

__all__ = ["train_run", "untrained_decoder", "category_order", "DEFAULT_EXPERIENCE_FRACTION", "DEFAULT_PRETRAIN_EPOCHS",
           "DEFAULT_PRETRAIN_BATCH", "ORDERS", "BN_MODES", "INIT_LOADS", "AMP_MODES"]

log = logging.getLogger(__name__)

DEFAULT_EXPERIENCE_FRACTION = 0.25
DEFAULT_PRETRAIN_EPOCHS = 10
DEFAULT_PRETRAIN_BATCH = 32
#: the values of the exposure options (first = default = memlens's method; the others: the released scripts)
ORDERS = ("random", "category")
BN_MODES = ("frozen", "train")
INIT_LOADS = ("strict", "scripts")
AMP_MODES = ("auto", "bfloat16", "float32")
_AMP_ARG = {"auto": "auto", "bfloat16": "bf16", "float32": "float32"}


def _versions() -> dict[str, str]:
    from .._io import software_versions

    return software_versions()


def train_run(
    source: str | Path,
    out: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    init: str | None = None,
    weights: str | None = None,
    download: bool = False,
    mode: str = "exposure",
    experience: str | Path | None = None,
    experience_fraction: float = DEFAULT_EXPERIENCE_FRACTION,
    pretrain_epochs: int = DEFAULT_PRETRAIN_EPOCHS,
    pretrain_lr: float | None = None,
    freeze_encoder: bool | None = None,
    loss: str = "mse",
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = DEFAULT_PRETRAIN_BATCH,
    image_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    layout: str = "auto",
    image_col: str | None = None,
    score_col: str | None = None,
    category_col: str | None = None,
    score_variant: str | None = None,
    splits: Sequence[str] | None = None,
    num_workers: int = 0,
    threads: int | str | None = "auto",
    overwrite: bool = False,
    progress: Callable[[str, int, int, dict[str, Any]], None] | None = None,
    order: str = "random",
    bn: str = "frozen",
    init_load: str = "strict",
    amp: str = "auto",
) -> dict[str, Any]:
    """Train an autoencoder on a data set and write the run directory (``memlens train`` calls this).

    exposure mode (the paper's procedure):

    1. *visual experience*: ``pretrain`` on the experience corpus -- ``experience`` (a folder or table of
       images disjoint from the data set); by default the data root's ``experience/`` folder when it exists,
       else a seeded ``experience_fraction`` (25%) of the collection, held out from exposure and listed in
       ``experience_ids.txt``. ``pretrain_epochs=0`` skips it. With ``init="imagenet"`` the encoder is kept
       fixed and only the decoder learns (``freeze_encoder`` overrides). Saves ``autoencoder_before.pt``.
    2. *single exposure* of the (remaining) collection: ``autoencoder.pt`` and ``exposure.csv``
       (``image_id, order, loss``).

    pretrain mode: multi-epoch training on the collection itself (``epochs``, default 10; encoder frozen
    for ``init="imagenet"`` unless ``freeze_encoder=False``) -> ``autoencoder.pt``.

    Options of the single exposure (the defaults are memlens's method; the other values reproduce the paper's
    released scripts, see ``docs/reproduce-paper.md``):

    * ``loss``: a :func:`memlens.metrics.make_loss` spec; ``"1-<metric>"`` minimises the complement (maximises
      the distance; exposure without visual experience only). ``exposure.csv`` records the distance either way.
    * ``order``: ``"random"`` (a seeded permutation) or ``"category"`` (sorted by category, then image id,
      unshuffled).
    * ``bn``: ``"frozen"`` (BN statistics fixed) or ``"train"`` (batch statistics of each single image,
      running statistics updated).
    * ``init_load``: ``"strict"`` (every tensor of ``init=PATH`` must load) or ``"scripts"`` (a non-strict load
      by exact key that keeps the file's ``module.`` prefix, as the released scripts did: often nothing
      loads; a WARNING says how many tensors did and the manifest's ``model.init_report`` records it).
    * ``amp``: ``"auto"`` (bf16 autocast on CUDA, float32 on the CPU), ``"bfloat16"`` (CUDA only) or
      ``"float32"`` (no autocast); for every phase of the training.

    Also written: ``config.json``, ``dataset.json``, ``manifest.json``, ``training_curve.csv``/``.png``.
    ``threads``: CPU threads ("auto": :func:`auto_threads`, None: torch's setting). ``score_variant`` and
    ``splits`` select MemCat's score and LaMem's split files, as in :func:`memlens.data.load_dataset`.

    A new training (not ``resume``) in a directory that holds the outputs of later stages of an earlier run
    (``per_image.csv``, ``predictor.pt``, ...; :data:`LATER_OUTPUTS`) raises :class:`RunDirError`: they
    would no longer belong to the new model. ``overwrite=True`` removes them first.
    Returns the manifest dict.
    """

    from .._io import atomic_write_json, atomic_write_text, file_sha256
    from ..data import ImageDataset, load_dataset
    from ..data.local_files import has_remote_images, with_image_files
    from ..data.uris import is_uri
    from ..models import create_autoencoder, get_spec, load_autoencoder, save_autoencoder

    t_start = time.perf_counter()
    if mode not in ("exposure", "pretrain"):
        raise ConfigError(f"mode must be 'exposure' or 'pretrain', got {mode!r}")
    if not 0.0 < float(experience_fraction) < 1.0:
        raise ConfigError(f"experience_fraction must be in (0, 1), got {experience_fraction}")
    if int(pretrain_epochs) < 0:
        raise ConfigError(f"pretrain_epochs must be >= 0, got {pretrain_epochs}")
    for name, value, allowed in (("order", order, ORDERS), ("bn", bn, BN_MODES), ("init_load", init_load, INIT_LOADS),
                                 ("amp", amp, AMP_MODES)):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    spec = get_spec(backbone)
    init = init or spec.default_init
    size = int(image_size or spec.input_size)
    if init_load == "scripts" and init in (*spec.inits, "scratch", "imagenet"):
        raise ConfigError(f"init_load 'scripts' reproduces how the released scripts loaded a checkpoint file: give "
                          f"--init PATH, not --init {init}")
    dev = resolve_device(device)
    precision = resolve_precision(_AMP_ARG[amp], dev)  # bfloat16 on the CPU is refused here
    ddp = context_for_training(mode, dev)  # torchrun: join the process group (pretrain only)
    shared_out = Path(out)  # every rank checks the real run directory; rank 0 alone changes it
    if ddp is not None and not ddp.is_main:  # rank-0-only writes: the others write to a private scratch folder
        out, progress = scratch_output(out), None
    if threads == "auto":
        threads = auto_threads() if dev.type == "cpu" else None
        busy = busy_machine_note(threads) if threads else None
        if busy:
            log.warning("%s", busy)
    elif threads is not None:
        threads = int(threads)
        if threads < 1:
            raise ConfigError(f"threads must be >= 1 or 'auto', got {threads}")
    out = Path(out)
    check_output_path(out, directory=True)
    data_opts = {k: v for k, v in {"image_col": image_col, "score_col": score_col, "category_col": category_col,
                                   "score_variant": score_variant,
                                   "splits": list(splits) if splits else None}.items() if v is not None}
    # everything that can be checked before the run directory is touched: the data and the model settings
    ds = load_dataset(source, layout, **data_opts)
    root = Path(ds.root).resolve()
    if out.resolve() == root or (ds.layout == "folder" and root in out.resolve().parents):
        where = "the data folder" if out.resolve() == root else "inside a data folder read image by image"
        raise RunDirError(f"--out {out}: {where} ({ds.root}); the run's tables and images would become part of "
                          "the data set. Write the run elsewhere")
    # the model and the loss too: bad settings fail before anything is written
    t0 = time.perf_counter()
    if init_load == "scripts":
        model = create_autoencoder(backbone, init="scratch", input_size=size, seed=seed)
        _load_as_scripts(model, Path(init))
    else:
        model = create_autoencoder(backbone, init=init, input_size=size, seed=seed, weights=weights,
                                   download=download)
    timings: dict[str, float] = {"create_model_s": time.perf_counter() - t0}
    from ..metrics import make_loss

    loss_fn = make_loss(loss)
    if loss_fn.complement and (mode == "pretrain" or int(pretrain_epochs) > 0):
        where = "--mode pretrain" if mode == "pretrain" else f"visual experience (--pretrain-epochs {pretrain_epochs})"
        raise ConfigError(f"loss {loss!r} maximises the distance, which only the single exposure of the released "
                          f"scripts did; with {where} it would train the autoencoder not to reconstruct (use "
                          "--pretrain-epochs 0 with --mode exposure, or a plain distance loss)")
    # resuming an interrupted training (its checkpoints, or the visual experience done and the exposure not)
    # keeps the directory as it is; anything else, --resume or not, is a new training
    recover_set_aside(shared_out)  # a killed retrain's earlier run first: the checks below must see it
    stale = [] if (resume and has_resumable_state(shared_out)) else later_outputs(shared_out)
    if stale and not overwrite:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        raise RunDirError(f"{out} holds results of an earlier run ({shown}); a new training would leave them "
                          "out of date. Use another --out, or --overwrite to remove them first")
    exposed = ds
    exp_info: dict[str, Any] = {"source": "none"}
    exp_ds = None
    notes: list[str] = []
    holdout_ids: list[str] | None = None  # written to experience_ids.txt once the directory is prepared

    if mode == "exposure" and int(pretrain_epochs) > 0:
        exposed, exp_ds, exp_info, notes, holdout_ids = choose_experience(ds, source, experience,
                                                                          experience_fraction, seed)
    elif mode == "exposure":
        exp_info = {"source": "none", "note": "pretrain_epochs=0: no visual experience before exposure"}
        untrained = untrained_decoder(init, getattr(model, "init_report", {}), spec.inits)
        if untrained:
            log.warning("no visual experience before exposure (pretrain_epochs=0) and %s: the decoder has learned "
                        "nothing", untrained)
        else:  # e.g. a whole pretrained autoencoder (the paper's imagenet-autoencoder checkpoint)
            log.info("no visual experience before exposure (pretrain_epochs=0): the model's experience is its "
                     "initialisation (%s)", init)

    if mode == "exposure" and len(exposed) == 0:
        raise DataError(f"{source}: no images left to expose")
    given_order: Any = "random"
    if mode == "exposure" and order == "category":
        given_order = category_order(exposed.table, str(source))

    # every check passed: prepare the run directory. The earlier run's outputs are set aside, not deleted: a
    # training that fails or is interrupted puts them back, one that completes removes them
    if out != shared_out:  # a non-zero rank's scratch folder: rank 0 prepares the real one
        stale = []
    out.mkdir(parents=True, exist_ok=True)
    if has_remote_images(ds) or (exp_ds is not None and has_remote_images(exp_ds)):
        # images in Parquet cells or at URLs: training reads them many times, in any order, from files
        images = shared_out / "images"
        ds, exposed = with_image_files(ds, images), with_image_files(exposed, images)
        exp_ds = with_image_files(exp_ds, images) if exp_ds is not None else None
    states = out / "checkpoints"
    replaced = list(stale)
    if not resume:
        for name in TRAIN_STATES:
            with contextlib.suppress(FileNotFoundError):
                (states / name).unlink()
        replaced += [n for n in RUN_FILES if n not in replaced]
    with set_aside(out, replaced) as moved:
        if set(stale) & set(moved):
            log.warning("replacing %d output(s) of an earlier run in %s (put back if this training fails): %s",
                        len(stale), out, ", ".join(stale))
        if holdout_ids is not None:
            atomic_write_text(out / "experience_ids.txt", "\n".join(holdout_ids) + "\n")

        # model
        before_path = out / "autoencoder_before.pt"
        config = {
            "data": str(source), "out": str(out), "backbone": backbone, "init": init, "weights": weights,
            "download": bool(download), "mode": mode, "experience": None if experience is None else str(experience),
            "experience_fraction": float(experience_fraction), "pretrain_epochs": int(pretrain_epochs),
            "pretrain_lr": pretrain_lr, "freeze_encoder": freeze_encoder, "loss": loss, "epochs": epochs, "lr": lr,
            "batch_size": int(batch_size), "image_size": size, "seed": int(seed), "device": str(device),
            "resolved_device": str(dev), "layout": layout, **data_opts, "num_workers": int(num_workers),
            "threads": threads, "order": order, "bn": bn, "init_load": init_load, "amp": amp,
        }
        atomic_write_json(out / "config.json", config)
        recorded_source = str(source) if is_uri(str(source)) else str(Path(source).absolute())  # s3://... stays a URI
        dataset_json = {"source": recorded_source, "root": str(ds.root), "layout": ds.layout,
                        "options": {k: v for k, v in ds.spec().items() if k not in ("source", "layout")},
                        "n_images": len(ds),
                        "image_size": size, "notes": list(ds.notes) + notes,
                        "exposed": {"n_images": len(exposed), "file": "exposure.csv" if mode == "exposure" else None},
                        "experience": {**exp_info, **({"spec": exp_ds.spec()} if exp_ds is not None else {})}}
        atomic_write_json(out / "dataset.json", dataset_json)

        log.info("model: %s (init=%s, input %d px, %s parameters)", backbone, model.init, size,
                 f"{sum(p.numel() for p in model.parameters()):,}")
        init_report = {k: v for k, v in getattr(model, "init_report", {}).items()}
        curves: list[dict[str, Any]] = []
        phases: dict[str, Any] = {}

        def cb(phase: str) -> ProgressFn | None:
            if progress is None:
                return None
            return lambda done, total, info: progress(phase, done, total, info)

        common = {"loss": loss, "seed": seed, "device": dev, "num_workers": num_workers, "threads": threads,
                  "amp": _AMP_ARG[amp]}
        if mode == "pretrain":
            n_ep = int(epochs or DEFAULT_PRETRAIN_EPOCHS)
            imgs = ImageDataset(ds.paths, size)
            t0 = time.perf_counter()
            fe = (init == "imagenet") if freeze_encoder is None else bool(freeze_encoder)
            res = fit_autoencoder(model, imgs, mode="pretrain", lr=lr, epochs=n_ep, batch_size=batch_size,
                                  freeze_encoder=fe, checkpoint_path=states / "pretrain.pt",
                                  resume=resume, progress=cb("pretrain"), **common)
            timings["pretrain_s"] = time.perf_counter() - t0
            _check_finite(model, res, "pretraining", lr, "--lr")
            curves += res.curve
            phases["pretrain"] = phase_info(res, ds.image_ids, out, "pretrain_order.csv")
            phases["pretrain"]["freeze_encoder"] = fe
        else:
            # (1) visual experience
            if exp_ds is not None:
                fe = (init == "imagenet") if freeze_encoder is None else bool(freeze_encoder)
                exp_settings = {"backbone": backbone, "init": init, "image_size": size, "seed": int(seed),
                                "epochs": int(pretrain_epochs), "lr": pretrain_lr, "batch_size": int(batch_size),
                                "loss": loss, "freeze_encoder": fe, "n_images": len(exp_ds),
                                "experience": exp_info.get("source")}
                reuse = None
                if resume and before_path.is_file():
                    with contextlib.suppress(Exception):
                        cand = load_autoencoder(before_path)
                        if cand.checkpoint_extra.get("experience_settings") == exp_settings:
                            reuse = cand
                if reuse is not None:
                    model = reuse
                    phases["experience"] = dict(reuse.checkpoint_extra.get("experience", {}), reused=True)
                    curves += list(reuse.checkpoint_extra.get("curve", []))
                    log.info("resume: visual experience already complete (%s)", before_path)
                else:
                    t0 = time.perf_counter()
                    res = fit_autoencoder(model, ImageDataset(exp_ds.paths, size), mode="pretrain", lr=pretrain_lr,
                                          epochs=int(pretrain_epochs), batch_size=batch_size, freeze_encoder=fe,
                                          checkpoint_path=states / "experience.pt", resume=resume,
                                          progress=cb("experience"), **common)
                    timings["experience_s"] = time.perf_counter() - t0
                    _check_finite(model, res, "visual experience", pretrain_lr, "--pretrain-lr")
                    for r in res.curve:
                        r["phase"] = "experience"
                    curves += res.curve
                    phases["experience"] = phase_info(res, exp_ds.image_ids, out, "experience_order.csv")
                    phases["experience"]["freeze_encoder"] = fe
                    save_autoencoder(before_path, model, extra={"experience_settings": exp_settings,
                                                                "experience": phases["experience"],
                                                                "curve": res.curve})
                    with contextlib.suppress(FileNotFoundError):
                        (states / "experience.pt").unlink()
            else:
                save_autoencoder(before_path, model, extra={"experience": {"source": "none"}})
            # (2) single exposure
            t0 = time.perf_counter()
            res = fit_autoencoder(model, ImageDataset(exposed.paths, size), mode="exposure", lr=lr,
                                  epochs=int(epochs or 1), checkpoint_path=states / "exposure.pt", resume=resume,
                                  progress=cb("exposure"), bn=bn, order=given_order, **common)
            timings["exposure_s"] = time.perf_counter() - t0
            _check_finite(model, res, "exposure", lr, "--lr")
            curves += res.curve
            frame = res.exposure_frame(exposed.image_ids).sort_values("order", kind="stable")
            from .._io import atomic_path

            with atomic_path(out / "exposure.csv") as tmp:
                frame.to_csv(tmp, index=False, float_format="%.8g")
            phases["exposure"] = {k: v for k, v in res.summary().items() if k != "settings"}
            phases["exposure"].update({
                "settings": res.settings, "presentations_per_image": res.epochs,
                "order": f"seeded random permutation (seed {seed}) per pass" if order == "random" else
                         "sorted by category, then image id; the same order every pass, unshuffled (order=category)",
                "order_file": "exposure.csv", "loss_recorded": "at exposure, before the update",
                "bn": "frozen: BN statistics fixed (eval mode), affine weights learn" if bn == "frozen" else
                      "train: each image normalised with its own statistics, running statistics updated",
                "objective": (f"1 - {loss_fn.terms[0][1].name}: minimised, so the distance is maximised; "
                              "exposure.csv records the distance d, not 1 - d") if loss_fn.complement else
                             f"{loss_fn.spec} (a distance, minimised)"})

        if mode == "exposure" and exp_info.get("source") != "none":  # no experience at all is warned about above
            scratch = untrained_decoder(init, init_report, spec.inits) and init_load == "scripts"
            caution = experience_caution("scratch" if scratch else init, phases.get("experience") or exp_info,
                                         [r.get("val_loss") for r in curves if r.get("phase") == "experience"])
            if caution:
                log.warning("%s", caution)
        save_autoencoder(out / "autoencoder.pt", model, extra={"mode": mode, "phases": phases})
        for name in ("exposure.pt", "pretrain.pt"):
            with contextlib.suppress(FileNotFoundError):
                (states / name).unlink()
        with contextlib.suppress(OSError):
            states.rmdir()
        write_curve(out, curves)
        timings["total_s"] = time.perf_counter() - t_start

        source_p = Path(source)
        manifest = {
            "memlens_run": "train",
            "versions": _versions(),
            "device": {"requested": str(device), "used": str(dev),
                       "name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                       "torch_threads": threads or torch.get_num_threads(),
                       "amp": amp, "precision": "bf16 autocast" if precision == "bf16" else "float32"},
            "seeds": {"seed": int(seed), "model_init": int(seed), "derivation": "sha256(seed/purpose)"},
            "input": {"source": str(source_p.absolute()), "layout": ds.layout, "n_images": len(ds),
                      "table_sha256": table_sha256(ds.table),
                      "source_sha256": file_sha256(source_p) if source_p.is_file() else None},
            "model": {"backbone": backbone, "init": init, "init_report": init_report, "config": model.config,
                      "spec": model.spec.to_dict(), "parameters": int(sum(p.numel() for p in model.parameters()))},
            "training": {"mode": mode, "experience": {**exp_info, **phases.get("experience", {})}
                         if mode == "exposure" else None, **{k: v for k, v in phases.items() if k != "experience"}},
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "files": {name: file_sha256(out / name) for name in ("autoencoder.pt", "autoencoder_before.pt")
                      if (out / name).is_file()},
        }
        atomic_write_json(out / "manifest.json", manifest)
        return manifest

def untrained_decoder(init: str, init_report: dict[str, Any], named_inits: Sequence[str] = ()) -> str | None:
    """Why the decoder starts untrained (a phrase for a warning), or None when it starts from trained weights.

    ``init="scratch"``: random weights; ``init="imagenet"``: an ImageNet *encoder* only (every backbone's decoder
    starts random); a checkpoint PATH loaded strictly holds the whole autoencoder, decoder included; one loaded
    non-strictly (``init_load="scripts"``) counts as untrained unless every decoder tensor loaded.
    """
    if init == "scratch":
        return "the model starts from random weights (init scratch)"
    if init == "imagenet" or init in named_inits:
        return f"only the encoder is pretrained (init {init}); the decoder starts from random weights"
    parts = (init_report or {}).get("loaded_by_part") or {}
    if "decoder" in parts and parts["decoder"][0] < parts["decoder"][1]:
        return (f"the non-strict load of the checkpoint (init_load scripts) gave the decoder {parts['decoder'][0]} "
                f"of its {parts['decoder'][1]} tensors")
    return None


def category_order(table: Any, source: str = "the data set") -> list[int]:
    """Row indices of ``table`` sorted by ``category``, then ``image_id`` (the ``order="category"`` exposure
    order; :class:`DataError` when a row has no category)."""
    if "category" not in table.columns:
        raise DataError(f"{source}: order 'category' needs image categories and the data set has none (give "
                        "--category-col C for a table)")
    cats = table["category"]
    blank = cats.isna() | (cats.astype(str).str.strip() == "")
    if blank.any():
        first = table["image_id"][blank].iloc[0]
        raise DataError(f"{source}: order 'category' needs a category for every image; {int(blank.sum())} have none "
                        f"(e.g. {first})")
    keys = list(zip(cats.astype(str), table["image_id"].astype(str), strict=True))
    return sorted(range(len(keys)), key=keys.__getitem__)


def _load_as_scripts(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model`` as the released scripts did (non-strict, ``module.`` prefix kept); sets
    ``model.init`` and ``model.init_report`` as :func:`memlens.models.create_autoencoder` does."""
    from .._io import file_sha256
    from ..models.checkpoint import load_state_dict_as_scripts, read_state_dict, strip_prefix

    if not path.is_file():
        raise ConfigError(f"init must be a checkpoint file for init_load 'scripts'; no file at {str(path)!r}")
    raw = read_state_dict(path, strip_module_prefix=False)
    foreign = getattr(model, "foreign_mapping", None)
    mapping = foreign(strip_prefix(raw)) if foreign is not None else None
    kind = "imagenet-autoencoder" if mapping is not None else "state_dict"
    if mapping is None:
        mapping = {k: k for k in model.state_dict()}
    report = load_state_dict_as_scripts(model, raw, mapping, what=f"{model.spec.name} checkpoint {path}")
    report.update(init=str(path), path=str(path), kind=kind, sha256=file_sha256(path))
    n, total = report["n_loaded"], report["n_expected"]
    model.init = f"checkpoint:{path}" if n == total else \
        f"checkpoint:{path} (non-strict load as in the released scripts: {n} of {total} tensors; the rest random)"
    model.init_report = report


def _check_finite(model: nn.Module, res: TrainResult, phase: str, lr: float | None, flag: str) -> None:
    """Raise :class:`TrainingError` when a phase ended with a non-finite loss or non-finite weights."""
    losses = [r.get("loss") for r in res.curve]
    bad_loss = next((k for k, v in enumerate(losses) if v is not None and not math.isfinite(float(v))), None)
    bad_weights = any(not torch.isfinite(p).all() for p in model.parameters())
    if bad_loss is None and not bad_weights:
        return
    unit = "step" if phase == "exposure" else "epoch"  # the curve has a row per image, or per epoch
    where = f"the loss became {losses[bad_loss]} at {unit} {bad_loss + 1} of {len(losses)}" \
        if bad_loss is not None else "the weights are no longer finite"
    rate = f" (it was {lr:g})" if isinstance(lr, (int, float)) else ""
    raise TrainingError(f"the {phase} diverged: {where}; use a lower learning rate {flag}{rate}")
