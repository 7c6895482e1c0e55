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
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from traintape.schemas.records import frame_record, iter_records, split_payload
from traintape.schemas.wire import decode_header


class SpoolFile:
    """Append-only batches of one emitter; written and deleted by one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def append(self, batches: Iterable[Any]) -> None:
        """Appends batches (objects with .header and .body) and fsyncs."""
        data = b"".join(frame_record(b.header, b.body) for b in batches)
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
            for _, nxt, payload in iter_records(f, start):
                header, body = split_payload(payload)
                yield nxt, header, body

    def delete(self) -> None:
        self.release()
        self.path.unlink(missing_ok=True)


def spool_files(folder: Path) -> list[SpoolFile]:
    return [SpoolFile(p) for p in sorted(folder.glob("*.spool"))]


def count_events(spool: SpoolFile) -> int:
    return sum(decode_header(header).n for _, header, _ in spool.read())
