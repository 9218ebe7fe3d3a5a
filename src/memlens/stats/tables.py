"""Correlation tables: pooled, per-group, within-group and partial rows of several columns against one
outcome, divided by a noise ceiling when split halves are given; and their text formatting."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from .correlation import CorrResult, collected_warnings, correlate
from .parts import between_groups, correlation_difference
from .reliability import (
    between_split_half,
    ceiling_from_split_half,
    fdr_bh,
    split_half_reliability,
    within_split_half,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..data.halves import SplitHalves

#: one logger for the whole package ("memlens.stats"): collected_warnings() captures what correlate() warns
log = logging.getLogger("memlens.stats")

__all__ = ["correlation_table", "fixed_decimals", "format_correlations"]


# --------------------------------------------------------------------------------------------------
# tables


def _require_columns(df: pd.DataFrame, cols: Sequence[str], where: str = "table") -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        avail = ", ".join(map(str, df.columns)) or "none"
        raise DataError(f"{where}: no column {', '.join(repr(c) for c in missing)} "
                        f"(columns available: {avail})")


def _numeric(df: pd.DataFrame, col: str, where: str = "table") -> np.ndarray:
    """A column as float, raising DataError if it holds non-numeric values."""
    import pandas as pd

    _require_columns(df, [col], where)
    s = df[col]
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=float)
    conv = pd.to_numeric(s, errors="coerce")
    bad = conv.isna() & s.notna() & (s.astype(str).str.strip() != "")
    if bad.any():
        example = s[bad].iloc[0]
        label = bad.idxmax()
        row = f"data row {label + 1}" if isinstance(label, (int, np.integer)) else f"row {label!r}"
        texts = s[bad].astype(str).str.strip()
        hint = ""
        if texts.str.fullmatch(r"[-+]?\d*,\d+").mean() > 0.5:
            hint = ("; they look like numbers written with a comma (0,73 or 1,234): save the table with decimal "
                    "points and no thousands separators")
        raise DataError(f"{where}: column {col!r} is not numeric ({int(bad.sum())} non-numeric values, "
                        f"e.g. {example!r} in {row}){hint}")
    return conv.to_numpy(dtype=float)


ControlSpec = str | Sequence[str] | Mapping[str, Sequence[str | Sequence[str]]] | None


def _control_sets(control: ControlSpec, xs: Sequence[str]) -> dict[str, list[tuple[str, ...]]]:
    """Normalise ``control`` to {x: [control set, ...]}; a set containing x itself is skipped."""
    out: dict[str, list[tuple[str, ...]]] = {x: [] for x in xs}
    if control is None:
        return out
    if isinstance(control, Mapping):
        for x, sets in control.items():
            if x not in out:
                continue
            for s in ([sets] if isinstance(sets, str) else sets):
                cs = (s,) if isinstance(s, str) else tuple(s)
                if x not in cs:
                    out[x].append(cs)
        return out
    cs = (control,) if isinstance(control, str) else tuple(control)
    for x in xs:
        if x not in cs and cs:
            out[x].append(cs)
    return out


def _group_labels(df: pd.DataFrame, by: str) -> tuple[np.ndarray, list[Any]]:
    """Group column as an object array (NaN kept) and the sorted distinct non-missing labels."""
    _require_columns(df, [by])
    vals = df[by].to_numpy(dtype=object)
    present = df[by].dropna().unique().tolist()
    try:
        present = sorted(present)
    except TypeError:
        present = sorted(present, key=str)
    return vals, present


def correlation_table(df: pd.DataFrame, x: str | Sequence[str], y: str = "score", by: str | None = None,
                      control: ControlSpec = None, method: str = "spearman", n_boot: int = 2000,
                      seed: int | None = 0, ci: str = "percentile", confidence: float = 0.95,
                      permutation: int = 0, ceiling: float | SplitHalves | None = None,
                      id_col: str = "image_id", *, name: str = "table",
                      differences: Sequence[tuple[str, str]] = ()) -> pd.DataFrame:
    """Pooled, per-group, within-group, between-group, partial and difference correlations of ``x`` with ``y``.

    Parameters
    ----------
    df : DataFrame
        One row per observation (image).
    x : str or list of str
        Predictor columns.
    y : str
        Outcome column (the memorability score).
    by : str, optional
        Group column: adds one ``scope="group"`` row per group, a ``scope="within"`` row (ranks -- for
        Spearman -- over the pooled sample with each group's mean removed, then correlated) and a
        ``scope="between"`` row from three groups on (the correlation of the group means, :func:`~memlens.stats.parts.between_groups`;
        ``n_groups`` points). Pooled = a mixture of the within and between parts: read them side by side.
    control : str, list of str, or {x: [control set, ...]}
        Adds ``scope="partial"`` rows: one control set (partialled out together) for every ``x``, or a
        mapping giving the control sets of each ``x``. A set that contains ``x`` itself is skipped.
    method, n_boot, seed, ci, confidence, permutation
        As in :func:`correlate` (every row uses the same seed).
    ceiling : float or SplitHalves, optional
        Noise ceiling of ``y``. A number is the ceiling of every row (column ``split_half`` is then NaN). A
        :class:`~memlens.data.halves.SplitHalves` is restricted to the ids in ``df[id_col]`` and gives
        scope-specific ceilings: column ``split_half`` holds the split-half correlation (``method``) over all
        images for pooled rows, over the group's images for a group row, within groups for the within row and
        of the group means for the between row; column ``ceiling`` holds ``sqrt(2 s / (1 + s))`` of it
        (:func:`~memlens.stats.reliability.ceiling_from_split_half`: the highest correlation with the
        full-group score its reliability allows). Partial and difference rows get none.
    id_col : str
        Image-id column used to match ``ceiling`` split halves.
    name : str
        How error messages refer to ``df`` (e.g. its file name).
    differences : sequence of (x1, x2)
        Adds a ``scope="difference"`` row per pair: ``r = r(x1, y) - r(x2, y)`` with a paired bootstrap
        interval from shared resamples (:func:`~memlens.stats.parts.correlation_difference`), ``x = x1`` and
        ``minus = x2``; ``p_value`` is the bootstrap p-value.

    Returns
    -------
    DataFrame
        Columns ``x, y, scope, group, control, n, r, ci_low, ci_high, p_value, p_fdr, p_perm, method,
        ci_method, confidence, n_boot, seed, n_groups`` (+ ``minus`` with ``differences``; + ``split_half,
        ceiling, r_over_ceiling`` when ``ceiling`` is given). ``p_fdr``: ``p_value`` adjusted for the false-discovery rate
        (Benjamini-Hochberg, :func:`fdr_bh`) over every row of the table.

    Examples
    --------
    >>> import pandas as pd, memlens
    >>> # run: a run directory (memlens run DATA --out RUN)
    >>> per_image = pd.read_csv(f"{run}/per_image.csv")
    >>> table = memlens.correlation_table(per_image, x=["recon_mse", "distinctiveness"], y="score", n_boot=200)
    >>> table[["x", "scope", "n"]].head(2).values.tolist()
    [['recon_mse', 'pooled', 40], ['distinctiveness', 'pooled', 40]]
    """
    import pandas as pd

    xs = [x] if isinstance(x, str) else list(x)
    if not xs:
        raise ValueError("x must name at least one column")
    sets = _control_sets(control, xs)
    ctl_cols = sorted({c for v in sets.values() for s in v for c in s})
    diff_cols = [c for pair in differences for c in pair]
    _require_columns(df, [*xs, y, *ctl_cols, *diff_cols, *([by] if by else [])], name)
    yv = _numeric(df, y, name)
    num = {c: _numeric(df, c, name) for c in dict.fromkeys([*xs, *ctl_cols, *diff_cols])}
    gvals, glabels = _group_labels(df, by) if by else (None, [])

    ceilings = _ceilings(df, ceiling, by, gvals, glabels, method, id_col, name)
    kw = dict(method=method, n_boot=n_boot, seed=seed, ci=ci, confidence=confidence, permutation=permutation)
    rows: list[dict[str, Any]] = []

    def add(res: CorrResult, xname: str, scope: str, group: Any = None) -> None:
        row = {"x": xname, "y": y, "scope": scope, "group": None if group is None else str(group),
               "control": "+".join(res.control) if res.control else None, "n": res.n, "r": res.r,
               "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value, "p_perm": res.p_perm,
               "method": res.method, "ci_method": res.ci_method, "confidence": res.confidence,
               "n_boot": res.n_boot, "seed": res.seed, "n_groups": res.n_groups}
        if differences:
            row["minus"] = None
        if ceilings is not None:
            # the split-half consistency bounds a correlation with the score, not a partial correlation
            sh = math.nan if scope not in _CEILING_SCOPES else ceilings.get(
                (scope, None if group is None else str(group)), math.nan)
            c = ceilings[("ceiling", None)] if ("ceiling", None) in ceilings and scope in _CEILING_SCOPES \
                else ceiling_from_split_half(sh)
            row["split_half"] = sh
            row["ceiling"] = c
            row["r_over_ceiling"] = res.r / c if c and math.isfinite(c) and c > 0 else math.nan
        rows.append(row)

    # one row's trouble (a category with too few images, degenerate resamples) is one warning each when
    # correlate is called alone; over a whole table they are summed up in one line, the details at debug level
    with collected_warnings() as troubles:
        for xname in xs:
            xv = num[xname]
            add(correlate(xv, yv, label=f"{xname} vs {y}", **kw), xname, "pooled")
            if by:
                for g in glabels:
                    mask = np.array([v == g for v in gvals], dtype=bool)
                    add(correlate(xv[mask], yv[mask], label=f"{xname} vs {y} ({by} = {g})", **kw),
                        xname, "group", g)
                add(correlate(xv, yv, groups=gvals, label=f"{xname} vs {y} (within {by})", **kw), xname, "within")
                if len(glabels) >= 3:  # a correlation of two group means is +-1 whatever the data
                    add(between_groups(xv, yv, gvals, method=method, n_boot=n_boot, confidence=confidence, seed=seed,
                                       label=f"{xname} vs {y} (between {by})"), xname, "between")
            for cs in sets[xname]:
                cdf = pd.DataFrame({c: num[c] for c in cs})
                add(correlate(xv, yv, control=cdf, label=f"{xname} vs {y} | {'+'.join(cs)}", **kw),
                    xname, "partial")
        for x1, x2 in differences:
            d = correlation_difference(num[x1], num[x2], yv, method=method, n_boot=n_boot, confidence=confidence,
                                       seed=seed, label=f"r({x1}) - r({x2}) with {y}")
            add(CorrResult(n=d["n"], r=d["diff"], ci_low=d["ci_low"], ci_high=d["ci_high"], p_value=d["p_boot"],
                           method=method, n_boot=n_boot, seed=seed, ci_method="percentile",
                           confidence=confidence), x1, "difference")
            rows[-1]["minus"] = x2
    if troubles:
        for message in troubles:
            log.debug("%s", message)
        log.warning("%d warning(s) over the table's %d rows (e.g. %s); those rows have r = NaN or fewer "
                    "resamples; every message at debug level (memlens -vv)", len(troubles), len(rows), troubles[0])
    out = pd.DataFrame(rows)
    if not permutation:
        out["p_perm"] = out["p_perm"].astype(float)
    out["n_groups"] = out["n_groups"].astype("Int64")  # a count: 3, not 3.0 (empty where not a within row)
    # every row of one table is one family of tests: Benjamini-Hochberg over all of them
    out.insert(out.columns.get_loc("p_value") + 1, "p_fdr", fdr_bh(out["p_value"]))
    return out


#: the scopes a noise ceiling applies to (a correlation with the score itself)
_CEILING_SCOPES = ("pooled", "group", "within", "between")


def _ceilings(df: pd.DataFrame, ceiling: Any, by: str | None, gvals: np.ndarray | None, glabels: list[Any],
              method: str, id_col: str, name: str) -> dict[tuple[str, str | None], float] | None:
    if ceiling is None:
        return None
    if isinstance(ceiling, (int, float, np.floating, np.integer)):
        return {("ceiling", None): float(ceiling)}
    if not hasattr(ceiling, "subset"):
        raise TypeError(f"ceiling must be a number or a SplitHalves, got {type(ceiling).__name__}")
    _require_columns(df, [id_col], name)
    ids = [str(i) for i in df[id_col].tolist()]
    halves = ceiling.subset(ids)
    out = {("pooled", None): split_half_reliability(halves, method=method)["split_half"]}
    if by and gvals is not None:
        for g in glabels:
            mask = np.array([v == g for v in gvals], dtype=bool)
            sub = (halves.half1[:, mask], halves.half2[:, mask])
            out[("group", str(g))] = split_half_reliability(sub, method=method)["split_half"]
        out[("within", None)] = within_split_half(halves.half1, halves.half2, gvals, method)
        out[("between", None)] = between_split_half(halves.half1, halves.half2, gvals, method)
    return out


def fixed_decimals(v: float, digits: int = 3) -> str:
    """A correlation with fixed decimals and no negative zero (``-0.0004`` at 3 digits is ``0.000``)."""
    text = f"{float(v):.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_correlations(table: pd.DataFrame, digits: int = 3) -> str:
    """A compact plain-text rendering of a :func:`correlation_table` result.

    Columns: the correlation (``rho`` for Spearman, ``r`` for Pearson), its interval, ``p``, ``p_fdr``,
    ``p_perm`` when permutations were run, and the row's ceiling and ``r/ceil`` when the table has a ceiling.
    """
    if table.empty:
        return "(no correlations)"
    has_ceiling = "r_over_ceiling" in table.columns
    pct = f"{100 * float(table['confidence'].iloc[0]):g}% CI"
    method = str(table["method"].iloc[0]) if "method" in table.columns else "spearman"

    def f(v: Any, d: int = digits) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "nan"
        return fixed_decimals(v, d)

    def fp(v: Any) -> str:
        return "nan" if v is None or not math.isfinite(v) else f"{v:.2g}"

    def dash(v: Any, d: int) -> str:  # partial rows have no ceiling
        return "-" if v is None or not math.isfinite(v) else f(v, d)

    has_fdr = "p_fdr" in table.columns
    has_perm = "p_perm" in table.columns and bool(np.isfinite(table["p_perm"].to_numpy(dtype=float)).any())
    header = (["x", "scope", "group/control", "n", "rho" if method == "spearman" else "r", pct, "p"]
              + (["p_fdr"] if has_fdr else []) + (["p_perm"] if has_perm else [])
              + (["ceil", "r/ceil"] if has_ceiling else []))
    lines = [header]
    for row in table.to_dict("records"):
        which = {"group": row["group"], "partial": f"| {row['control']}",
                 "between": f"{row.get('n_groups')} group means", "difference": f"- {row.get('minus')}",
                 }.get(row["scope"], "")
        cells = [str(row["x"]), row["scope"], str(which or ""), str(row["n"]), f(row["r"]),
                 f"[{f(row['ci_low'])}, {f(row['ci_high'])}]", fp(row["p_value"])]
        if has_fdr:
            cells.append(fp(row["p_fdr"]))
        if has_perm:
            cells.append(fp(row["p_perm"]))
        if has_ceiling:
            cells += [dash(row.get("ceiling"), digits), dash(row["r_over_ceiling"], 2)]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
                     for line in lines)
