"""The self-contained HTML report of a run directory.

:func:`build_report` reads whatever the stages wrote into a run directory (DESIGN.md §4), draws the
figures (:mod:`memlens.report.figures`) and writes ONE HTML file: every plot and image is an inline
``data:`` URI, the styles are inline, there is no script, and a Content-Security-Policy forbids any
network request. ``results.json`` beside it holds every number the report shows (full precision).

Every section renders on its own: when its input files are missing it says which stage computes them.
Every string that comes from the data (file names, categories, table values, config) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import math
import os
import re
import string
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_write_json, atomic_write_text
from .._version import __version__
from ..errors import RunDirError
from . import figures as F

__all__ = ["build_report", "collect_report", "SECTION_IDS"]

log = logging.getLogger(__name__)

#: Section ids, in page order (stable: tests and links rely on them).
SECTION_IDS: tuple[str, ...] = (
    "summary", "training", "reconstruction", "distinctiveness", "correlations", "predictor", "galleries",
    "explanations", "descriptors", "methods",
)
_TITLES = {
    "summary": "Data set", "training": "Training", "reconstruction": "Reconstruction error vs memorability",
    "distinctiveness": "Distinctiveness vs memorability", "correlations": "Correlation table",
    "predictor": "Predicting memorability", "galleries": "Most and least memorable images",
    "explanations": "What drives the prediction (Integrated Gradients)", "descriptors": "Visual descriptors",
    "methods": "Methods and provenance",
}
_NAV = {
    "summary": "Data", "training": "Training", "reconstruction": "Reconstruction", "distinctiveness":
    "Distinctiveness", "correlations": "Correlations", "predictor": "Predictor", "galleries": "Galleries",
    "explanations": "Explanations", "descriptors": "Descriptors", "methods": "Methods",
}

N_BOOT = 1000  # bootstrap resamples when the report computes a correlation itself
BOOT_SEED = 0
GALLERY_SIZE = 8
THUMB_PX = 128
MAX_OVERLAYS = 24
MAX_TABLE_ROWS = 300
MAX_CATEGORY_PANELS = 12

_METRIC_NAMES = {
    "mse": "MSE", "l1": "L1", "mae": "L1", "dssim": "1 − SSIM", "ms-dssim": "1 − MS-SSIM", "ms_dssim": "1 − MS-SSIM",
    "lpips": "LPIPS", "perceptual": "perceptual distance", "exposure": "loss at the single exposure",
}


# --------------------------------------------------------------------------------------------- formatting


def esc(value: Any) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


def _isnum(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def fmt(v: Any, digits: int = 3) -> str:
    """A number formatted for a table (NaN/None -> en dash); other values as text."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if _isnum(v):
        if isinstance(v, (int, np.integer)):
            return f"{int(v)}"
        f = float(v)
        if not math.isfinite(f):
            return "–"
        if f == int(f) and abs(f) < 1e9 and digits >= 0 and abs(f) >= 1:
            return f"{int(f)}"
        if f != 0 and (abs(f) < 10 ** -digits or abs(f) >= 1e6):
            return f"{f:.{max(1, digits - 1)}e}"
        return f"{f:.{digits}f}"
    return str(v)


def fmt_r(v: Any, digits: int = 3) -> str:
    """A correlation: fixed decimals (never ``7.00e-04``), no negative zero, en dash when missing."""
    f = _num(v)
    return "–" if f is None else F.signed(f, digits)


def _f3(v: Any) -> str:
    """A score with three decimals (``1.000``, not ``1``) or an en dash."""
    f = _num(v)
    return "–" if f is None else f"{f:.3f}"


def fmt_p(p: Any) -> str:
    """A p-value: ``< 0.001`` or three decimals."""
    if not _isnum(p) or not math.isfinite(float(p)):
        return "–"
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def fmt_ci(lo: Any, hi: Any, digits: int = 2) -> str:
    """``[lo, hi]`` or an en dash."""
    if not (_isnum(lo) and _isnum(hi)) or not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        return "–"
    return f"[{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def _num(v: Any) -> float | None:
    """A finite float or None (for results.json)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None,
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


def _kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v if isinstance(v, str) else fmt(v, 4))}</td></tr>" for k, v in pairs)
    return f'<div class="tablewrap"><table class="kv"><tbody>{rows}</tbody></table></div>'


def _note(text_html: str, missing: bool = False) -> str:
    return f'<p class="note{" missing" if missing else ""}">{text_html}</p>'


def _missing(what: str, files: Sequence[str], command: str | None) -> str:
    """The note of a section whose input is absent: what is missing and which stage computes it."""
    looked = ", ".join(f"<code>{esc(f)}</code>" for f in files)
    run = f" — run <code>{esc(command)}</code>" if command else ""
    return _note(f"{esc(what)}: not computed{run} (looked for {looked} in the run directory).", missing=True)


def _tiles(items: Sequence[tuple[str, str]]) -> str:
    inner = "".join(f'<div class="tile"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in items)
    return f'<div class="tiles">{inner}</div>'


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure_html(fig, alt: str, caption: str | None = None) -> str:
    png = F.figure_to_png(fig)
    fig.clear()
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{_data_uri(png, "image/png")}" alt="{esc(alt)}">{cap}</figure>'


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, value) pairs; lists of scalars joined, other lists as JSON."""
    out: list[tuple[str, Any]] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                out.extend(_flatten(v, key))
            else:
                out.append((key, _scalar_text(v)))
    else:
        out.append((prefix or "value", _scalar_text(obj)))
    return out


def _scalar_text(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        if all(not isinstance(x, (list, tuple, Mapping)) for x in v):
            return ", ".join(fmt(x, 4) if _isnum(x) else str(x) for x in v)
        return json.dumps(v, default=str)
    if isinstance(v, Mapping):
        return json.dumps(v, default=str)
    return v


# ------------------------------------------------------------------------------------------ run reading


@dataclass
class _Run:
    """Defensive access to the files of a run directory (unreadable files become notes, not crashes)."""

    dir: Path
    problems: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path | None:
        p = self.dir / name
        return p if p.exists() else None

    def json(self, name: str) -> Any:
        if name in self._cache:
            return self._cache[name]
        p, value = self.path(name), None
        if p is not None:
            try:
                value = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                self._problem(name, exc)
        self._cache[name] = value
        return value

    def csv(self, name: str) -> pd.DataFrame | None:
        if name in self._cache:
            return self._cache[name]
        p, value = self.path(name), None
        if p is not None:
            try:
                value = pd.read_csv(p)
            except (OSError, ValueError, pd.errors.ParserError) as exc:
                self._problem(name, exc)
        self._cache[name] = value
        return value

    def _problem(self, name: str, exc: Exception) -> None:
        msg = f"{name}: could not be read ({type(exc).__name__}: {exc})"
        log.warning("%s", msg)
        self.problems.append(msg)

    def per_image(self) -> pd.DataFrame | None:
        df = self.csv("per_image.csv")
        if df is None or "image_id" not in df.columns:
            if df is not None and "per_image.csv:no image_id" not in self._cache:
                self._cache["per_image.csv:no image_id"] = True
                self.problems.append("per_image.csv: no image_id column")
            return None
        if "score" in df.columns:
            df["score"] = pd.to_numeric(df["score"], errors="coerce")
        return df

    def has_scores(self) -> bool:
        df = self.per_image()
        return df is not None and "score" in df.columns and df["score"].notna().any()


def _data_root(run: _Run) -> Path | None:
    """The folder that per_image.csv's image ids are relative to (dataset.json: ``root`` or ``source``)."""
    ds = run.json("dataset.json")
    if not isinstance(ds, Mapping):
        return None
    for key in ("root", "data_root", "source"):
        value = ds.get(key)
        if not value or not isinstance(value, str):
            continue
        p = Path(value).expanduser()
        candidates = [p] if p.is_absolute() else [run.dir / p, Path.cwd() / p]
        for c in candidates:
            if c.is_dir():
                return c
            if c.is_file():
                return c.parent
    return None


def _is_simulated(run: _Run) -> bool:
    """True when the scores are simulated: dataset.json/config/manifest say the demo set, or demo_truth.csv."""
    for name in ("dataset.json", "config.json", "manifest.json"):
        obj = run.json(name)
        if not isinstance(obj, Mapping):
            continue
        stack: list[Any] = [obj]
        while stack:
            cur = stack.pop()
            if isinstance(cur, Mapping):
                for k, v in cur.items():
                    if k in ("simulated", "demo", "synthetic") and v is True:
                        return True
                    if k in ("layout", "kind", "dataset") and isinstance(v, str) and v.lower() in ("demo", "synthetic"):
                        return True
                    if isinstance(v, Mapping):
                        stack.append(v)
    root = _data_root(run)
    return bool(root is not None and any((root / f).is_file() for f in ("demo_truth.csv", "demo_config.json")))


# --------------------------------------------------------------------------------------- statistics


REPORT_SOURCE = f"report (memlens.stats.correlate: percentile bootstrap, {N_BOOT} resamples, seed {BOOT_SEED})"


def _correlate(x: Any, y: Any, groups: Any = None) -> dict[str, Any]:
    """Spearman r with its paired-bootstrap 95% interval, by :func:`memlens.stats.correlate` (seeded).

    Used only where a stage wrote no row for the number (no ``correlations.csv``/``descriptor_correlations.csv``).
    ``groups`` gives the within-group correlation.
    """
    from ..stats import correlate

    xa = pd.to_numeric(pd.Series(np.asarray(x, dtype=object)), errors="coerce").to_numpy(dtype=float)
    ya = pd.to_numeric(pd.Series(np.asarray(y, dtype=object)), errors="coerce").to_numpy(dtype=float)
    res = correlate(xa, ya, method="spearman", n_boot=N_BOOT, seed=BOOT_SEED, ci="percentile", groups=groups,
                    label="report correlation")
    return {"n": int(res.n), "r": _num(res.r), "ci_low": _num(res.ci_low), "ci_high": _num(res.ci_high),
            "p_value": _num(res.p_value), "method": res.method, "n_boot": res.n_boot, "seed": res.seed,
            "source": REPORT_SOURCE}


_SCOPE_ALIASES = {
    "pooled": "pooled", "all": "pooled", "overall": "pooled", "": "pooled",
    "group": "group", "category": "group", "by": "group", "per-group": "group", "per_group": "group",
    "per-category": "group", "per_category": "group",
    "within": "within", "within-group": "within", "within_group": "within", "within-category": "within",
    "within_category": "within",
    "partial": "partial",
}


def _clean(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return _clean(v.item())
    return v


class _Correlations:
    """Rows of correlations.csv/.json, read by column name (extra or missing columns tolerated)."""

    def __init__(self, run: _Run):
        self.source: str | None = None
        #: correlations.json without its rows: the analysis settings and the noise ceiling (``ceiling``)
        self.meta: dict[str, Any] = {}
        payload = run.json("correlations.json")
        if isinstance(payload, Mapping):
            self.meta = {k: v for k, v in payload.items() if k != "rows"}
        df = run.csv("correlations.csv")
        if df is not None:
            self.source = "correlations.csv"
        else:
            obj = payload
            records = None
            if isinstance(obj, list):
                records = obj
            elif isinstance(obj, Mapping):
                records = next((v for v in obj.values() if isinstance(v, list)), None)
            if records and all(isinstance(r, Mapping) for r in records):
                df = pd.DataFrame.from_records(records)
                self.source = "correlations.json"
        if df is not None and "x" not in df.columns:
            alt = next((c for c in ("measure", "variable", "column") if c in df.columns), None)
            if alt:
                df = df.rename(columns={alt: "x"})
            else:
                run.problems.append(f"{self.source}: no column x (the measure): rows ignored")
                df, self.source = None, None
        if df is not None and "r" not in df.columns:
            alt = next((c for c in ("rho", "spearman", "estimate") if c in df.columns), None)
            if alt:
                df = df.rename(columns={alt: "r"})
        self.df = df
        if df is not None:
            scope = df["scope"] if "scope" in df.columns else pd.Series([""] * len(df), index=df.index)
            self.scope = scope.fillna("").astype(str).str.strip().str.lower().map(lambda s: _SCOPE_ALIASES.get(s, s))
            self.group = (df["group"] if "group" in df.columns else pd.Series([""] * len(df), index=df.index)).fillna("").astype(str)
            self.control = (df["control"] if "control" in df.columns else pd.Series([""] * len(df), index=df.index)).fillna("").astype(str)
            self.y = (df["y"] if "y" in df.columns else pd.Series(["score"] * len(df), index=df.index)).fillna("score").astype(str)

    def __bool__(self) -> bool:
        return self.df is not None and len(self.df) > 0

    def records(self) -> list[dict[str, Any]]:
        if not self:
            return []
        return [{k: _clean(v) for k, v in row.items()} for row in self.df.to_dict("records")]

    def find_all(self, x: str, scope: str, y: str = "score") -> list[dict[str, Any]]:
        """Every row for measure ``x`` (vs ``y``) in ``scope``, in file order."""
        if not self:
            return []
        m = (self.df["x"].astype(str) == x) & (self.scope == scope) & (self.y == y)
        out = []
        for rec in self.df[m].to_dict("records"):
            row = {k: _clean(v) for k, v in rec.items()}
            row["scope"], row["source"] = scope, self.source
            out.append(row)
        return out

    def find(self, x: str, scope: str = "pooled", group: str | None = None, y: str = "score") -> dict[str, Any] | None:
        """The first row for measure ``x`` (vs ``y``) in ``scope`` (and ``group`` for per-group rows)."""
        if not self:
            return None
        m = (self.df["x"].astype(str) == x) & (self.scope == scope) & (self.y == y)
        if scope == "group" and group is not None:
            m &= self.group == str(group)
        if scope == "pooled":
            m &= self.control == ""
        hits = self.df[m]
        if hits.empty:
            return None
        row = {k: _clean(v) for k, v in hits.iloc[0].to_dict().items()}
        row["scope"] = scope
        row["source"] = self.source
        return row


def _corr_numbers(row: Mapping[str, Any] | None) -> dict[str, Any]:
    row = row or {}
    return {"n": _clean(row.get("n")), "r": _num(row.get("r")), "ci_low": _num(row.get("ci_low")),
            "ci_high": _num(row.get("ci_high")), "p_value": _num(row.get("p_value")), "source": row.get("source")}


def _ceiling_entry(rel: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """The report's view of a :func:`memlens.stats.split_half_reliability` result."""
    r = _num(rel.get("spearman_mean"))
    if r is None:
        return None
    sb = _num(rel.get("spearman_brown"))
    if sb is None or rel.get("method", "spearman") != "spearman":
        sb = 2 * r / (1 + r) if r > -1 else None
    return {"n_images": _clean(rel.get("n_images")), "n_splits": _clean(rel.get("n_splits")),
            "split_half_spearman": r, "split_half_spearman_sd": _num(rel.get("spearman_sd")),
            "spearman_brown": sb, "source": source}


def _noise_ceiling(run: _Run, ids: Sequence[str] | None, corr: _Correlations) -> dict[str, Any] | None:
    """Human split-half consistency (the noise ceiling) and its Spearman-Brown value.

    Taken from ``correlations.json`` (``memlens analyze``) when it holds one; otherwise computed from
    ``split_halves.npz`` over the run's images with :func:`memlens.stats.split_half_reliability`.
    """
    meta_ceiling = corr.meta.get("ceiling")
    if isinstance(meta_ceiling, Mapping):
        entry = _ceiling_entry(meta_ceiling, "correlations.json (memlens analyze)")
        if entry is not None:
            return entry
    p = run.path("split_halves.npz")
    if p is None:
        return None
    from ..data.halves import load_split_halves
    from ..stats import split_half_reliability

    try:
        halves = load_split_halves(p)
        if ids is not None:
            known = set(halves.image_ids)
            keep = [i for i in ids if i in known]
            if len(keep) >= 3:
                halves = halves.subset(keep)
        rel = split_half_reliability(halves)
    except Exception as exc:  # a malformed file is a note, not a crash
        run._problem("split_halves.npz", exc)
        return None
    return _ceiling_entry(rel, "split_halves.npz (memlens.stats.split_half_reliability)")


# ------------------------------------------------------------------------------------------ sections


@dataclass
class _Ctx:
    run: _Run
    corr: _Correlations
    per_image: pd.DataFrame | None
    ceiling: dict[str, Any] | None
    data_root: Path | None
    headline: dict[str, Any] = field(default_factory=dict)


def _section_summary(ctx: _Ctx) -> tuple[str, dict]:
    df = ctx.per_image
    res: dict[str, Any] = {}
    parts: list[str] = []
    if df is None:
        ds = ctx.run.json("dataset.json")
        if isinstance(ds, Mapping) and _isnum(ds.get("n_images")):
            res["n_images"] = int(ds["n_images"])
            parts.append(_tiles([("images (dataset.json)", fmt(res["n_images"]))]))
        parts.append(_missing("Per-image table", ["per_image.csv"], "memlens score"))
        return "".join(parts), res
    res["n_images"] = int(len(df))
    tiles = [("images", fmt(res["n_images"]))]
    if "role" in df.columns:  # the analyses are about the exposed images; say so beside the total
        roles = df["role"].astype(str).value_counts()
        res["roles"] = {str(k): int(v) for k, v in roles.items()}
        if roles.get("exposed", 0) != len(df):
            tiles.append(("exposed once", fmt(int(roles.get("exposed", 0)))))
            if roles.get("experience", 0):
                tiles.append(("visual experience (not analysed)", fmt(int(roles["experience"]))))
    scores = df["score"].to_numpy(dtype=float) if "score" in df.columns else np.empty(0)
    finite = scores[np.isfinite(scores)]
    if finite.size:
        res["score"] = {"n": int(finite.size), "mean": float(finite.mean()),
                        "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
                        "median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max())}
        tiles.append(("mean score (SD)", f"{finite.mean():.3f} ({fmt(res['score']['sd'], 3)})"))
    if ctx.ceiling:
        res["noise_ceiling"] = ctx.ceiling
        n_ceil = ctx.ceiling.get("n_images")
        on = f", {fmt(n_ceil)} images" if n_ceil is not None else ""
        tiles.append((f"human split-half ρ (noise ceiling{on})", fmt_r(ctx.ceiling["split_half_spearman"])))
        tiles.append(("reliability (Spearman-Brown)", fmt_r(ctx.ceiling["spearman_brown"])))
    for key in ("reconstruction", "distinctiveness"):
        if key in ctx.headline:
            col, r = ctx.headline[key]
            tiles.append((f"ρ of {col} with the score", fmt_r(r)))
    if "predictor" in ctx.headline:
        which = ctx.headline.get("predictor_label")
        tiles.append((f"predictor ρ ({which + ', ' if which else ''}cross-validated)", fmt_r(ctx.headline["predictor"])))
    parts.append(_tiles(tiles))
    if finite.size:
        parts.append('<div class="figrow">')
        who = "Simulated" if _is_simulated(ctx.run) else "Human"
        of = f"all {finite.size} images with a score" + (" (exposed and visual experience)"
                                                        if res.get("roles", {}).get("experience") else "")
        label = F.SCORE_LABEL.replace("human", "simulated") if who == "Simulated" else F.SCORE_LABEL
        parts.append(_figure_html(F.score_histogram(finite, label=label), "histogram of memorability scores",
                                  f"{who} memorability scores of {of}; dashed line: mean."))
        parts.append("<div>")
        sc = res["score"]
        parts.append(_kv_table([("images with a score", sc["n"])] + [
            (label, f"{sc[k]:.4f}" if sc[k] is not None else "–")
            for label, k in (("mean", "mean"), ("SD", "sd"), ("median", "median"), ("min", "min"), ("max", "max"))]))
        if ctx.ceiling:
            c = ctx.ceiling
            parts.append(_kv_table([("split-half splits", c["n_splits"]), ("images in the halves", c["n_images"]),
                                    ("mean Spearman ρ between halves (the noise ceiling)", c["split_half_spearman"]),
                                    ("reliability of the full-group score (Spearman-Brown)", c["spearman_brown"])]))
        parts.append("</div></div>")
    else:
        parts.append(_note("No human scores in <code>per_image.csv</code>: the correlations and the predictor "
                           "need a data set with a score column.", missing=True))
    if not ctx.ceiling:
        parts.append(_note("Noise ceiling: not available — the data set has no split-half scores "
                           "(<code>split_halves.npz</code> is absent from the run directory).", missing=True))
    if "category" in df.columns:
        cats = df["category"].where(df["category"].astype(str).str.strip() != "")  # blank = no category
        counts = cats.dropna().astype(str).value_counts()
        res["categories"] = {str(k): int(v) for k, v in counts.items()}
        res["n_without_category"] = int(cats.isna().sum())
        rows = []
        for cat, n in list(counts.items())[:40]:
            sub = df.loc[df["category"].astype(str) == cat, "score"] if "score" in df.columns else pd.Series(dtype=float)
            rows.append((cat, int(n), float(sub.mean()) if sub.notna().any() else None))
        res["category_mean_score"] = {str(r[0]): r[2] for r in rows}
        parts.append("<h3>Categories</h3>")
        parts.append(_table(["category", "images", "mean score"], rows, [False, True, True]))
        if len(counts) > 40:
            parts.append(_note(f"{len(counts) - 40} more categories are listed in results.json."))
        if res["n_without_category"]:
            parts.append(_note(f"{res['n_without_category']} images have no category: they are in the pooled "
                               "analyses, not in the per-category and within-category ones."))
    ds = ctx.run.json("dataset.json")
    if isinstance(ds, Mapping):
        res["dataset"] = {k: ds.get(k) for k in ("source", "layout", "notes") if k in ds}
        src = " · ".join(f"{k}: {ds[k]}" for k in ("layout", "source") if k in ds)
        notes = [str(n) for n in ds.get("notes") or [] if n]
        if notes:
            parts.insert(0, _note("; ".join(esc(n) for n in notes) + "."))
        if src:
            parts.insert(0, f'<p class="lead">{esc(src)}</p>')
    return "".join(parts), res


def _get(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...`` or None."""
    for k in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(k)
    return obj


def _training_settings(ctx: _Ctx) -> list[tuple[str, Any]]:
    """What was trained and how, from config.json, dataset.json and manifest.json (train's files)."""
    cfg, ds, man = ctx.run.json("config.json"), ctx.run.json("dataset.json"), ctx.run.json("manifest.json")
    rows: list[tuple[str, Any]] = []

    def add(label: str, value: Any) -> None:
        if value is not None and value != "":
            rows.append((label, value))

    add("autoencoder", _get(man, "model", "backbone") or _get(cfg, "backbone"))
    add("initialisation", _get(man, "model", "init") or _get(cfg, "init"))
    params = _get(man, "model", "parameters")
    add("parameters", f"{int(params):,}" if _isnum(params) else None)
    add("input size (px)", _get(man, "model", "spec", "input_size") or _get(cfg, "image_size"))
    add("mode", _get(man, "training", "mode") or _get(cfg, "mode"))
    add("loss", _get(cfg, "loss"))
    exp = _get(ds, "experience")
    if isinstance(exp, Mapping) and exp.get("source") not in (None, "none"):
        n = exp.get("n_images")
        add("visual experience", f"{exp.get('source')}" + (f" ({n} images)" if _isnum(n) else ""))
        ep = _get(man, "training", "experience", "epochs") or _get(cfg, "pretrain_epochs")
        add("experience epochs", ep)
        add("experience learning rate", _get(man, "training", "experience", "settings", "lr"))
    elif isinstance(exp, Mapping) and exp.get("note"):
        add("visual experience", exp.get("note"))
    add("images exposed once", _get(ds, "exposed", "n_images"))
    add("exposure learning rate", _get(man, "training", "exposure", "settings", "lr"))
    add("exposure batch size", _get(man, "training", "exposure", "settings", "batch_size"))
    add("presentation order", _get(man, "training", "exposure", "order"))
    add("pretraining epochs", _get(man, "training", "pretrain", "epochs"))
    prec = _get(cfg, "score", "precision")
    if prec == "bfloat16":
        add("scoring arithmetic", "bfloat16 (approximate: per-image numbers move by about 0.1 % from float32)")
    elif prec == "int8":
        n, moved = _get(cfg, "score", "int8", "calibration_images"), _get(cfg, "score", "int8", "calibration_max_rel_mse")
        add("scoring arithmetic", "int8 (approximate" + (f": calibrated on {n} images, whose MSE moved by at most "
                                                        f"{100 * moved:.2g} % from float32" if _isnum(moved) else "")
            + "; use float32 for numbers you report)")
    return rows


def _section_training(ctx: _Ctx) -> tuple[str, dict]:
    curve = ctx.run.csv("training_curve.csv")
    exposure = ctx.run.csv("exposure.csv")
    if curve is not None and "loss" not in curve.columns:
        ctx.run.problems.append("training_curve.csv: no loss column")
        curve = None
    if exposure is not None and "loss" not in exposure.columns:
        ctx.run.problems.append("exposure.csv: no loss column")
        exposure = None
    if curve is None and exposure is None:
        return _missing("Training curve", ["training_curve.csv", "exposure.csv"], "memlens train"), {}
    res: dict[str, Any] = {}
    # training_curve.csv: one row per epoch for experience/pretrain, one row per image for the exposure
    epochs = curve
    if curve is not None and "phase" in curve.columns:
        is_exp = curve["phase"].astype(str) == "exposure"
        epochs = curve[~is_exp]
        if exposure is None and is_exp.any():
            e = curve[is_exp]
            order = pd.to_numeric(e["step"], errors="coerce") - 1 if "step" in e.columns else np.arange(len(e))
            exposure = pd.DataFrame({"order": order, "loss": pd.to_numeric(e["loss"], errors="coerce")})
    rows = []
    if epochs is not None and len(epochs):
        phases = list(epochs.groupby("phase", sort=False)) if "phase" in epochs.columns else [("training", epochs)]
        res["curve"] = {}
        for phase, g in phases:
            loss = pd.to_numeric(g["loss"], errors="coerce")
            n_ep = int(g["epoch"].nunique()) if "epoch" in g.columns else int(len(g))
            entry = {"epochs": n_ep, "first_loss": _num(loss.iloc[0]), "final_loss": _num(loss.iloc[-1]),
                     "final_val_loss": None}
            if "val_loss" in g.columns:
                v = pd.to_numeric(g["val_loss"], errors="coerce").dropna()
                entry["final_val_loss"] = _num(v.iloc[-1]) if len(v) else None
            res["curve"][str(phase)] = entry
            rows.append((str(phase), entry["epochs"], entry["first_loss"], entry["final_loss"], entry["final_val_loss"]))
    if exposure is not None:
        e = exposure.sort_values("order", kind="stable") if "order" in exposure.columns else exposure
        loss = pd.to_numeric(e["loss"], errors="coerce").to_numpy(dtype=float)
        k = max(1, len(loss) // 10)
        res["exposure"] = {"n_images": int(len(loss)), "mean_loss": _num(np.nanmean(loss)) if len(loss) else None,
                           "first_decile_mean": _num(np.nanmean(loss[:k])) if len(loss) else None,
                           "last_decile_mean": _num(np.nanmean(loss[-k:])) if len(loss) else None}
    settings = _training_settings(ctx)
    res["settings"] = {k: v for k, v in settings}
    parts = ['<p class="lead">The autoencoder first gains visual experience (several epochs on images that are not '
             "scored), then sees every scored image exactly once (the single exposure); the loss of an image at "
             "its exposure is recorded before the weights are updated.</p>"]
    parts.append(_figure_html(F.training_curve(epochs if epochs is not None and len(epochs) else None, exposure,
                                               x="epoch"),
                              "training loss curves",
                              "Loss of the autoencoder during training (lower = better reconstruction)."))
    blocks = []
    for phase, n_ep, first, final, val in rows:
        kv = [("epochs", n_ep), ("loss, first epoch", first), ("loss, final epoch", final)]
        if val is not None:
            kv.append(("validation loss, final epoch", val))
        title = {"experience": "Visual experience", "pretrain": "Pretraining"}.get(phase, phase)
        blocks.append(f"<div><h3>{esc(title)}</h3>" + _kv_table(kv) + "</div>")
    if "exposure" in res:
        x = res["exposure"]
        blocks.append("<div><h3>Single exposure</h3>" + _kv_table([
            ("images seen once", x["n_images"]), ("mean loss at exposure", x["mean_loss"]),
            ("mean loss, first 10% of the pass", x["first_decile_mean"]),
            ("mean loss, last 10% of the pass", x["last_decile_mean"])]) + "</div>")
    if settings:
        blocks.append("<div><h3>Settings</h3>" + _kv_table(settings) + "</div>")
    parts.append(f'<div class="kvgrid">{"".join(blocks)}</div>')
    if "exposure" not in res:
        parts.append(_note("No single-exposure log (<code>exposure.csv</code>): the run used pretraining only.", missing=True))
    else:
        from ..train import experience_caution

        man = ctx.run.json("manifest.json")
        init = _get(man, "model", "init")
        val = None
        if epochs is not None and "val_loss" in epochs.columns and "phase" in epochs.columns:
            val = pd.to_numeric(epochs.loc[epochs["phase"].astype(str) == "experience", "val_loss"],
                                errors="coerce").dropna().tolist()
        caution = experience_caution(init, _get(man, "training", "experience"), val) if isinstance(init, str) else None
        if caution:
            res["caution"] = caution
            parts.append(_note(esc("Caution: " + caution + "."), missing=True))
    return "".join(parts), res


def _measure_label(col: str) -> str:
    if col.startswith("recon_"):
        name = col[len("recon_"):]
        before = name.endswith("_before")
        if before:
            name = name[: -len("_before")]
        pretty = _METRIC_NAMES.get(name, name)
        when = " before exposure" if before else ""
        if name == "exposure":
            return "reconstruction error at the single exposure (training loss, higher = worse)"
        return f"reconstruction error{when} ({pretty}, higher = worse)"
    if col == "distinctiveness":
        return "latent distinctiveness (distance to nearest neighbours, higher = more distinct)"
    if col.startswith("distinctiveness_"):
        return f"distinctiveness ({col[len('distinctiveness_'):]}, higher = more distinct)"
    return col


def _primary_recon(cols: Sequence[str], config: Any) -> str:
    losses: list[str] = []
    stack = [config]
    while stack:
        cur = stack.pop()
        if isinstance(cur, Mapping):
            for k, v in cur.items():
                if k in ("loss", "metric") and isinstance(v, str):
                    losses.append(v)
                elif isinstance(v, Mapping):
                    stack.append(v)
    for loss in losses:
        for cand in (f"recon_{loss}", f"recon_{loss.replace('-', '_')}", f"recon_{loss.replace('_', '-')}"):
            if cand in cols:
                return cand
    after = [c for c in cols if not c.endswith("_before") and c != "recon_exposure"]
    for pref in ("recon_mse", "recon_lpips", "recon_perceptual"):
        if pref in after:
            return pref
    return (after or list(cols))[0]


def _correlation_for(ctx: _Ctx, col: str, df: pd.DataFrame, scope: str = "pooled", group: str | None = None) -> dict[str, Any]:
    row = ctx.corr.find(col, scope, group)
    if row is not None:
        return _corr_numbers(row)
    if scope in ("pooled", "group"):
        return _correlate(df[col], df["score"])
    if scope == "within" and "category" in df.columns:
        return _correlate(df[col], df["score"], groups=df["category"].astype(str).to_numpy(dtype=object))
    return {}


def _measure_section(ctx: _Ctx, sec: str, cols: list[str], primary: str, intro: str, command: str) -> tuple[str, dict]:
    df = ctx.per_image
    res: dict[str, Any] = {"primary": primary, "measures": {}}
    parts = [f'<p class="lead">{intro}</p>']
    label = textwrap.fill(_measure_label(primary), 58)  # axis labels: at most ~58 characters a line
    x = pd.to_numeric(df[primary], errors="coerce")
    y = df["score"]
    pooled = _correlation_for(ctx, primary, df)
    res["measures"][primary] = {"pooled": pooled}
    figs = ['<div class="figrow">']
    figs.append(_figure_html(
        F.measure_scatter(x, y, xlabel=label, r=pooled.get("r"), ci=(pooled.get("ci_low"), pooled.get("ci_high")),
                          n=pooled.get("n"), title=f"{primary} vs memorability"),
        f"scatter of {primary} against memorability",
        "One dot per image; red line: LOWESS fit (windows of equal image count). Title: Spearman ρ [95% CI]."))
    bins = F.binned_means(x, y, int(np.clip(int(np.isfinite(x.to_numpy(dtype=float)).sum()) // 10, 3, 10)))
    res["measures"][primary]["binned_means"] = bins
    figs.append(_figure_html(F.binned_means_plot(bins, xlabel=label), f"binned means of memorability by {primary}",
                             "Images sorted by the measure and cut into equal-count bins; mean score ± 95% CI."))
    figs.append("</div>")
    parts.extend(figs)
    # per category
    if "category" in df.columns and df["category"].nunique() >= 2:
        counts = df["category"].astype(str).value_counts()
        cats = list(counts.index[:MAX_CATEGORY_PANELS])
        panels, per_cat = [], {}
        for cat in cats:
            sub = df[df["category"].astype(str) == cat]
            c = _correlation_for(ctx, primary, sub, "group", cat)
            per_cat[cat] = c
            panels.append({"name": cat, "x": pd.to_numeric(sub[primary], errors="coerce"), "y": sub["score"],
                           "r": c.get("r"), "ci_low": c.get("ci_low"), "ci_high": c.get("ci_high")})
        res["measures"][primary]["by_category"] = per_cat
        parts.append("<h3>Per category</h3>")
        parts.append(_figure_html(F.category_scatter(panels, xlabel=label), f"{primary} vs memorability per category",
                                  "Each panel: the images of one category, Spearman ρ [95% CI] within it; red line: "
                                  f"LOWESS fit (categories with at least {F.MIN_PANEL_FIT} images)."))
        if len(counts) > len(cats):
            parts.append(_note(f"Only the {len(cats)} largest of {len(counts)} categories are drawn."))
        scope_rows = []
        within = _correlation_for(ctx, primary, df, "within")
        if within.get("r") is not None:
            res["measures"][primary]["within"] = within
            scope_rows.append(("within category (category means removed)", "–", within["n"], within["r"],
                               fmt_ci(within["ci_low"], within["ci_high"]), fmt_p(within["p_value"])))
        partial = []
        for row in ctx.corr.find_all(primary, "partial"):
            numbers = _corr_numbers(row)
            numbers["control"] = _clean(row.get("control"))
            partial.append(numbers)
            scope_rows.append(("partial", numbers["control"] or "–", numbers["n"], numbers["r"],
                               fmt_ci(numbers["ci_low"], numbers["ci_high"]), fmt_p(numbers["p_value"])))
        if partial:
            res["measures"][primary]["partial"] = partial
        if scope_rows:
            parts.append("<h3>Within category and partial correlations</h3>")
            parts.append(_table(["scope", "controlling for", "n", "ρ", "95% CI", "p"], scope_rows,
                                [False, False, True, True, True, True]))
    # all measures of this family
    table_rows, labels, rs, los, his = [], [], [], [], []
    for col in cols:
        c = res["measures"].get(col, {}).get("pooled") or _correlation_for(ctx, col, df)
        res["measures"].setdefault(col, {})["pooled"] = c
        labels.append(col)
        rs.append(c.get("r") if c.get("r") is not None else np.nan)
        los.append(c.get("ci_low") if c.get("ci_low") is not None else np.nan)
        his.append(c.get("ci_high") if c.get("ci_high") is not None else np.nan)
        table_rows.append((col, _measure_label(col), c.get("n"), c.get("r"), fmt_ci(c.get("ci_low"), c.get("ci_high")),
                           fmt_p(c.get("p_value")), c.get("source") or "–"))
    if len(cols) > 1:
        parts.append("<h3>All measures</h3>")
        ceil = ctx.ceiling["split_half_spearman"] if ctx.ceiling else None
        parts.append(_figure_html(F.correlation_forest(labels, rs, los, his, ceiling=ceil,
                                                       ceiling_label="human split-half ρ",
                                                       title="Pooled Spearman ρ with memorability (95% CI)"),
                                  f"pooled correlations of every {sec} measure"))
    parts.append(_table(["measure", "meaning", "n", "ρ", "95% CI", "p", "source"], table_rows,
                        [False, False, True, True, True, True, False]))
    if pooled.get("r") is not None:
        ctx.headline[sec] = (primary, pooled["r"])
    return "".join(parts), res


def _section_reconstruction(ctx: _Ctx) -> tuple[str, dict]:
    df = ctx.per_image
    cols = [c for c in df.columns if c.startswith("recon_")] if df is not None else []
    if df is None or not cols:
        return _missing("Reconstruction errors", ["per_image.csv (recon_* columns)"], "memlens score"), {}
    if not ctx.run.has_scores():
        return _note("No human scores: reconstruction errors cannot be related to memorability.", True), {"measures": cols}
    primary = _primary_recon(cols, ctx.run.json("config.json"))
    intro = ("Per-image reconstruction error of the autoencoder after its single exposure to the images. Every "
             "<code>recon_*</code> measure is a distance: <b>higher = worse reconstruction</b>. A positive ρ means "
             "that images the autoencoder reconstructs worse are more memorable.")
    return _measure_section(ctx, "reconstruction", cols, primary, intro, "memlens score")


def _section_distinctiveness(ctx: _Ctx) -> tuple[str, dict]:
    df = ctx.per_image
    cols = [c for c in df.columns if c.startswith("distinctiveness")] if df is not None else []
    if df is None or not cols:
        return _missing("Distinctiveness", ["per_image.csv (distinctiveness column)"], "memlens score"), {}
    if not ctx.run.has_scores():
        return _note("No human scores: distinctiveness cannot be related to memorability.", True), {"measures": cols}
    primary = "distinctiveness" if "distinctiveness" in cols else cols[0]
    intro = ("Distinctiveness of an image: the mean distance of its latent code to its nearest neighbours among the "
             "other images (<b>higher = more distinct</b>).")
    return _measure_section(ctx, "distinctiveness", cols, primary, intro, "memlens score")


def _section_correlations(ctx: _Ctx) -> tuple[str, dict]:
    if not ctx.corr:
        return _missing("Correlation table", ["correlations.csv", "correlations.json"], "memlens analyze"), {}
    df = ctx.corr.df
    recs = ctx.corr.records()
    shown = recs[:MAX_TABLE_ROWS]
    has = set(df.columns)
    show_y = ctx.corr.y.nunique() > 1
    # one column for the group (group rows) and the control (partial rows): a row has at most one of them
    headers = ["measure", *(["vs"] if show_y else []), "scope", "group / controlling for", "n", "ρ", "95% CI", "p"]
    numeric = [False, *([False] if show_y else []), False, False, True, True, True, True]
    if "p_fdr" in has:
        headers.append("p (FDR)")
        numeric.append(True)
    has_perm = "p_perm" in has and pd.to_numeric(df["p_perm"], errors="coerce").notna().any()
    if has_perm:
        headers.append("p (permutation)")
        numeric.append(True)
    has_ceiling = "r_over_ceiling" in has
    if has_ceiling:
        headers += ["split-half ρ", "ρ / split-half ρ"]
        numeric += [True, True]
    rows, classes = [], []
    prev = None
    for i, r in enumerate(shown):
        x = str(r.get("x", ""))
        row = [x, *([str(r.get("y") or "score")] if show_y else []), ctx.corr.scope.iloc[i] or "pooled",
               " | ".join(str(v) for v in (r.get("group"), r.get("control")) if v) or "–", r.get("n"), fmt_r(r.get("r")),
               fmt_ci(r.get("ci_low"), r.get("ci_high")), fmt_p(r.get("p_value"))]
        if "p_fdr" in has:
            row.append(fmt_p(r.get("p_fdr")))
        if has_perm:
            row.append(fmt_p(r.get("p_perm")))
        if has_ceiling:
            row += [fmt_r(r.get("ceiling")), fmt_r(r.get("r_over_ceiling"), 2)]
        rows.append(row)
        classes.append("first" if prev is not None and x != prev else "")
        prev = x
    parts = [f'<p class="lead">Spearman correlations with 95% paired-bootstrap intervals, from '
             f'<code>{esc(ctx.corr.source)}</code> (written by <code>memlens analyze</code>). <i>pooled</i>: all images; '
             "<i>group</i>: within one category; <i>within</i>: the categories' shared within-category association; "
             "<i>partial</i>: controlling for the named measure.</p>"]
    settings = [(k, ctx.corr.meta.get(k)) for k in ("method", "ci_method", "confidence", "n_boot", "seed", "by")
                if ctx.corr.meta.get(k) is not None]
    if settings:
        parts.append(_note(" · ".join(f"{esc(k.replace('_', ' '))}: {esc(fmt(v, 3))}" for k, v in settings)))
    if "p_fdr" in has:
        parts.append(_note(f"p (FDR): the p-value adjusted for testing all {len(recs)} rows of the table "
                           "(Benjamini-Hochberg); a row with p (FDR) &lt; 0.05 holds at a 5 % false-discovery rate."))
    if has_perm:
        parts.append(_note("p (permutation): the share of label permutations with a correlation at least as strong "
                           "(<code>--permutation N</code>); it does not assume the bootstrap's approximations."))
    if has_ceiling:
        parts.append(_note("split-half ρ: the human split-half consistency of the row's images (the noise ceiling; "
                           "a group row uses its own group's; not Spearman-Brown corrected); ρ / split-half ρ: the "
                           "correlation divided by it. Partial rows have none: the ceiling does not bound a partial "
                           "correlation."))
    parts.append(_table(headers, rows, numeric, row_classes=classes))
    if len(recs) > len(shown):
        parts.append(_note(f"{len(recs) - len(shown)} more rows are in results.json and {esc(ctx.corr.source)}."))
    return "".join(parts), {"source": ctx.corr.source, "rows": recs}


_PRED_METRICS = ("spearman", "pearson", "mse", "auc")
_PRED_LABELS = {"spearman": "Spearman ρ", "pearson": "Pearson r", "mse": "MSE", "auc": "AUC", "rho": "ρ",
                "r": "r"}


def _oof_predictions(run: _Run) -> tuple[pd.DataFrame | None, str | None]:
    """Out-of-fold predictions of ``predictor_oof.csv``: ``image_id``, ``score``, ``predicted_<model>``."""
    oof = run.csv("predictor_oof.csv")
    if oof is None or "image_id" not in oof.columns:
        return None, None
    cols = [c for c in oof.columns if c.startswith("predicted_")]
    if not cols:
        return None, None
    oof = oof.copy()
    oof["image_id"] = oof["image_id"].astype(str)
    return oof, "predictor_oof.csv"


_MODEL_NAMES = {"svr": "support-vector regression", "mlp": "MLP", "ridge": "ridge regression"}


def _saved_model(run: _Run) -> str:
    """The model kept in predictor.pt (:func:`memlens.predict.saved_model` of predictor_cv.csv)."""
    from ..predict import saved_model

    return saved_model(run.csv("predictor_cv.csv"))


def _section_predictor(ctx: _Ctx) -> tuple[str, dict]:
    cv = ctx.run.csv("predictor_cv.csv")
    if cv is None or cv.empty:
        return _missing("Predictor cross-validation", ["predictor_cv.csv"], "memlens fit-predictor"), {}
    model_col = "model" if "model" in cv.columns else None
    folds, mean_rows = cv, cv.iloc[0:0]
    if "fold" in cv.columns:  # fit-predictor appends one fold="mean" row per model
        is_mean = cv["fold"].astype(str).str.strip().str.lower() == "mean"
        folds, mean_rows = cv[~is_mean], cv[is_mean]
    metrics = [m for m in _PRED_METRICS if m in cv.columns] or [m for m in ("rho", "r") if m in cv.columns]
    metric = next((m for m in ("spearman", "rho", "r", "pearson") if m in metrics), None)
    groups = list(folds.groupby(model_col, sort=False)) if model_col else [("model", folds)]
    res: dict[str, Any] = {"metric": metric, "models": {}}
    for key in ("inputs", "split"):
        if key in cv.columns and cv[key].notna().any():
            res[key] = str(cv[key].dropna().iloc[0])
    per_fold: dict[str, list[float]] = {}
    rows = []
    for name, g in groups:
        entry: dict[str, Any] = {"n_folds": int(len(g))}
        if "n_test" in g.columns:
            entry["n_test_total"] = int(pd.to_numeric(g["n_test"], errors="coerce").sum())
        for c in metrics:
            v = pd.to_numeric(g[c], errors="coerce").dropna()
            entry[f"{c}_mean"] = _num(v.mean()) if len(v) else None
            entry[f"{c}_sd"] = _num(v.std(ddof=1)) if len(v) > 1 else None
        if metric:
            per_fold[str(name)] = [float(v) for v in pd.to_numeric(g[metric], errors="coerce")]
            entry[f"{metric}_folds"] = per_fold[str(name)]
        res["models"][str(name)] = entry
        rows.append([str(name), entry["n_folds"]] + [
            f"{fmt(entry[f'{c}_mean'], 3)} ± {fmt(entry[f'{c}_sd'], 3)}" if entry[f"{c}_sd"] is not None
            else fmt(entry[f"{c}_mean"], 3) for c in metrics])
    # the noise ceiling of the predicted images: fit-predictor's mean rows, else the report's own. As in the
    # correlation table, the ceiling divided by is the human split-half consistency; the Spearman-Brown value
    # (the reliability of the full-group score; column "noise_ceiling" in older predictor_cv.csv files) beside it
    consistency = reliability = None
    ceiling_source = None
    sb_col = next((c for c in ("spearman_brown", "noise_ceiling") if c in mean_rows.columns), None)
    if len(mean_rows) and sb_col and "human_consistency" in mean_rows.columns:
        hc = pd.to_numeric(mean_rows["human_consistency"], errors="coerce").dropna()
        sb = pd.to_numeric(mean_rows[sb_col], errors="coerce").dropna()
        if len(hc) and len(sb):
            consistency, reliability, ceiling_source = float(hc.iloc[0]), float(sb.iloc[0]), "predictor_cv.csv"
    if consistency is None and ctx.ceiling:
        consistency, reliability = ctx.ceiling["split_half_spearman"], ctx.ceiling["spearman_brown"]
        ceiling_source = ctx.ceiling["source"]
    res["consistency"], res["spearman_brown"], res["ceiling_source"] = consistency, reliability, ceiling_source
    if consistency is not None and not (math.isfinite(consistency) and consistency > 0):
        consistency = None  # no usable ceiling (NaN, or halves that do not agree at all)
    res["ceiling"] = consistency
    if consistency and metric:
        for entry in res["models"].values():
            m = entry.get(f"{metric}_mean")
            entry[f"{metric}_over_ceiling"] = m / consistency if m is not None else None
    # out-of-fold predictions of every image, pooled
    oof, oof_source = _oof_predictions(ctx.run)
    oof_rows = []
    if oof is not None and "score" in oof.columns:
        res["oof"] = {}
        for c in [c for c in oof.columns if c.startswith("predicted_")]:
            st = _correlate(oof[c], oof["score"])
            res["oof"][c[len("predicted_"):]] = st
            oof_rows.append((c[len("predicted_"):], st["n"], st["r"], fmt_ci(st["ci_low"], st["ci_high"]),
                             fmt_p(st["p_value"])))
    inputs = {"features": "pretrained ImageNet features (EfficientNet-Lite0)", "latents": "the autoencoder's latent code",
              "both": "the autoencoder's latent code and pretrained ImageNet features",
              "lite01": "pretrained multi-stage features of EfficientNet-Lite0 and Lite1 (feature set lite01)",
              }.get(res.get("inputs", ""), res.get("inputs"))
    main = _saved_model(ctx.run)
    res["saved_model"] = main
    lead = (f"Held-out accuracy of the memorability predictor ({esc(_MODEL_NAMES.get(main, main))}, the model "
            "saved for memlens predict" + (f", on {esc(inputs)}" if inputs else "") +
            ") next to the other models and a ridge-regression baseline, against the human noise ceiling"
            + (f"; {esc(res['split'])} cross-validation" if res.get("split") else "") +
            ". Bars: mean over folds ± SD; dots: single folds.")
    parts = [f'<p class="lead">{lead}</p>']
    n_pred = next((e["n_test_total"] for e in res["models"].values() if e.get("n_test_total")), None)
    roles = ctx.per_image["role"].astype(str).value_counts() if ctx.per_image is not None and "role" in \
        ctx.per_image.columns else None
    if n_pred:
        n_exp = int(roles.get("experience", 0)) if roles is not None else 0
        parts.append(_note(esc(f"Images predicted: {n_pred}, each by a model that did not see it in training, "
                               "drawn from every scored image" + (f", the {n_exp} visual-experience images included "
                                                                  "(the single-exposure analyses leave them out)"
                                                                  if n_exp else "") + ".")))
    figs = []
    if metric:
        figs.append(_figure_html(F.predictor_bars(per_fold, metric=metric, consistency=consistency,
                                                  reliability=reliability),
                                 "cross-validated prediction accuracy per model"))
        best = res["models"].get(main, {}).get(f"{metric}_mean")
        if best is None:
            best = max((e.get(f"{metric}_mean") for e in res["models"].values()
                        if e.get(f"{metric}_mean") is not None), default=None)
        if best is not None:
            ctx.headline["predictor"] = best
            short = {"features": "pretrained features", "lite01": "pretrained features", "latents": "latent codes",
                     "both": "latent codes + pretrained features"}.get(res.get("inputs", ""))
            ctx.headline["predictor_label"] = f"{main.upper() if main in ('svr', 'mlp') else main}" + (
                f" on {short}" if short else "")
    col = f"predicted_{main}"
    if oof is not None and col in oof.columns and "score" in oof.columns and res["oof"][main]["r"] is not None:
        st = res["oof"][main]
        label = _MODEL_NAMES.get(main, main)
        figs.append(_figure_html(
            F.measure_scatter(pd.to_numeric(oof[col], errors="coerce"), pd.to_numeric(oof["score"], errors="coerce"),
                              xlabel=f"predicted memorability ({label}, out-of-fold)", r=st["r"], ci=(st["ci_low"], st["ci_high"]),
                              n=st["n"], title="Out-of-fold prediction vs human score"),
            "out-of-fold predicted memorability against the human score",
            "Every image predicted by the model that did not see it in training."))
    if figs:
        parts.append(f'<div class="figrow">{"".join(figs)}</div>')
    parts.append(_table(["model", "folds", *[_PRED_LABELS.get(c, c) for c in metrics]], rows,
                        [False, True, *[True] * len(metrics)]))
    parts.append(_note("Mean ± SD over the held-out folds. MSE: mean squared error of the predicted score (lower = "
                       "better); AUC: how well the prediction tells the images above the median score from those "
                       "below it (0.5 = chance)."))
    if oof_rows:
        parts.append(f"<h3>All out-of-fold predictions pooled (<code>{esc(oof_source)}</code>)</h3>")
        parts.append(_table(["model", "n", "ρ", "95% CI", "p"], oof_rows, [False, True, True, True, True]))
    if consistency and metric:
        n_pred = next((e["n_test_total"] for e in res["models"].values() if e.get("n_test_total")), None)
        of = f" of the {n_pred} predicted images" if n_pred and ceiling_source == "predictor_cv.csv" else ""
        kv = [(f"human split-half consistency{of} (the noise ceiling)", consistency),
              ("reliability of the full-group score (Spearman-Brown)", reliability)]
        kv += [(f"{name}: {metric} / human consistency", e.get(f"{metric}_over_ceiling"))
               for name, e in res["models"].items()]
        parts.append(_kv_table(kv))
        parts.append(_note("A model that predicts one half of the observers as well as the other half does reaches "
                           "1. The full-group score is more reliable than a half, so the ratio can exceed 1; the "
                           "largest correlation expected with it is about the square root of the Spearman-Brown "
                           "value."))
    else:
        parts.append(_note("No noise ceiling: the data set has no split-half scores.", True))
    return "".join(parts), res


def _thumb_uri(path: Path, size: int = THUMB_PX) -> str | None:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 2, size * 2))
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGB", im.size, (255, 255, 255))
                bg.paste(im, mask=im.split()[-1])
                im = bg
            else:
                im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("thumbnail of %s failed: %s", path, exc)
        return None
    return _data_uri(buf.getvalue(), "image/jpeg")


def _gallery(ctx: _Ctx, rows: pd.DataFrame, has_pred: bool) -> tuple[str, list[dict]]:
    items, out = [], []
    for _, r in rows.iterrows():
        image_id = str(r["image_id"])
        uri = None
        path = None
        if "path" in rows.columns and isinstance(r.get("path"), str) and Path(r["path"]).is_file():
            path = Path(r["path"])
        elif ctx.data_root is not None and (ctx.data_root / image_id).is_file():
            path = ctx.data_root / image_id
        if path is not None:
            uri = _thumb_uri(path)
        entry = {"image_id": image_id, "score": _num(r.get("score")),
                 "predicted_score": _num(r.get("predicted_score")) if has_pred else None}
        if "category" in rows.columns:
            entry["category"] = _clean(r.get("category"))
        out.append(entry)
        img = (f'<img src="{uri}" alt="{esc(image_id)}">' if uri
               else f'<div class="noimg">{"image not found" if ctx.data_root else "no data root"}</div>')
        lines = [f"score {_f3(entry['score'])}"]
        if has_pred:
            lines.append(f"predicted {_f3(entry['predicted_score'])}")
        if entry.get("category") is not None:
            lines.append(str(entry["category"]))
        spans = "".join(f'<span class="s">{esc(line)}</span>' for line in lines)
        name = "/<wbr>".join(esc(part) for part in image_id.split("/"))
        items.append(f'<figure class="thumb">{img}<figcaption>{name}{spans}</figcaption></figure>')
    return f'<div class="gallery">{"".join(items)}</div>', out


def _predicted_scores(ctx: _Ctx) -> tuple[pd.Series | None, str | None]:
    """Predicted score per image (indexed like per_image.csv) and where it comes from.

    ``per_image.csv`` ``predicted_score``; else the MLP's out-of-fold predictions (``predictor_oof.csv``,
    every image predicted by a model that did not train on it); else ``descriptors.csv`` (``memlens explain``).
    """
    df = ctx.per_image
    if df is None:
        return None, None
    if "predicted_score" in df.columns:
        v = pd.to_numeric(df["predicted_score"], errors="coerce")
        if v.notna().any():
            return v, "per_image.csv (predicted_score)"
    ids = df["image_id"].astype(str)
    oof, _ = _oof_predictions(ctx.run)
    main = _saved_model(ctx.run)
    if oof is not None and f"predicted_{main}" in oof.columns:
        v = ids.map(dict(zip(oof["image_id"], pd.to_numeric(oof[f"predicted_{main}"], errors="coerce"), strict=True)))
        if v.notna().any():
            return v.astype(float), f"predictor_oof.csv ({_MODEL_NAMES.get(main, main)}, out-of-fold)"
    desc = ctx.run.csv("descriptors.csv")
    if desc is not None and {"image_id", "predicted_score"} <= set(desc.columns):
        m = dict(zip(desc["image_id"].astype(str), pd.to_numeric(desc["predicted_score"], errors="coerce"), strict=True))
        v = ids.map(m)
        if v.notna().any():
            return v.astype(float), "descriptors.csv (predicted_score)"
    return None, None


def _section_galleries(ctx: _Ctx) -> tuple[str, dict]:
    df = ctx.per_image
    if df is None:
        return _missing("Galleries", ["per_image.csv"], "memlens score"), {}
    parts, res = [], {}
    pred, pred_source = _predicted_scores(ctx)
    has_pred = pred is not None
    if has_pred:
        df = df.assign(predicted_score=pred.to_numpy())
        res["predicted_source"] = pred_source
    if ctx.data_root is None:
        parts.append(_note("Thumbnails omitted: the data root is not recorded in <code>dataset.json</code> "
                           "(key <code>root</code> or <code>source</code>) or no longer exists.", True))
    k = min(GALLERY_SIZE, max(1, len(df) // 2))
    specs = []
    if ctx.run.has_scores():
        d = df[df["score"].notna()]
        specs += [("human_top", "Most memorable (human scores)", d.nlargest(k, "score")),
                  ("human_bottom", "Least memorable (human scores)", d.nsmallest(k, "score"))]
    else:
        parts.append(_note("No human scores: galleries by human score are not available.", True))
    if has_pred:
        d = df[df["predicted_score"].notna()]
        specs += [("predicted_top", "Most memorable (predicted)", d.nlargest(k, "predicted_score")),
                  ("predicted_bottom", "Least memorable (predicted)", d.nsmallest(k, "predicted_score"))]
        parts.insert(0, f'<p class="lead">The {k} highest and lowest scoring images. Predicted scores: '
                        f"<code>{esc(pred_source)}</code>.</p>")
    else:
        parts.append(_missing("Predicted-score galleries", ["per_image.csv (predicted_score column)",
                                                            "predictor_oof.csv"], "memlens fit-predictor"))
    for key, title, rows in specs:
        g, entries = _gallery(ctx, rows, has_pred)
        res[key] = entries
        parts.append(f"<h3>{esc(title)}</h3>{g}")
    return "".join(parts), res


def _image_uri(path: Path, max_side: int = 360) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if max(im.size) <= max_side and path.suffix.lower() == ".png" and path.stat().st_size < 400_000:
                return _data_uri(path.read_bytes(), "image/png")
            im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("could not embed %s: %s", path, exc)
        return None
    return _data_uri(buf.getvalue(), "image/png")


_AGGREGATE_CAPTIONS = {
    "aggregate_quartiles.png": "Most vs least memorable quartile: mean |IG| maps and their difference",
    "aggregate_most_memorable.png": "Mean |IG| map of the most memorable quartile",
    "aggregate_least_memorable.png": "Mean |IG| map of the least memorable quartile",
    "aggregate_difference.png": "Difference: most − least memorable quartile",
}
_OVERLAY_GROUPS = (("top", "Most memorable images"), ("bottom", "Least memorable images"),
                   ("image", "Requested images"))
_OVERLAY_NAME = re.compile(r"^overlay_(top|bottom|image)(\d*)_")


def _overlay_entries(att: Path, explain: Any, overlays: Sequence[Path]) -> list[dict[str, Any]]:
    """Overlays with their group (top/bottom/image), rank, image id and scores.

    From ``attributions/explain.json`` (``explained``) when it lists them; otherwise from the file names
    (``overlay_top01_<id>_<hash>.png``); the rest are group ``other``.
    """
    names = {p.name: p for p in overlays}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    explained = _get(explain, "explained")
    if isinstance(explained, Mapping):
        for group, _ in _OVERLAY_GROUPS:
            for rank, e in enumerate(explained.get(group) or [], start=1):
                if not isinstance(e, Mapping) or e.get("file") not in names or e["file"] in seen:
                    continue
                seen.add(e["file"])
                out.append({"group": group, "rank": rank, "file": e["file"], "image_id": _clean(e.get("image_id")),
                            "score": _num(e.get("score")), "predicted_score": _num(e.get("predicted_score")),
                            "flagged": bool(e.get("flagged")), "relative_delta": _num(e.get("relative_delta")),
                            "map_error": _num(e.get("map_error"))})
    for p in overlays:
        if p.name in seen:
            continue
        m = _OVERLAY_NAME.match(p.name)
        group, rank = (m.group(1), int(m.group(2)) if m.group(2) else None) if m else ("other", None)
        out.append({"group": group, "rank": rank, "file": p.relative_to(att).as_posix(), "image_id": None,
                    "score": None, "predicted_score": None, "flagged": None, "relative_delta": None,
                    "map_error": None})
    return out


def _sanity_html(sanity: Mapping[str, Any]) -> str:
    passed = sanity.get("passed")
    parts = []
    if isinstance(passed, bool):
        parts.append(f'<p><span class="badge {"ok" if passed else "bad"}">{"passed" if passed else "FAILED"}</span> ')
        mean, thr = _num(sanity.get("mean_spearman")), _num(sanity.get("threshold"))
        if mean is not None and thr is not None:
            if passed:
                parts.append(esc(f"The maps change when the predictor's weights are randomised (mean Spearman "
                                 f"{mean:.2f} < {thr:.2f}): they depend on what the model learned."))
            else:
                parts.append(esc(f"Mean Spearman {mean:.2f} ≥ {thr:.2f}: much of the maps' structure survives "
                                 "randomising the predictor's weights, so it reflects the image (or the fixed "
                                 "encoder) more than what the predictor learned. Read the maps with care."))
        parts.append("</p>")
    elif sanity.get("note"):
        parts.append(_note(esc(sanity["note"]), True))
    keys = [("test", "test"), ("statistic", "statistic"), ("randomized_module", "randomised module"),
            ("n_images", "images"), ("mean_spearman", "mean Spearman (trained vs randomised)"),
            ("median_spearman", "median Spearman"), ("threshold", "pass threshold (mean below)"),
            ("passed", "passed"), ("seed", "seed")]
    rows = [(label, sanity[k]) for k, label in keys if sanity.get(k) is not None]
    per = sanity.get("per_image_spearman")
    ids = sanity.get("image_ids")
    if isinstance(per, list) and isinstance(ids, list) and len(per) == len(ids):
        rows += [(f"ρ for {i}", v if v is not None else "–") for i, v in zip(ids, per, strict=True)]
    known = {k for k, _ in keys} | {"per_image_spearman", "image_ids", "interpretation", "note", "ig"}
    rows += [(k, v) for k, v in _flatten({k: v for k, v in sanity.items() if k not in known})]
    parts.append(_kv_table(rows))
    if sanity.get("interpretation"):
        parts.append(_note(esc(sanity["interpretation"])))
    return "".join(parts)


def _section_explanations(ctx: _Ctx) -> tuple[str, dict]:
    att = ctx.run.path("attributions")
    if att is None or not att.is_dir():
        return _missing("Integrated Gradients maps", ["attributions/"], "memlens explain"), {}
    explain = ctx.run.json("attributions/explain.json") if (att / "explain.json").is_file() else None
    pngs = sorted(p for p in att.rglob("*.png") if p.is_file())
    agg_words = ("aggregate", "mean", "average", "summary")
    aggregates = [p for p in pngs if any(w in p.stem.lower() for w in agg_words)]
    known = [a for a in _AGGREGATE_CAPTIONS if (att / a) in aggregates]
    aggregates = [att / a for a in known] + [p for p in aggregates if p.name not in _AGGREGATE_CAPTIONS]
    overlays = [p for p in pngs if p not in aggregates]
    entries = _overlay_entries(att, explain, overlays)
    ig = _get(explain, "integrated_gradients")
    res: dict[str, Any] = {"aggregates": [p.relative_to(att).as_posix() for p in aggregates],
                           "overlays_total": len(overlays), "overlays": entries[:MAX_OVERLAYS]}
    if isinstance(ig, Mapping):
        res["integrated_gradients"] = ig
    parts = ['<p class="lead">Integrated Gradients attributions of the predicted memorability: where in the image '
             "the prediction comes from (brighter = more attribution). The maps explain the final predictor, fitted "
             "on every image, so its prediction for an explained image is in-sample (the gallery above shows the "
             "out-of-fold one).</p>"]
    if isinstance(ig, Mapping):
        bits = [f"{ig.get('n_steps')} steps" if ig.get("n_steps") is not None else None,
                f"{ig.get('baseline')} baseline" if ig.get("baseline") else None,
                f"{ig.get('n_images')} images" if ig.get("n_images") is not None else None]
        parts.append(_note("Settings: " + esc(", ".join(b for b in bits if b)) + "."))
        n_flagged = ig.get("n_flagged")
        checked = ig.get("flag_criterion") == "map_error"
        if checked and _isnum(ig.get("max_map_error")):
            parts.append(_note(esc(f"Accuracy: each map's error, estimated from a second pass at half the steps, "
                                   f"is {100 * ig['median_map_error']:.1f}% of the map's mass (median; largest "
                                   f"{100 * ig['max_map_error']:.1f}%).")))
        if _isnum(n_flagged) and n_flagged > 0:
            if checked:
                parts.append(_note(esc(f"{int(n_flagged)} of {ig.get('n_images')} maps are not accurate yet "
                                       f"(estimated error above {100 * ig.get('error_tolerance', 0.1):g}% of the map): "
                                       "rerun memlens explain with more --steps."), True))
            else:
                parts.append(_note(esc(f"{int(n_flagged)} of {ig.get('n_images')} maps did not converge (completeness "
                                       f"error above {ig.get('delta_tolerance')} of the score difference; largest "
                                       f"{fmt(ig.get('max_relative_delta'), 2)}): rerun memlens explain with more "
                                       "--steps for exact maps."), True))

    def grid(items: Sequence[tuple[Path, str, Sequence[str]]]) -> str:
        cells = []
        for p, title, lines in items:
            name = p.relative_to(att).as_posix()
            uri = _image_uri(p, 520)
            img = f'<img src="{uri}" alt="{esc(title)}">' if uri else '<div class="noimg">unreadable image</div>'
            spans = "".join(f'<span class="s">{esc(line)}</span>' for line in lines)
            cells.append(f"<figure>{img}<figcaption><b>{esc(title)}</b>{spans}"
                         f'<span class="s file">{esc(name)}</span></figcaption></figure>')
        return f'<div class="overlays">{"".join(cells)}</div>'

    shown = entries[:MAX_OVERLAYS]
    for group, heading in (*_OVERLAY_GROUPS, ("other", "Other maps")):
        items = []
        for e in (e for e in shown if e["group"] == group):
            title = {"top": "most memorable", "bottom": "least memorable"}.get(group, "")
            title = f"#{e['rank']} {title}".strip() if e["rank"] is not None and title else (e["image_id"] or e["file"])
            lines = []
            if e["image_id"] and group in ("top", "bottom"):
                lines.append(str(e["image_id"]))
            if e["score"] is not None or e["predicted_score"] is not None:
                # the explained model is the final one, fitted on every image: not the gallery's out-of-fold value
                lines.append(f"score {_f3(e['score'])} · in-sample prediction {_f3(e['predicted_score'])}")
            if e["flagged"]:
                lines.append(f"not accurate yet (estimated error {100 * e['map_error']:.1f}%)"
                             if e.get("map_error") is not None else
                             f"not converged (relative error {fmt(e['relative_delta'], 2)})")
            items.append((att / e["file"], title, lines))
        if items:
            parts.append(f"<h3>{esc(heading)}</h3>" + grid(items))
    if len(overlays) > MAX_OVERLAYS:
        parts.append(_note(f"{len(overlays) - MAX_OVERLAYS} more overlays are in <code>attributions/</code>."))
    if aggregates:
        agg = _get(explain, "aggregate")
        lead = ""
        if isinstance(agg, Mapping) and agg.get("n_top") is not None:
            lead = _note(esc(f"Mean maps over {agg.get('n_top')} images of the most memorable quartile (score ≥ "
                             f"{fmt(agg.get('upper_threshold'), 3)}) and {agg.get('n_bottom')} of the least memorable "
                             f"(score ≤ {fmt(agg.get('lower_threshold'), 3)}); share of attribution in the image "
                             f"centre: {fmt(agg.get('top_center_share'), 2)} vs {fmt(agg.get('bottom_center_share'), 2)}."))
            res["aggregate"] = {k: v for k, v in agg.items() if not k.endswith("_ids")}
        parts.append("<h3>Aggregate maps</h3>" + lead)
        first = [p for p in aggregates if p.name == "aggregate_quartiles.png"]
        rest = [p for p in aggregates if p.name != "aggregate_quartiles.png"]
        if first:
            uri = _image_uri(first[0], 1100)
            if uri:
                parts.append(f'<figure class="wide"><img src="{uri}" alt="aggregate maps by quartile">'
                             f"<figcaption>{esc(_AGGREGATE_CAPTIONS['aggregate_quartiles.png'])}</figcaption></figure>")
        if first:  # the quartile figure already holds the three single maps; show only files it does not cover
            rest = [p for p in rest if p.name not in _AGGREGATE_CAPTIONS]
        if rest:
            parts.append(grid([(p, _AGGREGATE_CAPTIONS.get(p.name, p.stem.replace("_", " ")), []) for p in rest]))
    elif isinstance(_get(explain, "aggregate", "note"), str):
        parts.append(_note(esc(_get(explain, "aggregate", "note")), True))
    if not pngs:
        parts.append(_note("No PNG maps in <code>attributions/</code>.", True))
    sanity_path = att / "sanity.json"
    sanity = ctx.run.json("attributions/sanity.json") if sanity_path.is_file() else None
    if isinstance(sanity, Mapping) and sanity.get("passed") is False:
        # said before the maps, where they are read: the check below decides how far they can be trusted
        at = 2 if len(parts) > 1 else 1
        parts.insert(at, _note(esc(
            f"Read these maps with caution: the randomisation check below failed (mean Spearman "
            f"{fmt(sanity.get('mean_spearman'), 2)} between the maps of the trained and the randomised predictor, "
            f"over {sanity.get('n_images')} images). Much of their structure comes from the image or the encoder, "
            "not from what the predictor learned."), True))
    parts.append("<h3>Sanity check: model randomisation</h3>")
    if isinstance(sanity, Mapping):
        res["sanity"] = sanity
        parts.append(_sanity_html(sanity))
    else:
        parts.append(_missing("Attribution sanity check", ["attributions/sanity.json"], "memlens explain"))
    npz = att / "attributions.npz"
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as z:
                res["arrays"] = {k: list(z[k].shape) for k in z.files}
            parts.append("<details><summary>Arrays in <code>attributions/attributions.npz</code></summary>")
            parts.append(_table(["array", "shape"], [(k, " × ".join(str(s) for s in v) or "scalar")
                                                     for k, v in res["arrays"].items()]))
            parts.append("</details>")
        except (OSError, ValueError) as exc:
            ctx.run._problem("attributions/attributions.npz", exc)
    return "".join(parts), res


#: what each descriptor of :data:`memlens.descriptors.DESCRIPTOR_COLUMNS` measures (docs/explain.md)
_DESCRIPTOR_MEANING = {
    "lab_l_mean": "mean lightness (CIELAB L*)", "lab_l_sd": "lightness contrast (SD of L*)",
    "lab_a_mean": "mean green–red (a*)", "lab_a_sd": "spread of green–red (SD of a*)",
    "lab_b_mean": "mean blue–yellow (b*)", "lab_b_sd": "spread of blue–yellow (SD of b*)",
    "hsv_s_mean": "mean saturation (HSV)", "hsv_v_mean": "mean brightness (HSV value)",
    "colourfulness": "colourfulness (Hasler & Süsstrunk)", "colour_entropy": "colour histogram entropy (bits)",
    "grey_entropy": "grey-level entropy (bits)", "glcm_contrast": "texture contrast (GLCM)",
    "glcm_energy": "texture uniformity (GLCM energy)", "glcm_homogeneity": "texture homogeneity (GLCM)",
    "edge_density": "clutter: share of edge pixels (Canny)",
    "ig_center_share": "share of the IG attribution in the image centre (explained images only: picked from the "
                       "most and least memorable, which inflates ρ)",
}
_TARGETS = (("score", "human score"), ("predicted_score", "predicted score"))


def _section_descriptors(ctx: _Ctx) -> tuple[str, dict]:
    dc = ctx.run.csv("descriptor_correlations.csv")
    desc = ctx.run.csv("descriptors.csv")
    source = "descriptor_correlations.csv"
    # rows: descriptor -> target -> numbers
    table: dict[str, dict[str, dict[str, Any]]] = {}
    if dc is not None and not dc.empty:
        name_col = next((c for c in ("descriptor", "x", "name", "feature") if c in dc.columns), dc.columns[0])
        rcol = next((c for c in ("r", "rho", "spearman") if c in dc.columns), None)
        for rec in dc.to_dict("records"):
            target = str(rec.get("target")) if "target" in dc.columns and rec.get("target") is not None else "score"
            table.setdefault(str(rec.get(name_col)), {})[target] = {
                "n": _clean(rec.get("n")), "r": _num(rec.get(rcol)) if rcol else None, "ci_low": _num(rec.get("ci_low")),
                "ci_high": _num(rec.get("ci_high")), "p_value": _num(rec.get("p_value"))}
    elif desc is not None and "image_id" in desc.columns:
        source = "descriptors.csv (correlations computed by the report)"
        merged = desc.copy()
        merged["image_id"] = merged["image_id"].astype(str)
        targets = {}
        for t, _ in _TARGETS:
            if t in merged.columns:
                targets[t] = pd.to_numeric(merged[t], errors="coerce")
        if "score" not in targets and ctx.run.has_scores():
            m = dict(zip(ctx.per_image["image_id"].astype(str), ctx.per_image["score"], strict=True))
            targets["score"] = merged["image_id"].map(m).astype(float)
        skip = {"image_id", "score", "predicted_score"}
        for c in desc.columns:
            if c in skip or not pd.api.types.is_numeric_dtype(desc[c]):
                continue
            for t, y in targets.items():
                if y.notna().sum() >= 3:
                    st = _correlate(merged[c], y)
                    table.setdefault(c, {})[t] = {k: st[k] for k in ("n", "r", "ci_low", "ci_high", "p_value")}
    if not table:
        return _missing("Visual descriptors", ["descriptor_correlations.csv", "descriptors.csv"], "memlens explain"), {}
    targets = [t for t, _ in _TARGETS if any(t in v for v in table.values())]
    targets += sorted({t for v in table.values() for t in v} - set(targets))
    labels = dict(_TARGETS)
    rows = [{"descriptor": d, "meaning": _DESCRIPTOR_MEANING.get(d), **{t: v.get(t) for t in targets}}
            for d, v in table.items()]
    res: dict[str, Any] = {"source": source, "targets": targets, "rows": rows}
    if desc is not None:
        res["n_images"] = int(len(desc))
    pred_source = _get(ctx.run.json("attributions/explain.json"), "predicted_score_source")
    res["predicted_score_source"] = pred_source
    parts = ['<p class="lead">Simple, interpretable image statistics and their Spearman correlation with the human and '
             f"the predicted memorability (source: <code>{esc(source)}</code>). A descriptor that tracks the predicted "
             "but not the human score may be a cue the model relies on more than people do; the two correlations "
             "are not tested against each other here, and a correlation does not show that the model uses the "
             "cue.</p>"]
    if pred_source:
        parts.append(_note(f"Predicted scores: {esc(pred_source)}."))
    first = targets[0]

    def key(r: dict) -> float:
        v = (r.get(first) or {}).get("r")
        return -abs(v) if v is not None else 0.0

    order = sorted(rows, key=key)

    def col(t: str, k: str) -> list[float]:
        return [((r.get(t) or {}).get(k) if (r.get(t) or {}).get(k) is not None else np.nan) for r in order]

    series = [(f"with the {labels.get(t, t)}", col(t, "r"), col(t, "ci_low"), col(t, "ci_high")) for t in targets]
    parts.append(_figure_html(F.correlation_forest([r["descriptor"] for r in order], [], series=series,
                                                   title="Descriptors vs memorability (Spearman ρ, 95% CI)"),
                              "correlations of visual descriptors with memorability"))
    # every descriptor x target correlation is one test of one family: Benjamini-Hochberg over all of them
    from ..stats import fdr_bh

    keys = [(r["descriptor"], t) for r in order for t in targets if (r.get(t) or {}).get("p_value") is not None]
    q = fdr_bh(np.array([(table[d][t]["p_value"]) for d, t in keys], dtype=float)) if keys else []
    for (d, t), qv in zip(keys, q, strict=True):
        table[d][t]["p_fdr"] = _num(qv)
    headers, numeric = ["descriptor", "what it measures"], [False, False]
    for t in targets:
        headers += [f"ρ with {labels.get(t, t)}", "95% CI", "p", "p (FDR)", "n"]
        numeric += [True, True, True, True, True]
    body = []
    for r in order:
        cells: list[Any] = [r["descriptor"], r["meaning"] or "–"]
        for t in targets:
            v = r.get(t) or {}
            cells += [fmt_r(v.get("r")), fmt_ci(v.get("ci_low"), v.get("ci_high")), fmt_p(v.get("p_value")),
                      fmt_p(v.get("p_fdr")), v.get("n")]
        body.append(cells)
    parts.append(_table(headers, body, numeric))
    if keys:
        parts.append(_note(f"p (FDR): adjusted over the {len(keys)} correlations of this table (Benjamini-Hochberg)."))
    return "".join(parts), res


_COMMAND_OF = {"predictor": "fit-predictor"}  # pipeline.json stage name -> CLI command


def _shell_quote(arg: Any) -> str:
    import shlex

    return shlex.quote(str(arg))


def _arg_value(args: Any, flag: str) -> str | None:
    """The value after ``flag`` in a stage's argument list (``pipeline.json``)."""
    if isinstance(args, list):
        for i, a in enumerate(args[:-1]):
            if a == flag:
                return str(args[i + 1])
    return None


def _as_seed(v: Any) -> Any:
    """A seed as an int when it is one (command-line values arrive as text)."""
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return v


def _seed_rows(seeds: Mapping[str, Any], ctx: _Ctx) -> list[tuple[str, Any]]:
    """The seeds for display, with what each one drew."""
    what = {"train": "initial weights, experience split, presentation order",
            "analyze": f"bootstrap, {ctx.corr.meta.get('n_boot')} resamples",
            "fit-predictor": "folds and models", "explain": "SmoothGrad noise, sanity-check weights",
            "report": f"bootstrap of the report's own intervals, {N_BOOT} resamples"}
    return [(k, f"{v} ({what[k]})" if k in what else v) for k, v in seeds.items()]


def _stage_seeds(ctx: _Ctx) -> dict[str, Any]:
    """The seed of every stage that has one (an int), from the files the stages wrote (pipeline.json as a
    fallback)."""
    run = ctx.run
    pipeline = _get(run.json("pipeline.json"), "stages") or {}
    seeds: dict[str, Any] = {}
    train = _get(run.json("manifest.json"), "seeds", "seed")
    if train is None:
        train = _get(run.json("config.json"), "seed")
    if train is None:
        train = _arg_value(_get(pipeline, "train", "args"), "--seed")
    seeds["train"] = train
    if ctx.corr.meta.get("seed") is not None or ctx.corr.meta.get("n_boot") is not None:
        seeds["analyze"] = ctx.corr.meta.get("seed")
    pred = _arg_value(_get(pipeline, "predictor", "args"), "--seed")
    if pred is None and run.path("predictor_cv.csv") is not None and _get(pipeline, "predictor"):
        pred = 0  # fit-predictor's default
    seeds["fit-predictor"] = pred
    ex = _get(run.json("attributions/explain.json"), "integrated_gradients", "seed")
    if ex is None:
        ex = _get(run.json("attributions/sanity.json"), "seed")
    seeds["explain"] = ex
    seeds["report"] = BOOT_SEED
    return {k: _as_seed(v) for k, v in seeds.items() if v is not None}


def _section_methods(ctx: _Ctx) -> tuple[str, dict]:
    run = ctx.run
    res: dict[str, Any] = {}
    parts = ['<p class="lead">How the numbers were made: correlations are Spearman rank correlations with paired '
             "bootstrap 95% intervals (images resampled with their scores; <code>memlens.stats.correlate</code>). "
             "Human split-half consistency is the mean Spearman correlation between the hit rates of two random "
             "halves of the participants. It is the noise ceiling every ratio in this report divides by (as in "
             "memorability papers); its Spearman-Brown value is the estimated reliability of the full group's "
             "score. Every <code>recon_*</code> measure is a distance (higher = worse reconstruction).</p>"]
    ds = run.json("dataset.json")
    if isinstance(ds, Mapping):
        res["dataset"] = ds
        parts.append("<h3>Data</h3>" + _kv_table(_flatten(ds)))
    else:
        parts.append(_missing("Data description", ["dataset.json"], "memlens train"))
    man = run.json("manifest.json")
    seeds = _stage_seeds(ctx)
    res["seeds"] = seeds
    pipeline = run.json("pipeline.json")
    stage_times = [(name, st.get("seconds")) for name, st in (_get(pipeline, "stages") or {}).items()
                   if isinstance(st, Mapping) and _isnum(st.get("seconds"))]
    if stage_times:
        res["stage_seconds"] = dict(stage_times)
    if isinstance(man, Mapping):
        res["manifest"] = man
        special = {}
        for key in ("versions", "timings", "seeds", "device"):
            if isinstance(man.get(key), Mapping):
                special[key] = man[key]
        blocks = []
        if "versions" in special:
            blocks.append("<div><h3>Software versions</h3>" + _kv_table(_flatten(special["versions"])) + "</div>")
        if "device" in special:
            blocks.append("<div><h3>Device</h3>" + _kv_table(_flatten(special["device"])) + "</div>")
        elif man.get("device") is not None:
            blocks.append("<div><h3>Device</h3>" + _kv_table([("device", man["device"])]) + "</div>")
        if seeds:
            blocks.append("<div><h3>Seeds</h3>" + _kv_table(_seed_rows(seeds, ctx)) + "</div>")
        if stage_times or "timings" in special:
            t = [(f"pipeline: {k}", f"{float(v):.2f}") for k, v in stage_times]
            t += [(f"train: {k}", f"{float(v):.2f}" if _isnum(v) else v) for k, v in _flatten(special.get("timings", {}))]
            blocks.append("<div><h3>Timings</h3>" + _table(["step", "seconds"], t, [False, True]) + "</div>")
        if blocks:
            parts.append(f'<div class="kvgrid">{"".join(blocks)}</div>')
        rest = {k: v for k, v in man.items() if k not in special and k not in ("device",)}
        if rest:
            parts.append("<details><summary>Full training manifest (<code>manifest.json</code>)</summary>"
                         + _kv_table(_flatten(rest)) + "</details>")
    else:
        parts.append(_missing("Provenance (versions, device, seeds, timings)", ["manifest.json"], "memlens train"))
        if seeds:
            parts.append("<h3>Seeds</h3>" + _kv_table(_seed_rows(seeds, ctx)))
    commands = [f"memlens {_COMMAND_OF.get(name, name)} " + " ".join(_shell_quote(a) for a in st.get("args") or [])
                for name, st in (_get(pipeline, "stages") or {}).items() if isinstance(st, Mapping)]
    if commands:
        res["commands"] = commands
        parts.append("<h3>Commands run</h3><pre>" + esc("\n".join(commands)) + "</pre>")
    cfg = run.json("config.json")
    if cfg is not None:
        res["config"] = cfg
        parts.append("<h3>Configuration</h3><pre>" + esc(json.dumps(cfg, indent=2, sort_keys=True, default=str)) + "</pre>")
    else:
        parts.append(_missing("Resolved configuration", ["config.json"], "memlens train"))
    parts.append("<h3>This report</h3>" + _kv_table([("memlens", __version__), ("run directory", str(run.dir)),
                                                     ("correlations computed by the report",
                                                      f"{N_BOOT} bootstrap resamples, seed {BOOT_SEED} (only where "
                                                      "correlations.csv has no row)")]))
    return "".join(parts), res


_BUILDERS: dict[str, Callable[[_Ctx], tuple[str, dict]]] = {
    "summary": _section_summary, "training": _section_training, "reconstruction": _section_reconstruction,
    "distinctiveness": _section_distinctiveness, "correlations": _section_correlations,
    "predictor": _section_predictor, "galleries": _section_galleries, "explanations": _section_explanations,
    "descriptors": _section_descriptors, "methods": _section_methods,
}
# the summary shows headline numbers computed by later sections: build it last
_BUILD_ORDER = ("training", "reconstruction", "distinctiveness", "correlations", "predictor", "galleries",
                "explanations", "descriptors", "methods", "summary")


def _headline(ctx: _Ctx, results: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers ``memlens run`` prints at the end (rounded; full precision is in the sections)."""
    out: dict[str, Any] = {}
    n = _get(results, "summary", "n_images")
    if n is not None:
        out["images"] = n
    if ctx.ceiling:
        out["noise ceiling (human split-half rho)"] = round(ctx.ceiling["split_half_spearman"], 3) \
            if ctx.ceiling["split_half_spearman"] is not None else None
    for key in ("reconstruction", "distinctiveness"):
        if key in ctx.headline:
            col, r = ctx.headline[key]
            out[f"rho({col}, score)"] = round(r, 3)
    if "predictor" in ctx.headline:
        out["predictor rho (cross-validated)"] = round(ctx.headline["predictor"], 3)
    return out


# ----------------------------------------------------------------------------------------------- public


def collect_report(run_dir: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Render the report of ``run_dir`` in memory.

    Parameters
    ----------
    run_dir : path
        A run directory (DESIGN.md §4). Missing files make their sections say so.

    Returns
    -------
    html_text, results : str, dict
        The complete HTML document and every number it shows.

    Raises
    ------
    RunDirError
        When ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory (expected the folder written by `memlens run`/`train`)")
    known = ("per_image.csv", "manifest.json", "config.json", "dataset.json", "pipeline.json", "correlations.csv",
             "predictor_cv.csv", "training_curve.csv", "exposure.csv", "attributions")
    if not any((run_dir / name).exists() for name in known):
        raise RunDirError(f"{run_dir}: not a memlens run directory (none of {', '.join(known[:4])}, ... in it); "
                          "give the folder written by `memlens run`/`train`")
    run = _Run(run_dir)
    per_image = run.per_image()
    ids = list(per_image["image_id"].astype(str)) if per_image is not None else None
    corr = _Correlations(run)
    ctx = _Ctx(run=run, corr=corr, per_image=per_image, ceiling=_noise_ceiling(run, ids, corr),
               data_root=_data_root(run))
    if ctx.ceiling is None and ctx.corr and "ceiling" in ctx.corr.df.columns:
        # analyze's ceiling column: the (uncorrected) split-half correlation of the pooled rows
        pooled = ctx.corr.df[ctx.corr.scope == "pooled"]
        c = pd.to_numeric(pooled["ceiling"], errors="coerce").dropna()
        if len(c):
            ctx.ceiling = _ceiling_entry({"spearman_mean": float(c.iloc[0])}, f"{ctx.corr.source} (ceiling column)")
    simulated = _is_simulated(run)
    bodies: dict[str, str] = {}
    results: dict[str, Any] = {}
    for sec in _BUILD_ORDER:
        body, res = _BUILDERS[sec](ctx)
        bodies[sec], results[sec] = body, res
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    results = {"meta": {"memlens_version": __version__, "generated_at": now.isoformat(), "run_dir": str(run_dir),
                        "simulated": simulated, "sections": list(SECTION_IDS), "problems": list(run.problems)},
               "headline": _headline(ctx, results),
               **{sec: results[sec] for sec in SECTION_IDS}}
    sections_html = []
    for sec in SECTION_IDS:
        sections_html.append(f'<section class="card" id="{sec}"><h2>{esc(_TITLES[sec])}</h2>{bodies[sec]}</section>')
    banner = ""
    if simulated:
        banner = ('<div class="banner" role="note"><b>Simulated scores.</b> This run uses the generated demo set: the '
                  "memorability scores were simulated, not measured on people. The numbers show that the pipeline "
                  "works, not how memorable these images are.</div>")
    if run.problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in run.problems)
        banner += f'<div class="banner" role="alert"><b>Some files could not be used:</b><ul>{items}</ul></div>'
    nav = "".join(f'<a href="#{sec}">{esc(_NAV[sec])}</a>' for sec in SECTION_IDS)
    template = string.Template(resources.files("memlens.report").joinpath("template.html").read_text(encoding="utf-8"))
    name = run_dir.resolve().name or str(run_dir)
    page = template.substitute(
        title=esc(f"memlens report · {name}"), version=esc(__version__), run_name=esc(name),
        subtitle=esc(f"run directory {run_dir} · generated {now.strftime('%Y-%m-%d %H:%M UTC')} · memlens {__version__}"),
        nav=nav, banner=banner, sections="\n".join(sections_html),
        footer=esc(f"memlens {__version__} · every number on this page is in results.json beside it"),
    )
    return page, results


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the self-contained HTML report of a run and ``results.json`` beside it (both atomically).

    Parameters
    ----------
    run_dir : path
        The run directory.
    out : path, optional
        The HTML file to write; default ``run_dir/report.html``. ``results.json`` goes in the same folder.

    Returns
    -------
    Path
        The HTML file written.
    """
    from .._io import check_output_path

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    check_output_path(out)
    page, results = collect_report(run_dir)
    results["meta"]["html"] = out.name
    atomic_write_json(out.parent / "results.json", results)
    atomic_write_text(out, page)
    log.info("report written to %s", out)
    return out
