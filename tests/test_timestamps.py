"""`ts` is stored as TIMESTAMP(MICROS, UTC), the type Spark reads (tests/test_spark.py reads it);
stores written before hold TIMESTAMP(NANOS) files, and a store with both kinds keeps working:
the views read both, a collector's start rewrites the schema-only files, compaction merges old
and new files into one microsecond file with every row."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import traintape
from traintape.collector.compaction import Compactor
from traintape.collector.materializer import ensure_empty_tables
from traintape.layout import StoreLayout, part_name
from traintape.schemas import tables

RUN = "mixedrun01"
OLD_TS = pa.timestamp("ns", tz="UTC")
T0 = 1_700_000_000_123_456_200  # ns: a sub-microsecond part under 500, so every cast agrees


def _old_schema(schema: pa.Schema) -> pa.Schema:
    """The schema as stores wrote it before: `ts` in nanoseconds."""
    return schema.set(schema.get_field_index("ts"), pa.field("ts", OLD_TS, nullable=False))


def _rows(table: str, seq: int, ts_ns: int, value: float, old: bool) -> pa.Table:
    schema = tables.TABLES[table]
    cols = {
        "run_id": [RUN],
        "rank": pa.array([0], pa.int32()),
        "source": ["src"],
        "seq": [seq],
        "ts": pa.array([ts_ns], pa.int64()),
        "step": [seq],
    }
    if table == "metrics":
        cols.update(key=["loss"], value=[value])
    elif table == "params":
        cols.update(key=["lr"], value=[str(value)], value_num=[value])
    else:
        cols.update(kind=["text"], body=[f'{{"text": "{value}"}}'])
    if old:
        cols["ts"] = cols["ts"].cast(OLD_TS)
        return pa.table(cols, schema=_old_schema(schema))
    cols["ts"] = tables.ts_from_ns(cols["ts"])
    return pa.table(cols, schema=schema)


def _mixed_store(tmp_path: Path) -> Path:
    """A store as an upgrade leaves it: old schema-only files and an old part per table, then a
    new part written after the upgrade, in the same run folders."""
    store = tmp_path / "store"
    layout = StoreLayout(store)
    for table in ("metrics", "params", "events"):
        empty = layout.empty_table_file(table)
        empty.parent.mkdir(parents=True)
        pq.write_table(_old_schema(tables.TABLES[table]).empty_table(), empty)
        folder = layout.run_folder(table, RUN)
        folder.mkdir(parents=True)
        pq.write_table(_rows(table, 1, T0, 1.0, old=True), folder / part_name(0, 10))
        pq.write_table(_rows(table, 2, T0 + 5_000, 2.0, old=False), folder / part_name(10, 20))
    empty = layout.empty_table_file("system")
    empty.parent.mkdir(parents=True)
    pq.write_table(_old_schema(tables.SYSTEM).empty_table(), empty)
    return store


def _answers(store: Path) -> list[list[tuple]]:
    con = traintape.connect(store)
    return [
        con.execute(
            "SELECT seq, epoch_us(ts), value FROM metrics WHERE run_id = ? ORDER BY seq", [RUN]
        ).fetchall(),
        con.execute("SELECT value, epoch_us(ts) FROM params WHERE run_id = ?", [RUN]).fetchall(),
        con.execute(
            "SELECT seq, epoch_us(ts), body FROM events WHERE run_id = ? ORDER BY seq", [RUN]
        ).fetchall(),
    ]


EXPECTED = [
    [(1, T0 // 1000, 1.0), (2, T0 // 1000 + 5, 2.0)],
    [("2.0", T0 // 1000 + 5)],
    [(1, T0 // 1000, '{"text": "1.0"}'), (2, T0 // 1000 + 5, '{"text": "2.0"}')],
]


def test_stored_ts_is_microseconds_truncated() -> None:
    """Every table stores `ts` as TIMESTAMP(MICROS, UTC), the emitter's nanoseconds truncated."""
    for schema in tables.TABLES.values():
        assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
    got = tables.ts_from_ns(pa.array([T0, 999, 1000], pa.int64())).cast(pa.int64())
    assert got.to_pylist() == [T0 // 1000, 0, 1]


def test_views_read_a_store_with_old_and_new_timestamp_files(tmp_path: Path) -> None:
    """Views over a run folder holding a nanosecond file and a microsecond one return both rows,
    with the same `ts`, before and after a collector's start rewrites the schema-only files."""
    store = _mixed_store(tmp_path)
    assert _answers(store) == EXPECTED
    ensure_empty_tables(store)
    for name, schema in tables.TABLES.items():
        assert pq.read_schema(StoreLayout(store).empty_table_file(name)).equals(schema)
    assert _answers(store) == EXPECTED


def test_compaction_merges_old_and_new_timestamp_files(tmp_path: Path) -> None:
    """Compaction merges a nanosecond file and a microsecond one into one microsecond file with
    every row, and the views' answers stay the same."""
    store = _mixed_store(tmp_path)
    ensure_empty_tables(store)
    assert Compactor(store, log=lambda text: None).compact_all(20) == 3
    for table in ("metrics", "params", "events"):
        (merged,) = StoreLayout(store).run_folder(table, RUN).glob("*.parquet")
        assert merged.name.startswith("compact-")
        assert pq.read_schema(merged).equals(tables.TABLES[table])
        assert pq.ParquetFile(merged).metadata.num_rows == 2
    assert _answers(store) == EXPECTED
