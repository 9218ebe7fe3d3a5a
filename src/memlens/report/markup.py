"""HTML fragments the sections are made of: tables, key-value tables, notes, tiles and inline figures.

Every text from the data is escaped here (:func:`memlens.report.formatting.esc`)."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

from . import figures as F
from .formatting import esc, fmt


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None,
               cls: str = "", row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; every header and cell is escaped (cells are formatted with :func:`fmt`)."""
    numeric = list(numeric) if numeric is not None else [False] * len(headers)
    head = "".join(f'<th class="num">{esc(h)}</th>' if numeric[i] else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for j, row in enumerate(rows):
        cells = []
        for i, v in enumerate(row):
            text = v if isinstance(v, str) else fmt(v)
            klass = ' class="num"' if i < len(numeric) and numeric[i] else ""
            cells.append(f"<td{klass}>{esc(text)}</td>")
        rc = row_classes[j] if row_classes is not None and j < len(row_classes) and row_classes[j] else ""
        body.append((f'<tr class="{esc(rc)}">' if rc else "<tr>") + "".join(cells) + "</tr>")
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<div class="tablewrap"><table{klass}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of (label, value) pairs; numbers with four digits, everything escaped."""
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v if isinstance(v, str) else fmt(v, 4))}</td></tr>" for k, v in pairs)
    return f'<div class="tablewrap"><table class="kv"><tbody>{rows}</tbody></table></div>'


def note(text_html: str, missing: bool = False) -> str:
    """A note paragraph (``text_html`` is inserted as is: escape data first); ``missing`` styles it as absent input."""
    return f'<p class="note{" missing" if missing else ""}">{text_html}</p>'


def missing_note(what: str, files: Sequence[str], command: str | None) -> str:
    """The note of a section whose input is absent: what is missing and which stage computes it."""
    looked = ", ".join(f"<code>{esc(f)}</code>" for f in files)
    run = f" — run <code>{esc(command)}</code>" if command else ""
    return note(f"{esc(what)}: not computed{run} (looked for {looked} in the run directory).", missing=True)


def stat_tiles(items: Sequence[tuple[str, str]]) -> str:
    """A row of headline tiles, each a (label, value) pair (both escaped)."""
    inner = "".join(f'<div class="tile"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in items)
    return f'<div class="tiles">{inner}</div>'


def data_uri(data: bytes, mime: str) -> str:
    """``data:`` URI of ``data`` (base64), for inline images."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_html(fig, alt: str, caption: str | None = None) -> str:
    """A matplotlib figure as an inline PNG ``<figure>`` (the figure is cleared afterwards)."""
    png = F.figure_to_png(fig)
    fig.clear()
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(png, "image/png")}" alt="{esc(alt)}">{cap}</figure>'
