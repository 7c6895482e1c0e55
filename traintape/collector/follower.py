"""Journal followers in child processes of the collector, so their work never takes its GIL.

The materializer (msgpack decoding, Arrow conversion) and the sinks (TensorBoard's protobufs,
MLflow's HTTP client, W&B's SDK) only read the journal. As threads of the collector they competed
with the ingest loop for the interpreter lock; each now runs in a process of its own:

    collector                                   child (python -m traintape.collector.child NAME)
    FollowerProcess ──stdin: config line, ──►   JournalFollower.durable_end, the event count
                      then "<durable end>         the follower (Materializer, SinkRunners)
                      <events>" lines
    status() ◄──── state/<name>.status.json ◄── written every STATUS_INTERVAL_S

(`events`: what the collector has journaled since it started; the sinks count their lag from it.)

A child reads the journal only up to the durable end the collector last told it (bytes past it
may be torn, or rolled back after a failed fsync). When its stdin closes (the collector stops, or
dies: even a SIGKILL closes the pipe) the follower finishes what it was told and the process
exits; a new child waits on `state/<name>.lock` until the old one has, so a follower always has
one writer. Children run in their own session and ignore SIGINT and SIGTERM: a Ctrl-C in the
terminal reaches the collector only, which decides when they stop. If a child dies, the
collector logs it and starts another (and starts one at its stop, so that stop leaves the work
done).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from traintape.collector.journal import JournalFollower
from traintape.collector.logs import to_stderr
from traintape.durable import write_json_atomic
from traintape.layout import StoreLayout

STATUS_INTERVAL_S = 0.2
NOTIFY_INTERVAL_S = 0.02
RESTART_AFTER_S = 5.0
UNFINISHED_EXIT = 3
"""A child's exit code when its stop budget ran out first: work left, nothing failed."""
KILL_GRACE_S = 3.0
"""After its own stop budget a child exits by itself; the collector kills it this much later."""

logger = logging.getLogger(__name__)


def status_path(store: Path, name: str) -> Path:
    return StoreLayout(store).follower_status(name)


def max_follower_position(store: Path) -> int:
    """The furthest journal position a follower has committed (the materializer's cursor, each
    sink's): the journal must never end before it (`Journal.advance_to`)."""
    layout = StoreLayout(store)
    positions = [0]
    for path in [layout.materializer_cursor, *layout.sink_states.glob("*.json")]:
        try:
            positions.append(int(json.loads(path.read_text())["position"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no cursor yet, or one a follower rewrites at its next commit
    return max(positions)


class FollowerProcess:
    """The collector's handle on one child: start it, tell it the journal's durable end, read
    its status, stop it (it finishes what it was told, for at most `stop_timeout` s)."""

    def __init__(
        self,
        name: str,
        store: Path,
        journal: Any,
        config: dict[str, Any],
        *,
        ingested: Callable[[], int],
        stop_timeout: float,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """`log`: where its messages go instead of this module's logger (tests)."""
        self.name = name
        self.label = name.removesuffix("_process")  # "the sink process", in messages
        self.store = store
        self.journal = journal
        self.config = {**config, "stop_timeout": stop_timeout}
        self.ingested = ingested
        self._log = log or _warning
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._told: tuple[int, int] | None = None
        self._stop_deadline = 0.0
        self.failure: str | None = None
        """Why the follower failed at its stop (None: it finished cleanly)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tend, name=f"traintape-{name}", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        status_path(self.store, self.name).unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "traintape.collector.child",
                self.name,
                "--store",
                str(self.store),
            ],
            stdin=subprocess.PIPE,
            # Its own session: a terminal's Ctrl-C (sent to the collector's process group)
            # never reaches it, not even while it is still importing; the collector ends it.
            start_new_session=True,
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(self.config).encode() + b"\n")
        self._proc.stdin.flush()
        os.set_blocking(self._proc.stdin.fileno(), False)  # the collector never waits on it
        self._told = None
        self._tell()

    def _tend(self) -> None:
        """Tells the child each new durable end; starts another if it died."""
        while not self._stop.wait(NOTIFY_INTERVAL_S):
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                self._log(
                    f"the {self.label} process exited (code {proc.returncode}); "
                    f"starting another in {RESTART_AFTER_S:.0f} s"
                )
                if self._stop.wait(RESTART_AFTER_S):
                    return
                try:
                    self._spawn()
                except OSError as exc:  # no memory to fork, say: the journal keeps the work
                    self._log(f"cannot start the {self.label} process ({exc}); trying again")
                continue
            self._tell()

    def _line(self) -> tuple[int, int]:
        events = self.ingested()  # read first: counted when journaled, so never behind the end
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

    def status(self) -> Any:
        """The follower's `status()` as the child last reported it (None before its first)."""
        try:
            return json.loads(status_path(self.store, self.name).read_text())["status"]
        except (OSError, ValueError, KeyError):
            return None

    def stop(self) -> None:
        """The last durable end, then EOF: the child finishes and exits (killed if it hangs)."""
        self.request_stop()
        self.wait_stopped()

    def request_stop(self) -> None:
        """Tells the child the last durable end and closes its stdin; it finishes what it was
        told for at most `stop_timeout` s and exits. Followers stop in parallel this way."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._proc is None:
            return  # never started
        if self._proc.poll() is not None:  # died, not yet replaced: one more finishes the work
            try:
                self._spawn()
            except OSError as exc:
                self._log(f"cannot start the {self.label} process ({exc}); its work waits")
                self.failure = f"the {self.label} process could not be started: {exc}"
                return
        proc = self._proc
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), True)
            with contextlib.suppress(BrokenPipeError):
                end, events = self._line()
                proc.stdin.write(f"{end} {events}\n".encode())
                proc.stdin.close()
        self._stop_deadline = time.monotonic() + self.stop_timeout + KILL_GRACE_S

    def wait_stopped(self) -> str | None:
        """Waits for the child after `request_stop` (killing it past its budget); returns why
        the follower failed, or None. The journal keeps whatever it left undone."""
        proc = self._proc
        if proc is None or self.failure is not None and proc.poll() is not None:
            return self.failure
        try:
            proc.wait(max(self._stop_deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            self._log(f"the {self.label} process did not stop in {self.stop_timeout:.0f} s; killed")
            proc.kill()
            proc.wait()
            self.failure = f"the {self.label} process did not stop in time and was killed"
            return self.failure
        if proc.returncode == UNFINISHED_EXIT:
            self._log(f"the {self.label} stopped before catching up; it resumes at the next start")
        elif proc.returncode != 0:  # its last catch-up raised: the stage is failing, not slow
            self.failure = f"the {self.label} process exited with code {proc.returncode}"
        return self.failure


# -- the child -------------------------------------------------------------------------------


class Follower(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def status(self) -> dict[str, Any]: ...


Build = Callable[[Path, dict[str, Any], JournalFollower, Callable[[], int]], Follower]


def child_main(name: str, build: Build, argv: list[str] | None = None) -> int:
    """The main of a follower process: `build(store, config, journal, ingested)` makes the
    follower, which runs until the collector closes this process's stdin."""
    import argparse

    p = argparse.ArgumentParser(
        prog=f"python -m traintape.collector.child {name}",
        description=f"The {name} process of a collector (`traintape serve` starts it).",
    )
    p.add_argument("--store", required=True)
    args = p.parse_args(argv)
    # The collector decides when this process stops (see the module docstring).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    to_stderr()
    return FollowerChild(name, Path(args.store), sys.stdin.buffer).run(build)


class FollowerChild:
    """A follower process's side of the pipe: its lock, the durable end and event count the
    collector tells it, the status file it writes, and its stop within a budget."""

    def __init__(self, name: str, store: Path, stdin: BinaryIO) -> None:
        self.name = name
        self.store = store
        self.stdin = stdin
        self.layout = StoreLayout(store)
        self.journal = JournalFollower(self.layout.journal)
        self.events = 0
        """What the collector has journaled since it started, as it last said."""
        self.follower: Follower | None = None
        self._lock: IO[str] | None = None
        self._stop_reporting = threading.Event()

    def run(self, build: Build) -> int:
        self._take_lock()
        config = json.loads(self.stdin.readline() or "{}")
        if not self.take(self.stdin.readline()):
            return 0  # the collector stopped before telling anything
        self.follower = build(self.store, config, self.journal, lambda: self.events)
        self.follower.start()
        reporter = threading.Thread(target=self._report_every, daemon=True)
        reporter.start()
        for line in self.stdin:  # until the collector closes the pipe, or dies
            self.take(line)
        return self._finish(float(config.get("stop_timeout", 60.0)), reporter)

    def _take_lock(self) -> None:
        """Waits until the previous process of this follower has exited (one writer each);
        held until this one exits."""
        path = self.layout.follower_lock(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(path, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            label = self.name.removesuffix("_process")
            logger.info("waiting for the previous %s process to finish", label)
            fcntl.flock(self._lock, fcntl.LOCK_EX)

    def take(self, line: bytes) -> bool:
        """Takes a `<durable end> <events>` line; False if it is not one."""
        try:
            end, events = line.split()
            self.journal.durable_end = max(self.journal.durable_end, int(end))
            self.events = max(self.events, int(events))
            return True
        except ValueError:
            return False

    def report(self) -> None:
        assert self.follower is not None
        with contextlib.suppress(OSError):
            write_json_atomic(
                self.layout.follower_status(self.name),
                {"updated": time.time(), "status": self.follower.status()},
            )

    def _report_every(self) -> None:
        while not self._stop_reporting.wait(STATUS_INTERVAL_S):
            self.report()

    def _finish(self, budget: float, reporter: threading.Thread) -> int:
        """Stops the follower within `budget` s. Past it the process exits anyway: an orphan
        never holds its lock (and the next collector's follower) for work the journal still
        holds."""
        follower = self.follower
        assert follower is not None
        failed: list[BaseException] = []

        def stop_follower() -> None:
            try:
                follower.stop()
            except BaseException as exc:  # reported below; the exit code says the stage failed
                failed.append(exc)

        stopper = threading.Thread(
            target=stop_follower, name="traintape-follower-stop", daemon=True
        )
        stopper.start()
        stopper.join(budget)
        self._stop_reporting.set()
        reporter.join()
        self.report()
        if stopper.is_alive():
            logger.warning(
                "did not finish in %g s; the rest resumes from the cursor at the next start", budget
            )
            sys.stderr.flush()
            os._exit(UNFINISHED_EXIT)  # the stopper may hang in a backend: do not wait for it
        if failed:
            logger.error("failed while stopping: %s: %s", type(failed[0]).__name__, failed[0])
            return 1
        return 0


def _warning(text: str) -> None:
    logger.warning("%s", text)
