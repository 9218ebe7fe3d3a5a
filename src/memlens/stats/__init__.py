"""Correlation statistics done right: paired bootstrap CIs, partial and within-group effects, noise ceiling.

Every number comes with its ``n`` and a confidence interval. The bootstrap resamples **pairs** (rows of
``(x, y, controls, group)`` together), never the variables independently: resampling ``x`` and ``y``
independently destroys their association and gives an interval centred on zero whatever the truth.

Main entry points
-----------------
:func:`correlate`
    Spearman or Pearson correlation (optionally partial, optionally within groups) with a seeded paired
    bootstrap CI (percentile or BCa), an analytic p-value and, on request, a permutation p-value.
:func:`correlation_table`
    Pooled, per-group, within-group and partial correlations of several columns of a table with one
    outcome column, optionally divided by a noise ceiling.
:func:`between_groups` / :func:`correlation_difference`
    The correlation of group means (the between-category part of a pooled correlation), and the paired
    difference of two correlations with one outcome (the exposure test: after minus before).
:func:`split_half_reliability` / :func:`ceiling_from_split_half`
    Split-half consistency of human scores, its Spearman-Brown correction and the noise ceiling (the square
    root of that reliability).
:func:`analyze_per_image` / :func:`analyze_run`
    The table behind ``memlens analyze``: every ``recon_*`` and ``distinctiveness*`` column against the
    memorability score.

Modules
-------
``resampling`` (vectorised bootstrap, jackknife, BCa, p-values) -> ``correlation`` (:func:`correlate`) ->
``parts`` (between groups, differences) -> ``reliability`` (split halves, Spearman-Brown, FDR) -> ``tables`` (:func:`correlation_table`, formatting) ->
``analysis`` (``memlens analyze``). Definitions are in ``docs/statistics.md``.
"""

from __future__ import annotations

from .analysis import analyze_per_image, analyze_run, table_records
from .correlation import CI_METHODS, METHODS, CorrResult, correlate
from .parts import between_groups, correlation_difference
from .reliability import ceiling_from_split_half, fdr_bh, spearman_brown, split_half_reliability
from .tables import correlation_table, fixed_decimals, format_correlations

__all__ = [
    "CorrResult",
    "correlate",
    "correlation_table",
    "split_half_reliability",
    "spearman_brown",
    "ceiling_from_split_half",
    "between_groups",
    "correlation_difference",
    "fdr_bh",
    "analyze_per_image",
    "analyze_run",
    "format_correlations",
    "table_records",
    "METHODS",
    "CI_METHODS",
    "fixed_decimals",
]
