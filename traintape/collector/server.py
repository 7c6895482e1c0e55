"""The collector process: receive batches, journal them durably, acknowledge, materialize.

ROUTER sockets bound to every requested address (routers.py). Each loop iteration takes every
message that is waiting (up to a bound), validates (validate.py) and deduplicates them, appends
the new ones to the journal, fsyncs once for the whole group, and only then acknowledges each
batch: an ack always means "on disk". SIGINT/SIGTERM stop the loop; everything received is
journaled, the followers finish within their budgets, and the process exits 0, or 1 when a
follower failed (the journal keeps its work for the next start).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from traintape.collector import validate
from traintape.collector.deadletter import DeadLetters
from traintape.collector.dedup import Deduplicator
from traintape.collector.diskfloor import DEFAULT_MIN_FREE_BYTES, DiskFloor
from traintape.collector.follower import max_follower_position
from traintape.collector.journal import Journal
from traintape.collector.liveness import Liveness
from traintape.collector.logs import to_stderr
from traintape.collector.materializer import ensure_empty_tables
from traintape.collector.materializer_process import MaterializerProcess
from traintape.collector.routers import Routers, check_bind_address
from traintape.collector.storelock import take_store
from traintape.collector.system import SystemSampler
from traintape.collector.visibility import VisibilityWaiters
from traintape.durable import write_json_atomic
from traintape.errors import CollectorError
from traintape.layout import StoreLayout, check_collector_id
from traintape.paths import default_address
from traintape.schemas.events import RUN_END
from traintape.schemas.limits import MAX_MESSAGE_BYTES
from traintape.schemas.records import frame_parts, frame_record
from traintape.schemas.wire import (
    ACK_REJECTED,
    ACK_STORED,
    BatchBody,
    BatchHeader,
    WireError,
    decode_body,
    decode_header,
    encode_ack,
    encode_body,
    encode_header,
)
from traintape.sinks.process import SinkProcess

MAX_MESSAGES_PER_GROUP = 2048

logger = logging.getLogger(__name__)


class Collector:
    def __init__(
        self,
        store: Path,
        binds: list[str] | None = None,
        *,
        materialize_interval: float = 0.5,
        system_interval: float = 1.0,
        compact_settle: float | None = None,
        curve: bool = False,
        quiet: bool = False,
        sinks: list[Any] | None = None,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        collector_id: str | None = None,
        tables: dict[str, Any] | None = None,
    ) -> None:
        """`quiet`: this object's own lines are not logged (its parts log on their loggers,
        `traintape.collector.*`, which a program routes or silences with `logging`).
        `collector_id`: one of several collectors sharing the store (one per node); its own
        files are in `layout.home` and its own run folders (layout.py). None: the store's own.
        `tables`: {"tables": "s3://bucket/prefix", "tables_grace": s} publishes them there."""
        self.store = store
        self.tables = tables
        self.layout = StoreLayout(store, check_collector_id(collector_id))
        self.home = self.layout.home  # what its parts that keep no table files are given
        self.max_message_bytes = max_message_bytes
        self.binds = binds or [default_address(store, collector_id)]
        self.quiet = quiet
        self.failures: list[str] = []
        """Why a follower (materializer, sinks) failed at the stop: `serve` then exits 1."""
        self.stats: dict[str, Any] = {
            "batches": 0,
            "events": 0,
            "duplicate_events": 0,
            "dead_letters": 0,
        }
        self._take_store(min_free_bytes)
        self._open_journal()
        self._start_followers(materialize_interval, compact_settle, sinks)
        self._watch(system_interval)
        self._stop = threading.Event()
        self.routers = Routers(
            store, self.binds, curve=curve, max_message_bytes=max_message_bytes, log=self._log
        )
        self._sockets = self.routers.sockets

    def _take_store(self, min_free_bytes: int) -> None:
        """The store's lock (one collector per store), its pid file and the free-space floor."""
        self._lock_file = take_store(self.layout)
        self.disk = DiskFloor(self.store, min_free_bytes)
        try:
            self.layout.pid.write_text(str(os.getpid()))
        except OSError as exc:  # a full disk: serve anyway (the lock above is what excludes)
            self.disk.error(self.layout.pid.name, exc)

    def _open_journal(self) -> None:
        """The journal, and what it already holds: sequence numbers seen, dead letters."""
        self.journal = Journal(self.layout.journal)
        self.journal.advance_to(max_follower_position(self.home))
        self.dedup = Deduplicator()
        self.dead = DeadLetters(self.home)
        self.visible = VisibilityWaiters(self.home)  # ACK_VISIBLE once a run_end is materialized
        self._recover()
        ensure_empty_tables(self.store)  # queryable at once, before the materializer process runs

    def _start_followers(
        self, materialize_interval: float, compact_settle: float | None, sinks: list[Any] | None
    ) -> None:
        """The materializer's and the sinks' processes (started by `serve`)."""
        self.materializer = MaterializerProcess(
            self.store,
            self.journal,
            materialize_interval,
            compact_settle,
            lambda: self.stats["events"],
            self.layout.collector,
            self.tables,
        )
        # The sinks (traintape.sinks.config.SinkConfig) follow the journal in a child process,
        # one thread each, so their backends never hold this process's GIL.
        self.sinks = (
            SinkProcess(self.home, self.journal, list(sinks), lambda: self.stats["events"])
            if sinks
            else None
        )

    def _watch(self, system_interval: float) -> None:
        """The collector's own batches: system samples, and `crashed` for runs that vanished."""
        # Journaled by the ingest loop, the journal's only writer.
        self._local: queue.SimpleQueue[tuple[bytes, bytes]] = queue.SimpleQueue()
        self.sampler = SystemSampler(system_interval, self._local) if system_interval > 0 else None
        self.liveness = Liveness(self.home, self._local)
        self.liveness.load(self.journal)

    def _log(self, text: str, level: int = logging.INFO) -> None:
        if not self.quiet:
            logger.log(level, "%s", text)

    def _recover(self) -> None:
        """Rebuilds the dedup state from the journal: what it holds was acknowledged once."""
        t0 = time.perf_counter()
        records = self.dedup.recover(self.journal)
        if records:
            self._log(
                f"recovered {records} journal batches ({self.journal.end} bytes) "
                f"in {time.perf_counter() - t0:.2f}s"
            )

    # -- the ingest loop ---------------------------------------------------------------------

    def serve(self) -> None:
        self.materializer.start()
        if self.sinks is not None:
            self.sinks.start()
        if self.sampler is not None:
            self.sampler.start()
        self._log(f"serving {self.store} on {', '.join(self.binds)} (pid {os.getpid()})")
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        last_status = 0.0
        try:
            while not self._stop.is_set():
                if poller.poll(self.visible.poll_ms(100)) or not self._local.empty():
                    self._ingest_group()
                self.liveness.tick(self.journal.durable_end)
                self.visible.send_due()
                now = time.monotonic()
                if now - last_status >= 1.0:
                    self.write_status()
                    last_status = now
        finally:
            self._shutdown()

    def _ingest_group(self) -> None:
        counted = {k: self.stats[k] for k in ("batches", "events", "duplicate_events")}
        journal_data: list[bytes] = []
        acks: dict[zmq.Socket, list[tuple[bytes, bytes]]] = {s: [] for s in self._sockets}
        for sock, sock_acks in acks.items():
            for _ in range(MAX_MESSAGES_PER_GROUP):
                try:
                    frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._admit(frames, journal_data, sock_acks)
        while not self._local.empty():
            header_frame, body_frame = self._local.get()
            self._admit([b"", header_frame, body_frame], journal_data, [])
        if journal_data:
            # Under the free-space floor, or disk full or failing: acknowledge nothing of this
            # group (emitters keep and resend it), cut the journal back to its durable end, and
            # forget the group's sequence numbers so the resends are taken as new.
            if not self.disk.allows(sum(map(len, journal_data))):
                self._not_journaled(counted)
                return
            try:
                self.journal.append(*journal_data)
                self.journal.sync()
            except OSError as exc:
                self.disk.write_failed(exc)
                self.stats["journal_errors"] = self.stats.get("journal_errors", 0) + 1
                self.journal.rollback()
                self._not_journaled(counted)
                return
        self.dedup.commit()
        self.visible.journaled(acks, self.journal.durable_end)
        for sock, sock_acks in acks.items():
            for identity, ack in sock_acks:
                try:
                    sock.send_multipart((identity, ack), flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # the emitter went away; it resends, and gets a duplicate's ack

    def _admit(
        self, frames: list[bytes], journal_data: list[bytes], acks: list[tuple[bytes, bytes]]
    ) -> None:
        if len(frames) != 3:
            self._dead(frames[1:] if frames else [], f"expected 2 frames, got {len(frames) - 1}")
            return
        identity, header_frame, body_frame = frames
        if not body_frame and self.liveness.heartbeat(header_frame):
            return  # a heartbeat (n=0, no body): noted, never journaled nor acknowledged
        try:
            header = decode_header(header_frame)
        except WireError as exc:
            self._dead([header_frame, body_frame], str(exc))
            return
        try:
            validate.check_size(header_frame, body_frame, self.max_message_bytes)
            validate.check_batch(header)
            body = decode_body(body_frame, header.n)  # value types: validate.bad_events, below
        except WireError as exc:
            self._dead([header_frame, body_frame], str(exc))
            acks.append((identity, encode_ack(header.source, header.seq0, header.n, ACK_REJECTED)))
            return
        # Events that would fail a later stage are set aside one by one; the rest is journaled.
        bad = validate.bad_events(body)
        new = self.dedup.admit((header.run_id, header.rank, header.source), header.seq0, header.n)
        if new:  # a late resend of a run_start must not bring an ended process back
            self.liveness.observe(header, body, bad=bad)
        self.stats["batches"] += 1
        if not bad and new == [(header.seq0, header.seq_end)]:
            journal_data.extend(frame_parts(header_frame, body_frame))
            self.stats["events"] += header.n
        else:
            good, dead = validate.split_new(header, new, bad)
            kept = 0
            for lo, hi in good:  # a partial overlap: journal only the unseen part
                journal_data.append(_slice_record(header, body, lo, hi))
                kept += hi - lo
            for seq in dead:
                reason = f"event seq {seq}: {bad[seq - header.seq0]}"
                self._dead(validate.event_frames(header, body, seq), reason)
            self.stats["events"] += kept
            self.stats["rejected_events"] = self.stats.get("rejected_events", 0) + len(dead)
            self.stats["duplicate_events"] += header.n - sum(hi - lo for lo, hi in new)
        status = ACK_REJECTED if len(bad) == header.n else ACK_STORED
        ack = encode_ack(header.source, header.seq0, header.n, status, len(bad))
        acks.append((identity, ack))
        if status == ACK_STORED and RUN_END in body.kinds:
            self.visible.note(acks, identity, header.source, header.seq0, header.n)
            if header.n == 1 and not new:  # finish()'s visibility request, no real duplicate
                self.stats["duplicate_events"] -= 1

    def _not_journaled(self, counted: dict[str, int]) -> None:
        """Undoes a group's admissions and counts: it was neither journaled nor acknowledged."""
        self.dedup.rollback()
        self.visible.dropped()
        self.stats.update(counted)

    def _dead(self, frames: list[bytes], reason: str) -> None:
        self.dead.add(frames, reason)
        self.stats["dead_letters"] = self.dead.count
        if self.dead.write_errors:
            self.stats["dead_letter_write_errors"] = self.dead.write_errors

    # -- status and shutdown -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "store": str(self.store),
            "collector_id": self.layout.collector,
            "binds": self.binds,
            "updated": time.time(),
            **self.stats,
            "journal_bytes": self.journal.end,
            "materialized_bytes": self.materializer.position,
            "materializer_lag_bytes": self.journal.durable_end - self.materializer.position,
            "materializer_error": self.materializer.last_error,
            "acks_withheld": self.disk.reason,  # why nothing is acknowledged now, or None
            "sinks": self.sinks.sinks_status() if self.sinks is not None else {},
            "tables": (self.materializer.status() or {}).get("tables"),  # their publishing
        }

    def write_status(self) -> None:
        try:
            write_json_atomic(self.layout.collector_status, self.status(), indent=1)
        except OSError as exc:  # a full disk stops acknowledgements, never the collector
            self.disk.error("the status file", exc)
        else:
            self.disk.cleared("the status file")

    def stop(self) -> None:
        self._stop.set()

    def _shutdown(self) -> None:
        self._log("stopping: journaling what is queued and materializing")
        if self.sampler is not None:
            self.sampler.stop()
        # Whatever already arrived is journaled and acknowledged before the socket closes.
        self._ingest_group()
        self.routers.close()
        self.journal.close()
        # Both followers finish in parallel, each within its budget (the sinks: drain_timeout).
        followers = [self.materializer, *([self.sinks] if self.sinks is not None else [])]
        for follower in followers:
            follower.request_stop()
        self.failures = [f for f in (p.wait_stopped() for p in followers) if f is not None]
        self.dead.close()
        self.write_status()
        for address in self.binds:
            if address.startswith("ipc://"):
                Path(address[len("ipc://") :]).unlink(missing_ok=True)
        self.layout.pid.unlink(missing_ok=True)
        self._log(
            f"stopped: {self.stats['events']} events stored, "
            f"{self.stats['duplicate_events']} duplicates dropped, "
            f"{self.stats['dead_letters']} dead letters"
        )
        for failure in self.failures:
            self._log(
                f"FAILED: {failure}. Every event is in the journal; the stage resumes from its "
                "cursor at the next start (see the log above for the cause)",
                logging.ERROR,
            )
        self._lock_file.close()


def _slice_record(header: BatchHeader, body: BatchBody, lo: int, hi: int) -> bytes:
    a, b = lo - header.seq0, hi - header.seq0
    return frame_record(
        encode_header(header.run_id, header.rank, header.source, lo, hi - lo),
        encode_body(body.kinds[a:b], body.ts[a:b], body.steps[a:b], body.bodies[a:b]),
    )


def run(store: Path, binds: list[str] | None = None, **options: Any) -> int:
    """Runs a collector until SIGINT/SIGTERM; returns the exit code (`traintape serve`: its
    messages go to stderr)."""
    to_stderr()
    try:
        collector = Collector(store, binds, **options)
    except CollectorError as exc:
        print(f"traintape serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a store that cannot be set up (a new store on a full disk, say)
        print(f"traintape serve: cannot start on {store}: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, frame: Any) -> None:
        collector.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    collector.serve()
    return 1 if collector.failures else 0


__all__ = ["Collector", "CollectorError", "check_bind_address", "run"]
