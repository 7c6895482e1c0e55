"""The chart data of the dashboard: one metric of one run (`/api/series`) and a run's system
samples (`/api/system`), downsampled in DuckDB (traintape.ui.downsample).

x is the step, the wall time (`time`: Unix seconds), the seconds since the run's first start
(`relative`) or another metric (`metric`, named by `x_key`): each value is then drawn against
that metric's value at the same (rank, step), the latest one where a step was logged twice; a
value whose step has no such value (the two are logged at different steps) has no x, and is
counted apart (`unmatched`) for the page to say so. A series reads only its run's folder
(traintape.read.query.run_rows), a live poll only the files holding steps past its cursor (traintape.ui.index). NaN and ±Inf are never
dropped: they are listed apart (`nonfinite`) at their x, and the lines and bands are drawn through
the finite values.

Live runs: `cursor` is the x up to which every rank of the run that is still running has sent
this metric, and the series stops there; a poll with `after=cursor` then returns only the points
past it. A step that one rank has logged and another not yet is held back until it is whole, so
neither a mean nor a rank's line ever gets a point twice or misses one. Against a metric the
cursor is a step (the x of such a chart need not grow with the steps), and a rank's steps past
the last one its x metric reached are held back too, until their x arrives.
"""

from __future__ import annotations

import math
from typing import Any

import duckdb

from traintape.errors import QueryError
from traintape.globs import sql_string
from traintape.read.query import rows, run_rows
from traintape.ui.downsample import m4_sql, nonfinite_sql
from traintape.ui.index import MetricIndex

__all__ = ["X_KINDS", "metric_series", "system_series"]

X_KINDS = ("step", "time", "relative", "metric")
RANK_MODES = ("mean", "all")

_LIFE = """
    SELECT list(rank) FILTER (WHERE state = 'running'), min(started) FROM (
        SELECT rank, arg_max(CASE kind WHEN 'run_start' THEN 'running' WHEN 'run_end' THEN 'ended'
                                  ELSE json_extract_string(body, '$.status') END, ts) AS state,
               min(epoch_us(ts::TIMESTAMPTZ)) FILTER (WHERE kind = 'run_start') AS started
        FROM {events} WHERE kind IN ('run_start', 'run_end', 'run_status') GROUP BY rank)"""
"""The ranks of the run still running (their latest word is a start, or the collector's
`running`), and the run's first start (µs), from its own events folder."""

MEAN = -1
"""The series id (g) of the mean across ranks inside the SQL: an equi-join key, never NULL."""


def _x_expr(x_kind: str, started_us: int | None) -> str:
    if x_kind == "step":
        return "step::DOUBLE"
    if x_kind == "time":
        return "epoch_us(ts::TIMESTAMPTZ) / 1e6"
    origin = "min(epoch_us(ts::TIMESTAMPTZ)) OVER ()" if started_us is None else str(started_us)
    return f"(epoch_us(ts::TIMESTAMPTZ) - {origin}) / 1e6"


def _range(x_kind: str, x0: float | None, x1: float | None, after: float | None) -> str:
    """The rows of the x range asked, as a filter over the stored columns where it can be (the
    step: so Parquet's row-group statistics skip what lies before `after`). Against a metric,
    `after` is a step (the cursor's unit there) and the range is over the x metric's values."""
    col, lo, hi = ("x", float, float) if x_kind != "step" else ("step", math.ceil, math.floor)
    where = []
    if x0 is not None:
        where.append(f"{col} >= {lo(x0)!r}")
    if x1 is not None:
        where.append(f"{col} <= {hi(x1)!r}")
    if after is not None:
        where.append(
            f"step > {math.floor(after)!r}" if x_kind == "metric" else f"{col} > {hi(after)!r}"
        )
    return " AND ".join(where) or "true"


def _points_sql(ranks: str, single: bool, x_kind: str) -> str:
    """The drawable points of the rows `raw` has: per rank, or the mean across ranks per step
    with the min and max as its band (finite values only). A metric only one rank logs is its
    own mean and band, without a pass grouping by step. The mean's x is the latest time across
    ranks, or the mean of the x metric's values."""
    if ranks == "all":
        return (
            "(SELECT rank AS g, x, value AS y, NULL::DOUBLE AS lo, NULL::DOUBLE AS hi "
            "FROM raw WHERE isfinite(value))"
        )
    if single:
        return (
            f"(SELECT {MEAN} AS g, x, value AS y, value AS lo, value AS hi FROM raw "
            "WHERE isfinite(value))"
        )
    return f"""MATERIALIZED (
               SELECT {MEAN} AS g, {"avg" if x_kind == "metric" else "max"}(x) AS x,
                      avg(value) AS y, min(value) AS lo, max(value) AS hi
               FROM raw WHERE isfinite(value) GROUP BY step)"""


def metric_series(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    key: str,
    *,
    x_kind: str = "step",
    x_key: str | None = None,
    ranks: str = "mean",
    width: int = 800,
    x0: float | None = None,
    x1: float | None = None,
    after: float | None = None,
    index: MetricIndex | None = None,
) -> dict[str, Any]:
    """One metric of one run as the chart draws it (see the module docstring); `index` keeps
    what each file of the run holds between calls (the server's one)."""
    _check(x_kind, ranks, x_key)
    index = index or MetricIndex()
    events = run_rows(con, "events", [run_id])
    live, started = rows(con, _LIFE.format(events=events))[0]
    by_step = x_kind in ("step", "metric")
    after_step = math.floor(after) if after is not None and by_step else None
    found = index.lookup(con, run_id, key, after_step)
    held = sorted(set(live or ()) & found.ranks)  # the ranks that may still send this metric
    x_src = None
    if x_kind == "metric" and x_key is not None:
        x_src = index.lookup(con, run_id, x_key, after_step).source
    args = (_range(x_kind, x0, x1, after), ranks, held, after, width)

    def sql(narrowed: bool) -> str:
        whole = run_rows(con, "metrics", [run_id])
        got = _got_sql(
            (found.source if narrowed else None) or whole,
            key,
            x_kind,
            started,
            (x_src if narrowed else None) or whole,
            x_key,
        )
        return _series_sql(got, x_kind, *args, len(found.ranks) if narrowed else 0)

    try:
        answer = rows(con, sql(True))
    except duckdb.IOException:  # a file of the narrowed list was merged away meanwhile
        answer = rows(con, sql(False))
    out = _assemble(answer, width, integer_x=x_kind == "step")
    return {"run_id": run_id, "key": key, "x_kind": x_kind, "x_key": x_key, "ranks": ranks, **out}


def _got_sql(
    metrics: str, key: str, x_kind: str, started: int | None, x_rows: str, x_key: str | None
) -> str:
    """The metric's rows as rank, step, value, x, pos (where the cursor counts: the step, or
    x on a time axis) and ok (x is drawable). Against a metric, x is that metric's latest value
    at the same (rank, step), NULL where it has none."""
    if x_kind != "metric":
        x = _x_expr(x_kind, started)
        return f"""SELECT rank, step, value, {x} AS x, {x} AS pos, true AS ok
                   FROM {metrics} WHERE key = {sql_string(key)}"""
    return f"""
        SELECT m.rank, m.step, m.value, v.x, m.step::DOUBLE AS pos,
               v.x IS NOT NULL AND isfinite(v.x) AS ok
        FROM (SELECT rank, step, value FROM {metrics}
              WHERE key = {sql_string(key)} AND step IS NOT NULL) m
        LEFT JOIN (SELECT rank, step, arg_max(value, ts) AS x FROM {x_rows}
                   WHERE key = {sql_string(str(x_key))} AND step IS NOT NULL
                   GROUP BY rank, step) v
          ON m.rank = v.rank AND m.step = v.step"""


def _series_sql(
    got: str,
    x_kind: str,
    where: str,
    ranks: str,
    held: list[int],
    after: float | None,
    width: int,
    n_ranks: int,
) -> str:
    """Rows tagged p (a point: g, x, y, lo, hi), n (non-finite: g, x, count in y, kind) and
    c (x: the cursor, y: the points before downsampling, lo: the values without an x)."""
    after_sql = "NULL::DOUBLE" if after is None else repr(float(after))
    # The cursor: the least of each held rank's newest pos (its `after` when it sent nothing
    # new); against a metric, the newest step whose x has arrived.
    cursor = "(SELECT max(pos) FROM got)"
    if held:
        cursor = f"""(SELECT min(coalesce(per.mx, {after_sql}))
                      FROM (SELECT unnest({held!r}) AS rank) h LEFT JOIN per USING (rank))"""
    upto = "" if not held else ", cur WHERE pos <= c AND"
    return f"""
    WITH got AS MATERIALIZED (
        SELECT * FROM ({got})
        WHERE pos IS NOT NULL AND {
        where
    }),  -- a value logged without a step has no place on a step axis
    per AS (SELECT rank, max(pos) FILTER (WHERE x IS NOT NULL) AS mx FROM got GROUP BY rank),
    cur AS (SELECT coalesce({cursor}, {after_sql}) AS c),
    raw AS (SELECT got.* FROM got{upto or " WHERE"} ok),
    p AS {_points_sql(ranks, n_ranks == 1, x_kind)}
    SELECT 'p' AS tag, g, x, y, lo, hi, NULL AS kind FROM ({m4_sql("p", width)})
    UNION ALL
    SELECT 'n', g, x, n, NULL, NULL, kind FROM ({
        nonfinite_sql("(SELECT rank AS g, x, value FROM raw WHERE NOT isfinite(value))", width)
    })
    UNION ALL
    SELECT 'c', NULL, (SELECT c FROM cur), (SELECT count(*) FROM p),
           (SELECT count(*) FROM got{upto or " WHERE"} NOT ok), NULL, NULL"""


def system_series(
    con: duckdb.DuckDBPyConnection, run_id: str, key: str, *, width: int = 800
) -> dict[str, Any]:
    """A system metric (cpu_percent, gpu_util, ...) sampled while the run was active, against
    wall time: one series per (host, device, rank)."""
    found = rows(
        con,
        """SELECT DISTINCT host, device, rank FROM system WHERE run_id = ? AND key = ?
           ORDER BY host, device, rank NULLS FIRST""",
        [run_id, key],
    )
    labels = [{"host": h, "device": d, "rank": r} for h, d, r in found]
    source = """(SELECT s.idx AS g, epoch_us(v.ts) / 1e6 AS x, v.value, v.value AS y,
                         NULL::DOUBLE AS lo, NULL::DOUBLE AS hi
                  FROM system v JOIN (SELECT unnest(?::VARCHAR[]) AS host,
                                             unnest(?::VARCHAR[]) AS device,
                                             unnest(?::INTEGER[]) AS rank,
                                             unnest(range(?)) AS idx) s
                    ON v.host = s.host AND v.device = s.device
                   AND v.rank IS NOT DISTINCT FROM s.rank
                  WHERE v.run_id = ? AND v.key = ?)"""
    sql = f"""WITH src AS MATERIALIZED {source},
    p AS (SELECT * FROM src WHERE isfinite(value))
    SELECT 'p', g, x, y, lo, hi, NULL FROM ({m4_sql("p", width)})
    UNION ALL
    SELECT 'n', g, x, n, NULL, NULL, kind FROM ({
        nonfinite_sql("(SELECT g, x, value FROM src WHERE NOT isfinite(value))", width)
    })
    UNION ALL
    SELECT 'c', NULL, (SELECT max(x) FROM src), (SELECT count(*) FROM p), NULL, NULL, NULL"""
    params: list[Any] = [[lb["host"] for lb in labels], [lb["device"] for lb in labels]]
    params += [[lb["rank"] for lb in labels], len(labels), run_id, key]
    out = _assemble(rows(con, sql, params), width, integer_x=False)
    for s in out["series"]:
        s.update(labels[s.pop("rank")])
    for n in out["nonfinite"]:
        n.update(labels[n.pop("rank")])
    return {"run_id": run_id, "key": key, "x_kind": "time", **out}


def _check(x_kind: str, ranks: str, x_key: str | None = None) -> None:
    if x_kind not in X_KINDS:
        msg = f"x must be one of {', '.join(X_KINDS)}, got {x_kind!r}"
        raise QueryError(msg)
    if x_kind == "metric" and not x_key:
        msg = "x=metric needs xkey: the metric key to draw against, e.g. x=metric&xkey=lr"
        raise QueryError(msg)
    if ranks not in RANK_MODES:
        msg = f"ranks must be one of {', '.join(RANK_MODES)}, got {ranks!r}"
        raise QueryError(msg)


def _assemble(found: list[tuple[Any, ...]], width: int, *, integer_x: bool) -> dict[str, Any]:
    """The tagged rows of a series query as the API's JSON shape."""
    series: dict[Any, dict[str, Any]] = {}
    nonfinite: list[dict[str, Any]] = []
    cursor, total, unmatched = None, 0, 0
    conv = (lambda v: int(v) if v is not None and math.isfinite(v) else v) if integer_x else float
    for tag, g, x, y, lo, hi, kind in found:
        g = None if g == MEAN else g
        if tag == "p":
            s = series.setdefault(g, {"rank": g, "x": [], "y": [], "ymin": [], "ymax": []})
            s["x"].append(conv(x))
            s["y"].append(y)
            s["ymin"].append(lo)
            s["ymax"].append(hi)
        elif tag == "n":
            nonfinite.append({"x": conv(x), "rank": g, "value": kind, "count": int(y)})
        else:
            cursor, total = (conv(x) if x is not None else None), int(y or 0)
            unmatched = int(lo or 0)
    for s in series.values():
        if all(v is None for v in s["ymin"]):
            s["ymin"] = s["ymax"] = None
    drawn = sum(len(s["x"]) for s in series.values())
    return {
        "series": list(series.values()),
        "nonfinite": nonfinite,
        "cursor": cursor,
        "total_points": total,
        "unmatched": unmatched,  # values with no x (against a metric: no value at their step)
        "downsampled": drawn < total,
        "max_points": 2 * width,
    }
