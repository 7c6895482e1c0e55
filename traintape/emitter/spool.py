"""The emitter's spool: batches the collector has not acknowledged in time, kept on local disk.

One file per emitting process (`<run_id>.<rank>.<source>.spool`), framed like the journal
(records.py), so `traintape replay` can deliver it after the process is gone. Resending a spooled
batch that did arrive after all is harmless: the collector drops duplicates by (run_id, rank,
source, seq).

While its emitter lives, a spool file is held with a shared flock, so `traintape replay` leaves
it alone (the emitter replays it itself); the lock goes with the process, however it ends.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from traintape.durable import check_room, mkdir_private
from traintape.schemas.records import Damaged, frame_record, scan, split_payload
from traintape.schemas.wire import decode_header

logger = logging.getLogger(__name__)
_reported: set[tuple[str, int]] = set()

MIN_FREE_ENV = "TRAINTAPE_SPOOL_MIN_FREE_MB"
MIN_FREE_MB = 128.0
"""Free space a spool never writes into (MiB; $TRAINTAPE_SPOOL_MIN_FREE_MB): above the
collector's own floor (64 MiB), so a spool on the store's disk leaves the collector the room to
take its batches back once space returns. A refused write keeps the batches in memory."""


class SpoolFile:
    """Append-only batches of one emitter; written and deleted by one thread at a time."""

    def __init__(self, path: Path, min_free_mb: float | None = None) -> None:
        self.path = path
        if min_free_mb is None:
            try:
                min_free_mb = float(os.environ.get(MIN_FREE_ENV) or MIN_FREE_MB)
            except ValueError:
                msg = f"${MIN_FREE_ENV} must be a number of MiB, got {os.environ[MIN_FREE_ENV]!r}"
                raise ValueError(msg) from None
        self.min_free_bytes = int(min_free_mb * (1 << 20))
        self._lock_fd: int | None = None

    def append(self, batches: Iterable[Any], keep_floor: bool = True) -> None:
        """Appends batches (objects with .header and .body) and fsyncs. Raises OSError (ENOSPC)
        rather than leave less than the floor free, unless `keep_floor` is False (a last resort:
        finish() spools into the floor rather than lose events)."""
        data = b"".join(frame_record(b.header, b.body) for b in batches)
        if not data:
            return
        mkdir_private(self.path.parent)  # 0700: the store, or the spool folder apart
        if keep_floor:
            check_room(self.path.parent, len(data), self.min_free_bytes)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                # A full disk mid-write: no torn record is left for the next append to follow.
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        if self._lock_fd is None:
            self._lock_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def release(self) -> None:
        """Lets `traintape replay` take the file (the emitter is done with it)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def in_use(self) -> bool:
        """Whether a live emitter still holds this file."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def exists(self) -> bool:
        return self.path.exists()

    def read(self, start: int = 0) -> Iterator[tuple[int, bytes, bytes]]:
        """Yields (next_offset, header, body) of each whole record from byte `start`."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            for item in scan(f, start):
                if isinstance(item, Damaged):
                    self._report_damage(item)
                elif isinstance(item, tuple):
                    header, body = split_payload(item[2])
                    yield item[1], header, body
                # A Torn end is an append its process did not finish: never acknowledged.

    def _report_damage(self, damage: Damaged) -> None:
        """Once per span: what lies there cannot be delivered, and a person should know."""
        key = (str(self.path), damage.start)
        if key not in _reported:
            _reported.add(key)
            logger.warning(
                "traintape: spool %s: bytes %d-%d are damaged (%s) and cannot be replayed; "
                "the records after them are",
                self.path,
                damage.start,
                damage.end,
                damage.reason,
            )

    def delete(self) -> None:
        self.release()
        self.path.unlink(missing_ok=True)


def spool_files(folder: Path) -> list[SpoolFile]:
    return [SpoolFile(p) for p in sorted(folder.glob("*.spool"))]


def count_events(spool: SpoolFile) -> int:
    return sum(decode_header(header).n for _, header, _ in spool.read())
