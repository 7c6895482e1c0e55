"""Arrow schemas of the stored Parquet tables (one folder per table under `<store>/tables/`).

Every table keeps the event's identity (run_id, rank, source, seq) so any row can be traced to
the journal record it came from, and `ts` as UTC nanoseconds, as the emitter stamped it.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("ns", tz="UTC")

_IDENTITY = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("ts", TS, nullable=False),
    pa.field("step", pa.int64()),
]

METRICS = pa.schema(
    [*_IDENTITY, pa.field("key", pa.string(), nullable=False), pa.field("value", pa.float64())]
)
"""One row per metric value. NaN and ±Inf are stored as they were logged."""

PARAMS = pa.schema(
    [
        *_IDENTITY,
        pa.field("key", pa.string(), nullable=False),
        pa.field("value", pa.string()),
        pa.field("value_num", pa.float64()),
    ]
)
"""One row per (flattened) param: `value` as JSON text, `value_num` when it is a number."""

EVENTS = pa.schema(
    [*_IDENTITY, pa.field("kind", pa.string(), nullable=False), pa.field("body", pa.string())]
)
"""Every event that is not a metric value (run_start, params, text, checkpoint, system, run_end),
with its body as JSON text."""

SYSTEM = pa.schema(
    [
        *_IDENTITY,
        pa.field("host", pa.string()),
        pa.field("device", pa.string()),
        pa.field("key", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
    ]
)
"""One row per system sample value: `device` is `cpu`, `gpu0`, ... or a process id."""

TABLES: dict[str, pa.Schema] = {
    "metrics": METRICS,
    "params": PARAMS,
    "events": EVENTS,
    "system": SYSTEM,
}
