"""The `traintape` command. Each subcommand has --help; every one takes --store DIR."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from traintape.paths import resolve_address, resolve_store, spool_dir


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default=None,
        help="store folder (default: $TRAINTAPE_STORE, else ./traintape-store)",
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from traintape.collector.server import CollectorError, check_bind_address, run
    from traintape.sinks import ConfigError, SinkError
    from traintape.sinks.config import resolve as resolve_sinks

    try:
        config = resolve_sinks(args.sink or [], args.config)
    except (ConfigError, SinkError) as exc:
        print(f"traintape serve: {exc}", file=sys.stderr)
        return 2
    store = resolve_store(args.store if args.store is not None else config.store)
    binds = args.bind or config.bind
    try:
        for address in binds or []:
            check_bind_address(address, args.allow_remote)
    except CollectorError as exc:
        print(f"traintape serve: {exc}", file=sys.stderr)
        return 2
    interval = args.materialize_interval
    if interval is None:
        interval = config.materialize_interval if config.materialize_interval is not None else 0.5
    return run(
        store,
        binds or None,
        materialize_interval=interval,
        system_interval=args.system_interval,
        compact_settle=args.compact_settle,
        sinks=config.sinks,
    )


def _cmd_sync(args: argparse.Namespace) -> int:
    import dataclasses

    from traintape.sinks import ConfigError, SinkError
    from traintape.sinks.config import single
    from traintape.sinks.sync import SyncError, resolve_run, sync_run

    store = resolve_store(args.store)
    try:
        config = single(args.to, args.config)
        if args.ranks:
            config = dataclasses.replace(config, runner={**config.runner, "ranks": args.ranks})
        run_id = resolve_run(store, args.run)
        result = sync_run(store, run_id, config, progress=lambda s: print(s, file=sys.stderr))
    except (ConfigError, SinkError, SyncError) as exc:
        print(f"traintape sync: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the backend failed; syncing again is safe
        print(f"traintape sync: {config.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    extra = ", ".join(f"{k} {v}" for k, v in result.stats.items())
    print(
        f"synced run {run_id} to {config.name}: {result.events} events read, "
        f"{result.operations} operations" + (f" ({extra})" if extra else "")
    )
    return 0


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def print_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table") -> None:
    out = sys.stdout
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "json":
        records = [dict(zip(columns, row)) for row in rows]
        json.dump(records, out, default=str, indent=1)
        out.write("\n")
    else:
        text = [[_format_value(v) for v in row] for row in rows]
        widths = [max([len(c), *(len(r[i]) for r in text)]) for i, c in enumerate(columns)]
        out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for row in text:
            out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def _connect(args: argparse.Namespace) -> Any:
    from traintape.store import connect

    return connect(args.store)


def _cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    con = _connect(args)
    try:
        cur = con.execute(args.sql)
    except duckdb.Error as exc:
        print(f"traintape query: {exc}", file=sys.stderr)
        return 1
    if cur.description is None:
        return 0
    print_rows([d[0] for d in cur.description], cur.fetchall(), args.format)
    return 0


RUNS_SQL = """
WITH last AS (
    -- the newest step of each metric; across ranks, the lowest rank's value
    SELECT run_id, key, value, step FROM metrics
    WHERE run_id IN (SELECT run_id FROM picked)
    QUALIFY row_number() OVER (PARTITION BY run_id, key ORDER BY step DESC, rank, ts DESC) = 1)
SELECT p.run_id, p.project, p.name, p.status, p.started, p.duration_s AS duration,
       (SELECT max(step) + 1 FROM last WHERE last.run_id = p.run_id) AS steps,
       p.ranks,
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


def _cmd_replay(args: argparse.Namespace) -> int:
    from traintape.emitter.replay import ReplayError, replay

    store = resolve_store(args.store)
    folder = Path(args.spool) if args.spool else spool_dir(store)
    address = resolve_address(args.address, store)
    try:
        result = replay(folder, address, args.timeout, progress=lambda s: print(s, file=sys.stderr))
    except ReplayError as exc:
        print(f"traintape replay: {exc}", file=sys.stderr)
        return 1
    print(
        f"replayed {result.files} spool files: {result.batches} batches, {result.events} events "
        f"acknowledged ({result.rejected_events} rejected, {result.skipped} files skipped: "
        "their emitters still run)"
    )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    store = resolve_store(args.store)
    path = store / "state" / "collector.json"
    if not path.exists():
        print(f"traintape status: no collector has run on {store}", file=sys.stderr)
        return 1
    status = json.loads(path.read_text())
    alive = (store / "collector.pid").exists() and _pid_alive(int(status.get("pid", 0)))
    status["running"] = alive
    if args.format == "json":
        json.dump(status, sys.stdout, indent=1)
        print()
    else:
        for key, value in status.items():
            if key != "sinks":
                print(f"{key:24s} {value}")
        for name, sink in (status.get("sinks") or {}).items():
            print(f"{'sink ' + name:24s} {_sink_line(sink)}")
    return 0


def _sink_line(sink: dict[str, Any]) -> str:
    lag = sink.get("lag_events")
    text = (
        f"{sink.get('type')} ranks={sink.get('ranks')} {sink.get('state')}: "
        f"lag {'?' if lag is None else lag} events ({sink.get('lag_bytes')} bytes), "
        f"{sink.get('batches')} batches, {sink.get('errors')} errors"
    )
    if sink.get("failing_for_s") is not None:
        text += f", failing for {sink['failing_for_s']}s"
    if sink.get("last_error"):
        text += f", last error: {sink['last_error']}"
    return text


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return pid > 0


# -- run history: show, compare, best, plot, export, tail, importance (traintape.history) ----


def _label_runs(con: Any, run_ids: list[str]) -> list[str]:
    """Column headers for runs side by side: their names when those are unique, else ids."""
    from traintape.history import run_names

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
    width = max(map(len, pairs))
    for key, value in pairs.items():
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        print(f"  {key.ljust(width)}  {shown}")


def _cmd_show(args: argparse.Namespace) -> int:
    from traintape import history

    con = _connect(args)
    info = history.show(con, history.resolve_run(con, args.run))
    if args.format == "json":
        json.dump(info, sys.stdout, default=str, indent=1)
        print()
        return 0
    run = {k: v for k, v in info["run"].items() if k != "duration_s"}
    run["duration"] = format_duration(info["run"]["duration_s"])
    run["tags"] = ", ".join(run["tags"] or [])
    width = max(map(len, run))
    for key, value in run.items():
        print(f"{key.ljust(width)}  {_format_value(value)}")
    _print_pairs("config", info["config"])
    if info["params"]:
        _print_pairs("params (logged after init, or changed since)", info["params"])
    _print_pairs("environment", history.flatten(info["environment"]))
    print("\nmetrics (per step, mean across ranks; best = min or max as the name reads)")
    cols = ("key", "steps", "last_step", "last", "best", "best_step", "mode")
    print_rows(cols, [[m[c] for c in cols] for m in info["metrics"]])
    if info["checkpoints"]:
        print("\ncheckpoints")
        cols = ("step", "rank", "action", "path", "bytes", "sha256", "is_best", "error")
        cps = [
            [c[k] if k != "sha256" else (c[k] or "")[:12] for k in cols]
            for c in info["checkpoints"]
        ]
        print_rows(cols, cps)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from traintape import history

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
    from traintape import history

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
    cols = ["rank", "run_id", "name", "project", "status", "best", "step", "last", "steps"]
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
    from traintape import history

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
    from traintape import history, plot

    try:
        width, height = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        print(f"traintape plot: --size takes WIDTHxHEIGHT, got {args.size!r}", file=sys.stderr)
        return 2
    con = _connect(args)
    run_ids = history.resolve_runs(con, args.runs)
    curves = history.curves(con, run_ids, args.metric, per_rank=args.per_rank)
    have = {(c.run_id, c.key) for c in curves}
    for run_id in run_ids:
        for key in args.metric:
            if (run_id, key) not in have:
                print(f"traintape plot: run {run_id} has no values of {key!r}", file=sys.stderr)
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
    from traintape import history

    con = _connect(args)
    run_id = history.resolve_run(con, args.run)
    out = Path(args.out or f"traintape-export-{run_id}")
    tables = args.table or history.EXPORT_TABLES
    written = history.export(con, run_id, out, args.format, tables)
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

    from traintape import history

    con = _connect(args)
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


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    from traintape.checkpoints import CheckpointError, live_checkpoints, resolve_run

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traintape", description="A flight recorder for ML training."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the collector (Ctrl-C or SIGTERM stops it cleanly)")
    _store_arg(p)
    p.add_argument(
        "--bind",
        action="append",
        metavar="ADDR",
        help="ipc://PATH or tcp://HOST:PORT; repeatable (default: ipc:// socket in the store)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding tcp://0.0.0.0 (every interface); by default only named interfaces",
    )
    p.add_argument(
        "--materialize-interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between Parquet flushes (default 0.5)",
    )
    p.add_argument(
        "--sink",
        action="append",
        metavar="TYPE[=VALUE]",
        help="feed a sink: tensorboard[=DIR], mlflow[=TRACKING_URI], wandb[=offline|online]; "
        "repeatable (see traintape.sinks.config)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file with sinks and their options (TRAINTAPE_SINK_<NAME>_<OPTION> overrides)",
    )
    p.add_argument(
        "--system-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between CPU/RAM/GPU samples of this host (default 1; 0 turns them off)",
    )
    p.add_argument(
        "--compact-settle",
        type=float,
        default=None,
        metavar="S",
        help="seconds after a run ends (and after start) before its Parquet files are merged "
        "(default 30)",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("query", help="run SQL over the store's views (see traintape.store)")
    p.add_argument("sql", help='e.g. "SELECT key, max(value) FROM metrics GROUP BY key"')
    _store_arg(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_cmd_query)

    p = sub.add_parser("runs", help="one line per run: status, duration, steps, last metrics")
    _store_arg(p)
    p.add_argument("--project")
    p.add_argument("--status", choices=("running", "completed", "failed", "killed"))
    p.add_argument("--tag")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser("replay", help="deliver spooled batches to the collector, exactly once")
    _store_arg(p)
    p.add_argument("--spool", help="spool folder (default: <store>/spool or $TRAINTAPE_SPOOL_DIR)")
    p.add_argument(
        "--address", help="collector address (default: $TRAINTAPE_ADDRESS or the store's)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acks")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser(
        "sync",
        help="replay a stored run into TensorBoard, MLflow or W&B (running it twice is safe)",
    )
    p.add_argument("run", help="run id, unique id prefix, or run name")
    p.add_argument(
        "--to",
        required=True,
        metavar="SINK",
        help="tensorboard[=DIR], mlflow[=TRACKING_URI] or wandb[=offline|online]",
    )
    _store_arg(p)
    p.add_argument("--config", metavar="FILE", help="YAML file whose options for that sink apply")
    p.add_argument(
        "--ranks",
        choices=("rank0", "all", "mean", "min", "max"),
        help="rank policy (default rank0)",
    )
    p.set_defaults(func=_cmd_sync)

    p = sub.add_parser("status", help="the collector's counters and lag")
    _store_arg(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("show", help="one run: config, params, environment, metrics, checkpoints")
    p.add_argument("run", help="run id, unique id prefix, or run name")
    _store_arg(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("compare", help="runs side by side: params that differ, metrics")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, id prefixes or names")
    _store_arg(p)
    p.add_argument("--all-params", action="store_true", help="list equal params too")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("best", help="runs ranked by the best value of a metric")
    _store_arg(p)
    p.add_argument("--metric", required=True)
    p.add_argument("--mode", choices=("min", "max"), default="min")
    p.add_argument("--project")
    p.add_argument("--status", choices=("running", "completed", "failed", "killed"))
    p.add_argument("--tag")
    p.add_argument("--top", type=int, default=10, help="rows to list (default 10)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_cmd_best)

    p = sub.add_parser("importance", help="how each numeric param correlates with a metric's best")
    _store_arg(p)
    p.add_argument("--metric", required=True)
    p.add_argument("--mode", choices=("min", "max"), default="min")
    p.add_argument("--project")
    p.add_argument("--status", choices=("running", "completed", "failed", "killed"))
    p.add_argument("--tag")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_cmd_importance)

    p = sub.add_parser("plot", help="metric curves of runs as a PNG (matplotlib)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, id prefixes or names")
    _store_arg(p)
    p.add_argument("--metric", action="append", required=True, help="repeatable: one panel each")
    p.add_argument("--smooth", type=int, default=1, metavar="K", help="trailing mean over K points")
    p.add_argument("--per-rank", action="store_true", help="one line per rank, not the mean")
    p.add_argument("--size", default="1200x800", metavar="WxH", help="pixels (default 1200x800)")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--title")
    p.add_argument("-o", "--out", default="curves.png", help="PNG path (default curves.png)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("export", help="a run's rows as Parquet or CSV files, one per table")
    p.add_argument("run", help="run id, unique id prefix, or run name")
    _store_arg(p)
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.add_argument(
        "--table",
        action="append",
        choices=("metrics", "params", "events", "checkpoints", "system"),
        help="repeatable (default: all)",
    )
    p.add_argument("-o", "--out", help="folder (default ./traintape-export-<run id>)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("tail", help="live view of a run's latest values; ends with the run")
    p.add_argument("run", nargs="?", help="run id, prefix or name (default: the newest run)")
    _store_arg(p)
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds per refresh")
    p.add_argument("--seconds", type=float, metavar="N", help="stop after N seconds")
    p.add_argument("--once", action="store_true", help="print one view and exit")
    p.set_defaults(func=_cmd_tail)

    p = sub.add_parser(
        "checkpoints", help="a run's live checkpoints: step, size, metrics, best/latest"
    )
    p.add_argument(
        "run", nargs="?", help="run id, prefix or name (default: the run that saved last)"
    )
    _store_arg(p)
    p.add_argument("--rank", type=int, help="only this rank's files (ranks='all' runs)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_cmd_checkpoints)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from traintape.history import RunLookupError
    from traintape.store import StoreNotFoundError

    try:
        return int(args.func(args) or 0)
    except (StoreNotFoundError, RunLookupError) as exc:
        print(f"traintape {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
