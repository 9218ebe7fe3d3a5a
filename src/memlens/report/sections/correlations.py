"""Section ``correlations``: the correlation table of ``memlens analyze``."""

from __future__ import annotations

import pandas as pd

from ..context import ReportContext
from ..formatting import esc, fmt, fmt_ci, fmt_p, fmt_r
from ..markup import html_table, missing_note, note

MAX_TABLE_ROWS = 300


def section_correlations(ctx: ReportContext) -> tuple[str, dict]:
    """Section ``correlations``, the correlation table: its HTML body and its numbers for results.json."""
    if not ctx.corr:
        return missing_note("Correlation table", ["correlations.csv", "correlations.json"], "memlens analyze"), {}
    df = ctx.corr.df
    recs = ctx.corr.records()
    shown = recs[:MAX_TABLE_ROWS]
    has = set(df.columns)
    show_y = ctx.corr.y.nunique() > 1
    # one column for the group (group rows) and the control (partial rows): a row has at most one of them
    headers = ["measure", *(["vs"] if show_y else []), "scope", "group / controlling for", "n", "ρ", "95% CI", "p"]
    numeric = [False, *([False] if show_y else []), False, False, True, True, True, True]
    if "p_fdr" in has:
        headers.append("p (FDR)")
        numeric.append(True)
    has_perm = "p_perm" in has and pd.to_numeric(df["p_perm"], errors="coerce").notna().any()
    if has_perm:
        headers.append("p (permutation)")
        numeric.append(True)
    has_ceiling = "r_over_ceiling" in has
    if has_ceiling:
        headers += ["noise ceiling", "ρ / ceiling"]
        numeric += [True, True]
    rows, classes = [], []
    prev = None
    for i, r in enumerate(shown):
        x = str(r.get("x", ""))
        row = [x, *([str(r.get("y") or "score")] if show_y else []), ctx.corr.scope.iloc[i] or "pooled",
               _which(r), r.get("n"), fmt_r(r.get("r")),
               fmt_ci(r.get("ci_low"), r.get("ci_high")), fmt_p(r.get("p_value"))]
        if "p_fdr" in has:
            row.append(fmt_p(r.get("p_fdr")))
        if has_perm:
            row.append(fmt_p(r.get("p_perm")))
        if has_ceiling:
            row += [fmt_r(r.get("ceiling")), fmt_r(r.get("r_over_ceiling"), 2)]
        rows.append(row)
        classes.append("first" if prev is not None and x != prev else "")
        prev = x
    parts = [f'<p class="lead">Spearman correlations with 95% paired-bootstrap intervals, from '
             f'<code>{esc(ctx.corr.source)}</code> (written by <code>memlens analyze</code>). <i>pooled</i>: all images; '
             "<i>group</i>: within one category; <i>within</i>: the categories' shared within-category association; "
             "<i>between</i>: the correlation of the category means (as many points as categories); "
             "<i>partial</i>: controlling for the named measure; <i>difference</i>: ρ of the measure after the "
             "exposure minus ρ of the same measure before it (paired bootstrap on shared resamples).</p>"]
    settings = [(k, ctx.corr.meta.get(k)) for k in ("method", "ci_method", "confidence", "n_boot", "seed", "by")
                if ctx.corr.meta.get(k) is not None]
    if settings:
        parts.append(note(" · ".join(f"{esc(k.replace('_', ' '))}: {esc(fmt(v, 3))}" for k, v in settings)))
    if "p_fdr" in has:
        parts.append(note(f"p (FDR): the p-value adjusted for testing all {len(recs)} rows of the table "
                          "(Benjamini-Hochberg); a row with p (FDR) &lt; 0.05 holds at a 5 % false-discovery rate."))
    if has_perm:
        parts.append(note("p (permutation): the share of label permutations with a correlation at least as strong "
                          "(<code>--permutation N</code>); it does not assume the bootstrap's approximations."))
    if has_ceiling:
        parts.append(note("noise ceiling: the square root of the Spearman-Brown corrected split-half correlation "
                          "of the row's images (a group row uses its own group's; the within and between rows the "
                          "within- and between-category split-half correlations; column <code>split_half</code> of "
                          "the file holds the uncorrected one): the highest correlation a model can reach with the "
                          "full-group score (Spearman 1904; Lage-Castellanos et al. 2019). ρ / ceiling: the "
                          "correlation divided by it. Partial and difference rows have none."))
    parts.append(html_table(headers, rows, numeric, row_classes=classes))
    if len(recs) > len(shown):
        parts.append(note(f"{len(recs) - len(shown)} more rows are in results.json and {esc(ctx.corr.source)}."))
    return "".join(parts), {"source": ctx.corr.source, "rows": recs}


def _which(r: dict) -> str:
    """The group, control, group count or subtracted measure of a row (a row has at most one)."""
    scope = r.get("scope")
    if scope == "between" and isinstance(r.get("n_groups"), (int, float)):
        return f"{int(r['n_groups'])} category means"
    if scope == "difference" and r.get("minus"):
        return f"minus {r.get('minus')}"
    return " | ".join(str(v) for v in (r.get("group"), r.get("control")) if v) or "–"
