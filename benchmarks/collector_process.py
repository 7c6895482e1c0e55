"""The `traintape serve` process each benchmark runs beside what it measures (one copy for all).

    with Collector(store, "--sink", "tensorboard") as collector:
        ...
        collector.status(newer_than=time.time())  # a status written after now

Its output goes to <store>-collector.log beside the store; leaving the block (or stop()) sends
SIGTERM and waits for the collector to drain, SIGKILL only if it hangs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class Collector:
    def __init__(
        self, store: Path, *extra: str, cwd: Path | None = None, collector_id: str | None = None
    ) -> None:
        """`collector_id`: one of several collectors on `store` (`serve --collector-id`)."""
        self.store = store
        home = store if collector_id is None else store / "collectors" / collector_id
        self.status_path = home / "state" / "collector.json"
        suffix = f"-{collector_id}" if collector_id else ""
        self.log_path = store.parent / f"{store.name}-collector{suffix}.log"
        store.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "traintape.collector", "serve", "--store", str(store)]
        if collector_id is not None:
            argv += ["--collector-id", collector_id]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*argv, *extra], stdout=log, stderr=subprocess.STDOUT, cwd=cwd
            )
        deadline = time.monotonic() + 60
        while not self.status_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                msg = f"the collector did not start; its log:\n{self.log_path.read_text()}"
                raise RuntimeError(msg)
            time.sleep(0.02)

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self, newer_than: float = 0.0) -> dict[str, Any]:
        """The collector's status file, waiting for one written after `newer_than` (time.time)."""
        while True:
            try:
                status = json.loads(self.status_path.read_text())
            except (OSError, ValueError):
                status = {}
            if status.get("updated", 0) > newer_than:
                return status
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_together(children: list[subprocess.Popen]) -> list[dict[str, Any]]:
    """Runs worker processes that print "ready", wait for "go" on stdin, then print one JSON
    report: every child is ready before any starts, so they log at once. Kills what is left."""
    try:
        for child in children:
            line = child.stdout.readline().strip()
            if line != "ready":
                msg = f"a worker failed to start: {line!r}"
                raise RuntimeError(msg)
        for child in children:  # "go" to all at once
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = [json.loads(child.stdout.readline()) for child in children]
        for child in children:
            child.wait(120)
        return reports
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)


def wait_visible(traintape: Any, store: Path, expected: int, t0: int) -> tuple[int, float | None]:
    """Polls `count(*)` of the metrics view until it reaches `expected` (at most 300 s): the
    rows last counted, and the seconds from `t0` (a perf_counter_ns) until then, None if never."""
    con = traintape.connect(store)
    rows = -1
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            try:
                rows = con.execute("SELECT count(*) FROM metrics").fetchone()[0]
            except Exception:  # a file compacted away between listing and reading: ask again
                rows = -1
            if rows >= expected:
                return rows, (time.perf_counter_ns() - t0) / 1e9
            time.sleep(0.05)
        return rows, None
    finally:
        con.close()
