"""The one number-formatting module: every table cell, summary line and log figure goes through here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: 3 significant digits, inf as ∞, missing as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def pct(value: Any) -> str:
    return "—" if _nan(value) else f"{100 * float(value):.0f}%"


def times(value: Any) -> str:
    return "—" if _nan(value) else f"{float(value):.2f}×"


def _nan(value: Any) -> bool:
    try:
        return value is None or value is pd.NA or math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def shape(rows: Any, cols: Any) -> str:
    return f"{int(rows)}×{int(cols)}"


# What a quoted name or message could otherwise turn into markup: code, emphasis, links and images, raw HTML
# and entities, table pipes, strikethrough, GitHub's $math$. An underscore inside a word starts no emphasis,


def seconds(value: float) -> str:
    """A duration in the unit that suits it: '12.34 us', '5.67 ms' or '1.23 s'."""
    if value < 1e-3:
        return f"{value * 1e6:.2f} us"
    if value < 1:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.2f} s"


def ratio(metric: str, value: float) -> str:
    """A target's figure: a fraction of the roofline as a percentage, a speedup as '3.2x'."""
    return f"{value:.0%}" if metric == "roofline_frac" else f"{value:.1f}x"


def fixed(value: float | None, spec: str = ".4f") -> str:
    """`value` in a fixed format, '-' when missing, 'nan'/'inf' spelled out."""
    if value is None:
        return "-"
    return format(value, spec) if math.isfinite(value) else str(value)
