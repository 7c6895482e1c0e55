"""How values are stored: metric values as float64, event bodies as JSON text."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
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


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys: {"opt": {"lr": 1e-3}} -> {"opt.lr": 1e-3}."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = plain(value)
    return out


def plain(value: Any) -> Any:
    """A msgpack- and JSON-friendly version of a config or body value."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        if isinstance(value, numbers.Integral):
            return int(value)
        return float(value)  # type: ignore[arg-type]  # a Real (numpy scalars): has __float__
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "size", None) == 1:
        return plain(item())
    return str(value)
