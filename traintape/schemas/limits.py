"""The ranges every field of an event must fall in: checked by the emitter before anything is
queued, and by the collector before anything is acknowledged, so nothing acknowledged can fail a
later stage (Parquet's int64 and int32 columns, file names of run folders, JSON depth in views).
"""

from __future__ import annotations

import re

MAX_INT64 = 2**63 - 1
"""Largest step, seq and timestamp (ns): they are stored as Parquet int64."""

MAX_RANK = 2**31 - 1
"""Largest rank: stored as Parquet int32."""

MAX_RUN_ID_CHARS = 128
"""A run id names a folder in every table (NAME_MAX is 255 bytes); ASCII only, so chars = bytes."""

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A run id: letters, digits, `.`, `_`, `-`, starting with a letter or digit (so never `.` or
`..`), at most MAX_RUN_ID_CHARS long. Matched with `fullmatch`."""

SYSTEM_RUN_PREFIX = "system:"
"""The collector's own system samples go to the pseudo-run `system:<host>` (collector/system.py)."""


def valid_run_id(run_id: object) -> bool:
    """A run id that names a folder safely: RUN_ID_PATTERN, or the collector's `system:<host>`."""
    if type(run_id) is not str:
        return False
    if run_id.startswith(SYSTEM_RUN_PREFIX):
        run_id = run_id[len(SYSTEM_RUN_PREFIX) :]
    return RUN_ID_PATTERN.fullmatch(run_id) is not None


MAX_SOURCE_CHARS = 64
"""An emitting process's random id (16 hex digits from the emitter)."""

MAX_BODY_DEPTH = 32
"""Deepest nesting of maps and lists in an event body (config, params, text bodies)."""

MAX_MESSAGE_BYTES = 16 << 20
"""Default largest wire message (header + body) the collector accepts; `serve` can raise it.
The emitter splits batches below it and refuses a single event above it."""
