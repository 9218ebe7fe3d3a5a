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
import string
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
           cls: str = "") -> str:
    """An HTML table; every header and cell is escaped (cells are formatted with :func:`fmt`)."""
    numeric = list(numeric) if numeric is not None else [False] * len(headers)
    head = "".join(f'<th class="num">{esc(h)}</th>' if numeric[i] else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            text = v if isinstance(v, str) else fmt(v)
            klass = ' class="num"' if i < len(numeric) and numeric[i] else ""
            cells.append(f"<td{klass}>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
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
    return bool(root is not None and (root / "demo_truth.csv").is_file())


# --------------------------------------------------------------------------------------- statistics


def _spearman_boot(x: Sequence[float], y: Sequence[float], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict[str, Any]:
    """Spearman r, its p-value and a percentile bootstrap interval (paired resampling of images)."""
    from scipy.stats import rankdata, spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    out: dict[str, Any] = {"n": n, "r": None, "ci_low": None, "ci_high": None, "p_value": None,
                           "method": "spearman", "source": f"report (percentile bootstrap, {n_boot} resamples, seed {seed})"}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = spearmanr(x, y)
    out["r"], out["p_value"] = _num(res.statistic), _num(res.pvalue)
    rng = np.random.default_rng(seed)
    rs = []
    for start in range(0, n_boot, 100):
        idx = rng.integers(0, n, size=(min(100, n_boot - start), n))
        xr = rankdata(x[idx], axis=1)
        yr = rankdata(y[idx], axis=1)
        xr -= xr.mean(axis=1, keepdims=True)
        yr -= yr.mean(axis=1, keepdims=True)
        den = np.sqrt((xr**2).sum(1) * (yr**2).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            rs.append((xr * yr).sum(1) / den)
    r_all = np.concatenate(rs)
    r_all = r_all[np.isfinite(r_all)]
    if r_all.size:
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(r_all, [2.5, 97.5]))
    return out


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
        df = run.csv("correlations.csv")
        if df is not None:
            self.source = "correlations.csv"
        else:
            obj = run.json("correlations.json")
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


def _noise_ceiling(run: _Run, ids: Sequence[str] | None) -> dict[str, Any] | None:
    """Split-half consistency from split_halves.npz: mean Spearman over splits and its Spearman-Brown value."""
    p = run.path("split_halves.npz")
    if p is None:
        return None
    from scipy.stats import spearmanr

    from ..data.halves import load_split_halves

    try:
        halves = load_split_halves(p)
    except Exception as exc:  # a malformed file is a note, not a crash
        run._problem("split_halves.npz", exc)
        return None
    if ids is not None:
        known = set(halves.image_ids)
        keep = [i for i in ids if i in known]
        if len(keep) >= 3:
            halves = halves.subset(keep)
    rs = []
    for h1, h2 in zip(halves.half1, halves.half2, strict=True):
        ok = np.isfinite(h1) & np.isfinite(h2)
        if ok.sum() >= 3:
            rs.append(spearmanr(h1[ok], h2[ok]).statistic)
    rs = np.asarray(rs, dtype=float)
    rs = rs[np.isfinite(rs)]
    if not rs.size:
        return None
    r = float(rs.mean())
    return {"n_images": halves.n_images, "n_splits": halves.n_splits, "split_half_spearman": r,
            "split_half_spearman_sd": float(rs.std(ddof=1)) if rs.size > 1 else None,
            "spearman_brown": 2 * r / (1 + r) if r > -1 else None, "source": "split_halves.npz"}


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
    scores = df["score"].to_numpy(dtype=float) if "score" in df.columns else np.empty(0)
    finite = scores[np.isfinite(scores)]
    if finite.size:
        res["score"] = {"n": int(finite.size), "mean": float(finite.mean()),
                        "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
                        "median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max())}
        tiles.append(("mean score (SD)", f"{finite.mean():.3f} ({fmt(res['score']['sd'], 3)})"))
    if ctx.ceiling:
        res["noise_ceiling"] = ctx.ceiling
        tiles.append(("human split-half ρ", fmt(ctx.ceiling["split_half_spearman"], 3)))
        tiles.append(("noise ceiling (Spearman-Brown)", fmt(ctx.ceiling["spearman_brown"], 3)))
    for key in ("reconstruction", "distinctiveness"):
        if key in ctx.headline:
            col, r = ctx.headline[key]
            tiles.append((f"ρ of {col} with the score", fmt(r, 3)))
    if "predictor" in ctx.headline:
        tiles.append(("predictor ρ (cross-validated)", fmt(ctx.headline["predictor"], 3)))
    parts.append(_tiles(tiles))
    if finite.size:
        parts.append('<div class="figrow">')
        parts.append(_figure_html(F.score_histogram(finite), "histogram of memorability scores",
                                  "Human memorability scores (hit rates); dashed line: mean."))
        parts.append("<div>")
        parts.append(_kv_table([("images with a score", res["score"]["n"]), ("mean", res["score"]["mean"]),
                                ("SD", res["score"]["sd"]), ("median", res["score"]["median"]),
                                ("min", res["score"]["min"]), ("max", res["score"]["max"])]))
        if ctx.ceiling:
            c = ctx.ceiling
            parts.append(_kv_table([("split-half splits", c["n_splits"]), ("images in the halves", c["n_images"]),
                                    ("mean Spearman ρ between halves", c["split_half_spearman"]),
                                    ("Spearman-Brown corrected (noise ceiling)", c["spearman_brown"])]))
        parts.append("</div></div>")
    else:
        parts.append(_note("No human scores in <code>per_image.csv</code>: the correlations and the predictor "
                           "need a data set with a score column.", missing=True))
    if not ctx.ceiling:
        parts.append(_note("Noise ceiling: not available — the data set has no split-half scores "
                           "(<code>split_halves.npz</code> is absent from the run directory).", missing=True))
    if "category" in df.columns:
        counts = df["category"].astype(str).value_counts()
        res["categories"] = {str(k): int(v) for k, v in counts.items()}
        rows = []
        for cat, n in list(counts.items())[:40]:
            sub = df.loc[df["category"].astype(str) == cat, "score"] if "score" in df.columns else pd.Series(dtype=float)
            rows.append((cat, int(n), float(sub.mean()) if sub.notna().any() else None))
        res["category_mean_score"] = {str(r[0]): r[2] for r in rows}
        parts.append("<h3>Categories</h3>")
        parts.append(_table(["category", "images", "mean score"], rows, [False, True, True]))
        if len(counts) > 40:
            parts.append(_note(f"{len(counts) - 40} more categories are listed in results.json."))
    ds = ctx.run.json("dataset.json")
    if isinstance(ds, Mapping):
        res["dataset"] = {k: ds.get(k) for k in ("source", "layout") if k in ds}
        src = " · ".join(f"{k}: {ds[k]}" for k in ("layout", "source") if k in ds)
        if src:
            parts.insert(0, f'<p class="lead">{esc(src)}</p>')
    return "".join(parts), res


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
    rows = []
    if curve is not None:
        phases = list(curve.groupby("phase", sort=False)) if "phase" in curve.columns else [("all", curve)]
        res["curve"] = {}
        for phase, g in phases:
            loss = pd.to_numeric(g["loss"], errors="coerce")
            entry = {"n_records": int(len(g)), "first_loss": _num(loss.iloc[0]), "final_loss": _num(loss.iloc[-1])}
            if "val_loss" in g.columns:
                v = pd.to_numeric(g["val_loss"], errors="coerce").dropna()
                entry["final_val_loss"] = _num(v.iloc[-1]) if len(v) else None
            res["curve"][str(phase)] = entry
            rows.append((str(phase), entry["n_records"], entry["first_loss"], entry["final_loss"], entry.get("final_val_loss")))
    if exposure is not None:
        e = exposure.sort_values("order") if "order" in exposure.columns else exposure
        loss = pd.to_numeric(e["loss"], errors="coerce").to_numpy(dtype=float)
        k = max(1, len(loss) // 10)
        res["exposure"] = {"n_images": int(len(loss)), "mean_loss": _num(np.nanmean(loss)) if len(loss) else None,
                           "first_decile_mean": _num(np.nanmean(loss[:k])) if len(loss) else None,
                           "last_decile_mean": _num(np.nanmean(loss[-k:])) if len(loss) else None}
    parts = [_figure_html(F.training_curve(curve, exposure), "training loss curves",
                          "Loss of the autoencoder during training (lower = better reconstruction).")]
    if rows:
        parts.append(_table(["phase", "records", "first loss", "final loss", "final validation loss"], rows,
                            [False, True, True, True, True]))
    if "exposure" in res:
        x = res["exposure"]
        parts.append(_kv_table([("images seen once (single exposure)", x["n_images"]), ("mean loss at exposure", x["mean_loss"]),
                                ("mean loss, first 10% of the pass", x["first_decile_mean"]),
                                ("mean loss, last 10% of the pass", x["last_decile_mean"])]))
    else:
        parts.append(_note("No single-exposure log (<code>exposure.csv</code>): the run used pretraining only.", missing=True))
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
        return _spearman_boot(df[col], df["score"])
    return {}


def _measure_section(ctx: _Ctx, sec: str, cols: list[str], primary: str, intro: str, command: str) -> tuple[str, dict]:
    df = ctx.per_image
    res: dict[str, Any] = {"primary": primary, "measures": {}}
    parts = [f'<p class="lead">{intro}</p>']
    label = _measure_label(primary)
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
    bins = F.binned_means(x, y, 10)
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
                                  "Each panel: the images of one category, Spearman ρ [95% CI] within it."))
        if len(counts) > len(cats):
            parts.append(_note(f"Only the {len(cats)} largest of {len(counts)} categories are drawn."))
        scope_rows = []
        for scope, name in (("within", "within category"), ("partial", "partial")):
            row = ctx.corr.find(primary, scope)
            if row is not None:
                numbers = _corr_numbers(row)
                numbers["control"] = _clean(row.get("control"))
                res["measures"][primary][scope] = numbers
                scope_rows.append((name, numbers["control"] or "–", numbers["n"], numbers["r"],
                                   fmt_ci(numbers["ci_low"], numbers["ci_high"]), fmt_p(numbers["p_value"])))
        if scope_rows:
            parts.append(_table(["scope", "control", "n", "ρ", "95% CI", "p"], scope_rows, [False, False, True, True, True, True]))
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
        ceil = ctx.ceiling["spearman_brown"] if ctx.ceiling else None
        parts.append(_figure_html(F.correlation_forest(labels, rs, los, his, ceiling=ceil,
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
    headers = ["measure", "vs", "scope", "group", "control", "n", "ρ", "95% CI", "p"]
    numeric = [False, False, False, False, False, True, True, True, True]
    if "r_over_ceiling" in has:
        headers.append("ρ / ceiling")
        numeric.append(True)
    rows = []
    for i, r in enumerate(shown):
        row = [str(r.get("x", "")), str(r.get("y") or "score"), ctx.corr.scope.iloc[i] or "pooled",
               r.get("group") or "–", r.get("control") or "–", r.get("n"), _num(r.get("r")),
               fmt_ci(r.get("ci_low"), r.get("ci_high")), fmt_p(r.get("p_value"))]
        if "r_over_ceiling" in has:
            row.append(_num(r.get("r_over_ceiling")))
        rows.append(row)
    parts = [f'<p class="lead">Spearman correlations with 95% paired-bootstrap intervals, from '
             f'<code>{esc(ctx.corr.source)}</code> (written by <code>memlens analyze</code>). <i>pooled</i>: all images; '
             "<i>group</i>: within one category; <i>within</i>: the categories' shared within-category association; "
             "<i>partial</i>: controlling for the named measure.</p>"]
    parts.append(_table(headers, rows, numeric))
    if len(recs) > len(shown):
        parts.append(_note(f"{len(recs) - len(shown)} more rows are in results.json and {esc(ctx.corr.source)}."))
    return "".join(parts), {"source": ctx.corr.source, "rows": recs}


def _section_predictor(ctx: _Ctx) -> tuple[str, dict]:
    cv = ctx.run.csv("predictor_cv.csv")
    if cv is None or cv.empty:
        return _missing("Predictor cross-validation", ["predictor_cv.csv"], "memlens fit-predictor"), {}
    model_col = "model" if "model" in cv.columns else None
    metric = next((m for m in ("spearman", "rho", "r", "pearson") if m in cv.columns), None)
    numeric_cols = [c for c in cv.columns if c not in ("fold", "model") and pd.api.types.is_numeric_dtype(cv[c])]
    groups = list(cv.groupby(model_col, sort=False)) if model_col else [("model", cv)]
    res: dict[str, Any] = {"metric": metric, "models": {}}
    per_fold: dict[str, list[float]] = {}
    rows = []
    for name, g in groups:
        entry: dict[str, Any] = {"n_folds": int(len(g))}
        for c in numeric_cols:
            v = pd.to_numeric(g[c], errors="coerce").dropna()
            entry[f"{c}_mean"] = _num(v.mean()) if len(v) else None
            entry[f"{c}_sd"] = _num(v.std(ddof=1)) if len(v) > 1 else None
        if metric:
            per_fold[str(name)] = [float(v) for v in pd.to_numeric(g[metric], errors="coerce")]
        res["models"][str(name)] = entry
        rows.append([str(name), entry["n_folds"]] + [
            f"{fmt(entry[f'{c}_mean'], 3)} ± {fmt(entry[f'{c}_sd'], 3)}" if entry[f"{c}_sd"] is not None
            else fmt(entry[f"{c}_mean"], 3) for c in numeric_cols])
    consistency = ctx.ceiling["split_half_spearman"] if ctx.ceiling else None
    ceiling = ctx.ceiling["spearman_brown"] if ctx.ceiling else None
    res["consistency"], res["ceiling"] = consistency, ceiling
    if ceiling and metric:
        for entry in res["models"].values():
            m = entry.get(f"{metric}_mean")
            entry[f"{metric}_over_ceiling"] = m / ceiling if m is not None else None
    parts = ['<p class="lead">Held-out accuracy of the memorability predictor (an MLP on the autoencoder\'s latent '
             "code) next to a ridge-regression baseline, against the human noise ceiling. Bars: mean over folds ± SD; "
             "dots: single folds.</p>"]
    if metric:
        parts.append(_figure_html(F.predictor_bars(per_fold, metric=metric, consistency=consistency, ceiling=ceiling),
                                  "cross-validated prediction accuracy per model"))
        best = max((e.get(f"{metric}_mean") for e in res["models"].values() if e.get(f"{metric}_mean") is not None),
                   default=None)
        if best is not None:
            ctx.headline["predictor"] = best
    parts.append(_table(["model", "folds", *[f"{c} (mean ± SD)" for c in numeric_cols]], rows,
                        [False, True, *[True] * len(numeric_cols)]))
    if ceiling and metric:
        parts.append(_kv_table([(f"{name}: {metric} / noise ceiling", e.get(f"{metric}_over_ceiling"))
                                for name, e in res["models"].items()]))
    if not ctx.ceiling:
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
        lines = [f"score {fmt(entry['score'], 3)}"]
        if has_pred:
            lines.append(f"predicted {fmt(entry['predicted_score'], 3)}")
        if entry.get("category") is not None:
            lines.append(str(entry["category"]))
        spans = "".join(f'<span class="s">{esc(line)}</span>' for line in lines)
        items.append(f'<figure class="thumb">{img}<figcaption>{esc(image_id)}{spans}</figcaption></figure>')
    return f'<div class="gallery">{"".join(items)}</div>', out


def _section_galleries(ctx: _Ctx) -> tuple[str, dict]:
    df = ctx.per_image
    if df is None:
        return _missing("Galleries", ["per_image.csv"], "memlens score"), {}
    parts, res = [], {}
    has_pred = "predicted_score" in df.columns and pd.to_numeric(df["predicted_score"], errors="coerce").notna().any()
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
        d = df.assign(predicted_score=pd.to_numeric(df["predicted_score"], errors="coerce"))
        d = d[d["predicted_score"].notna()]
        specs += [("predicted_top", "Most memorable (predicted)", d.nlargest(k, "predicted_score")),
                  ("predicted_bottom", "Least memorable (predicted)", d.nsmallest(k, "predicted_score"))]
    else:
        parts.append(_missing("Predicted-score galleries", ["per_image.csv (predicted_score column)"], "memlens fit-predictor"))
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


def _section_explanations(ctx: _Ctx) -> tuple[str, dict]:
    att = ctx.run.path("attributions")
    if att is None or not att.is_dir():
        return _missing("Integrated Gradients maps", ["attributions/"], "memlens explain"), {}
    pngs = sorted(p for p in att.rglob("*.png") if p.is_file())
    agg_words = ("aggregate", "mean", "average", "summary")
    aggregates = [p for p in pngs if any(w in p.stem.lower() for w in agg_words)]
    overlays = [p for p in pngs if p not in aggregates]
    res: dict[str, Any] = {"aggregates": [p.relative_to(att).as_posix() for p in aggregates],
                           "overlays_total": len(overlays),
                           "overlays_shown": [p.relative_to(att).as_posix() for p in overlays[:MAX_OVERLAYS]]}
    parts = ['<p class="lead">Integrated Gradients attributions of the predicted memorability: where in the image '
             "the prediction comes from. Warm colours raise the predicted score.</p>"]

    def grid(paths: Sequence[Path]) -> str:
        cells = []
        for p in paths:
            name = p.relative_to(att).as_posix()
            uri = _image_uri(p)
            img = f'<img src="{uri}" alt="{esc(name)}">' if uri else '<div class="noimg">unreadable image</div>'
            cells.append(f"<figure>{img}<figcaption>{esc(name)}</figcaption></figure>")
        return f'<div class="overlays">{"".join(cells)}</div>'

    if aggregates:
        parts.append("<h3>Aggregate maps</h3>" + grid(aggregates))
    if overlays:
        parts.append("<h3>Per-image overlays</h3>" + grid(overlays[:MAX_OVERLAYS]))
        if len(overlays) > MAX_OVERLAYS:
            parts.append(_note(f"{len(overlays) - MAX_OVERLAYS} more overlays are in <code>attributions/</code>."))
    if not pngs:
        parts.append(_note("No PNG maps in <code>attributions/</code>.", True))
    npz = att / "attributions.npz"
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as z:
                res["arrays"] = {k: list(z[k].shape) for k in z.files}
            parts.append("<h3>Stored attributions</h3>")
            parts.append(_table(["array in attributions.npz", "shape"],
                                [(k, " × ".join(str(s) for s in v)) for k, v in res["arrays"].items()]))
        except (OSError, ValueError) as exc:
            ctx.run._problem("attributions/attributions.npz", exc)
    sanity_path = att / "sanity.json"
    sanity = ctx.run.json("attributions/sanity.json") if sanity_path.is_file() else None
    parts.append("<h3>Sanity check</h3>")
    if isinstance(sanity, Mapping):
        res["sanity"] = sanity
        passed = sanity.get("passed")
        badge = ""
        if isinstance(passed, bool):
            badge = (f'<p><span class="badge {"ok" if passed else "bad"}">'
                     f'{"passed" if passed else "FAILED"}</span></p>')
        parts.append(badge + _kv_table(_flatten(sanity)))
    else:
        parts.append(_missing("Attribution sanity check", ["attributions/sanity.json"], "memlens explain"))
    return "".join(parts), res


def _section_descriptors(ctx: _Ctx) -> tuple[str, dict]:
    dc = ctx.run.csv("descriptor_correlations.csv")
    desc = ctx.run.csv("descriptors.csv")
    source = "descriptor_correlations.csv"
    rows: list[dict[str, Any]] = []
    if dc is not None and not dc.empty:
        name_col = next((c for c in ("descriptor", "x", "name", "feature") if c in dc.columns), dc.columns[0])
        rcol = next((c for c in ("r", "rho", "spearman") if c in dc.columns), None)
        for rec in dc.to_dict("records"):
            rows.append({"descriptor": str(rec.get(name_col)), "n": _clean(rec.get("n")),
                         "r": _num(rec.get(rcol)) if rcol else None, "ci_low": _num(rec.get("ci_low")),
                         "ci_high": _num(rec.get("ci_high")), "p_value": _num(rec.get("p_value"))})
    elif desc is not None and "image_id" in desc.columns and ctx.run.has_scores():
        source = "descriptors.csv (correlations computed by the report)"
        merged = desc.merge(ctx.per_image[["image_id", "score"]], on="image_id", how="inner", suffixes=("", "_human"))
        score = merged["score_human"] if "score_human" in merged.columns else merged["score"]
        for c in desc.columns:
            if c in ("image_id", "score") or not pd.api.types.is_numeric_dtype(desc[c]):
                continue
            st = _spearman_boot(merged[c], score)
            rows.append({"descriptor": c, **{k: st[k] for k in ("n", "r", "ci_low", "ci_high", "p_value")}})
    else:
        return _missing("Visual descriptors", ["descriptor_correlations.csv", "descriptors.csv"], "memlens explain"), {}
    res: dict[str, Any] = {"source": source, "rows": rows}
    if desc is not None:
        res["n_images"] = int(len(desc))
    parts = ['<p class="lead">Simple, interpretable image statistics and their Spearman correlation with memorability '
             f"(source: <code>{esc(source)}</code>).</p>"]
    if rows:
        order = sorted(rows, key=lambda r: -abs(r["r"]) if r["r"] is not None else 0)
        parts.append(_figure_html(F.correlation_forest([r["descriptor"] for r in order], [r["r"] if r["r"] is not None else np.nan for r in order],
                                                       [r["ci_low"] if r["ci_low"] is not None else np.nan for r in order],
                                                       [r["ci_high"] if r["ci_high"] is not None else np.nan for r in order],
                                                       title="Descriptors vs memorability (Spearman ρ, 95% CI)"),
                                  "correlations of visual descriptors with memorability"))
        parts.append(_table(["descriptor", "n", "ρ", "95% CI", "p"],
                            [(r["descriptor"], r["n"], r["r"], fmt_ci(r["ci_low"], r["ci_high"]), fmt_p(r["p_value"]))
                             for r in order], [False, True, True, True, True]))
    return "".join(parts), res


def _section_methods(ctx: _Ctx) -> tuple[str, dict]:
    run = ctx.run
    res: dict[str, Any] = {}
    parts = ['<p class="lead">How the numbers were made: correlations are Spearman rank correlations with paired '
             "bootstrap 95% intervals (images resampled with their scores); the noise ceiling is the mean Spearman "
             "correlation between the hit rates of two random halves of the participants, Spearman-Brown corrected. "
             "Every <code>recon_*</code> measure is a distance (higher = worse reconstruction).</p>"]
    ds = run.json("dataset.json")
    if isinstance(ds, Mapping):
        res["dataset"] = ds
        parts.append("<h3>Data</h3>" + _kv_table(_flatten(ds)))
    else:
        parts.append(_missing("Data description", ["dataset.json"], "memlens train"))
    man = run.json("manifest.json")
    if isinstance(man, Mapping):
        res["manifest"] = man
        special = {}
        for key in ("versions", "timings", "seeds"):
            if isinstance(man.get(key), Mapping):
                special[key] = man[key]
        rest = {k: v for k, v in man.items() if k not in special}
        if rest:
            parts.append("<h3>Provenance</h3>" + _kv_table(_flatten(rest)))
        blocks = []
        if "versions" in special:
            blocks.append("<div><h3>Software versions</h3>" + _kv_table(_flatten(special["versions"])) + "</div>")
        if "seeds" in special:
            blocks.append("<div><h3>Seeds</h3>" + _kv_table(_flatten(special["seeds"])) + "</div>")
        if "timings" in special:
            t = [(k, f"{float(v):.2f}" if _isnum(v) else v) for k, v in _flatten(special["timings"])]
            blocks.append("<div><h3>Timings</h3>" + _table(["stage", "seconds"], t, [False, True]) + "</div>")
        if blocks:
            parts.append(f'<div class="kvgrid">{"".join(blocks)}</div>')
    else:
        parts.append(_missing("Provenance (versions, device, seeds, timings)", ["manifest.json"], "memlens train"))
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
    run = _Run(run_dir)
    per_image = run.per_image()
    ids = list(per_image["image_id"].astype(str)) if per_image is not None else None
    ctx = _Ctx(run=run, corr=_Correlations(run), per_image=per_image, ceiling=_noise_ceiling(run, ids),
               data_root=_data_root(run))
    if ctx.ceiling is None and ctx.corr and "ceiling" in ctx.corr.df.columns:
        c = pd.to_numeric(ctx.corr.df["ceiling"], errors="coerce").dropna()
        if len(c):
            sb = float(c.iloc[0])
            ctx.ceiling = {"n_images": None, "n_splits": None, "split_half_spearman": (sb / (2 - sb)) if sb < 2 else None,
                           "split_half_spearman_sd": None, "spearman_brown": sb, "source": ctx.corr.source}
    simulated = _is_simulated(run)
    bodies: dict[str, str] = {}
    results: dict[str, Any] = {}
    for sec in _BUILD_ORDER:
        body, res = _BUILDERS[sec](ctx)
        bodies[sec], results[sec] = body, res
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    results = {"meta": {"memlens_version": __version__, "generated_at": now.isoformat(), "run_dir": str(run_dir),
                        "simulated": simulated, "sections": list(SECTION_IDS), "problems": list(run.problems)},
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
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    page, results = collect_report(run_dir)
    results["meta"]["html"] = out.name
    atomic_write_json(out.parent / "results.json", results)
    atomic_write_text(out, page)
    log.info("report written to %s", out)
    return out
