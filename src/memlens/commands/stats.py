"""``memlens stats``: correlations with paired bootstrap CIs for any table."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import FiniteFloatRange


def _read_table(path: Path):  # -> pandas.DataFrame
    import pandas as pd

    from ..errors import DataError

    if not path.is_file():
        raise DataError(f"{path}: no such table file")
    from ..data.layouts import table_separator

    try:
        with open(path, encoding="utf-8-sig", errors="strict") as fh:
            head = fh.readline()
        sep, skip = table_separator(path, head)  # as memlens check detects it
        df = pd.read_csv(path, sep=sep, encoding="utf-8-sig", skiprows=skip)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (save the table as UTF-8 CSV)") from None
    except Exception as exc:
        raise DataError(f"{path}: not a readable CSV table ({exc})") from None
    if df.empty:
        raise DataError(f"{path}: the table has no rows")
    return df


@click.command("stats")
@click.argument("table", type=click.Path(path_type=Path))
@click.option("--x", "x_col", required=True, help="Predictor column.")
@click.option("--y", "y_col", required=True, help="Outcome column (e.g. the memorability score).")
@click.option("--by", default=None, help="Group column: per-group and within-group correlations.")
@click.option("--control", multiple=True, help="Column to partial out (repeat for several).")
@click.option("--method", type=click.Choice(["spearman", "pearson"]), default="spearman", show_default=True)
@click.option("--n-boot", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Paired bootstrap resamples (0: no interval).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--ci", "ci_method", type=click.Choice(["percentile", "bca"]), default="percentile",
              show_default=True, help="Bootstrap interval type.")
@click.option("--confidence", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=0.95,
              show_default=True)
@click.option("--permutation", type=click.IntRange(min=0), default=0, show_default=True,
              help="Permutations for a permutation p-value (0: none).")
@click.option("--where", "where", multiple=True, metavar="COL=VALUE",
              help="Keep only the rows whose column COL equals VALUE (repeatable: all must hold), "
                   "e.g. --where role=exposed.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
def stats(table: Path, x_col: str, y_col: str, by: str | None, control: tuple[str, ...], method: str,
          n_boot: int, seed: int, ci_method: str, confidence: float, permutation: int, where: tuple[str, ...],
          fmt: str) -> None:
    """Correlate column --x with column --y of TABLE (CSV) with a paired bootstrap CI.

    JSON output: {"pooled": {...}, "groups": [...], "within": {...}, "between": {...}} (groups/within with
    --by; between from three groups on), plus
    "partial" with --control. Numbers are written at full precision in json and csv.
    """
    from ..errors import DataError
    from ..stats import correlation_table, format_correlations, table_records

    df = _read_table(table)
    for cond in where:
        col, sep, value = cond.partition("=")
        if not sep or col not in df.columns:
            raise click.BadParameter(f"{cond!r}: expected COL=VALUE with COL one of {', '.join(map(str, df.columns))}",
                                     param_hint="--where")
        df = df[df[col].astype(str) == value]
        if df.empty:
            raise DataError(f"{table}: no row has {col} = {value}")
    filtered_role = any(c.partition("=")[0] == "role" for c in where)
    if "role" in df.columns and not filtered_role and (df["role"].astype(str) != "exposed").any():
        n_other = int((df["role"].astype(str) != "exposed").sum())
        click.echo(f"note: {n_other} of {len(df)} rows are not exposed images (role column; e.g. held out as visual "
                   "experience); memlens analyze leaves the experience images out. Add --where role=exposed for "
                   "the exposed images only", err=True)
    res = correlation_table(df, x=[x_col], y=y_col, by=by, control=list(control) or None, method=method,
                            n_boot=n_boot, seed=seed, ci=ci_method, confidence=confidence,
                            permutation=permutation, name=str(table))
    if fmt == "csv":
        click.echo(res.to_csv(index=False), nl=False)
        return
    if fmt == "text":
        resamples = (f"{100 * confidence:g}% CI from {n_boot} paired bootstrap resamples ({ci_method}, seed {seed})"
                     if n_boot else "no bootstrap (--n-boot 0)")
        click.echo(f"{len(df)} rows, {method}, {resamples}"
                   + (f", {permutation} permutations" if permutation else ""))
        click.echo(format_correlations(res))
        return
    records = table_records(res)
    out: dict = {"pooled": next(r for r in records if r["scope"] == "pooled")}
    if by:
        out["groups"] = [r for r in records if r["scope"] == "group"]
        out["within"] = next(r for r in records if r["scope"] == "within")
        between = next((r for r in records if r["scope"] == "between"), None)
        if between is not None:  # from three groups on
            out["between"] = between
    partial = [r for r in records if r["scope"] == "partial"]
    if partial:
        out["partial"] = partial[0]
    click.echo(json.dumps(out, indent=2, allow_nan=False))
