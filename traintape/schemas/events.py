"""Event kinds and statuses: the vocabulary every part of traintape shares.

On the wire a kind travels as a small int (one byte in msgpack); in the store it is a string.
"""

from __future__ import annotations

RUN_START = 0
PARAMS = 1
METRICS = 2
TEXT = 3
CHECKPOINT = 4
SYSTEM = 5
RUN_END = 6
HISTOGRAM = 7

KIND_NAMES: tuple[str, ...] = (
    "run_start",
    "params",
    "metrics",
    "text",
    "checkpoint",
    "system",
    "run_end",
    "histogram",
)
"""Stored name of each wire kind, indexed by the kind's int."""

KIND_CODES: dict[str, int] = {name: code for code, name in enumerate(KIND_NAMES)}

RUN_STATUSES: tuple[str, ...] = ("completed", "failed", "killed")
"""Statuses a `run_end` event may carry. A run with no `run_end` yet is shown as `running`."""
