"""Sink runners: each configured sink gets a thread that follows the journal from its own cursor
(in the collector's sink process, see process.py).

A runner reads journal records from its cursor up to `durable_end`, turns them into sink
operations (`traintape.sinks.projection`), hands them to the sink, calls `flush()`, and only
then persists its state (`<store>/state/sinks/<name>.json`: journal position, events before
it, the projection's pending state and the sink's checkpoint), by temp file and rename. So the
ingest loop never waits on a sink, a sink that was down resumes where it stopped, and a batch is
handed to a sink again only if the collector stopped after the sink took it but before the
cursor moved (each backend's module says how it avoids storing that twice).

A failed call is retried with the same batch after `retry_initial` seconds, doubling up to
`retry_max`; the runner resumes with the operation that failed, not with the whole batch. The
sink's name, the error and the retry delay are logged (the first failure, then at most every 30
s while it lasts) and shown by `traintape status`, with the lag: journal events not yet passed.
At shutdown each runner gets `drain_timeout` seconds to catch up, then stops where it is.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traintape.collector.journal import Journal, JournalFollower
from traintape.durable import write_json_atomic
from traintape.errors import SinkRejected
from traintape.layout import StoreLayout
from traintape.schemas.events import RUN_START
from traintape.schemas.wire import BatchBody, BatchHeader
from traintape.sinks._base import RunInfo, Sink, safe_name
from traintape.sinks.config import SinkConfig
from traintape.sinks.projection import Op, Projection, apply
from traintape.sinks.tail import JournalTail, find_run_start

LOG_EVERY_S = 30.0
START_WAIT_S = 30.0
"""Events of a run whose run_start is not journaled yet wait this long at most (see
`SinkRunner._start_awaited`)."""
SWITCH_INTERVAL_S = 0.0005

logger = logging.getLogger(__name__)


def state_path(store: Path, name: str) -> Path:
    return StoreLayout(store).sink_state(safe_name(name))


@dataclass
class _Unit:
    """One batch for the sink: its operations, and the state to persist once it is delivered."""

    ops: list[Op]
    end: int
    events: int
    projection: dict[str, Any]
    full: bool
    done: int = 0


class SinkRunner:
    def __init__(
        self,
        config: SinkConfig,
        store: Path,
        journal: Journal | JournalFollower,
        tail: JournalTail,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """`log`: where its messages go instead of this module's logger (tests)."""
        self.config = config
        self.name = config.name
        self.store = store
        self.journal = journal
        self.tail = tail
        self._log = log or _warning
        self.path = state_path(store, config.name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = self._load()
        self.position: int = state.get("position", 0)
        self.events: int = state.get("events", 0)
        self._checkpoint = state.get("checkpoint")
        self._committed = state.get("projection")
        self.projection = Projection()
        self._reset_projection()
        tail.seed(self.position, self.events)
        self.sink: Sink | None = None
        self.batches = 0
        self.events_passed = 0
        self.rejected_batches = 0
        self.skipped_records = 0
        self.errors = 0
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self.retry_in: float = 0.0
        self.state = "starting"
        self._unit: _Unit | None = None
        self._runs_seen: dict[str, RunInfo] = {}
        self._searched_to: dict[str, int] = {}  # run id -> journal scanned for its start, to
        self._stopping = False
        self._deadline = float("inf")
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"traintape-sink-{self.name}")
        self._thread.daemon = True

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Lets the sink catch up for at most `timeout` s (its drain_timeout), then stops it."""
        drain = self.config.runner_option("drain_timeout") if timeout is None else timeout
        self._deadline = time.monotonic() + drain
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(drain + 30)

    def status(self) -> dict[str, Any]:
        behind = self.journal.durable_end - self.position
        lag = max(self.tail.events - self.events, 0) if behind > 0 else 0
        out: dict[str, Any] = {
            "type": self.config.type,
            "ranks": self.config.runner_option("ranks"),
            "state": self.state,
            "lag_events": lag,
            "lag_bytes": max(behind, 0),
            "position": self.position,
            "events_passed": self.events_passed,
            "batches": self.batches,
            "errors": self.errors,
            "last_error": self.last_error,
        }
        if self.failing_since is not None:
            out["failing_for_s"] = round(time.monotonic() - self.failing_since, 1)
            out["retry_in_s"] = round(self.retry_in, 2)
        if self.rejected_batches:
            out["rejected_batches"] = self.rejected_batches
        if self.projection.late_values:
            out["late_values"] = self.projection.late_values
        if self.sink is not None:
            try:
                out["backend"] = self.sink.stats()
            except Exception:  # stats are a courtesy; a sink bug must not break status
                pass
        return out

    # -- the thread ------------------------------------------------------------------------------

    def _main(self) -> None:
        initial = self.config.runner_option("retry_initial")
        backoff = initial
        last_logged = 0.0
        last_tail = 0.0
        while True:
            try:
                sink, self._unit = self._next_unit()
                if self._unit is None:
                    self.state = "idle"
                    self.tail.advance()
                    if self._stopping:
                        break
                    self._wait(self.config.runner_option("interval"))
                    continue
                self.state = "writing"
                self._deliver(sink, self._unit)
                self._commit(self._unit, sink.flush())
                full = self._unit.full
                self._unit = None
                if self.failing_since is not None:
                    self._log(
                        f"sink {self.name}: delivering again after "
                        f"{time.monotonic() - self.failing_since:.1f}s of errors"
                    )
                self.failing_since = None
                self.retry_in = 0.0
                backoff = initial
                if not full or time.monotonic() - last_tail >= 1.0:
                    last_tail = time.monotonic()
                    self.tail.advance()
            except _Abandon:
                break
            except Exception as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                now = time.monotonic()
                if self.failing_since is None:
                    self.failing_since = now
                self.retry_in = backoff
                self.state = "retrying"
                if now - last_logged >= LOG_EVERY_S or self.errors == 1:
                    last_logged = now
                    self._log(f"sink {self.name}: {self.last_error} (retrying in {backoff:.1f}s)")
                if self._stopping and time.monotonic() >= self._deadline:
                    break
                self.tail.advance()  # a failing sink still keeps every lag figure fresh
                self._wait(backoff)
                backoff = min(backoff * 2, self.config.runner_option("retry_max"))
        self._close()

    def _next_unit(self) -> tuple[Sink, _Unit | None]:
        """The sink (made at the first call) and the batch to deliver to it: the one a failure
        left, else the next (None: nothing new)."""
        if self.sink is None:
            sink = self.config.create(self.store)
            sink.restore(self._checkpoint)  # made again if this fails
            self.sink = sink
        try:
            return self.sink, self._unit or self._build_unit()
        except Exception:
            self._reset_projection()  # it may have taken part of the records
            raise

    def _wait(self, seconds: float) -> None:
        if self._stopping:  # the wake-up was spent: sleep, but not past the drain deadline
            time.sleep(min(seconds, max(self._deadline - time.monotonic(), 0.0)))
            return
        self._wake.wait(seconds)
        if not self._stopping:
            self._wake.clear()

    def _close(self) -> None:
        if self._unit is not None or self.position < self.journal.durable_end:
            self._log(
                f"sink {self.name}: stopping {self.journal.durable_end - self.position} journal "
                "bytes behind; it resumes from its cursor at the next start"
            )
        self.state = "stopped"
        if self.sink is not None:
            try:
                self.sink.close()
            except Exception as exc:
                self._log(f"sink {self.name}: close failed: {type(exc).__name__}: {exc}")

    # -- units -----------------------------------------------------------------------------------

    def _build_unit(self) -> _Unit | None:
        end = self.journal.durable_end
        if self.position >= end:
            return None
        limit = self.config.runner_option("batch_events")
        projection = self.projection
        n = 0
        stop = self.position
        full = False
        records = self.journal.read(self.position, end)
        try:
            for batch in records.batches(want_body=projection.wants):
                header, body = batch.header, batch.body
                error: Exception | None = batch.error
                if header is not None and body is not None:  # decoded, and this sink's
                    try:
                        if self._start_awaited(header, body):
                            break  # this record waits for its run's start (a resend on its way)
                        projection.feed(header, body)
                    except (ValueError, TypeError, KeyError) as exc:
                        error = exc
                if error is not None:
                    self.skipped_records += 1
                    self._log(f"sink {self.name}: skipping journal record at {stop}: {error}")
                    header = None
                n += header.n if header is not None else 0
                stop = batch.next_position
                if n >= limit:
                    full = True
                    break
            else:
                stop = max(stop, records.position)  # past damage set aside after the last record
        finally:
            records.close()
        if stop == self.position:
            return None
        return _Unit(projection.take_ops(), stop, self.events + n, projection.state(), full)

    def _reset_projection(self) -> None:
        fresh = Projection(
            self.config.runner_option("ranks"),
            ordered_steps=self.config.sink_class.ordered_steps,
            wait_ranks=self.config.runner_option("wait_ranks"),
            lookup=self._lookup,
            late_s=self.config.sink_class.late_events_s,
        )
        fresh.load_state(self._committed)
        fresh.late_values = self.projection.late_values
        self.projection = fresh

    def _deliver(self, sink: Sink, unit: _Unit) -> None:
        ops = unit.ops
        while unit.done < len(ops):
            if self._stopping and time.monotonic() >= self._deadline:
                raise _Abandon
            op = ops[unit.done]
            try:
                apply(sink, op)
            except SinkRejected as exc:
                self.rejected_batches += 1
                self._log(f"sink {self.name}: batch skipped, the backend refused it: {exc}")
            unit.done += 1

    def _commit(self, unit: _Unit, checkpoint: Any) -> None:
        state = {
            "sink": self.config.type,
            "position": unit.end,
            "events": unit.events,
            "projection": unit.projection,
            "checkpoint": checkpoint,
        }
        write_json_atomic(self.path, state)
        self._committed = unit.projection
        self.events_passed += unit.events - self.events
        self.position = unit.end
        self.events = unit.events
        self.batches += 1

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def _lookup(self, run_id: str) -> RunInfo | None:
        """The run's start, wherever it lies in the durable journal (before this runner's
        cursor, or after it: a first batch resent late is journaled after later ones). The
        journal is scanned once; a run not found yet is searched again only in what is new."""
        if run_id in self._runs_seen:
            return self._runs_seen[run_id]
        start, end = self._searched_to.get(run_id, 0), self.journal.durable_end
        found = find_run_start(self.journal.read(start, end), run_id)
        if found is None:
            self._searched_to[run_id] = end
            return None
        self._searched_to.pop(run_id, None)
        self._runs_seen[run_id] = found
        return found

    def _start_awaited(self, header: BatchHeader, body: BatchBody) -> bool:
        """Whether events of a run whose start is not in the journal yet should wait: for at
        most START_WAIT_S after they were logged, so the sink opens the run by its real name
        instead of an unknown one (then it goes on without it)."""
        if RUN_START in body.kinds or self.projection.knows(header.run_id):
            return False
        if self._lookup(header.run_id) is not None:
            return False
        return time.time() - max(body.ts) / 1e9 < START_WAIT_S


class _Abandon(Exception):
    """Stop delivering: the drain deadline passed. The batch stays after the cursor."""


class SinkRunners:
    """Every configured sink's runner, started and stopped together by the collector."""

    def __init__(
        self,
        store: Path,
        journal: Journal | JournalFollower,
        configs: list[SinkConfig],
        log: Callable[[str], None] | None = None,
        ingested: Callable[[], int] | None = None,
    ) -> None:
        """`ingested()`: events the collector has journaled since it started (for the lag)."""
        self.tail = JournalTail(journal, ingested)
        self.runners = [SinkRunner(c, store, journal, self.tail, log) for c in configs]
        self.tail.count_from_seed()

    def start(self) -> None:
        # The ingest loop wakes from zmq.poll wanting the GIL while sink threads hold it; a
        # shorter switch interval (5 ms by default) hands it back sooner.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        for runner in self.runners:
            runner.start()

    def stop(self) -> None:
        """Every runner drains in parallel, each for at most its drain_timeout."""
        stoppers = [
            threading.Thread(target=r.stop, name=f"traintape-stop-{r.name}") for r in self.runners
        ]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()

    def status(self) -> dict[str, Any]:
        return {r.name: r.status() for r in self.runners}


__all__ = ["JournalTail", "SinkRunner", "SinkRunners", "find_run_start", "state_path"]


def _warning(text: str) -> None:
    logger.warning("%s", text)
