"""The sinks run in a child process of the collector, so they never take its GIL.

As threads of the collector, TensorBoard's protobufs, MLflow's HTTP client and W&B's SDK
competed with the ingest loop for the interpreter lock: with all three on, acknowledged ingest
fell to half. In their own process they share nothing with ingestion but the journal files.

    collector                                  sink process (python -m ...sink_process)
    SinkProcess ──stdin: config line, then ──► JournalFollower.durable_end
                  "<durable end> <events>"        SinkRunners (one thread per sink, as before)
    status() ◄── state/sinks/status.json ◄──── written every STATUS_INTERVAL_S

(`events`: what the collector has journaled since it started, from which each runner's lag in
events is counted, as it was in-process.)

The child reads the journal only up to the durable end the collector last told it (bytes past
it may be torn or rolled back). When its stdin closes (the collector stops, or dies: even a
SIGKILL closes the pipe), every runner drains for at most its drain_timeout and the process
exits; a new sink process waits on `state/sinks/.lock` until the old one has. It ignores SIGINT
and SIGTERM: a Ctrl-C in the terminal reaches the whole process group, and the collector
decides when the sinks stop. If it dies, the collector logs it and starts another.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from traintape.collector.journal import JournalFollower
from traintape.durable import write_json_atomic
from traintape.sinks.config import SinkConfig

STATUS_INTERVAL_S = 0.2
NOTIFY_INTERVAL_S = 0.02
RESTART_AFTER_S = 5.0


def status_path(store: Path) -> Path:
    return store / "state" / "sinks" / "status.json"


class SinkProcess:
    """The collector's handle on its sink process: start, tell it the journal's durable end,
    read its status, stop it (each runner drains for at most its drain_timeout)."""

    def __init__(
        self,
        store: Path,
        journal: Any,
        configs: list[SinkConfig],
        log: Any,
        ingested: Any,
    ) -> None:
        """`ingested()`: events the collector has journaled since it started."""
        self.store = store
        self.journal = journal
        self.ingested = ingested
        self.configs = configs
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._told: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tend, name="traintape-sinks", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        status_path(self.store).unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "traintape.collector.sink_process", "--store", str(self.store)],
            stdin=subprocess.PIPE,
        )
        assert self._proc.stdin is not None
        config = {"sinks": [dataclasses.asdict(c) for c in self.configs]}
        self._proc.stdin.write(json.dumps(config).encode() + b"\n")
        self._proc.stdin.flush()
        os.set_blocking(self._proc.stdin.fileno(), False)  # the collector never waits on it
        self._told = None

    def _tend(self) -> None:
        """Tells the child each new durable end; restarts it if it died."""
        while not self._stop.wait(NOTIFY_INTERVAL_S):
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                self._log(
                    f"the sink process exited (code {proc.returncode}); "
                    f"starting another in {RESTART_AFTER_S:.0f} s"
                )
                if self._stop.wait(RESTART_AFTER_S):
                    return
                self._spawn()
                continue
            self._tell()

    def _line(self) -> tuple[int, int]:
        # Events first: counted once journaled, so never behind the durable end read after.
        events = self.ingested()
        return self.journal.durable_end, events

    def _tell(self) -> None:
        proc = self._proc
        now = self._line()
        if now == self._told or proc is None or proc.stdin is None:
            return
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            # A line under PIPE_BUF bytes: written whole or not at all.
            os.write(proc.stdin.fileno(), f"{now[0]} {now[1]}\n".encode())
            self._told = now

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(status_path(self.store).read_text())["sinks"]
        except (OSError, ValueError, KeyError):
            return {c.name: {"type": c.type, "state": "starting"} for c in self.configs}

    def stop(self) -> None:
        """The last durable end, then EOF: the child drains and exits (killed if it hangs)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), True)
            with contextlib.suppress(BrokenPipeError):
                end, events = self._line()
                proc.stdin.write(f"{end} {events}\n".encode())
                proc.stdin.close()
        drain = max(c.runner_option("drain_timeout") for c in self.configs)
        try:
            proc.wait(drain + 60)
        except subprocess.TimeoutExpired:
            self._log("the sink process did not stop in time; killed")
            proc.kill()
            proc.wait()


# -- the child -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m traintape.collector.sink_process",
        description="The sink process of a collector (started by `traintape serve`, not by hand).",
    )
    p.add_argument("--store", required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    store = Path(args.store)

    def log(text: str) -> None:
        print(f"traintape collector: {text}", file=sys.stderr, flush=True)

    lock_path = store / "state" / "sinks" / ".lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(lock_path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("waiting for the previous sink process to finish")
        fcntl.flock(lock, fcntl.LOCK_EX)

    stdin = sys.stdin.buffer
    config = json.loads(stdin.readline())
    configs = [SinkConfig(**c) for c in config["sinks"]]
    follower = JournalFollower(store / "journal")
    told = {"events": 0}
    first = stdin.readline().split()
    if not first:
        return 0  # the collector stopped before telling anything
    follower.durable_end, told["events"] = int(first[0]), int(first[1])

    from traintape.collector.sink_runner import SinkRunners

    runners = SinkRunners(store, follower, configs, log, lambda: told["events"])
    runners.start()
    stop = threading.Event()
    writer = threading.Thread(target=_write_status, args=(store, runners, stop), daemon=True)
    writer.start()
    for line in stdin:  # until the collector closes the pipe
        with contextlib.suppress(ValueError, IndexError):
            end, events = line.split()
            follower.durable_end = max(follower.durable_end, int(end))
            told["events"] = max(told["events"], int(events))
    runners.stop()
    stop.set()
    writer.join()
    _status_once(store, runners)
    return 0


def _write_status(store: Path, runners: Any, stop: threading.Event) -> None:
    while not stop.wait(STATUS_INTERVAL_S):
        _status_once(store, runners)


def _status_once(store: Path, runners: Any) -> None:
    with contextlib.suppress(OSError):
        write_json_atomic(status_path(store), {"updated": time.time(), "sinks": runners.status()})


if __name__ == "__main__":
    sys.exit(main())
