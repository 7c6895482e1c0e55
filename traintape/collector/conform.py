"""Old files brought to the current table schemas, once per collector's store.

Stores written before microsecond timestamps hold files whose `ts` is TIMESTAMP(NANOS), which
Spark refuses (tests/test_spark.py). Compaction conforms the files it merges, but a file it never
merges (a run folder's only file, one past TARGET_BYTES) would stay old forever. At its first
start on a store the collector's compaction thread rewrites each such file of its own run folders
as a one-file compaction (compaction.py's transaction: readers see the old file or the new one,
never both, never neither with the swap method), into the other name of the same journal range
(`part-` <-> `compact-`): a name never seen with the old footer, which readers cache by name.
`state/conformed.json` then records it done, so later starts read no footers.
"""

from __future__ import annotations

import logging

import pyarrow.parquet as pq

from traintape.collector.compaction import Compactor
from traintape.collector.merging import DataFile, data_files
from traintape.collector.schedule import run_folders
from traintape.durable import write_json_atomic
from traintape.schemas import tables

VERSION = 1
"""What `state/conformed.json` says was done: 1, `ts` in microseconds."""

logger = logging.getLogger(__name__)


def conform_old_files(compactor: Compactor, committed: int) -> int:
    """Rewrites this collector's committed files of an older schema; returns how many. Never
    raises: a file that fails stays as it was (still read by DuckDB) and is tried at next start."""
    marker = compactor.layout.state / "conformed.json"
    if marker.exists():
        return 0
    done = failed = 0
    for table, folder_name in run_folders(compactor.layout):
        folder = compactor.layout.table(table) / folder_name
        try:
            old = [f for f in data_files(folder) if f.end <= committed and _old(f, table)]
        except OSError as exc:  # the folder went away meanwhile (a swap): its files are new
            logger.warning("cannot list %s: %s", folder, exc)
            failed += 1
            continue
        for f in old:
            try:
                compactor.resolve_intent()
                compactor.merge(table, folder, [f], _other_name(f.path.name))
                done += 1
            except Exception as exc:  # the file is unchanged (the transaction rolled back)
                logger.warning("cannot conform %s: %s: %s", f.path, type(exc).__name__, exc)
                failed += 1
    if done:
        logger.info("rewrote %d files of an older schema (nanosecond timestamps)", done)
    if not failed:
        write_json_atomic(marker, {"version": VERSION, "rewritten": done})
    return done


def _old(f: DataFile, table: str) -> bool:
    """Whether the file's `ts` is not the current type (its footer only is read)."""
    schema = pq.read_schema(f.path)
    return table in tables.TABLES and "ts" in schema.names and schema.field("ts").type != tables.TS


def _other_name(name: str) -> str:
    """`part-S-E.parquet` <-> `compact-S-E.parquet`: the same range under a new name."""
    prefix, _, rest = name.partition("-")
    return f"{'compact' if prefix == 'part' else 'part'}-{rest}"


__all__ = ["conform_old_files"]
