"""Which model explains each image: the cross-validation fold model that did not see it (``model_for="oof"``,
the default of ``memlens explain``) or the final model of ``RUN/predictor.pt`` (``"final"``: in-sample for the
images it was fitted on). The fold models are refitted with :func:`memlens.predict.fitting.refit_fold_models`
and share the final model's (frozen) encoders."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

log = logging.getLogger("memlens.explain")

#: the choices of ``memlens explain --model-for``
MODEL_FOR = ("oof", "final")
#: the key of the final model (``predictor.pt``) in :class:`ExplainingModels`
FINAL = "final"


@dataclass(frozen=True)
class ExplainedWith:
    """How one image is explained: ``key`` names the model (``final``, ``outer-cv fold 2``, ``inner-cv fold 0``,
    ``holdout``, ``leave-out``; the first three name rows of ``predictor_cv.csv``), ``label`` says it in words (the
    ``explained_with`` column and key), ``in_sample`` whether that model was fitted on the image."""

    key: str
    label: str
    in_sample: bool


@dataclass
class ExplainingModels:
    """The models of one ``explain`` call: ``models`` (key -> image -> score module), ``of`` (image id ->
    :class:`ExplainedWith`) and ``info`` (what ``explain.json`` records under ``models``)."""

    models: dict[str, nn.Module]
    of: dict[str, ExplainedWith]
    info: dict[str, Any]


def _key(estimate: str, fold: int) -> str:
    return estimate if estimate in ("holdout", "leave-out") else f"{estimate} fold {fold}"


def _fold_label(estimate: str, fold: int, n_left: int) -> str:
    if estimate == "holdout":
        return "holdout model (fitted on the selection images; not fitted on this image)"
    if estimate == "leave-out":
        return (f"leave-out model (fitted on every scored image but the {n_left} explained ones no split tested; "
                "not fitted on this image)")
    return f"{estimate} fold {fold} model (not fitted on this image)"


def final_label(in_sample: bool, external: bool = False) -> str:
    if in_sample:
        return "final model (fitted on this image: in-sample)"
    if external:
        return "final model (not fitted on this image: not an image of the run)"
    return "final model (not fitted on this image: it has no score)"


def with_head(final: nn.Module, head: Any, finetuned: Any = None, blend: float = 0.5) -> nn.Module:
    """A :class:`memlens.predict.MemorabilityModel` with the encoders (modules shared, not copied) of ``final``
    and another fitted head (and fine-tuned tails): a fold model as an image -> score module."""
    from ..predict.model import MemorabilityModel, _Encode

    encoders = final._encoders()
    raw = [e.autoencoder if isinstance(e, _Encode) else e for e in encoders]
    layers = [e.layer if isinstance(e, _Encode) else None for e in encoders]
    model = MemorabilityModel(raw, head, pool=list(final.pools), sizes=list(final.sizes), layer=layers,
                              recipe=final.recipe, finetuned=finetuned, blend=blend)
    model.info = {**getattr(final, "info", {}), "refit": "fold model"}
    return model.eval()


def explaining_models(run: Any, final: nn.Module, image_ids: Sequence[str], *, scored: set[str],
                      external: set[str], model_for: str = "oof", device: Any = "cpu",
                      progress: Callable[[str], Any] | None = None) -> ExplainingModels:
    """The model of each image: with ``model_for="oof"`` the fold model of every scored image of the run (the
    predictor's rows), refitted on the training rows of the split that held it out; the final model for the
    others (images without a score or outside the run, which it never saw either). With ``"final"``, the final
    model for all (in-sample for the scored ones)."""
    from ..errors import ConfigError

    if model_for not in MODEL_FOR:
        raise ConfigError(f"model_for must be one of {', '.join(MODEL_FOR)}, got {model_for!r}")
    of: dict[str, ExplainedWith] = {}
    for i in image_ids:
        if i in external or i not in scored:
            of[i] = ExplainedWith(FINAL, final_label(False, i in external), False)
        else:
            of[i] = ExplainedWith(FINAL, final_label(True), True)
    models: dict[str, nn.Module] = {FINAL: final}
    info: dict[str, Any] = {"model_for": model_for}
    wanted = [i for i in image_ids if of[i].in_sample]
    if model_for == "final" or not wanted:
        info["note"] = ("the final model of predictor.pt explains every image (in-sample for the scored images of "
                        "the run)" if model_for == "final" else "no scored image of the run was explained")
        return ExplainingModels(models, of, info)

    from ..predict.fitting import refit_fold_models

    t0 = time.perf_counter()
    dev = str(device)
    refit = refit_fold_models(run, wanted, device="cuda" if dev.startswith("cuda") else "cpu", progress=progress)
    n_left = sum(1 for k in refit.key_of.values() if k[0] == "leave-out")
    folds: dict[str, Any] = {}
    for (estimate, fold), fit in refit.fits.items():
        key = _key(estimate, fold)
        models[key] = with_head(final, fit["head"], fit["finetuned"], fit["blend"]).to(device)
        folds[key] = {"estimate": estimate, "fold": fold if estimate != "leave-out" else None,
                      "n_train": fit["n_train"], "explained_with": _fold_label(estimate, fold, n_left),
                      "image_ids": [i for i, k in refit.key_of.items() if k == (estimate, fold)],
                      "seconds": round(fit["seconds"], 3), "stored": bool(fit.get("stored", False))}
    for i, (estimate, fold) in refit.key_of.items():
        of[i] = ExplainedWith(_key(estimate, fold), _fold_label(estimate, fold, n_left), False)
    info.update({"refit": refit.settings, "assignment": refit.assignment, "check": refit.check, "fits": folds,
                 "seconds": round(time.perf_counter() - t0, 3)})
    n_stored = sum(1 for f in folds.values() if f["stored"])
    log.info("explaining %d images with %d fold model(s) of %s (%d refitted, %d stored by fit-predictor; %s)",
             len(refit.key_of), len(folds), refit.model, len(folds) - n_stored, n_stored, refit.assignment)
    return ExplainingModels(models, of, info)
