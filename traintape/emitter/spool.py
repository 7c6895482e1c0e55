"""The emitter's spool: batches the collector has not acknowledged in time, kept on local disk.

One file per emitting process (`<run_id>.<rank>.<source>.spool`), framed like the journal
(records.py), so `traintape replay` can deliver it after the process is gone. Resending a spooled
batch that did arrive after all is harmless: the collector drops duplicates by (run_id, rank,
source, seq).
"""

from __future__ import annotations

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
        self.path.unlink(missing_ok=True)


def spool_files(folder: Path) -> list[SpoolFile]:
    return [SpoolFile(p) for p in sorted(folder.glob("*.spool"))]


def count_events(spool: SpoolFile) -> int:
    return sum(decode_header(header).n for _, header, _ in spool.read())
