"""The page shell of the report: the section ids and headings, the navigation, the banners and the
HTML template (``template.html``: styles inline, no script) the section bodies are put into."""

from __future__ import annotations

import datetime as _dt
import string
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from .._version import __version__
from .formatting import esc

#: Section ids, in page order (stable: tests and links rely on them).
SECTION_IDS: tuple[str, ...] = (
    "summary", "training", "reconstruction", "distinctiveness", "correlations", "predictor", "baselines", "galleries",
    "explanations", "descriptors", "methods",
)
_TITLES = {
    "summary": "Data set", "training": "Training", "reconstruction": "Reconstruction error vs memorability",
    "distinctiveness": "Distinctiveness vs memorability", "correlations": "Correlation table",
    "predictor": "Predicting memorability", "baselines": "Other memorability models (baselines)", "galleries": "Most and least memorable images",
    "explanations": "What drives the prediction (Integrated Gradients)", "descriptors": "Visual descriptors",
    "methods": "Methods and provenance",
}
_NAV = {
    "summary": "Data", "training": "Training", "reconstruction": "Reconstruction", "distinctiveness":
    "Distinctiveness", "correlations": "Correlations", "predictor": "Predictor", "baselines": "Baselines", "galleries": "Galleries",
    "explanations": "Explanations", "descriptors": "Descriptors", "methods": "Methods",
}


def render_page(run_dir: Path, bodies: Mapping[str, str], simulated: bool, problems: Sequence[str],
                now: _dt.datetime) -> str:
    """The complete HTML document: every section of :data:`SECTION_IDS` (its body from ``bodies``) in a card,
    the navigation, the simulated-scores and unreadable-files banners, and the header and footer."""
    sections_html = []
    for sec in SECTION_IDS:
        sections_html.append(f'<section class="card" id="{sec}"><h2>{esc(_TITLES[sec])}</h2>{bodies[sec]}</section>')
    banner = ""
    if simulated:
        banner = ('<div class="banner" role="note"><b>Simulated scores.</b> This run uses the generated demo set: the '
                  "memorability scores were simulated, not measured on people. The numbers show that the pipeline "
                  "works, not how memorable these images are.</div>")
    if problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in problems)
        banner += f'<div class="banner" role="alert"><b>Some files could not be used:</b><ul>{items}</ul></div>'
    nav = "".join(f'<a href="#{sec}">{esc(_NAV[sec])}</a>' for sec in SECTION_IDS)
    template = string.Template(resources.files("memlens.report").joinpath("template.html").read_text(encoding="utf-8"))
    name = run_dir.resolve().name or str(run_dir)
    return template.substitute(
        title=esc(f"memlens report · {name}"), version=esc(__version__), run_name=esc(name),
        subtitle=esc(f"run directory {run_dir} · generated {now.strftime('%Y-%m-%d %H:%M UTC')} · memlens {__version__}"),
        nav=nav, banner=banner, sections="\n".join(sections_html),
        footer=esc(f"memlens {__version__} · every number on this page is in results.json beside it"),
    )
