"""The collector process: receive batches, journal them durably, acknowledge, materialize.

One ROUTER socket bound to every requested address. Each loop iteration takes every message that
is waiting (up to a bound), validates and deduplicates them, appends the new ones to the journal,
fsyncs once for the whole group, and only then acknowledges each batch: an ack always means
"on disk". SIGINT/SIGTERM stop the loop; everything received is journaled and materialized
before the process exits 0.
"""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import sys
import threading
import time
from itertools import chain
from pathlib import Path
from typing import Any

import zmq

from traintape.collector.deadletter import DeadLetters
from traintape.collector.dedup import Deduplicator
from traintape.collector.journal import Journal
from traintape.collector.materializer import ensure_empty_tables
from traintape.collector.materializer_process import MaterializerProcess
from traintape.collector.sink_process import SinkProcess
from traintape.collector.system import SystemSampler
from traintape.durable import write_json_atomic
from traintape.paths import default_address
from traintape.schemas.events import METRICS
from traintape.schemas.records import frame_parts, frame_record, split_payload
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
from traintape.security import (
    SERVER_KEY_ENV,
    allowed_clients,
    is_remote_tcp,
    serve_curve,
    start_authenticator,
)

MAX_MESSAGES_PER_GROUP = 2048
_NUMBER = frozenset((int, float, bool))
_STR = frozenset((str,))


class CollectorError(RuntimeError):
    """The collector cannot start; the message says what to change."""


def check_bind_address(address: str, allow_remote: bool) -> None:
    """tcp:// binds stay on loopback unless an explicit interface is given on purpose."""
    if address.startswith("ipc://"):
        return
    if not address.startswith("tcp://"):
        msg = f"--bind {address!r}: use ipc://PATH or tcp://HOST:PORT"
        raise CollectorError(msg)
    host = address[len("tcp://") :].rsplit(":", 1)[0]
    if host in ("*", "0.0.0.0", "::", "[::]") and not allow_remote:
        msg = (
            f"--bind {address!r} listens on every interface; bind tcp://127.0.0.1:PORT, or name "
            "the interface's address explicitly to accept other hosts"
        )
        raise CollectorError(msg)


def validate_bodies(body: BatchBody) -> None:
    """Metric bodies must be {str: number}: checked here so the journal only holds what stores."""
    metric_bodies = [b for k, b in zip(body.kinds, body.bodies) if k == METRICS]
    if not metric_bodies:
        return
    if not _STR.issuperset(map(type, chain.from_iterable(metric_bodies))):
        msg = "metric names must be strings"
        raise WireError(msg)
    if not _NUMBER.issuperset(map(type, chain.from_iterable(map(dict.values, metric_bodies)))):
        msg = "metric values must be numbers"
        raise WireError(msg)


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
    ) -> None:
        self.store = store
        self.binds = binds or [default_address(store)]
        self.quiet = quiet
        store.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(store / "collector.lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = (
                (store / "collector.pid").read_text().strip()
                if (store / "collector.pid").exists()
                else "?"
            )
            msg = (
                f"a collector (pid {owner}) already serves {store}; stop it or use another --store"
            )
            raise CollectorError(msg) from None
        (store / "collector.pid").write_text(str(os.getpid()))
        self.journal = Journal(store / "journal")
        self.dedup = Deduplicator()
        self.dead = DeadLetters(store)
        self.stats: dict[str, Any] = {
            "batches": 0,
            "events": 0,
            "duplicate_events": 0,
            "dead_letters": 0,
        }
        self._recover()
        ensure_empty_tables(store)  # queryable at once, before the materializer process runs
        self.materializer = MaterializerProcess(
            store,
            self.journal,
            materialize_interval,
            compact_settle,
            self._log,
            lambda: self.stats["events"],
        )
        # The sinks (traintape.sinks.config.SinkConfig) follow the journal in a child process,
        # one thread each, so their backends never hold this process's GIL.
        self.sinks = (
            SinkProcess(store, self.journal, list(sinks), self._log, lambda: self.stats["events"])
            if sinks
            else None
        )
        # Batches made inside the collector (system samples); journaled by the ingest loop, the
        # journal's only writer.
        self._local: queue.SimpleQueue[tuple[bytes, bytes]] = queue.SimpleQueue()
        self.sampler = (
            SystemSampler(system_interval, self._local, self._log) if system_interval > 0 else None
        )
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._auth: Any = None
        self._sockets: list[zmq.Socket] = []
        # One ROUTER for the plain binds (ipc, loopback tcp) and one for the CURVE binds (tcp
        # leaving the host, or every tcp bind with curve=True): CURVE is a socket's property.
        secure = [a for a in self.binds if is_remote_tcp(a) or (curve and a.startswith("tcp://"))]
        plain = [a for a in self.binds if a not in secure]
        try:
            if plain:
                self._sockets.append(self._router(plain, secure=False))
            if secure:
                self._auth = start_authenticator(self._ctx, store)
                self._sockets.append(self._router(secure, secure=True))
        except CollectorError:
            self._close_sockets()
            raise

    def _router(self, addresses: list[str], secure: bool) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if secure:
            public = serve_curve(sock, self.store)
            who = "the clients in keys/clients/" if allowed_clients(self.store) else "any client"
            self._log(
                f"CURVE on {', '.join(addresses)} for {who}; emitters need "
                f"{SERVER_KEY_ENV}={public.decode()}"
            )
        for address in addresses:
            try:
                sock.bind(address)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                msg = f"cannot bind {address}: {exc}"
                raise CollectorError(msg) from exc
        return sock

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def _log(self, text: str) -> None:
        if not self.quiet:
            print(f"traintape collector: {text}", file=sys.stderr, flush=True)

    def _recover(self) -> None:
        """Rebuilds the dedup state from the journal: what it holds was acknowledged once."""
        t0 = time.perf_counter()
        records = 0
        for _, _, payload in self.journal.read(0):
            header = decode_header(split_payload(payload)[0])
            self.dedup.admit((header.run_id, header.rank, header.source), header.seq0, header.n)
            records += 1
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
                if poller.poll(100) or not self._local.empty():
                    self._ingest_group()
                now = time.monotonic()
                if now - last_status >= 1.0:
                    self.write_status()
                    last_status = now
        finally:
            self._shutdown()

    def _ingest_group(self) -> None:
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
            try:
                self.journal.append(*journal_data)
                self.journal.sync()
            except OSError as exc:
                # Disk full or failing: acknowledge nothing of this group (emitters keep and
                # resend it), cut the journal back to its durable end, and forget the group's
                # sequence numbers so the resends are taken as new.
                self._log(f"journal write failed ({exc}); batches not acknowledged, will be resent")
                self.stats["journal_errors"] = self.stats.get("journal_errors", 0) + 1
                self.journal.rollback()
                self.dedup = Deduplicator()
                self._recover()
                return
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
        try:
            header = decode_header(header_frame)
        except WireError as exc:
            self._dead([header_frame, body_frame], str(exc))
            return
        try:
            body = decode_body(body_frame, header.n)
            validate_bodies(body)
        except WireError as exc:
            self._dead([header_frame, body_frame], str(exc))
            acks.append((identity, encode_ack(header.source, header.seq0, header.n, ACK_REJECTED)))
            return
        new = self.dedup.admit((header.run_id, header.rank, header.source), header.seq0, header.n)
        self.stats["batches"] += 1
        if new == [(header.seq0, header.seq_end)]:
            journal_data.extend(frame_parts(header_frame, body_frame))
            self.stats["events"] += header.n
        else:
            kept = 0
            for lo, hi in new:  # a partial overlap: journal only the unseen part
                journal_data.append(_slice_record(header, body, lo, hi))
                kept += hi - lo
            self.stats["events"] += kept
            self.stats["duplicate_events"] += header.n - kept
        acks.append((identity, encode_ack(header.source, header.seq0, header.n, ACK_STORED)))

    def _dead(self, frames: list[bytes], reason: str) -> None:
        self.dead.add(frames, reason)
        self.stats["dead_letters"] = self.dead.count

    # -- status and shutdown -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "store": str(self.store),
            "binds": self.binds,
            "updated": time.time(),
            **self.stats,
            "journal_bytes": self.journal.end,
            "materialized_bytes": self.materializer.position,
            "materializer_lag_bytes": self.journal.durable_end - self.materializer.position,
            "materializer_error": self.materializer.last_error,
            "sinks": self.sinks.sinks_status() if self.sinks is not None else {},
        }

    def write_status(self) -> None:
        write_json_atomic(self.store / "state" / "collector.json", self.status(), indent=1)

    def stop(self) -> None:
        self._stop.set()

    def _shutdown(self) -> None:
        self._log("stopping: journaling what is queued and materializing")
        if self.sampler is not None:
            self.sampler.stop()
        # Whatever already arrived is journaled and acknowledged before the socket closes.
        self._ingest_group()
        self._close_sockets()
        self.journal.close()
        self.materializer.stop()
        if self.sinks is not None:
            self.sinks.stop()  # each catches up for at most its drain_timeout
        self.dead.close()
        self.write_status()
        for address in self.binds:
            if address.startswith("ipc://"):
                Path(address[len("ipc://") :]).unlink(missing_ok=True)
        (self.store / "collector.pid").unlink(missing_ok=True)
        self._log(
            f"stopped: {self.stats['events']} events stored, "
            f"{self.stats['duplicate_events']} duplicates dropped, "
            f"{self.stats['dead_letters']} dead letters"
        )
        self._lock_file.close()


def _slice_record(header: BatchHeader, body: BatchBody, lo: int, hi: int) -> bytes:
    a, b = lo - header.seq0, hi - header.seq0
    return frame_record(
        encode_header(header.run_id, header.rank, header.source, lo, hi - lo),
        encode_body(body.kinds[a:b], body.ts[a:b], body.steps[a:b], body.bodies[a:b]),
    )


def run(store: Path, binds: list[str] | None = None, **options: Any) -> int:
    """Runs a collector until SIGINT/SIGTERM; returns the exit code."""
    try:
        collector = Collector(store, binds, **options)
    except CollectorError as exc:
        print(f"traintape serve: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: Any) -> None:
        collector.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    collector.serve()
    return 0


__all__ = ["Collector", "CollectorError", "check_bind_address", "run"]
