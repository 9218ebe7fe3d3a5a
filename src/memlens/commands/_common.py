"""Helpers shared by the CLI commands (light imports only)."""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which pass every bound check): exit 2."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        rv = super().convert(value, param, ctx)
        if rv is not None and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


class LayoutChoice(click.Choice):
    """``--layout``: ``auto`` or a registered data layout (:data:`memlens.data.layouts.LAYOUTS`).

    The registry is read when the option is first used (parsing, help, completion), so that a command
    module imports only click and a new layout module appears here by itself.
    """

    def __init__(self) -> None:
        super().__init__([], case_sensitive=True)

    @property
    def choices(self):  # type: ignore[override]  # noqa: ANN201 - click's attribute
        from ..data.layouts import LAYOUTS

        return ["auto", *LAYOUTS]

    @choices.setter
    def choices(self, value) -> None:  # noqa: ANN001 - click sets it in __init__
        pass


def check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback for ``--device``: auto, cpu, cuda or cuda:N (a typo is a usage error, exit 2); whether that
    device exists is checked when the command runs."""
    if value is None or re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return value
    raise click.BadParameter(f"{value!r}: use auto, cpu, cuda or cuda:N")


def check_backbone(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback for ``--backbone``: a registered autoencoder (exit 2 otherwise)."""
    from ..models import list_autoencoders

    names = list_autoencoders()
    if value is None or value in names:
        return value
    raise click.BadParameter(f"unknown backbone {value!r}; choose one of {', '.join(names)}")


def progress_enabled(ctx: click.Context | None = None) -> bool:
    """Progress bars only in an interactive terminal and without --quiet."""
    ctx = ctx or click.get_current_context(silent=True)
    quiet = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))
    return (not quiet) and sys.stderr.isatty()


def progress_bar(desc: str, total: int | None = None, unit: str = "img", initial: int = 0) -> Any:
    """The one progress bar of the CLI (tqdm on stderr): count, rate and, with a ``total``, an ETA.

    Call only when :func:`progress_enabled`; close it (or use it as a context manager) when done.
    """
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, leave=False,
                file=sys.stderr)


@contextlib.contextmanager
def progress_updates(desc: str, total: int | None = None, unit: str = "img") -> Iterator[Callable[[int], Any] | None]:
    """While the block runs, the ``update(n)`` of a :func:`progress_bar` to hand to a library call's
    ``progress=`` (None when bars are off: :func:`progress_enabled`); the bar is closed on the way out."""
    if not progress_enabled():
        yield None
        return
    with progress_bar(desc, total, unit=unit) as bar:
        yield bar.update


def echo(msg: str = "", err: bool = False) -> None:
    click.echo(msg, err=err)
