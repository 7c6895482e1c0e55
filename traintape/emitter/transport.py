"""The emitter's side of the ZeroMQ link: send batches, track acks, resend, and the bookkeeping of
batches taken for the spool and replayed from it (the file work is the Spooler's, spooler.py).

Not thread-safe by itself: the Outbox calls it under its I/O lock, from the training thread
(when a batch fills) or from its keeper thread (on a timer). Nothing here blocks: sends are
non-blocking, and a batch that cannot leave stays in `unacked` until a later tick.

ZMQ_IMMEDIATE is set, so a send with no collector connected fails at once (zmq.Again) instead
of queueing into a pipe that a dead peer would take down with it; that is how "collector away"
is noticed without any extra protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from traintape.emitter.spool import SpoolFile
from traintape.errors import SecurityError
from traintape.schemas.wire import ACK_REJECTED, ACK_VISIBLE, HEARTBEAT_S, decode_ack_full
from traintape.security import configure_client


@dataclass(slots=True)
class Batch:
    """One packed batch of events this process sent (or will send) and holds until acked."""

    seq0: int
    n: int
    header: bytes
    body: bytes
    queued_at: float
    sent_at: float | None = None
    sends: int = 0

    @property
    def size(self) -> int:
        return len(self.header) + len(self.body)


@dataclass
class TransportStats:
    sent_batches: int = 0
    acked_events: int = 0
    rejected_events: int = 0
    spooled_events: int = 0


class Transport:
    def __init__(
        self,
        address: str,
        source: str,
        spool: SpoolFile,
        *,
        resend_after: float = 2.0,
        spool_after: float = 5.0,
        max_memory_bytes: int = 64 << 20,
    ) -> None:
        self.address = address
        self.source = source
        self.spool = spool
        self.resend_after = resend_after
        self.spool_after = spool_after
        self.max_memory_bytes = max_memory_bytes
        self.stats = TransportStats()
        # A context of its own: a forked child makes a new Transport and never touches this one.
        self._ctx = zmq.Context(io_threads=1)
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 10_000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        try:
            configure_client(self._sock, address)  # CURVE for a collector off this host
        except SecurityError:
            self._sock.close(linger=0)
            self._ctx.term()
            raise
        self._sock.connect(address)
        self._unacked: dict[int, Batch] = {}  # seq0 -> batch; insertion order is seq order
        self._memory = 0
        # Taken for the spool but not written yet: still this process's memory, so still counted
        # against the bound (the keeper writes it piece by piece).
        self.spooling_bytes = 0
        self._spooled: dict[int, int] = {}  # seq0 -> n of spooled batches not yet acked
        self._replay_pos = 0
        self._replay_at = 0.0
        self._last_out = 0.0  # monotonic time anything last left: a batch or a heartbeat
        self.closed = False
        self.stored_seq: int | None = None
        self.last_ack_at: float | None = None
        """Monotonic time of the collector's last answer (None: it never answered this link)."""
        self.on_ack: Callable[[int, int, int, int], bool] | None = None

    # -- called with the I/O lock held -------------------------------------------------------

    def send(self, seq0: int, n: int, header: bytes, body: bytes) -> None:
        batch = Batch(seq0, n, header, body, time.monotonic())
        self._unacked[seq0] = batch
        self._memory += batch.size
        # Order does not matter for correctness (the collector deduplicates by seq ranges), so
        # a new batch leaves at once even when older ones still wait for a resend.
        self._try_send(batch)

    def _try_send(self, batch: Batch) -> bool:
        try:
            self._sock.send_multipart((batch.header, batch.body), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        batch.sent_at = self._last_out = time.monotonic()
        batch.sends += 1
        self.stats.sent_batches += 1
        return True

    def poll_acks(self) -> int:
        """Takes every ack waiting on the socket; returns how many arrived."""
        count = 0
        while True:
            try:
                frame = self._sock.recv(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return count
            try:
                source, seq0, n, status, rejected = decode_ack_full(frame)
            except Exception:
                continue  # not ours to interpret; the collector only sends acks
            if source != self.source:
                continue
            count += 1
            self.last_ack_at = time.monotonic()
            if self.on_ack is not None and self.on_ack(seq0, n, status, rejected):
                continue  # answers finish()'s visibility request (traintape.emitter.visibility)
            if status == ACK_VISIBLE:
                continue  # readers see that batch: only finish() asks for this
            batch = self._unacked.pop(seq0, None)
            if batch is not None:
                self._memory -= batch.size
            elif self._spooled.pop(seq0, None) is None:
                continue  # a second ack of a batch already settled
            if status == ACK_REJECTED:
                self.stats.rejected_events += n
            else:  # stored, but for `rejected` events that failed the collector's checks
                self.stats.rejected_events += rejected
                self.stats.acked_events += n - rejected
                if not rejected and (n > 1 or self.stored_seq is None):
                    self.stored_seq = seq0  # a seq the journal holds, for visibility requests

    def resend_due(self) -> None:
        """Sends what never left and resends what was not acked in time.

        The wait doubles with each resend of a batch (up to 16x `resend_after`): a collector that
        is merely slow is not buried under duplicates while it catches up.
        """
        now = time.monotonic()
        for batch in self._unacked.values():
            if batch.sent_at is not None:
                wait = self.resend_after * (1 << min(batch.sends - 1, 4))
                if now - batch.sent_at < wait:
                    continue
            if not self._try_send(batch):
                return

    def heartbeat_due(self, now: float) -> bool:
        """Whether HEARTBEAT_S passed since anything left for the collector (monotonic `now`)."""
        return now - self._last_out >= HEARTBEAT_S

    def heartbeat(self, header: bytes) -> None:
        """Sends a heartbeat (a header with n=0 and an empty body; see schemas/wire.py): the
        collector notes the source alive, and neither journals nor acknowledges it."""
        try:
            self._sock.send_multipart((header, b""), flags=zmq.NOBLOCK)
        except zmq.Again:
            return  # no collector connected: nobody to tell
        self._last_out = time.monotonic()

    def take_for_spool(self, force: bool = False) -> list[Batch]:
        """Removes from memory the batches that waited too long or overflow the memory bound.

        The caller writes them to the spool outside the lock, and gives them back with
        `unspool()` if that write fails.
        """
        now = time.monotonic()
        taken: list[Batch] = []
        # From a quarter of the bound on, down to an eighth: the training thread goes on adding
        # while the keeper writes (measured: a 4 MiB piece can take 0.3 s beside a busy training
        # thread), and the bound must hold through that. The keeper is woken then.
        low = self.max_memory_bytes // 8 if self.memory_high() else self.max_memory_bytes
        for seq0 in list(self._unacked):
            batch = self._unacked[seq0]
            overdue = now - batch.queued_at >= self.spool_after
            if not (force or overdue or self._memory > low):
                break
            del self._unacked[seq0]
            self._memory -= batch.size
            self._spooled[seq0] = batch.n
            self.stats.spooled_events += batch.n
            taken.append(batch)
        return taken

    def memory_high(self) -> bool:
        """Over a quarter of the memory bound: time for the keeper to spool."""
        return self._memory + self.spooling_bytes > self.max_memory_bytes // 4

    def memory_over(self) -> bool:
        """Over half the memory bound: the keeper is behind. (The other half is for what is
        not counted here: the spool write's copy, replay reads, the allocator's slack.)"""
        return self._memory + self.spooling_bytes > self.max_memory_bytes // 2

    def unspool(self, batches: list[Batch]) -> None:
        """Takes back batches whose spool write failed: memory over its bound beats losing them."""
        for batch in batches:
            if self._spooled.pop(batch.seq0, None) is not None:
                self._unacked[batch.seq0] = batch
                self._memory += batch.size
                self.stats.spooled_events -= batch.n

    def replay_step(self, records: list[tuple[int, bytes, bytes, int]], limit: int) -> None:
        """Resends spooled records (next_offset, header, body, seq0) still unacked, in order.
        Fewer than `limit` records: the spool's end was reached, start over after
        `resend_after`."""
        self._resend_spooled(records)
        if len(records) < limit:
            self._replay_pos = 0

    def _resend_spooled(self, records: list[tuple[int, bytes, bytes, int]]) -> None:
        for nxt, header, body, seq0 in records:
            if seq0 in self._spooled:
                try:
                    self._sock.send_multipart((header, body), flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return
            self._replay_pos = nxt

    def replay_wanted(self) -> tuple[bool, int]:
        """Whether spooled batches should be resent now, and from which spool offset."""
        if not self._spooled:
            return False, 0
        now = time.monotonic()
        if self._replay_pos == 0 and now - self._replay_at < self.resend_after:
            return False, 0
        if self._replay_pos == 0:
            self._replay_at = now
        return True, self._replay_pos

    @property
    def settled(self) -> bool:
        return not self._unacked and not self._spooled

    def oldest_unsettled(self) -> int | None:
        """The first seq of the oldest batch not yet acknowledged (sent or spooled), if any."""
        return min((*self._unacked, *self._spooled), default=None)

    @property
    def unacked_events(self) -> int:
        return sum(b.n for b in self._unacked.values())

    @property
    def spooled_unacked(self) -> int:
        return sum(self._spooled.values())

    def send_untracked(self, header: bytes, body: bytes) -> bool:
        """Sends a message no ack is tracked for (a visibility request); False if it cannot."""
        try:
            self._sock.send_multipart((header, body), flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def wait_readable(self, timeout_s: float) -> None:
        self._sock.poll(int(timeout_s * 1000), zmq.POLLIN)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._sock.close(linger=0)
        self._ctx.term()
