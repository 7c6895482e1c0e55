"""Turning what users pass to `log`/`log_params` into plain values, off the fast path.

`Emitter.log` checks value types with one C-level pass; only a call holding something other than
str keys and int/float/bool values comes here.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from traintape.schemas.values import flatten, plain

__all__ = ["check_metric_name", "coerce_metrics", "coerce_scalar", "flatten", "plain"]


def coerce_metrics(metrics: Any) -> dict[str, float | int | bool]:
    """A copy of `metrics` with every value a Python number, or TypeError naming the bad key."""
    if not isinstance(metrics, Mapping):
        msg = f"log() takes a dict of name -> number, not {type(metrics).__name__}"
        raise TypeError(msg)
    out: dict[str, float | int | bool] = {}
    for key, value in metrics.items():
        check_metric_name(key)
        out[key] = coerce_scalar(key, value)
    return out


def check_metric_name(key: Any) -> None:
    """TypeError for a name that is not a str, ValueError for "" (no column, no plot could show
    it, and W&B refuses it too)."""
    if not isinstance(key, str):
        msg = f"metric names must be str, got {key!r} ({type(key).__name__})"
        raise TypeError(msg)
    if not key:
        msg = "metric names must not be empty (got '')"
        raise ValueError(msg)


def coerce_scalar(key: str, value: Any) -> float | int | bool:
    if type(value) in (float, int, bool):
        return value
    # numpy scalars (np.float32, np.int64, np.bool_) and anything else registered as a Number.
    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        try:
            return float(value)  # type: ignore[arg-type]  # numpy scalars have __float__
        except (TypeError, ValueError):
            pass
    item = getattr(value, "item", None)
    size = getattr(value, "size", None)
    if callable(item) and (size == 1 or getattr(value, "shape", None) == ()):
        # A one-element numpy array. (Tensors are taken by the deferred path, not here.)
        scalar = item()
        if isinstance(scalar, (int, float, bool)):
            return scalar
    msg = (
        f"metric {key!r}: {type(value).__name__} is not a number "
        "(int, float, bool, numpy scalar or a one-element tensor)"
    )
    raise TypeError(msg)
