"""Section ``reconstruction``: reconstruction error vs memorability (which ``recon_*`` column leads)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..context import ReportContext
from ..markup import missing_note, note
from .measure import measure_section


def _primary_recon(cols: Sequence[str], config: Any) -> str:
    losses: list[str] = []
    stack = [config]
    while stack:
        cur = stack.pop()
        if isinstance(cur, Mapping):
            for k, v in cur.items():
                if k in ("loss", "metric") and isinstance(v, str):
                    losses.append(v)
                elif isinstance(v, Mapping):
                    stack.append(v)
    for loss in losses:
        loss = loss.strip()
        if loss.startswith("1-"):  # the released scripts' complement loss: its distance is the measure
            loss = loss[2:].strip()
        for cand in (f"recon_{loss}", f"recon_{loss.replace('-', '_')}", f"recon_{loss.replace('_', '-')}"):
            if cand in cols:
                return cand
    after = [c for c in cols if not c.endswith("_before") and c != "recon_exposure"]
    for pref in ("recon_mse", "recon_lpips", "recon_perceptual"):
        if pref in after:
            return pref
    return (after or list(cols))[0]


def section_reconstruction(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``reconstruction``, reconstruction error vs memorability: its HTML body and its numbers for results.json."""
    df = ctx.per_image
    cols = [c for c in df.columns if c.startswith("recon_")] if df is not None else []
    if df is None or not cols:
        return missing_note("Reconstruction errors", ["per_image.csv (recon_* columns)"], "memlens score"), {}
    if not ctx.run.has_scores():
        return note("No human scores: reconstruction errors cannot be related to memorability.", True), {"measures": cols}
    primary = _primary_recon(cols, ctx.run.json("config.json"))
    intro = ("Per-image reconstruction error of the autoencoder after its single exposure to the images. Every "
             "<code>recon_*</code> measure is a distance: <b>higher = worse reconstruction</b>. A positive ρ means "
             "that images the autoencoder reconstructs worse are more memorable.")
    return measure_section(ctx, "reconstruction", cols, primary, intro, "memlens score")
