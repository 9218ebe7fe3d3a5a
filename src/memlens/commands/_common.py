"""Helpers shared by the CLI commands (light imports only)."""

from __future__ import annotations

import sys

import click


def progress_enabled(ctx: click.Context | None = None) -> bool:
    """Progress bars only in an interactive terminal and without --quiet."""
    ctx = ctx or click.get_current_context(silent=True)
    quiet = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))
    return (not quiet) and sys.stderr.isatty()


def echo(msg: str = "", err: bool = False) -> None:
    click.echo(msg, err=err)
