"""Formatting of values for the report: numbers for tables and text, HTML escaping, JSON-safe values.

Pure functions of one value (or one nested mapping); no HTML structure (see :mod:`.markup`)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import figures as F


def esc(value: Any) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


def isnum(v: Any) -> bool:
    """True for a number (Python or NumPy int/float), False for bools and everything else."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def fmt(v: Any, digits: int = 3) -> str:
    """A number formatted for a table (NaN/None -> en dash); other values as text."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isnum(v):
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
    f = finite_float(v)
    return "–" if f is None else F.signed(f, digits)


def fmt_score(v: Any) -> str:
    """A score with three decimals (``1.000``, not ``1``) or an en dash."""
    f = finite_float(v)
    return "–" if f is None else f"{f:.3f}"


def fmt_p(p: Any) -> str:
    """A p-value: ``< 0.001`` or three decimals."""
    if not isnum(p) or not math.isfinite(float(p)):
        return "–"
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def fmt_ci(lo: Any, hi: Any, digits: int = 2) -> str:
    """``[lo, hi]`` or an en dash."""
    if not (isnum(lo) and isnum(hi)) or not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        return "–"
    return f"[{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def finite_float(v: Any) -> float | None:
    """A finite float or None (for results.json)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, value) pairs; lists of scalars joined, other lists as JSON."""
    out: list[tuple[str, Any]] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                out.extend(flatten(v, key))
            else:
                out.append((key, _scalar_text(v)))
    else:
        out.append((prefix or "value", _scalar_text(obj)))
    return out


def _scalar_text(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        if all(not isinstance(x, (list, tuple, Mapping)) for x in v):
            return ", ".join(fmt(x, 4) if isnum(x) else str(x) for x in v)
        return json.dumps(v, default=str)
    if isinstance(v, Mapping):
        return json.dumps(v, default=str)
    return v


def clean_value(v: Any) -> Any:
    """A JSON-safe scalar: NaN/inf -> None, NumPy scalars -> Python ones, other values unchanged."""
    if v is None:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return clean_value(v.item())
    return v


def nested_get(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...`` or None."""
    for k in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(k)
    return obj
