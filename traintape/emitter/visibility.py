"""`finish()` waits until readers see the run: the emitter's side of ACK_VISIBLE.

Once every batch of this process is acknowledged, `finish()` sends one more message: a copy of
an event the journal already holds (so the collector drops it as a duplicate and stores nothing)
whose kind is `run_end`, the kind the collector answers twice: ACK_STORED at once, ACK_VISIBLE
once the materializer has committed the journal as it was when the copy arrived. Acks travel in
order on the connection, and that journal holds every batch of this process (each was acked
before the copy left), so the ACK_VISIBLE after the copy's ACK_STORED means every event of this
process is in the views (traintape.collector.visibility has the collector's side).

The copy's (seq0, n) is (first seq of a fully stored batch of two events or more, 1), which is
no real batch's: an answer to anything else is never taken for an answer to it.
"""

from __future__ import annotations

import time

from traintape.emitter.transport import Transport
from traintape.schemas.events import RUN_END
from traintape.schemas.wire import ACK_REJECTED, ACK_VISIBLE, encode_body, encode_header

RETRY_S = 10.0
"""Asks again after this long without an answer (a collector restarted meanwhile forgot it)."""


class VisibilityRequest:
    def __init__(
        self, run_id: str, rank: int, source: str, seq: int, status: str, resend_after: float
    ) -> None:
        self.seq = seq
        self.header = encode_header(run_id, rank, source, seq, 1)
        self.body = encode_body([RUN_END], [time.time_ns()], [None], [{"status": status}])
        self.resend_after = resend_after
        self.sent_at: float | None = None
        self.stored = False  # the collector took this copy: the next ACK_VISIBLE answers it
        self.visible = False
        self.refused = False

    def on_ack(self, seq0: int, n: int, status: int, rejected: int) -> bool:
        """Takes the acks that answer this request (True); leaves every other one."""
        if seq0 != self.seq or n != 1:
            return False
        if status == ACK_VISIBLE:
            self.visible = self.visible or self.stored
        elif status == ACK_REJECTED or rejected:
            self.refused = True
        else:
            self.stored = True
        return True

    def due(self, now: float) -> bool:
        """Whether to send (again): never sent, unanswered too long, or (after a restart) lost."""
        if self.sent_at is None:
            return True
        return now - self.sent_at >= (RETRY_S if self.stored else self.resend_after)


def wait_visible(transport: Transport, request: VisibilityRequest, deadline: float) -> bool:
    """Asks the collector and waits (until `deadline`, monotonic) for the answer; True once
    every event this transport had acknowledged can be read."""
    transport.on_ack = request.on_ack
    try:
        while True:
            transport.poll_acks()
            now = time.monotonic()
            if request.visible or request.refused or now >= deadline:
                return request.visible
            if request.due(now) and transport.send_untracked(request.header, request.body):
                request.sent_at = now
                request.stored = False
            transport.wait_readable(min(deadline - now, 0.05))
    finally:
        transport.on_ack = None


def finish_visible(
    transport: Transport, where: tuple[str, int, str], status: str, deadline: float
) -> bool | None:
    """For `finish()`, once it waited for the acks: whether readers see the run of `where`
    (run_id, rank, source); None when not asked: something is still unacknowledged."""
    if not transport.settled or transport.stored_seq is None:
        return None
    run_id, rank, source = where
    request = VisibilityRequest(
        run_id, rank, source, transport.stored_seq, status, transport.resend_after
    )
    return wait_visible(transport, request, deadline)
