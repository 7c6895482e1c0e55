"""How values are stored: metric values as float64, event bodies as JSON text."""

from __future__ import annotations

import json
import math
from typing import Any


def to_float(value: float | int | bool) -> float:
    """A value as stored: a float64; ints past its range become ±inf rather than failing a batch."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def to_json(value: Any) -> str:
    """JSON text DuckDB can parse: non-finite floats become the strings "NaN", "Infinity"."""
    return json.dumps(_finite(value), separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value
