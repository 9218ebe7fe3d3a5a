"""The :class:`Dataset`: a collection of images with (optional) memorability scores, in the uniform table.

Every layout yields one; :func:`~memlens.data.layouts.load_dataset` builds it, and
:meth:`Dataset.subset`, :meth:`Dataset.spec`, :meth:`Dataset.to_record` and :meth:`Dataset.summary` are
what the rest of memlens uses of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import DataError
from ..halves import SplitHalves

__all__ = ["Dataset"]


@dataclass
class Dataset:
    """A collection of images with (optional) memorability scores, read from one of the layouts.

    Attributes
    ----------
    root : Path
        The data root; ``image_id`` values are relative to it.
    layout : str
        One of :data:`LAYOUTS`.
    table : pandas.DataFrame
        ``image_id``, ``path``, ``score``?, ``category``?, ``subcategory``?, then the source's other columns.
    notes : list of str
        What was chosen or converted while reading (e.g. which score column).
    halves : SplitHalves or None
        Split-half human scores aligned with ``table`` (the noise ceiling), when the source has them.
    source : Path or None
        What was given to :func:`load_dataset` (a folder or a table file).
    options : dict
        The options given to :func:`load_dataset` other than ``source`` and ``layout`` (column names,
        ``score_variant``, ``splits``), for reloading.
    """

    root: Path
    layout: str
    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    halves: SplitHalves | None = None
    source: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def has_scores(self) -> bool:
        """Whether the table has a ``score`` column."""
        return "score" in self.table.columns

    @property
    def image_ids(self) -> list[str]:
        return self.table["image_id"].tolist()

    @property
    def paths(self) -> list[str]:
        return self.table["path"].tolist()

    @property
    def scores(self) -> np.ndarray | None:
        """The scores as float64, or None without a score column."""
        return self.table["score"].to_numpy(dtype=float) if self.has_scores else None

    def subset(self, image_ids: Iterable[str]) -> Dataset:
        """The rows whose ``image_id`` is in ``image_ids``, in that order (halves restricted alike)."""
        ids = list(image_ids)
        index = pd.Index(self.table["image_id"])
        pos = index.get_indexer(ids)
        if (pos < 0).any():
            missing = [i for i, p in zip(ids, pos, strict=True) if p < 0]
            raise DataError(f"{len(missing)} image ids are not in the data set, e.g. {missing[0]}")
        table = self.table.iloc[pos].reset_index(drop=True)
        halves = self.halves.subset(ids) if self.halves is not None else None
        return Dataset(self.root, self.layout, table, list(self.notes), halves, self.source, dict(self.options))

    def spec(self) -> dict[str, Any]:
        """Keyword arguments of :func:`load_dataset` that read this data set again (JSON-serialisable)."""
        return {"source": str(self.source if self.source is not None else self.root), "layout": self.layout,
                **self.options}

    def to_record(self) -> dict[str, Any]:
        """What a run's ``dataset.json`` stores: ``source``, ``root``, ``layout``, ``options``, ``n_images``
        (reload with ``load_dataset(rec["source"], rec["layout"], **rec["options"])``)."""
        return {"source": str(self.source if self.source is not None else self.root), "root": str(self.root),
                "layout": self.layout, "options": dict(self.options), "n_images": len(self)}

    def summary(self) -> dict[str, Any]:
        """Counts and score statistics: ``n_images``, ``layout``, ``root``, ``score`` (n, mean, sd with
        ddof=1, min, max) or None, ``categories`` ({name: count}, sorted by name) or None,
        ``n_without_category`` (blank category cells), ``n_subcategories`` or None, ``has_halves``."""
        out: dict[str, Any] = {"n_images": len(self), "layout": self.layout, "root": str(self.root)}
        if self.has_scores and len(self):
            s = self.table["score"].to_numpy(dtype=float)
            out["score"] = {
                "n": int(s.size),
                "mean": float(s.mean()),
                "sd": float(s.std(ddof=1)) if s.size > 1 else float("nan"),
                "min": float(s.min()),
                "max": float(s.max()),
            }
        else:
            out["score"] = None
        if "category" in self.table.columns:
            counts = self.table["category"].dropna().astype(str).value_counts()
            out["categories"] = {str(k): int(counts[k]) for k in sorted(counts.index)}
            out["n_without_category"] = int(self.table["category"].isna().sum())
        else:
            out["categories"] = None
        if "subcategory" in self.table.columns:
            sub = self.table[["category", "subcategory"]] if "category" in self.table else self.table[["subcategory"]]
            out["n_subcategories"] = int(len(sub.drop_duplicates()))
        else:
            out["n_subcategories"] = None
        out["has_halves"] = self.halves is not None
        return out
