"""The visual experience before an exposure: which images it uses, and whether the model learned enough.

:func:`choose_experience` picks the corpus -- an explicit one (disjoint from the exposed images), the data
root's ``experience/`` folder, or by default a seeded holdout of the collection. :func:`experience_caution`
is the warning for a model from random weights that learned little from its experience.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import DataError
from .seeding import seeded_permutation

if TYPE_CHECKING:
    from ..data import Dataset

__all__ = ["ExperienceChoice", "choose_experience", "experience_caution", "MIN_SCRATCH_EXPERIENCE_STEPS",
           "MAX_VAL_LOSS_RATIO"]

log = logging.getLogger(__name__)


class ExperienceChoice(NamedTuple):
    """The outcome of :func:`choose_experience`.

    Attributes
    ----------
    exposed : the images to expose (the data set, less any images used for the experience).
    dataset : the experience corpus.
    info : the manifest's ``training.experience`` description (``source``, ``n_images``, ...).
    notes : lines for ``dataset.json``'s notes.
    holdout_ids : the held-out image ids (for ``experience_ids.txt``), or None when not a holdout.
    """

    exposed: Dataset
    dataset: Dataset
    info: dict[str, Any]
    notes: list[str]
    holdout_ids: list[str] | None


def _real(paths: Sequence[str]) -> list[str]:
    import os

    return [os.path.realpath(p) for p in paths]


def choose_experience(ds: Dataset, source: str | Path, experience: str | Path | None,
                      experience_fraction: float, seed: int) -> ExperienceChoice:
    """The visual-experience corpus for exposing ``ds`` (read from ``source``).

    ``experience`` (a folder or table) must share no image with ``ds`` (:class:`DataError`); without it the
    data root's ``experience/`` folder is used when it exists (its images are not exposed), else a seeded
    ``experience_fraction`` of ``ds`` is held out from exposure.
    """
    from ..data import load_dataset

    exposed = ds
    notes: list[str] = []
    holdout_ids: list[str] | None = None  # written to experience_ids.txt once the directory is prepared
    exp_ds: Dataset
    exp_info: dict[str, Any]
    if experience is not None:
        exp_ds = load_dataset(experience, "auto")
        overlap = set(_real(exp_ds.paths)) & set(_real(ds.paths))
        if overlap:
            raise DataError(f"the experience corpus {experience} shares {len(overlap)} image(s) with the data set "
                            f"(e.g. {sorted(overlap)[0]}); experience images must be disjoint from the exposed ones")
        exp_info = {"source": "explicit", "path": str(Path(experience).absolute())}
    elif (ds.root / "experience").is_dir():
        exp_ds = load_dataset(ds.root / "experience", "folder")
        exp_real = set(_real(exp_ds.paths))
        keep = [i for i, p in zip(ds.image_ids, _real(ds.paths), strict=True) if p not in exp_real]
        if len(keep) < len(ds):
            notes.append(f"{len(ds) - len(keep)} images of the experience/ folder excluded from exposure")
            exposed = ds.subset(keep)
        exp_info = {"source": "data-root experience/ folder", "path": str(ds.root / "experience")}
        log.info("visual experience: using %s (%d images)", ds.root / "experience", len(exp_ds))
    else:
        perm = seeded_permutation(len(ds), seed, "experience-holdout")
        n_exp = max(1, int(round(len(ds) * float(experience_fraction))))
        if len(ds) - n_exp < 1:
            raise DataError(f"{source}: too few images ({len(ds)}) to hold out an experience corpus; "
                            "give --experience DIR|TABLE")
        ids = ds.image_ids
        exp_ids = [ids[i] for i in sorted(perm[:n_exp])]
        exp_ds = ds.subset(exp_ids)
        exposed = ds.subset([ids[i] for i in sorted(perm[n_exp:])])
        holdout_ids = exp_ids
        exp_info = {"source": "holdout", "fraction": float(experience_fraction),
                    "ids_file": "experience_ids.txt",
                    "note": f"default: a seeded {experience_fraction:.0%} of the collection, held out "
                            "from exposure (no experience corpus given and no experience/ folder)"}
        log.warning("no experience corpus given: holding out a seeded %.0f%% of the collection (%d image%s) "
                    "for visual experience; they are not exposed", 100 * experience_fraction, n_exp,
                    "" if n_exp == 1 else "s")
    exp_info["n_images"] = len(exp_ds)
    return ExperienceChoice(exposed=exposed, dataset=exp_ds, info=exp_info, notes=notes, holdout_ids=holdout_ids)


#: fewer optimiser steps of visual experience than this, from random weights, may leave the decoder untrained
MIN_SCRATCH_EXPERIENCE_STEPS = 500
#: ... and the caution is given when the validation loss did not at least halve over the experience
MAX_VAL_LOSS_RATIO = 0.5


def experience_caution(init: str | None, experience: Mapping[str, Any] | None,
                       val_losses: Sequence[float] | None = None) -> str | None:
    """A caution when an autoencoder trained from scratch learned little in its visual experience, else None.

    ``experience`` is the manifest's ``training.experience`` entry (``steps``, ``n_images``); ``val_losses``
    the experience's validation loss per epoch (``training_curve.csv``). The caution is given for a model
    that started from random weights (``init`` ``"scratch"``), took fewer than
    :data:`MIN_SCRATCH_EXPERIENCE_STEPS` optimiser steps, and whose validation loss did not fall to
    :data:`MAX_VAL_LOSS_RATIO` of its first value (or was not measured). Such a model reconstructs new images
    little better than an untrained one, so a null correlation may be the model's, not the images'.
    """
    exp = experience or {}
    if init not in (None, "scratch"):
        return None
    steps = exp.get("steps")
    none = exp.get("source") == "none"
    if not none and (not isinstance(steps, (int, float)) or steps >= MIN_SCRATCH_EXPERIENCE_STEPS):
        return None
    val = [float(v) for v in (val_losses or []) if v is not None and math.isfinite(float(v))]
    fell = ""
    if not none and len(val) >= 2 and val[0] > 0:
        if val[-1] / val[0] <= MAX_VAL_LOSS_RATIO:
            return None  # it learned to reconstruct images it did not train on
        fell = f"; its validation loss fell only from {val[0]:.3g} to {val[-1]:.3g}"
    n = exp.get("n_images")
    what = ("no visual experience" if none or not steps else
            f"{int(steps)} optimiser steps of visual experience" + (f" on {int(n)} images" if n else ""))
    return (f"the autoencoder started from random weights and had {what}{fell}: it may reconstruct new images "
            "little better than an untrained model, so its reconstruction errors may say more about the model than "
            "about the images; use a pretrained backbone (the default efficientnet_lite0 with --init imagenet) or a "
            "larger --experience corpus / more --pretrain-epochs")
