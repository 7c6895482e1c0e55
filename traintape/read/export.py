"""`traintape export`: one run's rows of each table as Parquet or CSV files, and its run.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import duckdb

from traintape.globs import sql_string
from traintape.read.history import show
from traintape.read.query import rows

__all__ = ["EXPORT_TABLES", "export"]

EXPORT_TABLES = ("metrics", "params", "events", "checkpoints", "system")


def export(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    out: Path,
    fmt: str = "parquet",
    tables: Sequence[str] = EXPORT_TABLES,
) -> list[tuple[str, Path, int]]:
    """Writes the run's rows of each view in `tables` to `out/<table>.<fmt>` and its `runs` row,
    config and environment to `out/run.json`; returns (table, path, rows) per file."""
    if fmt not in ("parquet", "csv"):
        msg = f"format must be parquet or csv, got {fmt!r}"
        raise ValueError(msg)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    order = {
        "metrics": "rank, step, key, ts, source, seq",
        "params": "key",
        "events": "ts, rank, source, seq",
        "checkpoints": "ts, rank",
        "system": "ts, host, device, key",
    }
    run_lit = sql_string(run_id)
    options = "FORMAT parquet, COMPRESSION zstd" if fmt == "parquet" else "FORMAT csv, HEADER"
    for table in tables:
        if table not in order:
            msg = f"unknown table {table!r}; one of {', '.join(EXPORT_TABLES)}"
            raise ValueError(msg)
        path = out / f"{table}.{fmt}"
        tmp = path.with_name(path.name + ".tmp")
        select = f"SELECT * FROM {table} WHERE run_id = {run_lit} ORDER BY {order[table]}"
        if table == "checkpoints":  # JSON columns as text, which every reader understands
            select = select.replace("SELECT *", "SELECT * REPLACE (metrics::VARCHAR AS metrics)")
        copy = f"COPY ({select}) TO {sql_string(str(tmp))} ({options})"
        count = rows(con, copy)[0][0]  # COPY answers the number of rows it wrote
        tmp.replace(path)
        written.append((table, path, int(count)))
    info = show(con, run_id)
    path = out / "run.json"
    path.write_text(
        json.dumps(
            {"run": info["run"], "config": info["config"], "environment": info["environment"]},
            default=str,
            indent=1,
        )
    )
    written.append(("run", path, 1))
    return written
