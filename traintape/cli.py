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

    store = resolve_store(args.store)
    try:
        for address in args.bind or []:
            check_bind_address(address, args.allow_remote)
    except CollectorError as exc:
        print(f"traintape serve: {exc}", file=sys.stderr)
        return 2
    return run(
        store,
        args.bind or None,
        materialize_interval=args.materialize_interval,
        system_interval=args.system_interval,
    )


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
        f"acknowledged ({result.rejected_events} rejected)"
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
            print(f"{key:24s} {value}")
    return 0


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return pid > 0


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
        default=0.5,
        metavar="S",
        help="seconds between Parquet flushes (default 0.5)",
    )
    p.add_argument(
        "--system-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between CPU/RAM/GPU samples of this host (default 1; 0 turns them off)",
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

    p = sub.add_parser("status", help="the collector's counters and lag")
    _store_arg(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from traintape.store import StoreNotFoundError

    try:
        return int(args.func(args) or 0)
    except StoreNotFoundError as exc:
        print(f"traintape {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
