"""Questions about past and running runs, as functions over a `traintape.connect()` connection.

Each returns plain rows or dicts; `traintape.cli` prints them and `traintape.read.plot` draws them.
Across ranks a metric is the mean of the ranks' values at a step (the `metrics_by_step` view);
"best" ignores NaN and ±Inf, so a diverged step is never a best.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from traintape.errors import AmbiguousRunError, RunLookupError, RunNotFoundError
from traintape.globs import literal
from traintape.layout import StoreLayout, run_folder_name
from traintape.schemas.values import flatten  # as params are stored: {"opt": {"lr": 1}} -> opt.lr

__all__ = [
    "AmbiguousRunError",
    "Curve",
    "RunLookupError",
    "RunNotFoundError",
    "best_runs",
    "compare",
    "curves",
    "export",
    "flatten",
    "guess_mode",
    "importance",
    "latest",
    "latest_params",
    "metric_keys",
    "metric_summary",
    "newest_run",
    "records",
    "resolve_run",
    "resolve_runs",
    "rows",
    "run_names",
    "run_rows",
    "show",
]

MODES = ("min", "max")
EXPORT_TABLES = ("metrics", "params", "events", "checkpoints", "system")

_T = TypeVar("_T")
_HIGHER_IS_BETTER = frozenset(
    [
        "acc",
        "accuracy",
        "auc",
        "auroc",
        "f1",
        "precision",
        "recall",
        "score",
        "reward",
        "return",
        "bleu",
        "rouge",
        "iou",
        "map",
        "top1",
        "top5",
        "r2",
        "ap",
        "ndcg",
        "mrr",
    ]
)


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


def records(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    def run() -> list[dict[str, Any]]:
        cur = con.execute(sql, list(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    return _retry(run)


def run_rows(con: duckdb.DuckDBPyConnection, table: str, run_ids: Sequence[str]) -> str:
    """A FROM clause with the stored rows of `table` (metrics, params, events, system) of
    `run_ids`, as in the Parquet files (no view columns such as `attempt`).

    On a `traintape.connect()` connection it reads only those runs' folders: a question about
    one run then opens its few files, not every run's. Elsewhere, the view of the same name.
    """
    ids = ", ".join(_literal(r) for r in run_ids) or "NULL"
    store = _store_of(con)
    if store is None:
        return f"(SELECT * FROM {table} WHERE run_id IN ({ids}))"
    layout = StoreLayout(store)
    empty = layout.empty_table_file(table)
    globs = [(empty.parent, empty.name)]  # never an empty list
    globs += [(f, "*.parquet") for f in sorted({layout.run_folder(table, r) for r in run_ids})]
    # A folder can exist without a file (a collector died between mkdir and its first write).
    # The folder's path is escaped: the `[`, `*`, `?` of a store's path match nothing else.
    files = ", ".join(
        _literal(f"{literal(folder)}/{name}")
        for folder, name in globs
        if any(folder.glob("*.parquet"))
    )
    # Folder names are run ids made safe for a path, so two ids can share one: filter by id too.
    return f"(SELECT * FROM read_parquet([{files}]) WHERE run_id IN ({ids}))"


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


def _store_of(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The store folder of a `traintape.connect()` connection (None for another connection)."""
    try:
        row = con.execute("SELECT getvariable('traintape_store')").fetchone()
        store = row[0] if row is not None else None
    except duckdb.Error:
        return None
    return Path(store) if store else None


def _by_step(source: str) -> str:
    """metrics_by_step's definition, over `source`."""
    return (
        f"(SELECT run_id, step, key, avg(value) AS mean, min(value) AS min, max(value) AS max, "
        f"count(*) AS count FROM {source} GROUP BY run_id, step, key)"
    )


def guess_mode(key: str) -> str:
    """The direction of "best" a metric's name suggests: "max" for accuracy-like names (acc,
    f1, reward, score, ...), else "min"."""
    tokens = re.split(r"[^a-z0-9]+", key.lower())
    return "max" if any(t in _HIGHER_IS_BETTER or t.startswith("acc") for t in tokens) else "min"


# -- naming a run ---------------------------------------------------------------------------


def resolve_run(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    """The run id for a full id, a unique id prefix, or a run name."""
    store = _store_of(con)
    if (
        store is not None
        and run_folder_name(ref) == ref
        and StoreLayout(store).run_folder("events", ref).is_dir()
    ):
        return ref  # a full id: no need to read every run's start
    found = rows(
        con,
        """WITH s AS (
               SELECT run_id, json_extract_string(body, '$.name') AS name,
                      json_extract_string(body, '$.project') AS project, ts
               FROM events WHERE kind = 'run_start')
           SELECT run_id, arg_max(name, ts), arg_max(project, ts), min(ts) AS started FROM s
           WHERE run_id = ? OR starts_with(run_id, ?) OR name = ?
           GROUP BY run_id ORDER BY started, run_id""",
        [ref, ref, ref],
    )
    exact = [r for r in found if r[0] == ref]
    if exact:
        return ref
    if len(found) == 1:
        return str(found[0][0])
    if not found:
        msg = f"no run has the id, id prefix or name {ref!r} (`traintape runs` lists them)"
        raise RunNotFoundError(msg)
    listing = "\n".join(
        f"  {r[0]}  {r[1]}  ({r[2]}, started {r[3]:%Y-%m-%d %H:%M:%S})" for r in found
    )
    msg = f"{ref!r} matches {len(found)} runs; pass more of the id:\n{listing}"
    raise AmbiguousRunError(msg, found)


def resolve_runs(con: duckdb.DuckDBPyConnection, refs: Sequence[str]) -> list[str]:
    ids: list[str] = []
    for ref in refs:
        run_id = resolve_run(con, ref)
        if run_id not in ids:
            ids.append(run_id)
    return ids


def run_filter(
    project: str | None = None, tag: str | None = None, status: str | None = None
) -> tuple[str, list[Any]]:
    """A `WHERE ...` over the runs view (or "") and its parameters."""
    where, params = [], []
    if project:
        where.append("project = ?")
        params.append(project)
    if tag:
        where.append("list_contains(tags, ?)")
        params.append(tag)
    if status:
        where.append("status = ?")
        params.append(status)
    return (f"WHERE {' AND '.join(where)}" if where else ""), params


# -- one run --------------------------------------------------------------------------------


_SUMMARY_SQL = """
WITH s AS (SELECT run_id, step, key, mean AS value FROM {by_step})
SELECT run_id, key, count(*) AS steps, max(step) AS last_step, arg_max(value, step) AS last,
       min(value) FILTER (WHERE isfinite(value)) AS min,
       arg_min(step, value) FILTER (WHERE isfinite(value)) AS min_step,
       max(value) FILTER (WHERE isfinite(value)) AS max,
       arg_max(step, value) FILTER (WHERE isfinite(value)) AS max_step
FROM s GROUP BY run_id, key ORDER BY run_id, key
"""


def metric_summary(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per (run, metric): steps, last step and value, min/max with their steps, and `best`
    (min or max as `guess_mode` reads the name) with `best_step` and `mode`."""
    out = records(con, _SUMMARY_SQL.format(by_step=_by_step(run_metrics(con, run_ids))))
    for r in out:
        r["mode"] = guess_mode(r["key"])
        r["best"] = r[r["mode"]]
        r["best_step"] = r[f"{r['mode']}_step"]
    return out


def show(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """Everything about one run: its `runs` row, config, params, environment, metrics,
    checkpoints, and the system samples taken while it was active."""
    found = records(con, "SELECT * FROM runs WHERE run_id = ?", [run_id])
    if not found:
        msg = f"no run {run_id!r}"
        raise RunNotFoundError(msg)
    run = found[0]
    config, environment = run.pop("config"), run.pop("environment")
    config = json.loads(config) if config else {}
    environment = json.loads(environment) if environment else {}
    # A body written by another tool may hold something else than a map: shown as it is.
    flat_config = flatten(config) if isinstance(config, dict) else {"config": config}
    if not isinstance(environment, dict):
        environment = {"environment": environment}
    params = [(key, decode_param(value)) for _, key, value in latest_params(con, [run_id])]
    return {
        "run": run,
        "config": flat_config,
        # Only what config does not already say: params logged later, or changed since.
        "params": {k: v for k, v in params if k not in flat_config or flat_config[k] != v},
        "environment": environment,
        "metrics": [
            {k: v for k, v in m.items() if k != "run_id"} for m in metric_summary(con, [run_id])
        ],
        "checkpoints": records(
            con,
            """SELECT step, rank, ts, action, path, bytes, sha256, is_best, blocked_s, write_s,
                      error, metrics::VARCHAR AS metrics, attempt
               FROM checkpoints WHERE run_id = ? ORDER BY ts, rank""",
            [run_id],
        ),
        "system": records(
            con,
            """SELECT host, device, rank, key, count(*) AS samples, avg(value) AS mean,
                      max(value) AS max
               FROM system WHERE run_id = ? AND key <> 'gpu_index'
               GROUP BY ALL ORDER BY host, device, rank, key""",
            [run_id],
        ),
    }


def decode_param(text: str | None) -> Any:
    """A stored param value (JSON text) as the Python value it was."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- several runs ---------------------------------------------------------------------------


def compare(
    con: duckdb.DuckDBPyConnection, run_ids: Sequence[str], all_params: bool = False
) -> dict[str, Any]:
    """Params that differ across the runs (all of them with `all_params`), and per metric the
    last and the best value of each run. Values are in `run_ids` order; a missing one is None."""
    ids = list(run_ids)
    values: dict[str, dict[str, Any]] = {}
    for run_id, key, value in latest_params(con, ids):
        values.setdefault(key, {})[run_id] = decode_param(value)
    params = []
    for key in sorted(values):
        row = [values[key].get(r) for r in ids]
        if (
            all_params
            or len({json.dumps(v, sort_keys=True) for v in row}) > 1
            or len(values[key]) < len(ids)
        ):
            params.append((key, row))
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for m in metric_summary(con, ids):
        summary.setdefault(m["key"], {})[m["run_id"]] = m
    metrics = []
    for key in sorted(summary):
        per_run = [summary[key].get(r) for r in ids]
        mode = guess_mode(key)
        metrics.append((key, "last", [m and m["last"] for m in per_run]))
        metrics.append((key, f"best ({mode})", [m and m["best"] for m in per_run]))
    return {"runs": ids, "params": params, "params_total": len(values), "metrics": metrics}


def best_runs(
    con: duckdb.DuckDBPyConnection,
    metric: str,
    mode: str = "min",
    *,
    project: str | None = None,
    tag: str | None = None,
    status: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Runs ranked by the best value of `metric` (per step, mean across ranks), best first.

    Each row: rank, run_id, name, project, status, best, step (the first step reaching it),
    last (the value at the last step), steps.
    """
    if mode not in MODES:
        msg = f"mode must be one of {MODES}, got {mode!r}"
        raise ValueError(msg)
    where, params = run_filter(project, tag, status)
    order = "ASC" if mode == "min" else "DESC"
    sql = f"""
    WITH picked AS MATERIALIZED (SELECT run_id, name, project, status, started FROM runs {where}),
    b AS (
        SELECT run_id,
               {_BEST[mode]} AS best,
               {_BEST_STEP[mode]} AS step,
               arg_max(mean, step) AS last, count(*) AS steps
        FROM metrics_by_step WHERE key = ? {_semi_join(where)}
        GROUP BY run_id HAVING best IS NOT NULL)
    SELECT row_number() OVER (ORDER BY b.best {order}, p.started, p.run_id) AS rank,
           p.run_id, p.name, p.project, p.status, b.best, b.step, b.last, b.steps
    FROM b JOIN picked p USING (run_id)
    ORDER BY rank {"" if limit is None else f"LIMIT {int(limit)}"}
    """
    return records(con, sql, [*params, metric])


def _semi_join(where: str) -> str:
    # Only with a filter: before the aggregation, a semi join costs more than it saves when
    # every run is picked anyway (the join after it drops runs without a run_start).
    return "AND run_id IN (SELECT run_id FROM picked)" if where else ""


# One pass over the per-step values; ties go to the earliest step (lists compare in order).
_BEST = {
    "min": "min(mean) FILTER (WHERE isfinite(mean))",
    "max": "max(mean) FILTER (WHERE isfinite(mean))",
}
_BEST_STEP = {
    "min": "arg_min(step, [mean, step]) FILTER (WHERE isfinite(mean))",
    "max": "arg_max(step, [mean, -step]) FILTER (WHERE isfinite(mean))",
}


def metric_keys(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in rows(con, "SELECT DISTINCT key FROM metrics ORDER BY key")]


def importance(
    con: duckdb.DuckDBPyConnection,
    metric: str,
    mode: str = "min",
    *,
    project: str | None = None,
    tag: str | None = None,
    status: str | None = None,
) -> list[dict[str, Any]]:
    """How each numeric param goes with the best value of `metric` across runs.

    Per param: runs (that have both), distinct values, Pearson and Spearman correlation with the
    best value, and `better`: whether "higher" or "lower" values of the param went with better
    results (from Spearman's sign and `mode`). Sorted by |Spearman|, strongest first. Params with
    a single value, or fewer than 3 runs, have no correlation and are left out.
    """
    if mode not in MODES:
        msg = f"mode must be one of {MODES}, got {mode!r}"
        raise ValueError(msg)
    where, params = run_filter(project, tag, status)
    sql = f"""
    WITH picked AS MATERIALIZED (SELECT run_id FROM runs {where}),
    b AS (SELECT run_id, {_BEST[mode]} AS y FROM metrics_by_step
          WHERE key = ? {_semi_join(where)} GROUP BY run_id HAVING y IS NOT NULL),
    j AS (SELECT p.key, p.value_num AS x, b.y
          FROM params p JOIN b USING (run_id) JOIN picked USING (run_id)
          WHERE p.value_num IS NOT NULL AND isfinite(p.value_num)),
    r1 AS (SELECT key, x, y,
                  row_number() OVER (PARTITION BY key ORDER BY x) AS ix,
                  row_number() OVER (PARTITION BY key ORDER BY y) AS iy FROM j),
    r2 AS (SELECT key, x, y,  -- tied values share their mean rank
                  avg(ix) OVER (PARTITION BY key, x) AS rx,
                  avg(iy) OVER (PARTITION BY key, y) AS ry FROM r1)
    SELECT key AS param, count(*) AS runs, count(DISTINCT x) AS "values",
           corr(x, y) AS pearson, corr(rx, ry) AS spearman
    FROM r2 GROUP BY key HAVING count(DISTINCT x) >= 2 AND count(*) >= 3
    ORDER BY abs(spearman) DESC NULLS LAST, param
    """
    out = records(con, sql, [*params, metric])
    for r in out:
        s = r["spearman"]
        if s is None or s != s or s == 0:
            r["better"] = ""
        else:
            r["better"] = "higher" if (s < 0) == (mode == "min") else "lower"
    return out


# -- curves and the live view ---------------------------------------------------------------


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
        source = _by_step(f"(SELECT * FROM {source} WHERE key IN (SELECT unnest(?::VARCHAR[])))")
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
           FROM {_by_step(run_metrics(con, [run_id]))} GROUP BY key ORDER BY key""",
    )
    return {"run": run[0] if run else None, "metrics": metrics}


def newest_run(con: duckdb.DuckDBPyConnection) -> str | None:
    """The running run started last, else the run started last; None in an empty store."""
    found = rows(
        con, "SELECT run_id FROM runs ORDER BY status = 'running' DESC, started DESC LIMIT 1"
    )
    return str(found[0][0]) if found else None


# -- export ---------------------------------------------------------------------------------


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
    run_lit = _literal(run_id)
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
        copy = f"COPY ({select}) TO {_literal(str(tmp))} ({options})"
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


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
