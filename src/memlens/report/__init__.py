"""The report of a run: figures (pure functions returning matplotlib Figures) and one self-contained HTML file.

``build_report(run_dir, out=None)`` writes ``report.html`` (every image and plot inline, no network request)
and ``results.json`` (every number the report shows).
"""

from __future__ import annotations

from .html import SECTION_IDS, build_report, collect_report

__all__ = ["build_report", "collect_report", "SECTION_IDS"]
