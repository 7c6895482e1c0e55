"""The collector-side commands: serve, sync, replay, status."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from traintape.paths import resolve_address, resolve_store, spool_dir


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
    # A store_true flag that is absent is False: then the file decides.
    allow_remote = config.option("allow_remote", args.allow_remote or None, False)
    try:
        for address in binds or []:
            check_bind_address(address, allow_remote)
    except CollectorError as exc:
        print(f"traintape serve: {exc}", file=sys.stderr)
        return 2
    return run(
        store,
        binds or None,
        materialize_interval=config.option("materialize_interval", args.materialize_interval, 0.5),
        system_interval=config.option("system_interval", args.system_interval, 1.0),
        compact_settle=config.option("compact_settle", args.compact_settle, None),
        curve=config.option("curve", args.curve or None, False),
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
