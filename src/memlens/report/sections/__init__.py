"""The builders of the report's sections, one module per section (a heading of the page).

Each ``section_<id>(ctx)`` takes a :class:`memlens.report.context.ReportContext` and returns the section's HTML
body and its numbers for ``results.json``; the page is put together by :mod:`memlens.report.html`.
"""
