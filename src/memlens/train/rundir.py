"""The safety of a run directory: which files belong to a training, which to the stages after it, and
replacing an earlier run so that a failed or killed training never leaves a mix of two runs.

:func:`set_aside` moves an earlier run's files to ``.replaced-outputs/`` while a new training runs and puts
them back when it fails; :func:`recover_set_aside` does the same after a killed one. :func:`has_resumable_state`
and :func:`later_outputs` tell ``--resume`` and ``--overwrite`` what is there.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["LATER_OUTPUTS", "TRAIN_STATES", "RUN_FILES", "has_resumable_state", "later_outputs", "set_aside",
           "recover_set_aside"]

log = logging.getLogger(__name__)

#: outputs of the stages after train (score, analyze, fit-predictor, explain, report); names or globs
LATER_OUTPUTS = ("per_image.csv", "latents.npy", "latent_ids.txt", "features.npy", "split_halves.npz", "index.json",
                 "correlations.csv", "correlations.json", "predictor.pt", "predictor_cv.csv", "predictor_oof.csv",
                 "predictor_categories.csv",
                 "featureset_*", "descriptors.csv", "descriptor_correlations.csv", "attributions", "report.html",
                 "results.json", "shards")


#: training states under RUN/checkpoints/ (written while a training runs, removed when it completes)
TRAIN_STATES = ("experience.pt", "exposure.pt", "pretrain.pt")


def has_resumable_state(run: str | Path) -> bool:
    """An interrupted training in ``run``: a checkpoint, or the visual experience done and the exposure not."""
    run = Path(run)
    return (any((run / "checkpoints" / f).exists() for f in TRAIN_STATES)
            or ((run / "autoencoder_before.pt").exists() and not (run / "autoencoder.pt").exists()))


def later_outputs(run: str | Path) -> list[str]:
    """Names of the later stages' outputs (:data:`LATER_OUTPUTS`) present in ``run``, sorted."""
    run = Path(run)
    if not run.is_dir():
        return []
    return sorted({p.name for pattern in LATER_OUTPUTS for p in run.glob(pattern)})


#: the files a training writes into the run directory (set aside while a new training replaces them)
RUN_FILES = ("config.json", "dataset.json", "manifest.json", "autoencoder.pt", "autoencoder_before.pt",
             "exposure.csv", "experience_order.csv", "pretrain_order.csv", "experience_ids.txt", "training_curve.csv",
             "training_curve.png")

#: where the earlier run's files wait while a new training runs
_ASIDE = ".replaced-outputs"


def _put_back_earlier_run(out: Path, aside: Path, names: Sequence[str]) -> None:
    """Put the earlier run back: remove what a failed training wrote (``names`` and its training states in
    ``checkpoints/``), then move everything in ``aside`` back into ``out``."""
    import os

    for name in {*names, *(p.name for p in aside.iterdir())}:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
    for name in TRAIN_STATES:  # a resume must not continue the failed training next to the earlier run's files
        with contextlib.suppress(FileNotFoundError):
            (out / "checkpoints" / name).unlink()
    with contextlib.suppress(OSError):
        (out / "checkpoints").rmdir()
    for p in sorted(aside.iterdir()):
        os.replace(p, out / p.name)
    shutil.rmtree(aside, ignore_errors=True)


def recover_set_aside(out: Path) -> None:
    """A ``.replaced-outputs/`` folder left by a killed retrain: put that earlier run back, whole."""
    aside = Path(out) / _ASIDE
    if aside.is_dir():
        _put_back_earlier_run(Path(out), aside, RUN_FILES)
        log.warning("%s: an earlier training was killed while replacing a run; that run's files were put back",
                    out)


@contextlib.contextmanager
def set_aside(out: Path, names: Sequence[str]) -> Iterator[list[str]]:
    """Move ``out/<name>`` (files or folders) to ``out/.replaced-outputs/`` for the duration of the block.

    Yields the names moved. When the block raises (a bad image, a diverging loss, Ctrl-C) and there was an
    earlier run, every file of ``names`` the block wrote and its training states are removed and the earlier
    files are put back, so a failed training never leaves a run without its model or with a mix of two runs
    (such a retrain is started again, not resumed). Without an earlier run the partial outputs and states
    stay, for ``--resume``. When the block completes, the earlier files are deleted. A process killed inside
    the block leaves the folder for :func:`recover_set_aside`.
    """
    import os

    aside = out / _ASIDE
    moved = []
    for name in names:
        if (out / name).exists() or (out / name).is_symlink():
            aside.mkdir(exist_ok=True)
            os.replace(out / name, aside / name)
            moved.append(name)
    try:
        yield moved
    except BaseException:
        if moved:
            _put_back_earlier_run(out, aside, names)
            log.warning("the training did not complete: the earlier run's files in %s were put back", out)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
