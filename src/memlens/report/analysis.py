"""The numbers the report reads or computes itself: correlation rows, its own seeded bootstrap
correlations (only where a stage wrote none) and the human noise ceiling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .formatting import clean_value, finite_float
from .run_files import RunFiles

N_BOOT = 1000  # bootstrap resamples when the report computes a correlation itself
BOOT_SEED = 0


REPORT_SOURCE = f"report (memlens.stats.correlate: percentile bootstrap, {N_BOOT} resamples, seed {BOOT_SEED})"


def report_correlation(x: Any, y: Any, groups: Any = None) -> dict[str, Any]:
    """Spearman r with its paired-bootstrap 95% interval, by :func:`memlens.stats.correlate` (seeded).

    Used only where a stage wrote no row for the number (no ``correlations.csv``/``descriptor_correlations.csv``).
    ``groups`` gives the within-group correlation.
    """
    from ..stats import correlate

    xa = pd.to_numeric(pd.Series(np.asarray(x, dtype=object)), errors="coerce").to_numpy(dtype=float)
    ya = pd.to_numeric(pd.Series(np.asarray(y, dtype=object)), errors="coerce").to_numpy(dtype=float)
    res = correlate(xa, ya, method="spearman", n_boot=N_BOOT, seed=BOOT_SEED, ci="percentile", groups=groups,
                    label="report correlation")
    return {"n": int(res.n), "r": finite_float(res.r), "ci_low": finite_float(res.ci_low), "ci_high": finite_float(res.ci_high),
            "p_value": finite_float(res.p_value), "method": res.method, "n_boot": res.n_boot, "seed": res.seed,
            "source": REPORT_SOURCE}


_SCOPE_ALIASES = {
    "pooled": "pooled", "all": "pooled", "overall": "pooled", "": "pooled",
    "group": "group", "category": "group", "by": "group", "per-group": "group", "per_group": "group",
    "per-category": "group", "per_category": "group",
    "within": "within", "within-group": "within", "within_group": "within", "within-category": "within",
    "within_category": "within",
    "partial": "partial",
}


class CorrelationRows:
    """Rows of correlations.csv/.json, read by column name (extra or missing columns tolerated)."""

    def __init__(self, run: RunFiles):
        self.source: str | None = None
        #: correlations.json without its rows: the analysis settings and the noise ceiling (``ceiling``)
        self.meta: dict[str, Any] = {}
        payload = run.json("correlations.json")
        if isinstance(payload, Mapping):
            self.meta = {k: v for k, v in payload.items() if k != "rows"}
        df = run.csv("correlations.csv")
        if df is not None:
            self.source = "correlations.csv"
        else:
            obj = payload
            records = None
            if isinstance(obj, list):
                records = obj
            elif isinstance(obj, Mapping):
                records = next((v for v in obj.values() if isinstance(v, list)), None)
            if records and all(isinstance(r, Mapping) for r in records):
                df = pd.DataFrame.from_records(records)
                self.source = "correlations.json"
        if df is not None and "x" not in df.columns:
            alt = next((c for c in ("measure", "variable", "column") if c in df.columns), None)
            if alt:
                df = df.rename(columns={alt: "x"})
            else:
                run.problems.append(f"{self.source}: no column x (the measure): rows ignored")
                df, self.source = None, None
        if df is not None and "r" not in df.columns:
            alt = next((c for c in ("rho", "spearman", "estimate") if c in df.columns), None)
            if alt:
                df = df.rename(columns={alt: "r"})
        self.df = df
        if df is not None:
            scope = df["scope"] if "scope" in df.columns else pd.Series([""] * len(df), index=df.index)
            self.scope = scope.fillna("").astype(str).str.strip().str.lower().map(lambda s: _SCOPE_ALIASES.get(s, s))
            self.group = (df["group"] if "group" in df.columns else pd.Series([""] * len(df), index=df.index)).fillna("").astype(str)
            self.control = (df["control"] if "control" in df.columns else pd.Series([""] * len(df), index=df.index)).fillna("").astype(str)
            self.y = (df["y"] if "y" in df.columns else pd.Series(["score"] * len(df), index=df.index)).fillna("score").astype(str)

    def __bool__(self) -> bool:
        return self.df is not None and len(self.df) > 0

    def records(self) -> list[dict[str, Any]]:
        """Every row as a JSON-safe dict (NaN -> None), in file order."""
        if not self:
            return []
        return [{k: clean_value(v) for k, v in row.items()} for row in self.df.to_dict("records")]

    def find_all(self, x: str, scope: str, y: str = "score") -> list[dict[str, Any]]:
        """Every row for measure ``x`` (vs ``y``) in ``scope``, in file order."""
        if not self:
            return []
        m = (self.df["x"].astype(str) == x) & (self.scope == scope) & (self.y == y)
        out = []
        for rec in self.df[m].to_dict("records"):
            row = {k: clean_value(v) for k, v in rec.items()}
            row["scope"], row["source"] = scope, self.source
            out.append(row)
        return out

    def find(self, x: str, scope: str = "pooled", group: str | None = None, y: str = "score") -> dict[str, Any] | None:
        """The first row for measure ``x`` (vs ``y``) in ``scope`` (and ``group`` for per-group rows)."""
        if not self:
            return None
        m = (self.df["x"].astype(str) == x) & (self.scope == scope) & (self.y == y)
        if scope == "group" and group is not None:
            m &= self.group == str(group)
        if scope == "pooled":
            m &= self.control == ""
        hits = self.df[m]
        if hits.empty:
            return None
        row = {k: clean_value(v) for k, v in hits.iloc[0].to_dict().items()}
        row["scope"] = scope
        row["source"] = self.source
        return row


def correlation_numbers(row: Mapping[str, Any] | None) -> dict[str, Any]:
    """The numbers of one correlation row (n, r, CI, p, source) as the report stores them (non-finite -> None)."""
    row = row or {}
    return {"n": clean_value(row.get("n")), "r": finite_float(row.get("r")), "ci_low": finite_float(row.get("ci_low")),
            "ci_high": finite_float(row.get("ci_high")), "p_value": finite_float(row.get("p_value")), "source": row.get("source")}


def ceiling_entry(rel: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """The report's view of a :func:`memlens.stats.split_half_reliability` result."""
    r = finite_float(rel.get("spearman_mean"))
    if r is None:
        return None
    sb = finite_float(rel.get("spearman_brown"))
    if sb is None or rel.get("method", "spearman") != "spearman":
        sb = 2 * r / (1 + r) if r > -1 else None
    # the highest correlation a model can reach with the full-group score: sqrt of its reliability
    ceiling = (sb ** 0.5 if sb > 0 else 0.0) if sb is not None else None
    return {"n_images": clean_value(rel.get("n_images")), "n_splits": clean_value(rel.get("n_splits")),
            "split_half_spearman": r, "split_half_spearman_sd": finite_float(rel.get("spearman_sd")),
            "spearman_brown": sb, "ceiling": finite_float(ceiling), "score": rel.get("score"),
            "score_agreement": finite_float(rel.get("score_agreement")), "source": source}


def noise_ceiling(run: RunFiles, ids: Sequence[str] | None, corr: CorrelationRows) -> dict[str, Any] | None:
    """Human split-half consistency, its Spearman-Brown value and the noise ceiling (the square root of that).

    Taken from ``correlations.json`` (``memlens analyze``) when it holds one; otherwise computed from
    ``split_halves.npz`` over the run's images with :func:`memlens.stats.split_half_reliability`.
    """
    meta_ceiling = corr.meta.get("ceiling")
    if isinstance(meta_ceiling, Mapping):
        entry = ceiling_entry(meta_ceiling, "correlations.json (memlens analyze)")
        if entry is not None:
            return entry
    p = run.path("split_halves.npz")
    if p is None:
        return None
    from ..data.halves import load_split_halves
    from ..stats import split_half_reliability

    try:
        halves = load_split_halves(p)
        if ids is not None:
            known = set(halves.image_ids)
            keep = [i for i in ids if i in known]
            if len(keep) >= 3:
                halves = halves.subset(keep)
        agreement = None
        df = run.per_image() if ids is not None else None
        if df is not None and len(halves.image_ids) >= 3:
            if "score" in df.columns:
                score = pd.to_numeric(df.set_index(df["image_id"].astype(str))["score"], errors="coerce")
                halves, agreement = halves.matching(score.reindex(list(halves.image_ids)).to_numpy(dtype=float))
        rel = {**split_half_reliability(halves), "score": halves.kind, "score_agreement": agreement}
    except Exception as exc:  # a malformed file is a note, not a crash
        run.problem("split_halves.npz", exc)
        return None
    return ceiling_entry(rel, "split_halves.npz (memlens.stats.split_half_reliability)")
