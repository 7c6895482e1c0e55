"""The Outbox: the I/O half of one emitting process, from queued events to acknowledged batches.

It owns the process's `source` and `seq`, the deque `log()` appends to, the I/O lock, the
Transport (opened on the first send) with its Spooler, and the keeper thread. A forked child
gets a new Outbox (a new source, so nothing it logs is taken for a duplicate of its parent's).

- `flush`: packs what is pending into one batch (split under the message limit on the slow path,
  an event that cannot be sent refused and counted) and hands it to the Transport. The caller of
  `log()` flushes every `batch_size` events, without waiting for the lock; the keeper flushes
  what is pending every `flush_interval`.
- The keeper: every tick it polls the deferred GPU values and flushes; every `CHORES_S` (or at
  once when memory runs high) it takes acks, resends, sends a heartbeat when idle, and hands the
  disk work to the Spooler outside the lock.
- `close` (for `finish()`): stops the keeper, waits until `deadline` for the acks while resending
  and replaying, asks the collector whether readers see the run, spools what is left, and reports.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traintape.emitter.absence import Lookout
from traintape.emitter.checks import MAX_EVENT_BYTES, Event, split_batch, storable
from traintape.emitter.report import FinishReport
from traintape.emitter.spool import SpoolFile
from traintape.emitter.spooler import Spooler
from traintape.emitter.transport import Transport
from traintape.emitter.visibility import finish_visible
from traintape.paths import spool_dir
from traintape.schemas.events import KIND_NAMES
from traintape.schemas.wire import encode_body, encode_header

logger = logging.getLogger(__name__)

CHORES_S = 0.1
"""How often the keeper takes acks, resends, spools and sends a due heartbeat."""


@dataclass(frozen=True)
class OutboxOptions:
    """Where one run's events go, and at what pace: settled at init, kept by a forked child."""

    run_id: str
    rank: int
    store: Path
    address: str
    flush_interval: float
    transport: dict[str, Any]
    """Transport's keyword arguments: resend_after, spool_after, max_memory_bytes."""


class Outbox:
    """Events queued by one process of one run, on their way to the collector."""

    def __init__(
        self, options: OutboxOptions, poll_deferred: Callable[[], object], warned: set[str]
    ) -> None:
        self.run_id = run_id = options.run_id
        self.rank = rank = options.rank
        self.source = secrets.token_hex(8)
        self.seq = 0
        self.pending: deque[Event] = deque()
        self.lock = threading.Lock()
        self.refused = 0  # events this process could not send at all (FinishReport.rejected)
        self.transport: Transport | None = None
        self.keeper: threading.Thread | None = None
        self.closed = False
        self._spool_path = spool_dir(options.store) / f"{run_id}.{rank}.{self.source}.spool"
        self._address = options.address
        self._transport_options = options.transport
        self._flush_interval = options.flush_interval
        self._poll_deferred = poll_deferred
        self._warned = warned  # the run's: a forked child does not say it all again
        self._wake = threading.Event()
        self._stopping = False
        self._chores_at = 0.0  # monotonic time of the keeper's next acks/resend/spool round
        self._spooler: Spooler | None = None
        self.absent: str | None = None  # why finish() stopped waiting early: nothing listens

    def open(self) -> tuple[Transport, Spooler]:
        """The link to the collector, opened (with the keeper) on first use."""
        if self.transport is None or self._spooler is None:
            spool = SpoolFile(self._spool_path)
            self.transport = Transport(self._address, self.source, spool, **self._transport_options)
            self._spooler = Spooler(self.transport, self.lock, self.warn_once)
            self.keeper = threading.Thread(target=self._keep, name="traintape-keeper", daemon=True)
            self.keeper.start()
        return self.transport, self._spooler

    # -- sending -----------------------------------------------------------------------------

    def flush(self, wait: bool) -> None:
        """Packs what is pending and sends it; without `wait`, gives up if the lock is busy."""
        if not self.lock.acquire(blocking=wait):
            return
        try:
            self.flush_locked()
        finally:
            self.lock.release()

    def flush_locked(self) -> None:
        pending = self.pending
        n = len(pending)
        if not n:
            return
        popleft = pending.popleft
        events = [popleft() for _ in range(n)]
        try:
            batches = self._pack(events)
        except BaseException:
            pending.extendleft(reversed(events))  # kept for the next flush, never dropped
            raise
        transport, _ = self.open()
        for count, packed in batches:
            seq0 = self.seq
            self.seq += count
            header = encode_header(self.run_id, self.rank, self.source, seq0, count)
            transport.send(seq0, count, header, packed)
        transport.poll_acks()
        if transport.memory_high():
            self._wake.set()  # the keeper spools now, not at its next tick: the bound holds
            if transport.memory_over():
                # The keeper is behind (it needs the GIL between writes): let it run now. Not a
                # wait on the disk: a blocked write releases the GIL straight back.
                time.sleep(0)

    def _pack(self, events: list[Event]) -> list[tuple[int, bytes]]:
        try:
            body: bytes | None = encode_body(*zip(*events))
        except (OverflowError, TypeError, ValueError):
            body = None
        if body is not None and len(body) <= MAX_EVENT_BYTES:
            return [(len(events), body)]
        # Slow path: storable values, batches under the message limit, and an event that
        # cannot be sent at all refused (counted), never blocking the others.
        batches, refused = split_batch(events, storable)
        self._refuse(refused)
        return batches

    def _refuse(self, refused: list[tuple[Event, str]]) -> None:
        """Events that cannot be sent: counted in FinishReport.rejected, and said once each."""
        for (kind, _, step, _), reason in refused:
            self.refused += 1
            logger.warning(
                f"traintape: a {KIND_NAMES[kind]} event of run {self.run_id} (step {step}) "
                f"{reason}; it was not logged"
            )

    def send_now(self) -> int | None:
        """Sends every queued event now (waiting for the lock); the seq all of them are below,
        or None once closed."""
        with self.lock:
            if self.closed:
                return None
            self.flush_locked()
            return self.seq

    def acked_below(self) -> int | None:
        """A seq below which the collector acknowledged every event (None without a link)."""
        with self.lock:
            transport = self.transport
            if transport is None or transport.closed:
                return None
            transport.poll_acks()
            oldest = transport.oldest_unsettled()
            return self.seq if oldest is None else oldest

    def warn_once(self, text: str) -> None:
        if text.split("(")[0] not in self._warned:
            self._warned.add(text.split("(")[0])
            logger.warning(text)

    # -- the keeper thread -------------------------------------------------------------------

    def _keep(self) -> None:
        # The keeper never dies: a failing tick is said once, and its work stays queued for
        # the next one (and for finish()).
        while not self._stopping:
            try:
                self._tick()
            except Exception as exc:
                self.warn_once(
                    f"traintape: the keeper thread failed ({type(exc).__name__}: {exc}); "
                    "it goes on, and what it held stays queued"
                )

    def _tick(self) -> None:
        transport, spooler = self.open()
        self._wake.wait(self._flush_interval)
        if self._stopping:
            return
        self._wake.clear()
        self._poll_deferred()
        # Whatever is pending leaves at every tick: a SIGKILL loses about one flush_interval.
        if self.pending:
            with self.lock:
                self.flush_locked()
        now = time.monotonic()
        if now < self._chores_at and not transport.memory_high():
            return  # the rest at a slower pace (resend_due walks every batch), or the bound
        self._chores_at = now + CHORES_S
        with self.lock:
            transport.poll_acks()
            transport.resend_due()
            to_spool = transport.take_for_spool()
            if transport.heartbeat_due(now):  # proof of life while idle (collector liveness)
                beat = encode_header(self.run_id, self.rank, self.source, self.seq, 0)
                transport.heartbeat(beat)
        spooler.service(to_spool)

    def stop_keeper(self) -> None:
        self._stopping = True
        self._wake.set()
        keeper = self.keeper
        if keeper is not None and keeper.is_alive() and keeper is not threading.current_thread():
            keeper.join()

    # -- the end -----------------------------------------------------------------------------

    def close(
        self,
        deadline: float,
        visible_for: str | None,
        unreadable: Callable[[], int],
        lookout: Lookout | None = None,
    ) -> FinishReport:
        """Delivers what it can until `deadline` (monotonic), spools the rest, closes the link.
        `visible_for`: the run's end status, to wait for readers to see the run (None: not).
        `lookout`: stops the wait early once nothing listens at the address (`self.absent`)."""
        self.stop_keeper()
        with self.lock:
            self.flush_locked()
            transport, spooler = self.open()
            self.absent = _settle(transport, spooler, deadline, lookout)
            visible = None
            if visible_for is not None and self.absent is None:
                where = (self.run_id, self.rank, self.source)
                visible = finish_visible(transport, where, visible_for, deadline)
            to_spool = transport.take_for_spool(force=True)
            self.closed = True
        spooler.append_all(to_spool, self.run_id)
        spooler.tidy()
        spooled = transport.spooled_unacked
        lost = transport.unacked_events
        transport.close()
        transport.spool.release()  # `traintape replay` may take what is left
        return FinishReport(
            run_id=self.run_id,
            acked=transport.stats.acked_events,
            spooled=spooled,
            spool_path=transport.spool.path if spooled else None,
            rejected=transport.stats.rejected_events + self.refused,
            lost=lost,
            unreadable=unreadable(),
            visible=visible,
        )


RESTART_S = 15.0
"""A collector that answered this link this recently is taken to be restarting, not gone:
finish() waits for it until its deadline instead of spooling as soon as nothing listens (a
restart takes seconds; its events then arrive without a `traintape replay`)."""


def _restarting(transport: Transport, now: float) -> bool:
    last = transport.last_ack_at
    return last is not None and now - last < RESTART_S


def _settle(
    transport: Transport, spooler: Spooler, deadline: float, lookout: Lookout | None
) -> str | None:
    """Waits for the acks until `deadline`, resending and replaying (the lock is held); stops
    early, returning why, once nothing listens at the address for a while (`lookout`)."""
    while True:
        transport.poll_acks()
        if transport.settled:
            return None
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            return None
        absent = lookout.look(now) if lookout is not None else None
        if absent is not None and not _restarting(transport, now):
            return absent  # nobody to wait for: the spool keeps everything for replay
        transport.resend_due()
        spooler.replay_locked()
        transport.wait_readable(min(remaining, 0.05))
