"""``memlens check DATA``: validate a data set, report every problem (one line each), exit 1 if any."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from ._common import LayoutChoice, progress_bar, progress_enabled

# Kept here (not imported from memlens.data) so that importing this module stays light.
_MAX_CATEGORIES_SHOWN = 20


@click.command("check")
@click.argument("data", type=click.Path(path_type=str))
@click.option("--layout", type=LayoutChoice(), default="auto", show_default=True,
              help="Data layout; auto detects it (see docs/datasets.md).")
@click.option("--image-col", default=None, metavar="C", help="Table column with the image paths.")
@click.option("--score-col", default=None, metavar="C", help="Table column with the memorability scores.")
@click.option("--category-col", default=None, metavar="C", help="Table column with the categories.")
@click.option("--score-variant", type=click.Choice(["corrected", "uncorrected"]), default=None,
              help="memcat: false-alarm corrected score (default) or the uncorrected hit rate.")
@click.option("--split", "split", multiple=True, metavar="NAME",
              help="lamem: a split file to read, e.g. train_1 (repeat the option for several).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True,
              help="Report images with more pixels than this (decompression-bomb guard).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: summary or problems; json: the whole report on stdout.")
def check(data: str, layout: str, image_col: str | None, score_col: str | None, category_col: str | None,
          score_variant: str | None, split: tuple[str, ...], max_pixels: int, fmt: str) -> int:
    """Validate DATA (a folder or a table) in one pass.

    Every problem is printed to stderr as one line `path: reason`, followed by a count line, and the
    exit status is 1. A valid data set prints a summary (images, score mean/sd/range, categories) and
    the conversions that will be applied, and exits 0.
    """
    from memlens.data.validate import validate_dataset

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar("decoding images", total)
        bar.update(1)
        if done == total:
            bar.close()

    report = validate_dataset(
        data, layout, image_col=image_col, score_col=score_col, category_col=category_col,
        score_variant=score_variant, splits=list(split) or None, max_pixels=max_pixels,
        progress=progress if (fmt == "text" and progress_enabled()) else None,
    )
    if fmt == "json":
        click.echo(json.dumps(_jsonable(report.to_dict()), indent=2))
        return 0 if report.ok else 1
    if not report.ok:
        for line in report.lines():
            click.echo(line, err=True)
        n = len(report.problems)
        where = f"{data} ({report.layout} layout)" if report.layout else data
        click.echo(f"{n} problem{'s' if n != 1 else ''} found in {where}", err=True)
        return 1
    for line in _summary_lines(data, report.summary):
        click.echo(line)
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo("OK: no problems found")
    return 0


def _summary_lines(data: str, s: dict[str, Any]) -> list[str]:
    lines = [f"{data}: {s['layout']} layout, {s['n_images']:,} images"]
    score = s.get("score")
    if score:
        sd = "n/a" if score["sd"] is None or math.isnan(score["sd"]) else f"{score['sd']:.3f}"
        lines.append(f"score: mean {score['mean']:.3f}, sd {sd}, range {score['min']:.3f} to {score['max']:.3f}")
    else:
        lines.append("score: none (images only)")
    cats = s.get("categories")
    if cats:
        shown = sorted(cats.items(), key=lambda kv: (-kv[1], kv[0]))[:_MAX_CATEGORIES_SHOWN]
        more = len(cats) - len(shown)
        text = ", ".join(f"{k} {v:,}" for k, v in shown) + (f", ... ({more} more)" if more > 0 else "")
        blank = s.get("n_without_category") or 0
        lines.append(f"categories ({len(cats)}): {text}" + (f"; {blank:,} without a category" if blank else ""))
    if s.get("n_subcategories"):
        lines.append(f"subcategories: {s['n_subcategories']}")
    if s.get("has_halves"):
        lines.append("split-half human scores: yes (noise ceiling available)")
    return lines


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
