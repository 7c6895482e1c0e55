"""The history commands: query, runs, show, compare, best, importance, plot, export, tail,
checkpoints. Each reads the store through `traintape.read.store.connect`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from traintape.cli.output import (
    _format_value,
    _human_bytes,
    display_width,
    format_duration,
    pad,
    print_rows,
)


def _connect(args: argparse.Namespace) -> Any:
    from traintape.read.store import connect

    return connect(args.store)


def _cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from traintape.read.query import answer

    con = _connect(args)
    try:
        columns, found = answer(con, args.sql)  # again if a compaction moved a file it listed
    except duckdb.Error as exc:
        print(f"traintape query: {exc}", file=sys.stderr)
        return 1
    if columns is not None:
        print_rows(columns, found, args.format)
    return 0


RUNS_SQL = """
WITH last AS (
    -- the newest step of each metric; across ranks, the lowest rank's value
    SELECT run_id, key, value, step FROM metrics
    WHERE run_id IN (SELECT run_id FROM picked)
    QUALIFY row_number() OVER (PARTITION BY run_id, key ORDER BY step DESC, rank, ts DESC) = 1)
SELECT p.run_id, p.project, p.name, p.status, p.started, p.duration_s AS duration,
       -- HUGEINT: a step may be the largest int64 (the range every step is checked against)
       (SELECT max(step)::HUGEINT + 1 FROM last WHERE last.run_id = p.run_id) AS steps,
       p.ranks, p.host,
       -- the commit the run started from, `+` when the working tree had changes
       left(p.git_commit, 8)
           || CASE WHEN TRY_CAST(json_extract(p.environment, '$.git_dirty') AS BOOLEAN)
                   THEN '+' ELSE '' END
           AS commit,
       (SELECT string_agg(key || '=' || printf('%.4g', value), ' ' ORDER BY key)
        FROM last WHERE last.run_id = p.run_id) AS last_metrics
FROM picked p ORDER BY p.started
"""


def _cmd_runs(args: argparse.Namespace) -> int:
    con = _connect(args)
    where, params = [], []
    if args.project:
        where.append("project = ?")
        params.append(args.project)
    if args.status:
        where.append("status = ?")
        params.append(args.status)
    if args.tag:
        where.append("list_contains(tags, ?)")
        params.append(args.tag)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    con.execute(f"CREATE TEMP TABLE picked AS SELECT * FROM runs {cond}", params)
    cur = con.execute(RUNS_SQL)
    rows = cur.fetchall()
    if args.format == "table":
        rows = [(*r[:5], format_duration(r[5]), *r[6:]) for r in rows]
    print_rows([d[0] for d in cur.description], rows, args.format)
    return 0


def _label_runs(con: Any, run_ids: list[str]) -> list[str]:
    """Column headers for runs side by side: their names when those are unique, else ids."""
    from traintape.read.history import run_names

    names = run_names(con, run_ids)
    labels = [names.get(r) or r for r in run_ids]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({r[:8]})" for label, r in zip(labels, run_ids)]
    return labels


def _print_pairs(title: str, pairs: dict[str, Any]) -> None:
    print(f"\n{title}")
    if not pairs:
        print("  (none)")
        return
    width = max(map(display_width, pairs))
    for key, value in pairs.items():
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        print(f"  {pad(key, width)}  {shown}")


def _cmd_show(args: argparse.Namespace) -> int:
    from traintape.read import history
    from traintape.read.artifacts import artifact_rows, is_media, media_summary

    con = _connect(args)
    info = history.show(con, history.resolve_run(con, args.run))
    info["artifacts"] = artifact_rows(con, info["run"]["run_id"])
    info["media"] = media_summary(info["artifacts"])  # images and tables of log(), per key
    if args.format == "json":
        json.dump(info, sys.stdout, default=str, indent=1)
        print()
        return 0
    run = {k: v for k, v in info["run"].items() if k != "duration_s"}
    run["duration"] = format_duration(info["run"]["duration_s"])
    run["tags"] = ", ".join(run["tags"] or [])
    width = max(map(display_width, run))
    for key, value in run.items():
        print(f"{pad(key, width)}  {_format_value(value)}")
    _print_pairs("config", info["config"])
    if info["params"]:
        _print_pairs("params (logged after init, or changed since)", info["params"])
    _print_pairs("environment", history.flatten(info["environment"]))
    if info["summary"]:
        _print_pairs("summary", history.flatten(info["summary"]))
    print("\nmetrics (per step, mean across ranks; best = min or max as the name reads)")
    cols: tuple[str, ...] = ("key", "steps", "last_step", "last", "best", "best_step", "mode")
    print_rows(cols, [[m[c] for c in cols] for m in info["metrics"]])
    if info["checkpoints"]:
        print("\ncheckpoints")
        cols = ("step", "rank", "action", "live", "path", "bytes", "sha256", "is_best", "error")
        cps = [
            [c[k] if k != "sha256" else (c[k] or "")[:12] for k in cols]
            for c in info["checkpoints"]
        ]
        print_rows(cols, cps)
    files = [a for a in info["artifacts"] if not is_media(a)]
    if files:
        print("\nartifacts (`traintape artifacts get RUN NAME -o DIR` fetches one)")
        cols = ("step", "rank", "name", "kind", "bytes", "sha256")
        print_rows(cols, [[a[k] if k != "sha256" else a[k][:12] for k in cols] for a in files])
    if info["media"]:
        print("\nmedia (images and tables of log(); SELECT * FROM media has each one)")
        cols = ("name", "kind", "count", "ranks", "first_step", "last_step", "last")
        print_rows(cols, [[m.get(c) for c in cols] for m in info["media"]])
    if info["system"]:
        print("\nsystem (samples of the host while the run was active; pid<N>: a rank's process)")
        cols = ("host", "device", "rank", "key", "samples", "mean", "max")
        print_rows(cols, [[s[c] for c in cols] for s in info["system"]])
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from traintape.read import history

    con = _connect(args)
    run_ids = history.resolve_runs(con, args.runs)
    result = history.compare(con, run_ids, all_params=args.all_params)
    labels = _label_runs(con, run_ids)
    if args.format == "json":
        out = {
            "runs": dict(zip(labels, run_ids)),
            "params": {k: dict(zip(labels, v)) for k, v in result["params"]},
            "metrics": {f"{k} {s}": dict(zip(labels, v)) for k, s, v in result["metrics"]},
        }
        json.dump(out, sys.stdout, default=str, indent=1)
        print()
        return 0
    print_rows(("label", "run_id"), list(zip(labels, run_ids)))
    which = "all params" if args.all_params else "params that differ"
    print(f"\n{which} ({len(result['params'])} of {result['params_total']})")
    print_rows(
        ("param", *labels),
        [[k, *(_format_param(x) for x in v)] for k, v in result["params"]],
    )
    print("\nmetrics (per step, mean across ranks)")
    print_rows(("metric", "stat", *labels), [[k, s, *v] for k, s, v in result["metrics"]])
    return 0


def _format_param(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float)) else json.dumps(value)


def _cmd_best(args: argparse.Namespace) -> int:
    from traintape.read import history

    con = _connect(args)
    found = history.best_runs(
        con,
        args.metric,
        args.mode,
        project=args.project,
        tag=args.tag,
        status=args.status,
    )
    if not found:
        keys = ", ".join(history.metric_keys(con)) or "none"
        print(
            f"traintape best: no run has finite values of {args.metric!r} (metrics: {keys})",
            file=sys.stderr,
        )
        return 1
    cols = ["position", "run_id", "name", "project", "status", "best", "step", "last", "steps"]
    shown = found if args.top is None else found[: args.top]
    print_rows(
        [args.metric if c == "best" else c for c in cols],
        [[r[c] for c in cols] for r in shown],
        args.format,
    )
    if args.format == "table":
        top = found[0]
        print(
            f"best run by {args.metric} ({args.mode}) of {len(found)}: {top['run_id']} "
            f"{top['name']} {args.metric}={_format_value(top['best'])} at step {top['step']}"
        )
    return 0


def _cmd_importance(args: argparse.Namespace) -> int:
    from traintape.read import history

    con = _connect(args)
    found = history.importance(
        con, args.metric, args.mode, project=args.project, tag=args.tag, status=args.status
    )
    cols = ["param", "runs", "values", "pearson", "spearman", "better"]
    print_rows(cols, [[r[c] for c in cols] for r in found], args.format)
    if args.format == "table":
        print(
            f"correlation of each numeric param with the best {args.metric} ({args.mode}) of each "
            "run; better: which values of the param went with better results"
            if found
            else f"no numeric param varies over 3 or more runs that logged {args.metric}"
        )
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from traintape.read import history, plot

    try:
        width, height = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        print(f"traintape plot: --size takes WIDTHxHEIGHT, got {args.size!r}", file=sys.stderr)
        return 2
    con = _connect(args)
    run_ids = history.resolve_runs(con, args.runs)
    curves = history.curves(con, run_ids, args.metric, per_rank=args.per_rank)
    have = {(c.run_id, c.key) for c in curves}
    missing = [(r, k) for r in run_ids for k in args.metric if (r, k) not in have]
    for run_id, key in missing:
        print(f"traintape plot: run {run_id} has no values of {key!r}", file=sys.stderr)
    if missing:
        keys = ", ".join(history.metric_keys(con)) or "none"
        print(f"traintape plot: the store's metrics: {keys}", file=sys.stderr)
    if not curves:
        print("traintape plot: nothing to plot", file=sys.stderr)
        return 1
    fig = plot.figure(
        curves, smooth_k=args.smooth, size=(width, height), dpi=args.dpi, title=args.title
    )
    path = plot.save(fig, args.out)
    print(f"wrote {path} ({width}x{height} px): {len(curves)} lines")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from traintape.read import export, history

    con = _connect(args)
    run_id = history.resolve_run(con, args.run)
    out = Path(args.out or f"traintape-export-{run_id}")
    tables = args.table or export.EXPORT_TABLES
    written = export.export(con, run_id, out, args.format, tables)
    print_rows(("table", "path", "rows"), [(t, str(p), n) for t, p, n in written])
    return 0


def _tail_frame(info: dict[str, Any]) -> str:
    import io

    run = info["run"]
    steps = [m["step"] for m in info["metrics"] if m["step"] is not None]
    head = (
        f"run {run['run_id']}  {run['name']}  ({run['project']})  {run['status']}  "
        f"step {max(steps) if steps else '-'}  elapsed {format_duration(run['duration_s'])}  "
        f"ranks {run['ranks']}  at {datetime.now():%H:%M:%S}"
    )
    buf = io.StringIO()
    stdout, sys.stdout = sys.stdout, buf
    try:
        cols = ("key", "step", "value", "min", "max")
        print_rows(cols, [[m[c] for c in cols] for m in info["metrics"]])
    finally:
        sys.stdout = stdout
    return f"{head}\n{buf.getvalue()}"


def _cmd_tail(args: argparse.Namespace) -> int:
    import time

    from traintape.read import history

    tables = _followed(args.store)
    con = tables.database() if tables is not None else _connect(args)
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    clear = sys.stdout.isatty()
    run_id = history.resolve_run(con, args.run) if args.run else None
    while True:
        if run_id is None:
            run_id = history.newest_run(con)
        info = history.latest(con, run_id) if run_id is not None else {"run": None}
        if info["run"] is None:  # nothing stored yet: wait for it
            if args.once:
                print("traintape tail: no runs in the store yet", file=sys.stderr)
                return 1
        else:
            frame = _tail_frame(info)
            print(("\x1b[H\x1b[2J" if clear else "\n") + frame, end="", flush=True)
            if info["run"]["status"] != "running":
                print(f"run {run_id} ended: {info['run']['status']}")
                return 0
        if args.once or (deadline is not None and time.monotonic() >= deadline):
            return 0
        time.sleep(args.interval)
        if tables is not None:  # a folder's views see new files; an s3:// store's, new manifests
            tables.update()


def _followed(store: str | None) -> Any:
    """The tables of an s3:// store as a long-lived reader follows them (RemoteTables), else
    None (a store folder's views read its files as they are at each query)."""
    from traintape.paths import remote_store

    url = remote_store(store)
    if url is None:
        return None
    from traintape.read.remote import RemoteTables

    return RemoteTables(url, refresh_s=0.0)  # tail asks once per refresh anyway


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    from traintape.checkpoint import live_checkpoints, resolve_run
    from traintape.errors import CheckpointError

    con = _connect(args)
    try:
        run_id = resolve_run(con, args.run)
    except CheckpointError as exc:
        print(f"traintape checkpoints: {exc}", file=sys.stderr)
        return 1
    records = live_checkpoints(con, run_id, args.rank)
    table = args.format == "table"
    columns = ["step", "rank", "size" if table else "bytes", "metrics", "mark", "saved", "path"]
    rows = [
        [
            r.step,
            r.rank,
            _human_bytes(r.bytes) if table else r.bytes,
            " ".join(f"{k}={_format_value(v)}" for k, v in r.metrics.items())
            if table
            else (r.metrics if args.format == "json" else json.dumps(r.metrics)),
            ",".join(m for m, on in (("latest", r.latest), ("best", r.best)) if on),
            r.ts,
            str(r.path),
        ]
        for r in records
    ]
    if table:
        print(f"run {run_id}: {len(records)} checkpoints")
    print_rows(columns, rows, args.format)
    return 0
