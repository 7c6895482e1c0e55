"""What a merge reads and writes: the data files of a run folder, which of them to merge, and
the merged file (rows sorted per table, row groups starting at key boundaries). The transaction
that puts a merged file in place, and when merges run, are compaction.py's."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from traintape.layout import data_file_range
from traintape.schemas import tables

TARGET_BYTES = 64 << 20
"""A file at least this big is left as it is; a merge reads at most about this many bytes."""

ROW_GROUP_ROWS = 64 * 1024
"""Most rows per Parquet row group in merged files."""

MIN_GROUP_ROWS = 4096
"""Row groups of sorted tables start at a new key once they hold this many rows: a query for
one metric then reads only that metric's row groups (DuckDB skips the others by their min/max
statistics), while metrics logged rarely still share a group and keep the footer small."""

SORT_KEYS: dict[str, list[tuple[str, str]]] = {
    "metrics": [("key", "ascending"), ("rank", "ascending"), ("step", "ascending")],
    "system": [("key", "ascending"), ("ts", "ascending")],
}
"""How merged rows are ordered per table (other tables keep the journal's order)."""


@dataclass(frozen=True)
class DataFile:
    path: Path
    start: int
    end: int
    size: int


def data_files(folder: Path) -> list[DataFile]:
    """The `part-*` and `compact-*` Parquet files of one run folder, oldest range first."""
    found = []
    for path in folder.glob("*.parquet"):
        bounds = data_file_range(path.name)
        if bounds is not None:
            found.append(DataFile(path, *bounds, path.stat().st_size))
    return sorted(found, key=lambda f: f.start)


def plan(files: list[DataFile], committed: int, min_files: int) -> list[list[DataFile]]:
    """Groups of files to merge: contiguous small files past the last big one, each group under
    TARGET_BYTES, only ranges already committed by the materializer."""
    files = [f for f in files if f.end <= committed]
    tail: list[DataFile] = []
    for f in files:
        if f.size >= TARGET_BYTES:
            tail = []
        else:
            tail.append(f)
    if len(tail) < min_files:
        return []
    groups: list[list[DataFile]] = [[]]
    total = 0
    for f in tail:
        if groups[-1] and total + f.size > TARGET_BYTES:
            groups.append([])
            total = 0
        groups[-1].append(f)
        total += f.size
    return [g for g in groups if len(g) >= 2]


def merged_table(table: str, paths: Iterable[Path]) -> pa.Table:
    # Files of stores written before microsecond `ts` are converted (schemas/tables.py).
    schema = tables.TABLES[table]
    data = pa.concat_tables([tables.conform(pq.ParquetFile(p).read(), schema) for p in paths])
    return sort_for_storage(table, data)


def sort_for_storage(table: str, data: pa.Table) -> pa.Table:
    keys = SORT_KEYS.get(table)
    return data.sort_by(keys) if keys else data


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """How every table file is written (materialized parts and merged files alike).

    Dictionaries for strings and int32 (run_id, source, key, kind, rank: few distinct values);
    int64 and timestamps (seq, ts, step) delta-encoded: sorted by key, a metric's seq, ts and
    step rise steadily but never repeat, and dictionaries of them made merged files twice the
    size of their inputs; doubles plain (zstd folds repeated values). Every engine reads both
    encodings (Parquet 1.0 and 2.0's DELTA_BINARY_PACKED: DuckDB, pyarrow, Spark)."""
    dictionary = [f.name for f in schema if pa.types.is_string(f.type) or f.type == pa.int32()]
    delta = [f.name for f in schema if f.type == pa.int64() or pa.types.is_timestamp(f.type)]
    return {
        "compression": "zstd",
        "use_dictionary": dictionary,
        "column_encoding": dict.fromkeys(delta, "DELTA_BINARY_PACKED"),
    }


def write_parquet(data: pa.Table, path: Path, table: str | None = None) -> None:
    """Writes and fsyncs `path` (the caller renames it into place); a table sorted by key
    (`SORT_KEYS`) gets row groups that start at key boundaries."""
    bounds = _row_groups(data) if table in SORT_KEYS else None
    options = parquet_options(data.schema)
    if bounds is None:
        pq.write_table(data, path, row_group_size=ROW_GROUP_ROWS, **options)
    else:
        with pq.ParquetWriter(path, data.schema, **options) as writer:
            for lo, hi in zip(bounds, bounds[1:]):
                writer.write_table(data.slice(lo, hi - lo), row_group_size=ROW_GROUP_ROWS)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _row_groups(data: pa.Table) -> list[int]:
    """Row offsets where groups start (and the end): at a key change once a group has
    MIN_GROUP_ROWS rows, and every ROW_GROUP_ROWS rows within a key."""
    keys = data.column("key").combine_chunks().dictionary_encode().indices.to_numpy()
    changes = (np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist() if len(keys) else []
    bounds = [0]
    for at in [*changes, len(keys)]:
        while at - bounds[-1] > ROW_GROUP_ROWS:
            bounds.append(bounds[-1] + ROW_GROUP_ROWS)
        if at - bounds[-1] >= MIN_GROUP_ROWS or at == len(keys):
            bounds.append(at)
    return [b for i, b in enumerate(bounds) if i == 0 or b > bounds[i - 1]]
