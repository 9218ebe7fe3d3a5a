"""Figures of the report: pure functions that take arrays or DataFrames and return a matplotlib Figure.

Nothing here reads files or shows windows: figures are drawn on the Agg canvas (no GUI backend is
touched) and the caller decides where they go (:func:`figure_to_png` turns one into PNG bytes).
Colours come from the Okabe-Ito palette, which stays distinct under the common colour-vision deficiencies.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "PALETTE",
    "SCORE_LABEL",
    "SCORE_AXIS",
    "new_figure",
    "figure_to_png",
    "lowess",
    "binned_means",
    "score_histogram",
    "training_curve",
    "measure_scatter",
    "category_scatter",
    "binned_means_plot",
    "predictor_bars",
    "correlation_forest",
]

#: Okabe & Ito (2008) colour-blind-safe palette.
PALETTE: dict[str, str] = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "vermillion": "#D55E00",
    "sky": "#56B4E9",
    "purple": "#CC79A7",
    "yellow": "#F0E442",
    "black": "#000000",
    "grey": "#7F7F7F",
}
_CYCLE = [PALETTE[k] for k in ("blue", "orange", "green", "vermillion", "purple", "sky", "black")]

#: a category panel gets a LOWESS curve only from this many images (below it the curve follows the noise)
MIN_PANEL_FIT = 20

SCORE_LABEL = "memorability (human score, higher = more memorable)"
SCORE_AXIS = "memorability score\n(higher = more memorable)"


def _text(s: object) -> str:
    """A user string made safe for matplotlib (no mathtext from stray dollar signs)."""
    return str(s).replace("$", r"\$")


def new_figure(width: float = 6.4, height: float = 4.0, nrows: int = 1, ncols: int = 1, **kw) -> tuple[Figure, np.ndarray]:
    """A Figure on the Agg canvas with a grid of axes (always returned as a 2-d array).

    Parameters
    ----------
    width, height : float
        Size in inches.
    nrows, ncols : int
        Grid of axes.
    **kw
        Passed to ``Figure.subplots``.
    """
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    for ax in axes.flat:
        _style(ax)
    return fig, axes


def _style(ax: Axes) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8.5)


def figure_to_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render ``fig`` to PNG bytes (white background)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- numerics


def _finite_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def lowess(x: Sequence[float], y: Sequence[float], frac: float | None = None,
           n_points: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A locally weighted linear fit (tricube weights) whose windows are chosen by the *rank* of ``x``.

    Each window holds the same number of images whatever the spacing of ``x``, so the curve stays
    smooth where a skewed measure piles many images onto similar values; the local lines are fitted in the
    original units (a linear relation is recovered exactly) and evaluated at evenly spaced ``x``.

    Parameters
    ----------
    x, y : sequences of float
        Data; non-finite pairs are dropped.
    frac : float, optional
        Fraction of the points in each window; default ``clip(20 / n, 0.4, 0.8)``.
    n_points : int
        Number of evaluation points, evenly spaced from the 2% to the 98% quantile of ``x``.

    Returns
    -------
    grid, fit : ndarray
        x positions and fitted values; empty when fewer than 5 points remain or ``x`` is constant.
    """
    from scipy.stats import rankdata

    x, y = _finite_pairs(x, y)
    if x.size < 5 or np.ptp(x) == 0:
        return np.empty(0), np.empty(0)
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    t = (rankdata(xs) - 1) / (xs.size - 1)
    lo, hi = np.quantile(xs, [0.02, 0.98])
    grid_x = np.linspace(lo, hi, n_points) if hi > lo else np.full(n_points, lo)
    grid_t = np.interp(grid_x, xs, t)
    if frac is None:
        frac = min(0.8, max(0.4, 20 / xs.size))
    k = int(min(xs.size, max(5, math.ceil(frac * xs.size))))
    fit = np.empty(grid_t.size)
    for i, (gt, gx) in enumerate(zip(grid_t, grid_x, strict=True)):
        d = np.abs(t - gt)
        h = float(np.partition(d, k - 1)[k - 1]) * 1.0001 or 1e-12
        w = np.clip(1 - (d / h) ** 3, 0, None) ** 3
        sw = w.sum()
        xm, ym = (w * xs).sum() / sw, (w * ys).sum() / sw
        var = (w * (xs - xm) ** 2).sum()
        slope = (w * (xs - xm) * (ys - ym)).sum() / var if var > 0 else 0.0
        fit[i] = ym + slope * (gx - xm)
    return grid_x, fit


def binned_means(x: Sequence[float], y: Sequence[float], n_bins: int = 10) -> list[dict[str, float]]:
    """Mean of ``y`` in quantile bins of ``x``, with the 95% normal-theory interval of each mean.

    Returns
    -------
    list of dict
        One per non-empty bin: ``bin, n, x_low, x_high, x_mean, y_mean, y_sd, y_ci_low, y_ci_high``.
    """
    x, y = _finite_pairs(x, y)
    if x.size == 0:
        return []
    n_bins = int(max(1, min(n_bins, x.size // 3 or 1)))
    order = np.argsort(x, kind="stable")
    out = []
    for b, idx in enumerate(np.array_split(order, n_bins)):
        if idx.size == 0:
            continue
        xb, yb = x[idx], y[idx]
        sd = float(np.std(yb, ddof=1)) if yb.size > 1 else float("nan")
        half = 1.96 * sd / math.sqrt(yb.size) if yb.size > 1 else float("nan")
        m = float(np.mean(yb))
        out.append({
            "bin": b + 1, "n": int(idx.size), "x_low": float(xb.min()), "x_high": float(xb.max()),
            "x_mean": float(xb.mean()), "y_mean": m, "y_sd": sd, "y_ci_low": m - half, "y_ci_high": m + half,
        })
    return out


def signed(v: float, digits: int = 2) -> str:
    """A correlation with fixed decimals and no negative zero (``-0.001`` at 2 digits is ``0.00``)."""
    from ..stats import fixed_decimals

    return fixed_decimals(v, digits)


def _corr_title(r: float | None, ci: tuple[float, float] | None, n: int | None, symbol: str = "ρ") -> str:
    if r is None or not np.isfinite(r):
        return ""
    s = f"Spearman {symbol} = {signed(r)}"
    if ci is not None and all(c is not None and np.isfinite(c) for c in ci):
        s += f" [{signed(ci[0])}, {signed(ci[1])}]"
    if n is not None:
        s += f", n = {n}"
    return s


# ------------------------------------------------------------------------------------------------ figures


def score_histogram(scores: Sequence[float], *, label: str = SCORE_LABEL, bins: int | str = "auto") -> Figure:
    """Histogram of the human memorability scores, with the mean marked.

    Parameters
    ----------
    scores : sequence of float
        One score per image (non-finite values are ignored).
    label : str
        x-axis label.
    bins : int or str
        Passed to ``numpy.histogram_bin_edges``.
    """
    s = np.asarray(scores, dtype=float)
    s = s[np.isfinite(s)]
    fig, axes = new_figure(5.6, 3.6)
    ax = axes[0, 0]
    if s.size:
        edges = np.histogram_bin_edges(s, bins=bins)
        if edges.size > 41:
            edges = np.histogram_bin_edges(s, bins=40)
        ax.hist(s, bins=edges, color=PALETTE["blue"], edgecolor="white", linewidth=0.6)
        mean = float(s.mean())
        ax.axvline(mean, color=PALETTE["vermillion"], linestyle="--", linewidth=1.4, label=f"mean {mean:.3f}")
        ax.legend(frameon=False, fontsize=8.5)
    ax.set_xlabel(_text(label), fontsize=9.5)
    ax.set_ylabel("number of images", fontsize=9.5)
    ax.set_title(f"Score distribution (n = {s.size})", fontsize=10.5)
    return fig


def training_curve(curve=None, exposure=None, *, x: str | None = None) -> Figure:
    """Training loss: the curve per phase (and validation loss) and/or the single-exposure losses.

    Parameters
    ----------
    curve : pandas.DataFrame, optional
        Columns ``loss`` and optionally ``phase``, ``step``/``epoch``/``iteration``, ``val_loss``.
    exposure : pandas.DataFrame, optional
        Columns ``order`` (position in the single pass) and ``loss``: one row per image.
    x : str, optional
        Column of ``curve`` for the horizontal axis (default: the first of step, iteration, epoch).
    """
    panels = [p for p in (curve, exposure) if p is not None and len(p)]
    fig, axes = new_figure(6.4 if len(panels) <= 1 else 10.5, 3.4, 1, max(1, len(panels)))
    i = 0
    if curve is not None and len(curve):
        ax = axes[0, i]
        i += 1
        xcol = x if x is not None and x in curve.columns else next(
            (c for c in ("step", "iteration", "epoch") if c in curve.columns), None)
        groups = list(curve.groupby("phase", sort=False)) if "phase" in curve.columns else [("", curve)]
        offset = 0.0
        for j, (phase, g) in enumerate(groups):
            color = _CYCLE[j % len(_CYCLE)]
            xs = np.asarray(g[xcol], dtype=float) if xcol else np.arange(len(g), dtype=float)
            # phases restart their counters: lay them end to end
            if j and xs.size and xs.min() <= offset:
                xs = xs - xs.min() + offset + 1
            name = f"{phase} " if phase != "" else ""
            ax.plot(xs, np.asarray(g["loss"], dtype=float), color=color, linewidth=1.4, marker="o" if len(g) < 30 else None,
                    markersize=3, label=_text(f"{name}training loss"))
            if "val_loss" in g.columns and np.isfinite(np.asarray(g["val_loss"], dtype=float)).any():
                ax.plot(xs, np.asarray(g["val_loss"], dtype=float), color=color, linestyle="--", linewidth=1.4,
                        marker="s" if len(g) < 30 else None, markersize=3, markerfacecolor="white",
                        label=_text(f"{name}validation loss"))
            if xs.size:
                offset = float(np.nanmax(xs))
        ax.set_xlabel(_text(xcol or "record"), fontsize=9.5)
        ax.set_ylabel("loss (lower = better)", fontsize=9.5)
        ax.set_title("Training curve", fontsize=10.5)
        ax.legend(frameon=False, fontsize=8)
    if exposure is not None and len(exposure):
        ax = axes[0, i]
        e = exposure.sort_values("order") if "order" in exposure.columns else exposure
        xs = np.asarray(e["order"], dtype=float) if "order" in e.columns else np.arange(len(e), dtype=float)
        ys = np.asarray(e["loss"], dtype=float)
        ax.scatter(xs, ys, s=6, color=PALETTE["sky"], alpha=0.6, linewidths=0, label="one image")
        w = max(1, len(ys) // 20)
        if len(ys) >= 3:
            kernel = np.ones(w) / w
            ax.plot(xs[w - 1:] if w > 1 else xs, np.convolve(ys, kernel, mode="valid"), color=PALETTE["blue"],
                    linewidth=1.8, label=f"running mean ({w} images)")
        ax.set_xlabel("position in the single exposure pass", fontsize=9.5)
        ax.set_ylabel("loss at exposure (lower = better)", fontsize=9.5)
        ax.set_title("Single exposure: loss per image", fontsize=10.5)
        ax.legend(frameon=False, fontsize=8)
    return fig


def measure_scatter(x: Sequence[float], y: Sequence[float], *, xlabel: str, ylabel: str = SCORE_AXIS,
                    r: float | None = None, ci: tuple[float, float] | None = None, n: int | None = None,
                    title: str | None = None, ax: Axes | None = None) -> Figure:
    """Scatter of a per-image measure against memorability, with a LOWESS fit and ``r [CI]`` in the title.

    Parameters
    ----------
    x, y : sequences of float
        The measure and the scores.
    xlabel, ylabel : str
        Axis labels (say the unit and the direction).
    r, ci, n : optional
        Spearman correlation, its interval and sample size shown in the title.
    title : str, optional
        First title line.
    ax : Axes, optional
        Draw into this axes instead of a new figure (then its figure is returned).
    """
    if ax is None:
        fig, axes = new_figure(5.6, 4.0)
        ax = axes[0, 0]
    else:
        fig = ax.figure
    xs, ys = _finite_pairs(x, y)
    alpha = 0.7 if xs.size < 300 else (0.45 if xs.size < 3000 else 0.2)
    ax.scatter(xs, ys, s=10 if xs.size < 1000 else 5, color=PALETTE["blue"], alpha=alpha, linewidths=0)
    gx, gy = lowess(xs, ys)
    if gx.size:
        ax.plot(gx, gy, color=PALETTE["vermillion"], linewidth=2.0, label="LOWESS fit")
        ax.legend(frameon=False, fontsize=8, loc="best")
    ax.set_xlabel(_text(xlabel), fontsize=9.5)
    ax.set_ylabel(_text(ylabel), fontsize=9.5)
    line2 = _corr_title(r, ci, n if n is not None else int(xs.size))
    head = _text(title) if title else ""
    ax.set_title("\n".join(t for t in (head, line2) if t), fontsize=10.5)
    return fig


def category_scatter(panels: Sequence[Mapping], *, xlabel: str, ylabel: str = SCORE_AXIS, ncols: int = 4) -> Figure:
    """Small multiples: one scatter + LOWESS fit per category (from :data:`MIN_PANEL_FIT` images), shared axes.

    Parameters
    ----------
    panels : sequence of mappings
        Each with ``name``, ``x``, ``y`` and optionally ``r``, ``ci_low``, ``ci_high``.
    xlabel, ylabel : str
        Axis labels, written once.
    ncols : int
        Panels per row.
    """
    n = max(1, len(panels))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = new_figure(2.6 * ncols + 0.6, 2.3 * nrows + 0.6, nrows, ncols, sharex=True, sharey=True)
    for ax, p in zip(axes.flat, panels, strict=False):
        xs, ys = _finite_pairs(p["x"], p["y"])
        ax.scatter(xs, ys, s=10 if xs.size < 200 else 6, color=PALETTE["blue"], alpha=0.7 if xs.size < 200 else 0.3,
                   linewidths=0)
        gx, gy = lowess(xs, ys) if xs.size >= MIN_PANEL_FIT else (np.empty(0), np.empty(0))
        if gx.size:
            ax.plot(gx, gy, color=PALETTE["vermillion"], linewidth=1.6)
        r = p.get("r")
        sub = f"ρ = {signed(r)}" if r is not None and np.isfinite(r) else "ρ n/a"
        lo, hi = p.get("ci_low"), p.get("ci_high")
        if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi) and sub != "ρ n/a":
            sub += f" [{signed(lo)}, {signed(hi)}]"
        name = str(p["name"])
        name = name if len(name) <= 28 else name[:27] + "…"
        ax.set_title(_text(f"{name} (n = {xs.size})\n{sub}"), fontsize=9)
        ax.tick_params(labelbottom=True)  # shared x: a panel above an empty slot would otherwise have no ticks
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.supxlabel(_text(xlabel), fontsize=9.5)
    fig.supylabel(_text(ylabel), fontsize=9.5)
    return fig


def binned_means_plot(bins: Sequence[Mapping], *, xlabel: str, ylabel: str = "mean memorability score\n(higher = more memorable)") -> Figure:
    """Mean score per quantile bin of a measure, with 95% intervals (output of :func:`binned_means`)."""
    fig, axes = new_figure(5.6, 4.0)
    ax = axes[0, 0]
    if bins:
        xm = np.array([b["x_mean"] for b in bins], dtype=float)
        ym = np.array([b["y_mean"] for b in bins], dtype=float)
        lo = np.array([b["y_ci_low"] for b in bins], dtype=float)
        hi = np.array([b["y_ci_high"] for b in bins], dtype=float)
        err = np.vstack([np.nan_to_num(ym - lo), np.nan_to_num(hi - ym)])
        ax.errorbar(xm, ym, yerr=err, color=PALETTE["blue"], ecolor=PALETTE["blue"], marker="o", markersize=5,
                    capsize=3, linewidth=1.4)
    ax.set_xlabel(_text(xlabel), fontsize=9.5)
    ax.set_ylabel(_text(ylabel), fontsize=9.5)
    ax.set_title(f"Binned means ({len(bins)} equal-count bins, 95% CI)", fontsize=10.5)
    return fig


def predictor_bars(models: Mapping[str, Sequence[float]], *, metric: str = "spearman",
                   consistency: float | None = None, ceiling: float | None = None) -> Figure:
    """Cross-validated prediction accuracy per model (mean ± SD over folds, folds as dots) against the ceiling.

    Parameters
    ----------
    models : mapping
        Model name -> per-fold values of ``metric``.
    metric : str
        Name of the metric, for the axis label.
    consistency : float, optional
        Human split-half consistency (drawn as a dotted line).
    ceiling : float, optional
        The noise ceiling, the square root of the full-group score's Spearman-Brown reliability (dashed).
    """
    fig, axes = new_figure(6.4, 3.8)
    ax = axes[0, 0]
    names = list(models)
    for i, name in enumerate(names):
        vals = np.asarray(models[name], dtype=float)
        vals = vals[np.isfinite(vals)]
        if not vals.size:
            continue
        color = _CYCLE[i % len(_CYCLE)]
        sd = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        ax.bar(i, vals.mean(), width=0.6, color=color, alpha=0.85, yerr=sd, capsize=4, ecolor="#333333")
        jitter = np.linspace(-0.12, 0.12, vals.size) if vals.size > 1 else np.zeros(1)
        ax.scatter(i + jitter, vals, s=14, color="black", zorder=3, linewidths=0)
        ax.text(i + 0.32, vals.mean(), f"{vals.mean():.2f}", ha="left", va="center", fontsize=9, fontweight="bold")
    if consistency is not None and np.isfinite(consistency):
        ax.axhline(consistency, color=PALETTE["green"], linestyle=":", linewidth=1.6,
                   label=f"human split-half ρ {consistency:.2f}")
    if ceiling is not None and np.isfinite(ceiling):
        ax.axhline(ceiling, color=PALETTE["vermillion"], linestyle="--", linewidth=1.6,
                   label=f"noise ceiling √(Spearman-Brown) {ceiling:.2f}")
    if consistency is not None or ceiling is not None:
        fig.legend(frameon=False, fontsize=8.5, loc="outside lower center", ncol=1)
    ax.set_xticks(range(len(names)), [_text(n) for n in names], fontsize=9.5)
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(_text(f"{metric}: predicted vs human\n(held-out folds, higher = better)"), fontsize=9.5)
    ax.set_title("Cross-validated prediction vs the noise ceiling", fontsize=10.5)
    return fig


def correlation_forest(labels: Sequence[str], r: Sequence[float], ci_low: Sequence[float] | None = None,
                       ci_high: Sequence[float] | None = None, *, xlabel: str = "Spearman ρ with memorability",
                       title: str = "", ceiling: float | None = None, ceiling_label: str = "noise ceiling",
                       series: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[float]]] = ()) -> Figure:
    """Horizontal dot-and-interval chart of correlations (one row per measure or descriptor).

    Parameters
    ----------
    labels : sequence of str
        Row labels, drawn top to bottom in the given order.
    r, ci_low, ci_high : sequences of float
        Correlations and their intervals (NaN intervals are drawn as dots only).
    xlabel, title : str
        Labels.
    ceiling : float, optional
        Noise ceiling (and its negative) drawn as dashed lines, labelled ``ceiling_label``.
    series : sequence of (name, r, ci_low, ci_high), optional
        Several correlations per row (e.g. with the human and with the predicted score): drawn side by side
        in distinct colours with a legend; ``r``, ``ci_low`` and ``ci_high`` are then ignored.
    """
    n = len(labels)
    multi = len(series) > 0
    legend = multi or (ceiling is not None and np.isfinite(ceiling))
    fig, axes = new_figure(6.4, 1.3 + (0.42 if multi else 0.32) * max(n, 2) + (0.3 if legend else 0))
    ax = axes[0, 0]
    if not multi:
        series = [("", r, ci_low if ci_low is not None else [np.nan] * n, ci_high if ci_high is not None else [np.nan] * n)]
    ys = np.arange(n)[::-1].astype(float)
    finite_parts = [np.zeros(1)]
    k = len(series)
    colours = [PALETTE["blue"], PALETTE["vermillion"], PALETTE["green"], PALETTE["purple"]]
    for j, (name, sr, slo, shi) in enumerate(series):
        rr = np.asarray(sr, dtype=float)
        lo = np.asarray(slo, dtype=float)
        hi = np.asarray(shi, dtype=float)
        dy = (j - (k - 1) / 2) * (0.7 / max(k, 2)) if multi else 0.0
        for yv, ri, li, hi_ in zip(ys - dy, rr, lo, hi, strict=True):
            color = colours[j % len(colours)]  # one colour per series: the sign is the side of the zero line
            if np.isfinite(li) and np.isfinite(hi_):
                ax.plot([li, hi_], [yv, yv], color=color, linewidth=2.2 if not multi else 1.8, solid_capstyle="round")
            ax.plot([ri], [yv], marker="o", color=color, markersize=6 if not multi else 5)
        if multi:
            ax.plot([], [], marker="o", color=colours[j % len(colours)], linewidth=1.8, label=_text(name))
        finite_parts += [rr[np.isfinite(rr)], lo[np.isfinite(lo)], hi[np.isfinite(hi)]]
    ax.axvline(0, color="black", linewidth=0.8)
    if ceiling is not None and np.isfinite(ceiling):
        ax.axvline(ceiling, color=PALETTE["grey"], linestyle="--", linewidth=1.2,
                   label=_text(f"{ceiling_label} {signed(ceiling)}"))
        ax.axvline(-ceiling, color=PALETTE["grey"], linestyle="--", linewidth=1.2)
    if legend:
        fig.legend(frameon=False, fontsize=8.5, loc="outside lower center", ncol=3)
    ax.set_yticks(ys, [_text(lbl) for lbl in labels], fontsize=8.5)
    finite = np.concatenate(finite_parts)
    span = max(0.1, float(np.abs(finite).max()) * 1.15)
    if ceiling is not None and np.isfinite(ceiling):
        span = max(span, ceiling * 1.05)
    ax.set_xlim(-min(1.0, span), min(1.0, span))
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(_text(xlabel), fontsize=9.5)
    if title:
        ax.set_title(_text(title), fontsize=10.5)
    return fig
