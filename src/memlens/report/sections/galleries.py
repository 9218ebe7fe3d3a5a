"""Section ``galleries``: the most and least memorable images, by human and by predicted score."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd

from ..context import ReportContext
from ..formatting import clean_value, esc, finite_float, fmt_score
from ..markup import data_uri, missing_note, note
from .predictor import MODEL_NAMES, oof_predictions, saved_model_name

log = logging.getLogger("memlens.report.html")  # the report's one logger name, as before the split (CLI lines)

GALLERY_SIZE = 8
THUMB_PX = 128


def _thumb_uri(path: Path, size: int = THUMB_PX) -> str | None:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 2, size * 2))
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGB", im.size, (255, 255, 255))
                bg.paste(im, mask=im.split()[-1])
                im = bg
            else:
                im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("thumbnail of %s failed: %s", path, exc)
        return None
    return data_uri(buf.getvalue(), "image/jpeg")


def _gallery(ctx: ReportContext, rows: pd.DataFrame, has_pred: bool) -> tuple[str, list[dict]]:
    items, out = [], []
    for _, r in rows.iterrows():
        image_id = str(r["image_id"])
        uri = None
        path = None
        if "path" in rows.columns and isinstance(r.get("path"), str) and Path(r["path"]).is_file():
            path = Path(r["path"])
        elif ctx.data_root is not None and (ctx.data_root / image_id).is_file():
            path = ctx.data_root / image_id
        if path is not None:
            uri = _thumb_uri(path)
        entry = {"image_id": image_id, "score": finite_float(r.get("score")),
                 "predicted_score": finite_float(r.get("predicted_score")) if has_pred else None}
        if "category" in rows.columns:
            entry["category"] = clean_value(r.get("category"))
        out.append(entry)
        img = (f'<img src="{uri}" alt="{esc(image_id)}">' if uri
               else f'<div class="noimg">{"image not found" if ctx.data_root else "no data root"}</div>')
        lines = [f"score {fmt_score(entry['score'])}"]
        if has_pred:
            lines.append(f"predicted {fmt_score(entry['predicted_score'])}")
        if entry.get("category") is not None:
            lines.append(str(entry["category"]))
        spans = "".join(f'<span class="s">{esc(line)}</span>' for line in lines)
        name = "/<wbr>".join(esc(part) for part in image_id.split("/"))
        items.append(f'<figure class="thumb">{img}<figcaption>{name}{spans}</figcaption></figure>')
    return f'<div class="gallery">{"".join(items)}</div>', out


def _predicted_scores(ctx: ReportContext) -> tuple[pd.Series | None, str | None]:
    """Predicted score per image (indexed like per_image.csv) and where it comes from.

    ``per_image.csv`` ``predicted_score``; else the MLP's out-of-fold predictions (``predictor_oof.csv``,
    every image predicted by a model that did not train on it); else ``descriptors.csv`` (``memlens explain``).
    """
    df = ctx.per_image
    if df is None:
        return None, None
    if "predicted_score" in df.columns:
        v = pd.to_numeric(df["predicted_score"], errors="coerce")
        if v.notna().any():
            return v, "per_image.csv (predicted_score)"
    ids = df["image_id"].astype(str)
    oof, _ = oof_predictions(ctx.run)
    main = saved_model_name(ctx.run)
    if oof is not None and f"predicted_{main}" in oof.columns:
        v = ids.map(dict(zip(oof["image_id"], pd.to_numeric(oof[f"predicted_{main}"], errors="coerce"), strict=True)))
        if v.notna().any():
            return v.astype(float), f"predictor_oof.csv ({MODEL_NAMES.get(main, main)}, out-of-fold)"
    desc = ctx.run.csv("descriptors.csv")
    if desc is not None and {"image_id", "predicted_score"} <= set(desc.columns):
        m = dict(zip(desc["image_id"].astype(str), pd.to_numeric(desc["predicted_score"], errors="coerce"), strict=True))
        v = ids.map(m)
        if v.notna().any():
            return v.astype(float), "descriptors.csv (predicted_score)"
    return None, None


def section_galleries(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``galleries``, the image galleries: its HTML body and its numbers for results.json."""
    df = ctx.per_image
    if df is None:
        return missing_note("Galleries", ["per_image.csv"], "memlens score"), {}
    parts, res = [], {}
    pred, pred_source = _predicted_scores(ctx)
    has_pred = pred is not None
    if has_pred:
        df = df.assign(predicted_score=pred.to_numpy())
        res["predicted_source"] = pred_source
    if ctx.data_root is None:
        parts.append(note("Thumbnails omitted: the data root is not recorded in <code>dataset.json</code> "
                          "(key <code>root</code> or <code>source</code>) or no longer exists.", True))
    k = min(GALLERY_SIZE, max(1, len(df) // 2))
    specs = []
    if ctx.run.has_scores():
        d = df[df["score"].notna()]
        specs += [("human_top", "Most memorable (human scores)", d.nlargest(k, "score")),
                  ("human_bottom", "Least memorable (human scores)", d.nsmallest(k, "score"))]
    else:
        parts.append(note("No human scores: galleries by human score are not available.", True))
    if has_pred:
        d = df[df["predicted_score"].notna()]
        specs += [("predicted_top", "Most memorable (predicted)", d.nlargest(k, "predicted_score")),
                  ("predicted_bottom", "Least memorable (predicted)", d.nsmallest(k, "predicted_score"))]
        parts.insert(0, f'<p class="lead">The {k} highest and lowest scoring images. Predicted scores: '
                        f"<code>{esc(pred_source)}</code>.</p>")
    else:
        parts.append(missing_note("Predicted-score galleries", ["per_image.csv (predicted_score column)",
                                                                "predictor_oof.csv"], "memlens fit-predictor"))
    for key, title, rows in specs:
        g, entries = _gallery(ctx, rows, has_pred)
        res[key] = entries
        parts.append(f"<h3>{esc(title)}</h3>{g}")
    return "".join(parts), res
