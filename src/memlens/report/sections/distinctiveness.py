"""Section ``distinctiveness``: latent distinctiveness vs memorability."""

from __future__ import annotations

from ..context import ReportContext
from ..markup import missing_note, note
from .measure import measure_section


def section_distinctiveness(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``distinctiveness``, distinctiveness vs memorability: its HTML body and its numbers for results.json."""
    df = ctx.per_image
    cols = [c for c in df.columns if c.startswith("distinctiveness")] if df is not None else []
    if df is None or not cols:
        return missing_note("Distinctiveness", ["per_image.csv (distinctiveness column)"], "memlens score"), {}
    if not ctx.run.has_scores():
        return note("No human scores: distinctiveness cannot be related to memorability.", True), {"measures": cols}
    primary = "distinctiveness" if "distinctiveness" in cols else cols[0]
    intro = ("Distinctiveness of an image: the mean distance of its latent code to its nearest neighbours among the "
             "other images (<b>higher = more distinct</b>).")
    return measure_section(ctx, "distinctiveness", cols, primary, intro, "memlens score")
