"""Arrow schemas of the stored Parquet tables (one folder per table under `<store>/tables/`).

Every table keeps the event's identity (run_id, rank, source, seq) so any row can be traced to
the journal record it came from, and `ts`: the emitter's nanosecond stamp, stored in UTC
microseconds (truncated, as the sinks truncate it to their units), because Spark refuses
Parquet's TIMESTAMP(NANOS) and reads TIMESTAMP(MICROS, UTC) natively. Truncation is monotonic, so
an order of stamps (run_end at or after the run's last event) holds in the store; ties are broken
by `seq`, as the views already did (they read `ts` as DuckDB's microsecond TIMESTAMPTZ). Stores
written before hold TIMESTAMP(NANOS) files: DuckDB reads both (rounding the old ones to the
microsecond), and `conform` converts them wherever the collector merges files.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

TS = pa.timestamp("us", tz="UTC")

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


def ts_from_ns(ns: pa.Array) -> pa.Array:
    """`ts` values (TS) from int64 nanoseconds since the epoch (never negative: validate.py),
    truncated to the microsecond."""
    return pc.divide(ns, 1000).cast(TS)


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """`data` (rows of a stored file) with `schema`'s types: an older file's nanosecond `ts`
    becomes TS, truncated as `ts_from_ns` truncates."""
    if data.schema.equals(schema):
        return data
    at = data.schema.get_field_index("ts")
    if at >= 0 and data.schema.field(at).type != TS:
        ns = data.column(at).cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
        data = data.set_column(at, "ts", ts_from_ns(ns))
    return data.select(schema.names).cast(schema)
