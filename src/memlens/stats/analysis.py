"""``memlens analyze``: every ``recon_*`` and ``distinctiveness*`` column of a per-image table against the
memorability score; :func:`analyze_run` reads and writes the run files."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, RunDirError
from .reliability import CEILING_DEFINITION, split_half_reliability
from .tables import correlation_table

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..data.halves import SplitHalves

#: one logger for the whole package ("memlens.stats"): collected_warnings() captures what correlate() warns
log = logging.getLogger("memlens.stats")

__all__ = ["analyze_per_image", "analyze_run", "exposure_pairs", "table_records"]


# --------------------------------------------------------------------------------------------------
# memlens analyze


def _measure_columns(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    recon = [c for c in df.columns if str(c).startswith("recon_")]
    dist = [c for c in df.columns if c == "distinctiveness" or str(c).startswith("distinctiveness_")]
    return recon, dist


def analyze_per_image(df: pd.DataFrame, y: str = "score", by: str | None = None, method: str = "spearman",
                      n_boot: int = 2000, seed: int | None = 0, ci: str = "percentile",
                      confidence: float = 0.95, permutation: int = 0, halves: SplitHalves | None = None,
                      id_col: str = "image_id", *, name: str = "table") -> pd.DataFrame:
    """Every ``recon_*`` and ``distinctiveness*`` column of a per-image table correlated with ``y``.

    Rows: pooled, per group, within group and between groups (when ``by`` is given), and partial rows --
    each ``recon_*`` column given each ``distinctiveness*`` column, each ``distinctiveness*`` column given
    each ``recon_*`` column, and ``recon_exposure`` given ``exposure_order`` (its position in the exposure
    stream) when the table has both. With ``halves`` (split-half human scores), ceilings as in
    :func:`correlation_table`.

    **The exposure test.** For every error after the exposure with its before-exposure twin
    (``recon_<m>`` and ``recon_<m>_before``): a partial row of ``recon_<m>`` given ``recon_<m>_before`` (does
    the error after the single exposure predict memorability beyond the pretrained model's error, i.e. beyond
    the image's difficulty?) and a ``difference`` row, ``r(after) - r(before)`` with a paired bootstrap CI.
    """
    recon, dist = _measure_columns(df)
    if not recon and not dist:
        raise DataError(f"{name}: no recon_* or distinctiveness columns to analyse "
                        f"(columns: {', '.join(map(str, df.columns))})")
    control: dict[str, list[tuple[str, ...]]] = {}
    for r in recon:
        control[r] = [(d,) for d in dist]
    if "recon_exposure" in recon and "exposure_order" in df.columns:
        # the loss at exposure comes from a model that has seen the earlier images: partial out the position
        control["recon_exposure"].append(("exposure_order",))
    for d in dist:
        control[d] = [(r,) for r in recon]
    pairs = exposure_pairs(df.columns)
    for after, before in pairs:
        control[after].append((before,))
    return correlation_table(df, x=[*recon, *dist], y=y, by=by, control=control, method=method,
                             n_boot=n_boot, seed=seed, ci=ci, confidence=confidence, permutation=permutation,
                             ceiling=halves, id_col=id_col, name=name, differences=pairs)


def exposure_pairs(columns: Any) -> list[tuple[str, str]]:
    """``(recon_<m>, recon_<m>_before)`` for every error measured both after and before the exposure."""
    cols = [str(c) for c in columns]
    have = set(cols)
    return [(c, f"{c}_before") for c in cols
            if c.startswith("recon_") and not c.endswith("_before") and f"{c}_before" in have]


_AUTO = "auto"

#: below this Spearman agreement between the split halves' mean and the analysed score, the halves are of a
#: different score (e.g. hit rates beside a false-alarm corrected score) and analyze says so
SCORE_AGREEMENT_MIN = 0.99


def _numeric_scores(df: pd.DataFrame) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(df["score"], errors="coerce").to_numpy(dtype=float)


def analyze_run(run: str | Path, by: str | None = _AUTO, method: str = "spearman", n_boot: int = 2000,
                seed: int | None = 0, ci: str = "percentile", confidence: float = 0.95,
                permutation: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Analyse ``RUN/per_image.csv`` and write ``RUN/correlations.csv`` and ``RUN/correlations.json``.

    Parameters
    ----------
    run : path
        A run directory (``per_image.csv`` with ``image_id``, ``score`` and measure columns; optionally
        ``split_halves.npz``, the noise ceiling).
    by : str, None or "auto"
        Group column; ``"auto"`` uses ``category`` when the table has one with at least two values.
    method, n_boot, seed, ci, confidence, permutation
        As in :func:`correlate`.

    Returns
    -------
    (DataFrame, dict)
        The correlation table and the JSON payload written to ``correlations.json``.
    """

    from .._io import atomic_path, atomic_write_json, read_run_table

    run = Path(run)
    table_path = run / "per_image.csv"
    if not run.is_dir():
        raise RunDirError(f"{run}: no such run directory")
    df = read_run_table(table_path, f"memlens score DATA --run {run}")
    if "score" not in df.columns:
        raise RunDirError(f"{table_path}: no 'score' column (columns: {', '.join(map(str, df.columns))}); "
                          "analysis needs memorability scores")
    # Images held out of the collection as the visual-experience corpus were seen many times during
    # pretraining, not once: they are not part of the single-exposure analysis.
    n_experience = 0
    exp_file = run / "experience_ids.txt"
    if exp_file.is_file() and "image_id" in df.columns:
        held = {line.strip() for line in exp_file.read_text(encoding="utf-8").splitlines() if line.strip()}
        keep = ~df["image_id"].astype(str).isin(held)
        n_experience = int((~keep).sum())
        if n_experience:
            log.info("%d experience images (%s) left out of the exposure analysis", n_experience, exp_file.name)
            df = df[keep]  # the index stays the file's row numbers, which error messages name
    if by == _AUTO:
        by = "category" if "category" in df.columns and df["category"].nunique(dropna=True) >= 2 else None
    recon, dist = _measure_columns(df)
    if not recon and not dist:
        raise RunDirError(f"{table_path}: no recon_* or distinctiveness columns to analyse "
                          f"(columns: {', '.join(map(str, df.columns))})")

    halves = None
    ceiling_info: dict[str, Any] | None = None
    halves_path = run / "split_halves.npz"
    if halves_path.is_file():
        from ..data.halves import load_split_halves

        if "image_id" not in df.columns:
            log.warning("%s: no image_id column; the noise ceiling is not reported", table_path)
        else:
            try:
                halves = load_split_halves(halves_path).subset([str(i) for i in df["image_id"]])
            except DataError as exc:
                log.warning("%s: noise ceiling not reported: %s", halves_path, exc)
                halves = None
        if halves is not None:
            halves, agreement = halves.matching(_numeric_scores(df))
            rel = split_half_reliability(halves, method=method)
            ceiling_info = {**rel, "source": halves_path.name, "score": halves.kind,
                            "score_agreement": agreement, "definition": CEILING_DEFINITION,
                            "split_half_definition": f"mean over splits of the split-half {method} correlation "
                                                     "on the run's images"}
            if not (agreement >= SCORE_AGREEMENT_MIN):
                log.warning("%s: none of its split-half scores is the analysed score (their mean agrees with it at "
                            "Spearman %.3f; kind %r): the noise ceiling is that of a different score", halves_path,
                            agreement, halves.kind)
    table = analyze_per_image(df, by=by, method=method, n_boot=n_boot, seed=seed, ci=ci,
                              confidence=confidence, permutation=permutation, halves=halves,
                              name=str(table_path))
    payload = {
        "run": str(run), "table": table_path.name, "y": "score", "by": by, "method": method, "ci_method": ci,
        "confidence": confidence, "n_boot": n_boot, "seed": seed, "n_images": int(len(df)),
        "n_experience_excluded": n_experience, "ceiling": ceiling_info, "rows": table_records(table),
    }
    with atomic_path(run / "correlations.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_json(run / "correlations.json", payload)
    log.info("wrote %s and %s (%d rows)", run / "correlations.csv", run / "correlations.json", len(table))
    return table, payload


def table_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (NaN/NA/None kept as None, numpy scalars as Python numbers)."""
    import pandas as pd

    out = []
    for row in table.to_dict("records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, np.generic):
                v = v.item()
            if v is pd.NA or (isinstance(v, float) and not math.isfinite(v)):
                v = None
            clean[k] = v
        out.append(clean)
    return out
