"""Helpers shared by the CLI commands (light imports only)."""

from __future__ import annotations

import math
import sys

import click


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which pass every bound check): exit 2."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        rv = super().convert(value, param, ctx)
        if rv is not None and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


def progress_enabled(ctx: click.Context | None = None) -> bool:
    """Progress bars only in an interactive terminal and without --quiet."""
    ctx = ctx or click.get_current_context(silent=True)
    quiet = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))
    return (not quiet) and sys.stderr.isatty()


def echo(msg: str = "", err: bool = False) -> None:
    click.echo(msg, err=err)
