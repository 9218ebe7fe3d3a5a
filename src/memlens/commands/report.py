"""``memlens report RUN [-o FILE]``: the self-contained HTML report of a run directory."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default: RUN/report.html); results.json is written beside it.")
def report(run: Path, out: Path | None) -> None:
    """Write the self-contained HTML report of RUN (plots and images inline, no network requests).

    Sections whose files are missing say which stage computes them. Prints the path of the report.
    """
    from memlens.report import build_report

    path = build_report(run, out)
    click.echo(str(path))
