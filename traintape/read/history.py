"""Questions about past and running runs, as functions over a `traintape.connect()` connection.

Each returns plain rows or dicts; `traintape.cli` prints them and `traintape.read.plot` draws them.
Across ranks a metric is the mean of the ranks' values at a step (the `metrics_by_step` view);
"best" ignores NaN and ±Inf, so a diverged step is never a best.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import duckdb

from traintape.errors import AmbiguousRunError, RunLookupError, RunNotFoundError
from traintape.layout import StoreLayout, run_folder_name
from traintape.read.curves import Curve, curves, latest, newest_run
from traintape.read.query import (
    by_step,
    latest_params,
    records,
    rows,
    run_metrics,
    run_names,
    run_rows,
    store_of,
)
from traintape.read.store import connect
from traintape.schemas.values import flatten  # as params are stored: {"opt": {"lr": 1}} -> opt.lr

__all__ = [
    "AmbiguousRunError",
    "Curve",
    "RunLookupError",
    "RunNotFoundError",
    "best_runs",
    "compare",
    "curves",
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
    "run_summary",
    "show",
]

MODES = ("min", "max")

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


def guess_mode(key: str) -> str:
    """The direction of "best" a metric's name suggests: "max" for accuracy-like names (acc,
    f1, reward, score, ...), else "min"."""
    tokens = re.split(r"[^a-z0-9]+", key.lower())
    return "max" if any(t in _HIGHER_IS_BETTER or t.startswith("acc") for t in tokens) else "min"


# -- naming a run ---------------------------------------------------------------------------


def resolve_run(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    """The run id for a full id, a unique id prefix, or a run name."""
    store = store_of(con)
    if (
        store is not None
        and run_folder_name(ref) == ref
        and StoreLayout(store).run_folders_of("events", ref)
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
    out = records(con, _SUMMARY_SQL.format(by_step=by_step(run_metrics(con, run_ids))))
    for r in out:
        r["mode"] = guess_mode(r["key"])
        r["best"] = r[r["mode"]]
        r["best_step"] = r[f"{r['mode']}_step"]
    return out


def show(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """Everything about one run: its `runs` row, config, params, environment, summary,
    metrics, checkpoints, and the system samples taken while it was active."""
    store = store_of(con)
    if store is None:
        return _show(con, run_id)
    # The runs, checkpoints and system views over this run's folders only: the same rows, without
    # opening every run's files (0.9 s at 1,000 runs through the views of the whole store).
    scoped = connect(store, runs=[run_id])
    try:
        return _show(scoped, run_id)
    finally:
        scoped.close()


def _show(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
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
        "summary": run_summary(con, run_id),
        "metrics": [
            {k: v for k, v in m.items() if k != "run_id"} for m in metric_summary(con, [run_id])
        ],
        "checkpoints": records(
            con,
            """SELECT step, rank, ts, action, path, live, bytes, sha256, is_best, blocked_s, write_s,
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


def run_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """The summary the run's latest `run_end` holds (`Emitter.summary`, `wandb.summary` of
    traintape.wandb) on its lowest rank (rank 0); {} when none (or not a map)."""
    found = rows(
        con,
        """SELECT body FROM events WHERE run_id = ? AND kind = 'run_end'
           ORDER BY rank, ts DESC LIMIT 1""",
        [run_id],
    )
    body = decode_param(found[0][0]) if found else None
    summary = body.get("summary") if isinstance(body, dict) else None
    return summary if isinstance(summary, dict) else {}


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

    Each row: position (1 = best; not a distributed rank), run_id, name, project, status, best, step (the first step reaching it),
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
    SELECT row_number() OVER (ORDER BY b.best {order}, p.started, p.run_id) AS position,
           p.run_id, p.name, p.project, p.status, b.best, b.step, b.last, b.steps
    FROM b JOIN picked p USING (run_id)
    ORDER BY position {"" if limit is None else f"LIMIT {int(limit)}"}
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
