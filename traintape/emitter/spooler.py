"""The Spooler: the one place batches move between a Transport's memory and its spool file.

Three moves, each used by the keeper thread while the run goes on and by `finish()` at its end:

- append: batches the collector did not take in time (`Transport.take_for_spool`) are written to
  the spool file. The keeper writes them outside the I/O lock, in pieces of `SPOOL_PIECE_BYTES`
  (the join of one append copies one piece, not everything), counted against the memory bound
  until written; `finish()` writes what is left into the disk's floor rather than lose it.
- unspool: a write that fails gives its batches back to memory (over the bound beats losing
  them); at `finish()` that is the only way events are lost, and it is said loudly.
- replay: spooled batches still unacknowledged are read back (outside the lock, for the keeper)
  and resent; once everything is acknowledged the spool file is deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import msgpack

from traintape.emitter.transport import Batch, Transport

logger = logging.getLogger(__name__)

SPOOL_PIECE_BYTES = 4 << 20
"""Batches written to the spool per append: its join copies one piece, not all of them."""
KEEPER_REPLAY = 64
"""Spooled records the keeper resends per round (read outside the lock)."""
FINISH_REPLAY = 256
"""Spooled records `finish()` resends per round (it holds the lock; the keeper is stopped)."""

Record = tuple[int, bytes, bytes, int]
"""(next_offset, header, body, seq0): a spooled batch as `Transport.replay_step` takes it."""


class Spooler:
    """Spools, unspools and replays the batches of one Transport (made with it)."""

    def __init__(
        self, transport: Transport, lock: threading.Lock, warn: Callable[[str], None]
    ) -> None:
        self.transport = transport
        self.spool = transport.spool
        self._lock = lock  # the emitter's I/O lock: the transport is touched only under it
        self._warn = warn  # says a repeated problem once

    @property
    def path(self) -> Path:
        return self.spool.path

    # -- the keeper's side (the I/O lock is free) --------------------------------------------

    def service(self, to_spool: list[Batch]) -> None:
        """The keeper's disk work, outside the lock so the training thread never waits on it:
        writes `to_spool`, then resends spooled batches or deletes a settled spool."""
        if to_spool:
            self.append(to_spool)
        try:
            if not self.replay(KEEPER_REPLAY):
                self.tidy()
        except OSError as exc:
            self._warn(f"traintape: cannot read the spool {self.path}: {exc}")

    def append(self, batches: list[Batch]) -> None:
        """Writes `batches` piece by piece; a failed write gives the rest back to memory."""
        transport = self.transport
        pieces = _pieces(batches, SPOOL_PIECE_BYTES)
        transport.spooling_bytes += sum(b.size for b in batches)
        try:
            while pieces:
                self.spool.append(pieces[0])  # no copy of everything at once
                transport.spooling_bytes -= sum(b.size for b in pieces.pop(0))
        except OSError as exc:
            with self._lock:
                for piece in pieces:
                    transport.unspool(piece)
            transport.spooling_bytes = 0
            self._warn(
                f"traintape: cannot write the spool {self.path} ({exc}); "
                "keeping unacknowledged batches in memory instead"
            )

    def replay(self, limit: int) -> bool:
        """Resends up to `limit` spooled batches when due; False when none was due. Reads the
        disk outside the lock and takes it to send."""
        wanted, start = self.transport.replay_wanted()
        if not wanted:
            return False
        records = self.read(start, limit)
        with self._lock:
            self.transport.replay_step(records, limit)
        return True

    # -- finish()'s side (the keeper is stopped) ---------------------------------------------

    def replay_locked(self, limit: int = FINISH_REPLAY) -> None:
        """Resends spooled batches when due, with the I/O lock already held."""
        wanted, start = self.transport.replay_wanted()
        if wanted:
            self.transport.replay_step(self.read(start, limit), limit)

    def append_all(self, batches: list[Batch], run_id: str) -> None:
        """Writes every batch `finish()` could not deliver, into the disk's floor: no loss
        unless the write itself fails, and then it is said."""
        if not batches:
            return
        try:
            self.spool.append(batches, keep_floor=False)
        except OSError as exc:
            self.transport.unspool(batches)
            logger.warning(
                f"traintape: LOST {sum(b.n for b in batches)} events of run {run_id}: "
                f"the collector did not take them and the spool cannot be written ({exc})"
            )

    # -- both --------------------------------------------------------------------------------

    def tidy(self) -> None:
        """Deletes the spool file once the collector acknowledged everything in it."""
        if self.transport.settled and self.spool.exists():
            self.spool.delete()

    def read(self, start: int, limit: int) -> list[Record]:
        """Up to `limit` spooled records from offset `start`."""
        return [(nxt, h, b, _seq0_of(h)) for nxt, h, b in _take(self.spool.read(start), limit)]


def _pieces(batches: list[Batch], size: int) -> list[list[Batch]]:
    pieces: list[list[Batch]] = [[]]
    total = 0
    for batch in batches:
        if pieces[-1] and total + batch.size > size:
            pieces.append([])
            total = 0
        pieces[-1].append(batch)
        total += batch.size
    return pieces


def _seq0_of(header: bytes) -> int:
    return int(msgpack.unpackb(header)[5])  # our own header: no checks on the way back


def _take(records: Iterator[tuple[int, bytes, bytes]], n: int) -> list[tuple[int, bytes, bytes]]:
    return list(islice(records, n))
