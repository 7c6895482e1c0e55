"""The collector-side commands: serve, sync, replay, status."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from traintape.layout import StoreLayout
from traintape.paths import default_address, local_store, resolve_address, spool_dir


def _cmd_serve(args: argparse.Namespace) -> int:
    from traintape.collector.config import resolve as resolve_sinks
    from traintape.collector.objectstore import tables_config
    from traintape.collector.server import check_bind_address, run
    from traintape.errors import CollectorError, ConfigError, SecurityError, SinkError
    from traintape.security import secure_store

    try:
        config = resolve_sinks(args.sink or [], args.config)
    except (ConfigError, SinkError) as exc:
        print(f"traintape serve: {exc}", file=sys.stderr)
        return 2
    store = local_store(
        args.store if args.store is not None else config.store,
        "a collector journals into a local store folder (--store DIR); it publishes its tables "
        "with --tables s3://BUCKET/PREFIX",
    )
    binds = args.bind or config.bind
    try:
        collector_id = _collector_id(config.option("collector_id", args.collector_id, None))
        tables = tables_config(config.option("tables", args.tables, None), config.options)
    except ConfigError as exc:
        print(f"traintape serve: {exc}", file=sys.stderr)
        return 2
    # A store_true flag that is absent is False: then the file decides.
    allow_remote = config.option("allow_remote", args.allow_remote or None, False)
    try:
        for address in binds or []:
            check_bind_address(address, allow_remote)
        max_message = config.option("max_message_mb", args.max_message_mb, None)
        max_message_bytes = _max_message_bytes(max_message)
        min_free_mb = config.option("min_free_mb", args.min_free_mb, 64.0)
        if min_free_mb < 0:
            msg = f"--min-free-mb must be >= 0, got {min_free_mb:g}"
            raise CollectorError(msg)
        # Before anything is created: 0600/0700 whatever the umask (0640/0750 with a group).
        notes = secure_store(
            store, config.option("group", args.group, None), rotate_key=args.rotate_key
        )
    except (CollectorError, SecurityError) as exc:
        print(f"traintape serve: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"traintape collector: {note}", file=sys.stderr)
    return run(
        store,
        binds or None,
        materialize_interval=config.option("materialize_interval", args.materialize_interval, 0.5),
        system_interval=config.option("system_interval", args.system_interval, 1.0),
        compact_settle=config.option("compact_settle", args.compact_settle, None),
        min_free_bytes=int(min_free_mb * (1 << 20)),
        max_message_bytes=max_message_bytes,
        curve=config.option("curve", args.curve or None, False),
        sinks=config.sinks,
        collector_id=collector_id,
        tables=tables,
    )


def _collector_id(given: str | None) -> str | None:
    """--collector-id (or the YAML key), else $TRAINTAPE_COLLECTOR_ID, else None (the store's
    own collector); checked (traintape.layout)."""
    import os

    from traintape.layout import COLLECTOR_ID_ENV, check_collector_id

    if given is not None:
        return check_collector_id(given)
    return check_collector_id(os.environ.get(COLLECTOR_ID_ENV) or None, COLLECTOR_ID_ENV)


def _max_message_bytes(mb: float | None) -> int:
    from traintape.errors import CollectorError
    from traintape.schemas.limits import MAX_MESSAGE_BYTES

    if mb is None:
        return MAX_MESSAGE_BYTES
    if mb * (1 << 20) < MAX_MESSAGE_BYTES:  # an event emitters send would never be taken
        msg = (
            f"--max-message-mb {mb:g} is below {MAX_MESSAGE_BYTES >> 20}, the size emitters "
            "split their batches at"
        )
        raise CollectorError(msg)
    return int(mb * (1 << 20))


def _cmd_sync(args: argparse.Namespace) -> int:
    import dataclasses

    from traintape.collector.config import single
    from traintape.errors import ConfigError, SinkError, SyncError
    from traintape.sinks.sync import sync_run

    store = local_store(
        args.store,
        "sync replays a run from the collectors' journals, which stay on local disk: run it "
        "with --store DIR, the store folder the collectors write",
    )
    try:
        config = single(args.to, args.config)
        if args.ranks:
            config = dataclasses.replace(config, runner={**config.runner, "ranks": args.ranks})
        run_id = _resolve_run(store, args.run)
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


def _resolve_run(store: Path, run: str) -> str:
    """A run id from an id, a unique id prefix, or a run name (`traintape.read.history.resolve_run`)."""
    from traintape.errors import RunLookupError, StoreNotFoundError, SyncError
    from traintape.read.history import resolve_run as resolve_any
    from traintape.read.store import connect

    try:
        con = connect(store)
    except StoreNotFoundError as exc:
        raise SyncError(str(exc)) from None
    try:
        return resolve_any(con, run)
    except RunLookupError as exc:
        raise SyncError(str(exc)) from None
    finally:
        con.close()


def _cmd_replay(args: argparse.Namespace) -> int:
    from traintape.emitter.replay import replay
    from traintape.errors import ReplayError

    store = local_store(
        args.store,
        "replay delivers the spool emitters left on a node to that node's collector: run it "
        "there with --store DIR (and --collector-id ID)",
    )
    collector = _collector_id(args.collector_id)
    # The collector's own spool and its own socket: batches spooled for one collector are never
    # delivered to another (whose dedup could not tell them from new ones).
    folder = Path(args.spool) if args.spool else spool_dir(store, collector)
    if args.address:
        address = args.address
    elif args.collector_id:  # named here: its socket, whatever $TRAINTAPE_ADDRESS says
        address = default_address(store, collector)
    else:
        address = resolve_address(None, store)
    try:
        result = replay(folder, address, args.timeout, progress=lambda s: print(s, file=sys.stderr))
    except ReplayError as exc:
        print(f"traintape replay: {exc}", file=sys.stderr)
        print(
            f"traintape replay: the store is {store}: start `traintape serve --store {store}"
            + (f" --collector-id {collector}" if collector else "")
            + "` (or pass --store / --collector-id / --address for the collector you mean), "
            "then replay again",
            file=sys.stderr,
        )
        return 1
    print(
        f"replayed {result.files} spool files: {result.batches} batches, {result.events} events "
        f"acknowledged ({result.rejected_events} rejected, {result.skipped} files skipped: "
        "their emitters still run)"
    )
    if result.deleted_checkpoints or result.kept_checkpoints:
        print(
            f"{result.deleted_checkpoints} checkpoint files deleted whose deletion the collector "
            f"has now recorded ({result.kept_checkpoints} left in place: see above)",
            file=sys.stderr,
        )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from traintape.errors import ConfigError

    store = local_store(
        args.store,
        "status reads a collector's state in its store folder: run it with --store DIR (and "
        "--collector-id ID) where that folder is",
    )
    try:
        layout = StoreLayout(store, _collector_id(args.collector_id))
    except ConfigError as exc:
        print(f"traintape status: {exc}", file=sys.stderr)
        return 2
    path = layout.collector_status
    if not path.exists():
        who = "no collector" if layout.collector is None else f"collector {layout.collector} never"
        print(f"traintape status: {who} has run on {store}", file=sys.stderr)
        return 1
    status = json.loads(path.read_text())
    alive = layout.pid.exists() and _pid_alive(int(status.get("pid", 0)))
    status["running"] = alive
    if args.format == "json":
        json.dump(status, sys.stdout, indent=1)
        print()
    else:
        for key, value in status.items():
            if key != "sinks" and value is not None:  # None: no error, nothing withheld
                print(f"{key:24s} {_status_value(key, value)}")
        for name, sink in (status.get("sinks") or {}).items():
            print(f"{'sink ' + name:24s} {_sink_line(sink)}")
    return 0


def _status_value(key: str, value: Any) -> str:
    """A status field as people read it: times as UTC dates with their age, sizes in units."""
    from datetime import datetime, timezone

    from traintape.cli.output import _human_bytes, format_duration

    if key == "updated" and isinstance(value, (int, float)):
        when = datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{when} ({format_duration(max(0.0, time.time() - value))} ago)"
    if key.endswith("_bytes") and isinstance(value, int):
        return f"{value} ({_human_bytes(value)})"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if key == "tables" and isinstance(value, dict):  # publishing to object storage
        from traintape.collector.publish import status_line

        return status_line(value)
    return str(value)


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
