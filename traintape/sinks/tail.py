"""What the sink runners read of the journal besides their own records: how many events it holds
(for every runner's lag), and where a run starts (to open it in a backend by its real name)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from traintape.collector.journal import Journal, JournalFollower, JournalReader
from traintape.schemas.events import RUN_START
from traintape.sinks._base import RunInfo


class JournalTail:
    """How many events the journal holds, for every runner's lag (events not yet passed).

    In the collector it counts once at start, from the slowest runner's persisted (position,
    events) to the journal's end, and then adds what the ingest loop reports as stored
    (`ingested`), so a status costs nothing. Without `ingested` (a runner on its own), idle
    runners advance it by reading the new records' headers.
    """

    def __init__(
        self, journal: Journal | JournalFollower, ingested: Callable[[], int] | None = None
    ) -> None:
        self.journal = journal
        self.ingested = ingested
        self.position: int | None = None
        self._events = 0
        self._ingested_at_start = 0
        self._lock = threading.Lock()

    @property
    def events(self) -> int:
        if self.ingested is None:
            return self._events
        return self._events + self.ingested() - self._ingested_at_start

    def seed(self, position: int, events: int) -> None:
        if self.position is None or position < self.position:
            self.position, self._events = position, events

    def count_from_seed(self) -> None:
        """Counts the records after the seed, before the ingest loop appends any."""
        if self.ingested is not None:
            self._ingested_at_start = self.ingested()
            self.ingested, ingested = None, self.ingested
            self.advance()
            self.ingested = ingested

    def advance(self) -> None:
        if self.ingested is not None or self.position is None:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            end = self.journal.durable_end
            if end <= self.position:
                return
            events = self._events
            records = self.journal.read(self.position, end)
            for batch in records.batches(want_body=False):
                events += batch.events
            self._events, self.position = events, records.position
        finally:
            self._lock.release()


def find_run_start(records: JournalReader, run_id: str) -> RunInfo | None:
    """RunInfo from the latest rank-0 run_start of `run_id` (else any rank's) in `records`."""
    best: tuple[int, RunInfo] | None = None
    for batch in records.batches(want_body=lambda header: header.run_id == run_id):
        header, body = batch.header, batch.body
        if header is None or body is None:
            continue  # another run's, or one that does not decode (the runner says so)
        for kind, ts, b in zip(body.kinds, body.ts, body.bodies):
            if kind == RUN_START:
                rank_order = 1 if header.rank == 0 else 0
                if best is None or rank_order >= best[0]:
                    best = (rank_order, RunInfo.from_run_start(run_id, ts, b))
    return best[1] if best else None
