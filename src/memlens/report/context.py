"""What every section builder gets: the run's files, its correlation rows, its per-image table, the
noise ceiling, the data root, and the headline numbers the sections leave for the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .analysis import CorrelationRows
from .run_files import RunFiles


@dataclass
class ReportContext:
    """The inputs every section builder reads; ``headline`` collects the numbers the summary shows."""
    run: RunFiles
    corr: CorrelationRows
    per_image: pd.DataFrame | None
    ceiling: dict[str, Any] | None
    data_root: Path | None
    headline: dict[str, Any] = field(default_factory=dict)
