"""SQL building blocks of the read side: queries that survive a compaction, and FROM clauses
that read only the folders of the runs asked about.

A `traintape.connect()` connection knows its store (the `traintape_store` variable): a question
about one run then opens its few files, not every run's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from traintape.globs import sql_string
from traintape.read.store import table_files

__all__ = [
    "answer",
    "by_step",
    "latest_params",
    "records",
    "rows",
    "run_metrics",
    "run_names",
    "run_rows",
    "store_of",
]

_T = TypeVar("_T")


def _retry(fn: Callable[[], _T], attempts: int = 3) -> _T:
    """Runs a query again if a file it listed vanished (a compaction moved it meanwhile)."""
    for i in range(attempts):
        try:
            return fn()
        except duckdb.IOException:
            if i == attempts - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def rows(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    return _retry(lambda: con.execute(sql, list(params)).fetchall())


def answer(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> tuple[list[str] | None, list[tuple[Any, ...]]]:
    """(column names, rows) of any statement, run again if a file it listed vanished; names
    None for a statement that returns no rows. A failed statement changed nothing (DuckDB
    rolls it back), so running it again is safe."""

    def run() -> tuple[list[str] | None, list[tuple[Any, ...]]]:
        cur = con.execute(sql, list(params))
        if cur.description is None:
            return None, []
        return [d[0] for d in cur.description], cur.fetchall()

    return _retry(run)


def records(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    names, found = answer(con, sql, params)
    return [dict(zip(names or (), r)) for r in found]


def run_rows(con: duckdb.DuckDBPyConnection, table: str, run_ids: Sequence[str]) -> str:
    """A FROM clause with the stored rows of `table` (metrics, params, events, system) of
    `run_ids`, as in the Parquet files (no view columns such as `attempt`).

    On a `traintape.connect()` connection it reads only those runs' folders: a question about
    one run then opens its few files, not every run's. Elsewhere, the view of the same name.
    """
    ids = ", ".join(sql_string(r) for r in run_ids) or "NULL"
    store = store_of(con)
    if store is None:
        return f"(SELECT * FROM {table} WHERE run_id IN ({ids}))"
    # Folder names are run ids made safe for a path, so two ids can share one: filter by id too.
    return f"(SELECT * FROM {table_files(store, table, run_ids)} WHERE run_id IN ({ids}))"


def run_metrics(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> str:
    """`run_rows` of the metrics: run_id, rank, step, ts, key, value (and source, seq)."""
    return run_rows(con, "metrics", run_ids)


def latest_params(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """(run_id, key, value as JSON text) of the runs' params, the latest value per key, as the
    params view has them, read from the runs' folders only."""
    return rows(
        con,
        f"""SELECT run_id, key, arg_max(value, ts) FROM {run_rows(con, "params", run_ids)}
            GROUP BY run_id, key ORDER BY run_id, key""",
    )


def run_names(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> dict[str, str]:
    """{run_id: name} from the runs' latest run_start."""
    return dict(
        rows(
            con,
            f"""SELECT run_id, arg_max(json_extract_string(body, '$.name'), ts)
                FROM {run_rows(con, "events", run_ids)} WHERE kind = 'run_start'
                GROUP BY run_id""",
        )
    )


def store_of(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The store folder of a `traintape.connect()` connection (None for another connection)."""
    try:
        row = con.execute("SELECT getvariable('traintape_store')").fetchone()
        store = row[0] if row is not None else None
    except duckdb.Error:
        return None
    return Path(store) if store else None


def by_step(source: str) -> str:
    """metrics_by_step's definition, over `source`."""
    return (
        f"(SELECT run_id, step, key, avg(value) AS mean, min(value) AS min, max(value) AS max, "
        f"count(*) AS count FROM {source} GROUP BY run_id, step, key)"
    )
