"""`traintape doctor`: one screen that says whether logging here would reach a store, and why not.

Each check answers with `ok`, `warn` or `FAIL`, what it found, and the command that fixes it:
which store this folder and environment point at (and where that came from), whether a
collector serves it, the address an emitter started here would use and whether anything listens
there, the collector's materializer and sinks, free disk space against the collector's floor,
and spool files waiting for `traintape replay`. It reads files and probes a socket; it never
writes to the store and never waits on a collector.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from traintape.cli.output import _human_bytes, format_duration
from traintape.collector.diskfloor import DEFAULT_MIN_FREE_BYTES
from traintape.layout import COLLECTOR_ID_ENV, StoreLayout, check_collector_id
from traintape.paths import (
    DEFAULT_STORE_NAME,
    address_origin,
    env_collector,
    local_store,
    resolve_address,
    spool_dir,
    store_origin,
)
from traintape.probe import nothing_listens

STALE_STATUS_S = 30.0
"""A collector rewrites its status file about every second: older than this, it is stuck."""


@dataclass
class Check:
    name: str
    state: str  # ok, warn, FAIL
    found: str
    fix: str = ""


def _cmd_doctor(args: argparse.Namespace) -> int:
    store = local_store(
        args.store,
        "doctor checks a collector and the emitters of this machine: run it with --store DIR, "
        "the store folder (`traintape query --store s3://...` reads the tables)",
    )
    # The collector this process's emitters reach: $TRAINTAPE_COLLECTOR_ID's, as resolve_address.
    collector = os.environ.get(COLLECTOR_ID_ENV) or None
    layout = StoreLayout(store, check_collector_id(collector, COLLECTOR_ID_ENV))
    status = _read_status(layout)
    address = resolve_address(args.address, store)
    checks = [
        _store_check(args.store, store, layout),
        _collector_check(store, layout, status),
        _address_check(args.address, address, store),
        *_follower_checks(status),
        _disk_check(store, status),
        _spool_check(store),
    ]
    if args.format == "json":
        json.dump([asdict(c) for c in checks], sys.stdout, indent=1)
        print()
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.name:{width}}  {c.state:4}  {c.found}")
            if c.fix:
                print(f"{'':{width}}        fix: {c.fix}")
    return 1 if any(c.state == "FAIL" for c in checks) else 0


def _read_status(layout: StoreLayout) -> dict[str, Any] | None:
    try:
        return dict(json.loads(layout.collector_status.read_text()))
    except (OSError, ValueError):
        return None


def _store_check(given: str | None, store: Path, layout: StoreLayout) -> Check:
    origin = store_origin(given, "--store") or (
        f"./{DEFAULT_STORE_NAME} in {Path.cwd()} (no --store, no $TRAINTAPE_STORE)"
    )
    if layout.tables.is_dir():
        return Check("store", "ok", f"{store} (from {origin})")
    return Check(
        "store",
        "FAIL",
        f"no store at {store} (from {origin})",
        f"traintape serve --store {store}, or point --store / $TRAINTAPE_STORE at yours",
    )


def _collector_check(store: Path, layout: StoreLayout, status: dict[str, Any] | None) -> Check:
    start = f"traintape serve --store {store}"
    if status is None:
        return Check("collector", "FAIL", "no collector has run on this store", start)
    pid = int(status.get("pid") or 0)
    if not (layout.pid.exists() and _alive(pid)):
        return Check("collector", "FAIL", f"not running (last pid {pid})", start)
    age = time.time() - float(status.get("updated") or 0)
    if age > STALE_STATUS_S:
        return Check(
            "collector",
            "warn",
            f"pid {pid} alive, but its status is {format_duration(age)} old (stopped, or stuck?)",
            f"kill -CONT {pid} if it was stopped; else restart it: {start}",
        )
    binds = ", ".join(status.get("binds") or [])
    return Check("collector", "ok", f"pid {pid}, listening on {binds}")


def _address_check(given: str | None, address: str, store: Path) -> Check:
    origin = address_origin(given, "--address") or "the store's default"
    absent = nothing_listens(address)
    if absent is None:
        return Check("emitter address", "ok", f"{address} ({origin})")
    return Check(
        "emitter address",
        "FAIL",
        f"{address} ({origin}): {absent}; an emitter here would spool",
        f"traintape serve --store {store}, or set $TRAINTAPE_ADDRESS to the collector's",
    )


def _follower_checks(status: dict[str, Any] | None) -> list[Check]:
    if status is None:
        return []
    lag = int(status.get("materializer_lag_bytes") or 0)
    error = status.get("materializer_error")
    checks = [
        Check(
            "materializer",
            "warn" if error else "ok",
            f"{_human_bytes(lag)} of journal not yet in Parquet"
            + (f"; last error: {error}" if error else ""),
            "see the collector's output and <store>/deadletter/" if error else "",
        )
    ]
    for name, sink in (status.get("sinks") or {}).items():
        errors, state = int(sink.get("errors") or 0), str(sink.get("state"))
        failing = sink.get("failing_for_s") is not None
        checks.append(
            Check(
                f"sink {name}",
                "warn" if failing or errors else "ok",
                f"{sink.get('type')} {state}: lag {sink.get('lag_events')} events, {errors} errors"
                + (f"; last error: {sink['last_error']}" if sink.get("last_error") else ""),
                "it retries by itself; `traintape sync RUN --to ...` replays a run"
                if failing
                else "",
            )
        )
    if status.get("tables"):  # publishing to object storage: traintape.collector.publish
        checks.append(_tables_check(status["tables"]))
    return checks


def _tables_check(tables: dict[str, Any]) -> Check:
    from traintape.collector.publish import status_line

    failing = tables.get("failing_since") is not None
    fix = "check the endpoint, credentials and network; it retries and catches up by itself"
    return Check("tables", "warn" if failing else "ok", status_line(tables), fix if failing else "")


def _disk_check(store: Path, status: dict[str, Any] | None) -> Check:
    folder = store if store.exists() else store.parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    withheld = (status or {}).get("acks_withheld")
    found = f"{_human_bytes(free)} free on {folder}'s disk"
    if withheld:
        return Check(
            "disk", "FAIL", f"{found}; acknowledgements withheld: {withheld}", "free space"
        )
    if free < 2 * DEFAULT_MIN_FREE_BYTES:
        return Check(
            "disk",
            "warn",
            f"{found}: below {_human_bytes(2 * DEFAULT_MIN_FREE_BYTES)}; at "
            f"{_human_bytes(DEFAULT_MIN_FREE_BYTES)} the collector stops acknowledging",
            "free space",
        )
    return Check("disk", "ok", found)


def _spool_check(store: Path) -> Check:
    from traintape.emitter.spool import count_events, spool_files

    files = spool_files(spool_dir(store))
    if not files:
        return Check("spool", "ok", f"nothing waiting in {spool_dir(store)}")
    waiting = [f for f in files if not f.in_use()]
    size = sum(f.path.stat().st_size for f in files if f.exists())
    events = sum(count_events(f) for f in waiting)
    found = (
        f"{len(files)} files ({_human_bytes(size)}) in {spool_dir(store)}; "
        f"{len(files) - len(waiting)} held by running emitters, {events} events in the others"
    )
    if not waiting:
        return Check("spool", "ok", found)
    collector = env_collector()
    fix = f"traintape replay --store {store}" + (
        f" --collector-id {collector}" if collector else ""
    )
    return Check("spool", "warn", found, fix)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True
