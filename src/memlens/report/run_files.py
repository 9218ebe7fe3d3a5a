"""Reading a run directory for the report: defensive file access and where the images are.

:class:`RunFiles` turns unreadable files into notes (``problems``), never into crashes."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger("memlens.report.html")  # the report's one logger name, as before the split (CLI lines)


@dataclass
class RunFiles:
    """Defensive access to the files of a run directory (unreadable files become notes, not crashes)."""

    dir: Path
    problems: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path | None:
        """The path of ``name`` in the run directory, or None when it does not exist."""
        p = self.dir / name
        return p if p.exists() else None

    def json(self, name: str) -> Any:
        """The parsed JSON file ``name`` (cached), or None when absent or unreadable (then a problem is noted)."""
        if name in self._cache:
            return self._cache[name]
        p, value = self.path(name), None
        if p is not None:
            try:
                value = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                self.problem(name, exc)
        self._cache[name] = value
        return value

    def csv(self, name: str) -> pd.DataFrame | None:
        """The CSV file ``name`` as a DataFrame (cached), or None when absent or unreadable (then a problem is noted)."""
        if name in self._cache:
            return self._cache[name]
        p, value = self.path(name), None
        if p is not None:
            try:
                value = pd.read_csv(p)
            except (OSError, ValueError, pd.errors.ParserError) as exc:
                self.problem(name, exc)
        self._cache[name] = value
        return value

    def problem(self, name: str, exc: Exception) -> None:
        """Note (and log) that file ``name`` could not be used; the page lists these problems in a banner."""
        msg = f"{name}: could not be read ({type(exc).__name__}: {exc})"
        log.warning("%s", msg)
        self.problems.append(msg)

    def per_image(self) -> pd.DataFrame | None:
        """per_image.csv with a numeric ``score``, or None when it is absent or has no ``image_id`` column."""
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
        """True when per_image.csv has at least one score."""
        df = self.per_image()
        return df is not None and "score" in df.columns and df["score"].notna().any()


def find_data_root(run: RunFiles) -> Path | None:
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


def is_simulated(run: RunFiles) -> bool:
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
    root = find_data_root(run)
    return bool(root is not None and any((root / f).is_file() for f in ("demo_truth.csv", "demo_config.json")))
