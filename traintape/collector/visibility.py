"""Read your writes: ACK_VISIBLE tells an emitter that its run can be read from the views.

An ack (ACK_STORED) means "in the journal"; readers see the Parquet files the materializer
process writes from it a little later. For `finish()` to return only once every reader sees the
whole run, the collector answers a batch holding a `run_end` event a second time, with
ACK_VISIBLE, once the materializer's committed position (its cursor file, moved only after the
files are in place) has passed the journal's durable end as it was when that batch was taken.

Which registration an emitter can trust: it sends its run_end event once more (a duplicate, so
nothing is stored twice) after every one of its batches was acknowledged. Acks travel in order on
its connection, so the durable end when that duplicate is taken covers every batch of its source,
and the ACK_VISIBLE that follows the duplicate's ACK_STORED answers it. A later registration of
one (source, seq0) replaces an earlier one that is still waiting: after its ACK_STORED no answer
to an older registration reaches that emitter.

Only the ingest thread sends on the sockets, so it calls `send_due()` on each loop turn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from traintape.collector.compaction import committed_position
from traintape.schemas.wire import ACK_VISIBLE, encode_ack

CHECK_INTERVAL_S = 0.01
"""How often the materializer's cursor is read while someone waits on it."""

MAX_WAITING = 100_000
"""Registrations kept at most (the oldest go first: its emitter asks again or times out)."""


@dataclass(slots=True)
class _Waiter:
    sock: Any
    identity: bytes
    n: int
    target: int


class VisibilityWaiters:
    def __init__(self, store: Path) -> None:
        self.store = store
        self._noted: list[tuple[list[Any], bytes, str, int, int]] = []  # this group's
        self._waiting: dict[tuple[str, int], _Waiter] = {}
        self._checked = 0.0
        self.sent = 0

    def note(self, acks: list[Any], identity: bytes, source: str, seq0: int, n: int) -> None:
        """A batch holding a run_end is in the group being taken (into `acks`' socket's list)."""
        self._noted.append((acks, identity, source, seq0, n))

    def journaled(self, acks: dict[Any, list[Any]], durable_end: int) -> None:
        """The group is durable up to `durable_end`: its noted batches wait for that position."""
        if not self._noted:
            return
        socket_of = {id(sock_acks): sock for sock, sock_acks in acks.items()}
        for sock_acks, identity, source, seq0, n in self._noted:
            sock = socket_of.get(id(sock_acks))
            if sock is None:
                continue  # made inside the collector: nobody to answer
            self._waiting.pop((source, seq0), None)  # re-inserted last: the newest registration
            self._waiting[source, seq0] = _Waiter(sock, identity, n, durable_end)
        self._noted.clear()
        while len(self._waiting) > MAX_WAITING:
            del self._waiting[next(iter(self._waiting))]

    def dropped(self) -> None:
        """The group was not journaled (nor acknowledged): nothing of it waits."""
        self._noted.clear()

    def poll_ms(self, idle_ms: int) -> int:
        """How long the ingest loop may wait for messages before `send_due()` should run."""
        return min(idle_ms, int(CHECK_INTERVAL_S * 1000)) if self._waiting else idle_ms

    def send_due(self) -> None:
        """Sends ACK_VISIBLE to every waiter the materializer's committed position has passed."""
        if not self._waiting:
            return
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL_S:
            return
        self._checked = now
        try:
            committed = committed_position(self.store)
        except (OSError, ValueError, KeyError):
            return  # the cursor file is being replaced or unreadable: the next turn reads it
        due = [key for key, w in self._waiting.items() if w.target <= committed]
        for key in due:
            w = self._waiting.pop(key)
            try:
                w.sock.send_multipart(
                    (w.identity, encode_ack(key[0], key[1], w.n, ACK_VISIBLE)), flags=zmq.NOBLOCK
                )
                self.sent += 1
            except zmq.ZMQError:
                pass  # the emitter went away; it asks again when it reconnects

    @property
    def waiting(self) -> int:
        return len(self._waiting)
