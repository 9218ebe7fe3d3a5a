"""Section ``explanations``: Integrated Gradients maps (overlays, aggregates) and their sanity check."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..context import ReportContext
from ..formatting import clean_value, esc, finite_float, flatten, fmt, fmt_score, isnum, nested_get
from ..markup import data_uri, html_table, kv_table, missing_note, note

log = logging.getLogger("memlens.report.html")  # the report's one logger name, as before the split (CLI lines)

MAX_OVERLAYS = 24


def _image_uri(path: Path, max_side: int = 360) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if max(im.size) <= max_side and path.suffix.lower() == ".png" and path.stat().st_size < 400_000:
                return data_uri(path.read_bytes(), "image/png")
            im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("could not embed %s: %s", path, exc)
        return None
    return data_uri(buf.getvalue(), "image/png")


_AGGREGATE_CAPTIONS = {
    "aggregate_quartiles.png": "Most vs least memorable quartile: mean |IG| maps and their difference",
    "aggregate_most_memorable.png": "Mean |IG| map of the most memorable quartile",
    "aggregate_least_memorable.png": "Mean |IG| map of the least memorable quartile",
    "aggregate_difference.png": "Difference: most − least memorable quartile",
}
_OVERLAY_GROUPS = (("top", "Most memorable images"), ("bottom", "Least memorable images"),
                   ("image", "Requested images"))
_OVERLAY_NAME = re.compile(r"^overlay_(top|bottom|image)(\d*)_")


def _overlay_entries(att: Path, explain: Any, overlays: Sequence[Path]) -> list[dict[str, Any]]:
    """Overlays with their group (top/bottom/image), rank, image id and scores.

    From ``attributions/explain.json`` (``explained``) when it lists them; otherwise from the file names
    (``overlay_top01_<id>_<hash>.png``); the rest are group ``other``.
    """
    names = {p.name: p for p in overlays}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    explained = nested_get(explain, "explained")
    if isinstance(explained, Mapping):
        for group, _ in _OVERLAY_GROUPS:
            for rank, e in enumerate(explained.get(group) or [], start=1):
                if not isinstance(e, Mapping) or e.get("file") not in names or e["file"] in seen:
                    continue
                seen.add(e["file"])
                out.append({"group": group, "rank": rank, "file": e["file"], "image_id": clean_value(e.get("image_id")),
                            "score": finite_float(e.get("score")), "predicted_score": finite_float(e.get("predicted_score")),
                            "flagged": bool(e.get("flagged")), "relative_delta": finite_float(e.get("relative_delta")),
                            "map_error": finite_float(e.get("map_error")),
                            "explained_with": clean_value(e.get("explained_with")), "model": clean_value(e.get("model")),
                            "in_sample": e.get("in_sample") if isinstance(e.get("in_sample"), bool) else None})
    for p in overlays:
        if p.name in seen:
            continue
        m = _OVERLAY_NAME.match(p.name)
        group, rank = (m.group(1), int(m.group(2)) if m.group(2) else None) if m else ("other", None)
        out.append({"group": group, "rank": rank, "file": p.relative_to(att).as_posix(), "image_id": None,
                    "score": None, "predicted_score": None, "flagged": None, "relative_delta": None,
                    "map_error": None, "explained_with": None, "model": None, "in_sample": None})
    return out


def _which_model_text(model_for: Any, models: Any) -> str:
    """What model the maps explain, from ``explain.json`` (``model_for``, ``models``)."""
    if model_for == "oof":
        fits = models.get("fits") if isinstance(models, Mapping) else None
        return ("Each map explains a model that was not fitted on its image: the cross-validation fold model that "
                "held the image out (fit-predictor's configuration refitted on that fold's training images"
                + (f"; {len(fits)} fold model(s)" if isinstance(fits, Mapping) and fits else "")
                + "), so the prediction shown is out-of-fold, like the gallery's. Images without a score or outside "
                "the run are explained by the final model, which never saw them either.")
    return ("The maps explain the final predictor, fitted on every image, so its prediction for an explained image "
            "is in-sample (the gallery above shows the out-of-fold one; memlens explain --model-for oof explains "
            "each image with a fold model that did not see it).")


def _prediction_words(e: Mapping[str, Any]) -> str:
    if e.get("in_sample") is False:
        return "out-of-fold prediction" if e.get("model") not in (None, "final") else "prediction"
    return "in-sample prediction"


def _sanity_html(sanity: Mapping[str, Any]) -> str:
    passed = sanity.get("passed")
    parts = []
    if isinstance(passed, bool):
        parts.append(f'<p><span class="badge {"ok" if passed else "bad"}">{"passed" if passed else "FAILED"}</span> ')
        mean, thr = finite_float(sanity.get("mean_spearman")), finite_float(sanity.get("threshold"))
        if mean is not None and thr is not None:
            if passed:
                parts.append(esc(f"The maps change when the predictor's weights are randomised (mean Spearman "
                                 f"{mean:.2f} < {thr:.2f}): they depend on what the model learned."))
            else:
                parts.append(esc(f"Mean Spearman {mean:.2f} ≥ {thr:.2f}: much of the maps' structure survives "
                                 "randomising the predictor's weights, so it reflects the image (or the fixed "
                                 "encoder) more than what the predictor learned. Read the maps with care."))
        parts.append("</p>")
    elif sanity.get("note"):
        parts.append(note(esc(sanity["note"]), True))
    keys = [("test", "test"), ("statistic", "statistic"), ("randomized_module", "randomised module"),
            ("n_images", "images"), ("mean_spearman", "mean Spearman (trained vs randomised)"),
            ("median_spearman", "median Spearman"), ("threshold", "pass threshold (mean below)"),
            ("passed", "passed"), ("seed", "seed")]
    rows = [(label, sanity[k]) for k, label in keys if sanity.get(k) is not None]
    per = sanity.get("per_image_spearman")
    ids = sanity.get("image_ids")
    if isinstance(per, list) and isinstance(ids, list) and len(per) == len(ids):
        rows += [(f"ρ for {i}", v if v is not None else "–") for i, v in zip(ids, per, strict=True)]
    known = {k for k, _ in keys} | {"per_image_spearman", "image_ids", "interpretation", "note", "ig"}
    rows += [(k, v) for k, v in flatten({k: v for k, v in sanity.items() if k not in known})]
    parts.append(kv_table(rows))
    if sanity.get("interpretation"):
        parts.append(note(esc(sanity["interpretation"])))
    return "".join(parts)


def section_explanations(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``explanations``, the Integrated Gradients maps: its HTML body and its numbers for results.json."""
    att = ctx.run.path("attributions")
    if att is None or not att.is_dir():
        return missing_note("Integrated Gradients maps", ["attributions/"], "memlens explain"), {}
    explain = ctx.run.json("attributions/explain.json") if (att / "explain.json").is_file() else None
    pngs = sorted(p for p in att.rglob("*.png") if p.is_file())
    agg_words = ("aggregate", "mean", "average", "summary")
    aggregates = [p for p in pngs if any(w in p.stem.lower() for w in agg_words)]
    known = [a for a in _AGGREGATE_CAPTIONS if (att / a) in aggregates]
    aggregates = [att / a for a in known] + [p for p in aggregates if p.name not in _AGGREGATE_CAPTIONS]
    overlays = [p for p in pngs if p not in aggregates]
    entries = _overlay_entries(att, explain, overlays)
    ig = nested_get(explain, "integrated_gradients")
    res: dict[str, Any] = {"aggregates": [p.relative_to(att).as_posix() for p in aggregates],
                           "overlays_total": len(overlays), "overlays": entries[:MAX_OVERLAYS]}
    if isinstance(ig, Mapping):
        res["integrated_gradients"] = ig
    models = nested_get(explain, "models")
    model_for = nested_get(explain, "model_for")
    res["model_for"] = model_for if isinstance(model_for, str) else "final"  # runs explained before the option
    chosen_from = nested_get(explain, "chosen_from")
    res["chosen_from"] = chosen_from
    parts = ['<p class="lead">Integrated Gradients attributions of the predicted memorability: where in the image '
             "the prediction comes from (brighter = more attribution). " + esc(_which_model_text(model_for, models))
             + (esc(f" Here {chosen_from}.") if isinstance(chosen_from, str) and chosen_from.startswith("the top")
                else "") + "</p>"]
    if isinstance(models, Mapping):
        res["explained_with"] = models.get("explained_with")
        chk = models.get("check")
        if isinstance(chk, Mapping) and isnum(chk.get("max_abs_diff")) and chk.get("n_images"):
            agree = chk.get("passed") is True
            parts.append(note(esc(
                f"The refitted fold models {'reproduce' if agree else 'do NOT exactly reproduce'} fit-predictor's "
                f"out-of-fold predictions of the {chk['n_images']} explained images it tested (largest difference "
                f"{fmt(chk['max_abs_diff'], 3)}, tolerance {fmt(chk.get('tolerance'), 3)})"
                + ("." if agree else "; they were still never fitted on the images they explain.")), not agree))
    if isinstance(ig, Mapping):
        n_agg = ig.get("n_aggregate_only") or 0
        kronrod = ig.get("method") == "gausskronrod"
        bits = [(f"{ig.get('n_steps')} steps" + (f" (Gauss-Kronrod, {ig.get('points_per_map')} path points)"
                                                 if kronrod and ig.get("points_per_map") else ""))
                if ig.get("n_steps") is not None else None,
                (f"{ig.get('aggregate_steps')} steps for the {n_agg} maps only in the aggregate maps"
                 if n_agg and ig.get("aggregate_steps") not in (None, ig.get("n_steps")) else None),
                f"{ig.get('baseline')} baseline" if ig.get("baseline") else None,
                f"{ig.get('n_images')} images" if ig.get("n_images") is not None else None]
        parts.append(note("Settings: " + esc(", ".join(b for b in bits if b)) + "."))
        n_flagged = ig.get("n_flagged")
        checked = ig.get("flag_criterion") == "map_error"
        if checked and isnum(ig.get("max_map_error")):
            how = ("from the difference to its embedded half-step Gauss rule" if kronrod
                   else "from a second pass at half the steps")
            parts.append(note(esc(f"Accuracy: each map's error, estimated {how}, "
                                  f"is {100 * ig['median_map_error']:.1f}% of the map's mass (median; largest "
                                  f"{100 * ig['max_map_error']:.1f}%).")))
        if isnum(n_flagged) and n_flagged > 0:
            if checked:
                parts.append(note(esc(f"{int(n_flagged)} of {ig.get('n_images')} maps are not accurate yet "
                                      f"(estimated error above {100 * ig.get('error_tolerance', 0.1):g}% of the map): "
                                      "rerun memlens explain with more --steps."), True))
            else:
                parts.append(note(esc(f"{int(n_flagged)} of {ig.get('n_images')} maps did not converge (completeness "
                                      f"error above {ig.get('delta_tolerance')} of the score difference; largest "
                                      f"{fmt(ig.get('max_relative_delta'), 2)}): rerun memlens explain with more "
                                      "--steps for exact maps."), True))

    def grid(items: Sequence[tuple[Path, str, Sequence[str]]]) -> str:
        cells = []
        for p, title, lines in items:
            name = p.relative_to(att).as_posix()
            uri = _image_uri(p, 520)
            img = f'<img src="{uri}" alt="{esc(title)}">' if uri else '<div class="noimg">unreadable image</div>'
            spans = "".join(f'<span class="s">{esc(line)}</span>' for line in lines)
            cells.append(f"<figure>{img}<figcaption><b>{esc(title)}</b>{spans}"
                         f'<span class="s file">{esc(name)}</span></figcaption></figure>')
        return f'<div class="overlays">{"".join(cells)}</div>'

    shown = entries[:MAX_OVERLAYS]
    for group, heading in (*_OVERLAY_GROUPS, ("other", "Other maps")):
        items = []
        for e in (e for e in shown if e["group"] == group):
            title = {"top": "most memorable", "bottom": "least memorable"}.get(group, "")
            title = f"#{e['rank']} {title}".strip() if e["rank"] is not None and title else (e["image_id"] or e["file"])
            lines = []
            if e["image_id"] and group in ("top", "bottom"):
                lines.append(str(e["image_id"]))
            if e["score"] is not None or e["predicted_score"] is not None:
                # the prediction of the model explained: out-of-fold (a fold model), or in-sample (the final one)
                lines.append(f"score {fmt_score(e['score'])} · {_prediction_words(e)} "
                             f"{fmt_score(e['predicted_score'])}")
            if e.get("explained_with") and e.get("in_sample") is False:
                lines.append(f"explained with the {e['explained_with']}")
            if e["flagged"]:
                lines.append(f"not accurate yet (estimated error {100 * e['map_error']:.1f}%)"
                             if e.get("map_error") is not None else
                             f"not converged (relative error {fmt(e['relative_delta'], 2)})")
            items.append((att / e["file"], title, lines))
        if items:
            parts.append(f"<h3>{esc(heading)}</h3>" + grid(items))
    if len(overlays) > MAX_OVERLAYS:
        parts.append(note(f"{len(overlays) - MAX_OVERLAYS} more overlays are in <code>attributions/</code>."))
    if aggregates:
        agg = nested_get(explain, "aggregate")
        lead = ""
        if isinstance(agg, Mapping) and agg.get("n_top") is not None:
            lead = note(esc(f"Mean maps over {agg.get('n_top')} images of the most memorable quartile (score ≥ "
                            f"{fmt(agg.get('upper_threshold'), 3)}) and {agg.get('n_bottom')} of the least memorable "
                            f"(score ≤ {fmt(agg.get('lower_threshold'), 3)}); share of attribution in the image "
                            f"centre: {fmt(agg.get('top_center_share'), 2)} vs {fmt(agg.get('bottom_center_share'), 2)}."))
            res["aggregate"] = {k: v for k, v in agg.items() if not k.endswith("_ids")}
        parts.append("<h3>Aggregate maps</h3>" + lead)
        first = [p for p in aggregates if p.name == "aggregate_quartiles.png"]
        rest = [p for p in aggregates if p.name != "aggregate_quartiles.png"]
        if first:
            uri = _image_uri(first[0], 1100)
            if uri:
                parts.append(f'<figure class="wide"><img src="{uri}" alt="aggregate maps by quartile">'
                             f"<figcaption>{esc(_AGGREGATE_CAPTIONS['aggregate_quartiles.png'])}</figcaption></figure>")
        if first:  # the quartile figure already holds the three single maps; show only files it does not cover
            rest = [p for p in rest if p.name not in _AGGREGATE_CAPTIONS]
        if rest:
            parts.append(grid([(p, _AGGREGATE_CAPTIONS.get(p.name, p.stem.replace("_", " ")), []) for p in rest]))
    elif isinstance(nested_get(explain, "aggregate", "note"), str):
        parts.append(note(esc(nested_get(explain, "aggregate", "note")), True))
    if not pngs:
        parts.append(note("No PNG maps in <code>attributions/</code>.", True))
    sanity_path = att / "sanity.json"
    sanity = ctx.run.json("attributions/sanity.json") if sanity_path.is_file() else None
    if isinstance(sanity, Mapping) and sanity.get("passed") is False:
        # said before the maps, where they are read: the check below decides how far they can be trusted
        at = 2 if len(parts) > 1 else 1
        parts.insert(at, note(esc(
            f"Read these maps with caution: the randomisation check below failed (mean Spearman "
            f"{fmt(sanity.get('mean_spearman'), 2)} between the maps of the trained and the randomised predictor, "
            f"over {sanity.get('n_images')} images). Much of their structure comes from the image or the encoder, "
            "not from what the predictor learned."), True))
    parts.append("<h3>Sanity check: model randomisation</h3>")
    if isinstance(sanity, Mapping):
        res["sanity"] = sanity
        parts.append(_sanity_html(sanity))
    else:
        parts.append(missing_note("Attribution sanity check", ["attributions/sanity.json"], "memlens explain"))
    npz = att / "attributions.npz"
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as z:
                res["arrays"] = {k: list(z[k].shape) for k in z.files}
            parts.append("<details><summary>Arrays in <code>attributions/attributions.npz</code></summary>")
            parts.append(html_table(["array", "shape"], [(k, " × ".join(str(s) for s in v) or "scalar")
                                                         for k, v in res["arrays"].items()]))
            parts.append("</details>")
        except (OSError, ValueError) as exc:
            ctx.run.problem("attributions/attributions.npz", exc)
    return "".join(parts), res
