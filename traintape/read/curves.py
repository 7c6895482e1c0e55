"""Curves and the live view: metric series per run (or per rank) for `plot`, and the newest values
for `tail`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from traintape.read.query import by_step, records, rows, run_metrics, run_names

__all__ = ["Curve", "curves", "latest", "newest_run"]


@dataclass
class Curve:
    """One line of a plot: a metric of a run (mean across ranks), or of one rank of it."""

    run_id: str
    name: str
    key: str
    rank: int | None
    steps: list[int]
    values: list[float]


def curves(
    con: duckdb.DuckDBPyConnection,
    run_ids: Sequence[str],
    keys: Sequence[str],
    per_rank: bool = False,
) -> list[Curve]:
    """Per run and metric, (step, value) ordered by step: the mean across ranks, or one curve per
    rank with `per_rank`. Runs or metrics without values give no curve."""
    ids, ks = list(run_ids), list(keys)
    source = run_metrics(con, ids)
    if per_rank:
        sql = f"""SELECT run_id, key, rank, list(step ORDER BY step, ts), list(value ORDER BY step, ts)
                  FROM {source} WHERE key IN (SELECT unnest(?::VARCHAR[]))
                  GROUP BY run_id, key, rank"""
    else:
        source = by_step(f"(SELECT * FROM {source} WHERE key IN (SELECT unnest(?::VARCHAR[])))")
        sql = f"""SELECT run_id, key, NULL, list(step ORDER BY step), list(mean ORDER BY step)
                  FROM {source} GROUP BY run_id, key"""
    names = run_names(con, ids)
    found = rows(con, sql, [ks])
    found.sort(key=lambda r: (ids.index(r[0]), ks.index(r[1]), r[2] or 0))
    return [Curve(r[0], names.get(r[0]) or r[0], r[1], r[2], r[3], r[4]) for r in found]


def latest(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """What `traintape tail` shows: the run's `runs` row and, per metric, the value at its newest
    step (mean across ranks) with the min and max so far."""
    run = records(
        con,
        "SELECT run_id, name, project, status, started, duration_s, ranks FROM runs WHERE run_id = ?",
        [run_id],
    )
    metrics = records(
        con,
        f"""SELECT key, max(step) AS step, arg_max(mean, step) AS value, count(*) AS steps,
                  min(mean) FILTER (WHERE isfinite(mean)) AS min,
                  max(mean) FILTER (WHERE isfinite(mean)) AS max
           FROM {by_step(run_metrics(con, [run_id]))} GROUP BY key ORDER BY key""",
    )
    return {"run": run[0] if run else None, "metrics": metrics}


def newest_run(con: duckdb.DuckDBPyConnection) -> str | None:
    """The running run started last, else the run started last; None in an empty store."""
    found = rows(
        con, "SELECT run_id FROM runs ORDER BY status = 'running' DESC, started DESC LIMIT 1"
    )
    return str(found[0][0]) if found else None
