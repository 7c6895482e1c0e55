"""The journal: append-only, fsync'd segments of wire batches; the source of truth of a store.

Positions are byte offsets across all segments (a segment file is named by the offset of its
first byte, Kafka-style), so one int is a cursor for the materializer and for every sink. Only the
collector's ingest thread writes; readers read up to `durable_end`, which moves only after an
fsync (in the materializer and sink processes, `JournalFollower`, told it by the collector).
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path

from traintape.durable import fsync_dir
from traintape.schemas.records import iter_records, valid_length

SEGMENT_BYTES = 64 << 20


class Journal:
    def __init__(self, folder: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = folder
        self.segment_bytes = segment_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self._starts = sorted(int(p.stem) for p in folder.glob("*.log"))
        if not self._starts:
            self._starts = [0]
            self._path(0).touch()
            fsync_dir(folder)
        last = self._starts[-1]
        with open(self._path(last), "r+b") as f:
            good = valid_length(f)
            f.truncate(good)  # a record torn by a crash mid-append is dropped, never half-read
        self._file = open(self._path(last), "ab")
        self._segment_start = last
        self.end = last + good
        self.durable_end = self.end

    def _path(self, start: int) -> Path:
        return self.folder / f"{start:020d}.log"

    def append(self, *parts: bytes) -> None:
        """Appends framed records (whole, or as parts); not durable until `sync()`."""
        self._file.writelines(parts)
        self.end += sum(map(len, parts))

    def sync(self) -> None:
        self._file.flush()
        os.fdatasync(self._file.fileno())
        self.durable_end = self.end
        if self.end - self._segment_start >= self.segment_bytes:
            self._roll()

    def rollback(self) -> None:
        """Drops what was appended since the last successful sync (after a failed write)."""
        try:
            self._file.close()
        except OSError:
            pass  # the failed flush may fail again on close; the truncate below settles it
        with open(self._path(self._segment_start), "r+b") as f:
            f.truncate(self.durable_end - self._segment_start)
        self._file = open(self._path(self._segment_start), "ab")
        self.end = self.durable_end

    def _roll(self) -> None:
        self._file.close()
        self._segment_start = self.end
        self._starts.append(self.end)
        self._file = open(self._path(self.end), "ab")
        fsync_dir(self.folder)

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()

    def read(self, start: int, end: int | None = None) -> Iterator[tuple[int, int, bytes]]:
        """Yields (position, next_position, payload) of the records in [start, end)."""
        end = self.durable_end if end is None else end
        return _read(self.folder, list(self._starts), start, end)

    def size_bytes(self) -> int:
        return self.end


class JournalFollower:
    """A read-only journal for another process (the sink process): it reads up to
    `durable_end`, which the writing collector tells it. Never past: bytes beyond it may be a
    torn record, or ones the writer rolls back after a failed fsync. It never truncates."""

    def __init__(self, folder: Path, durable_end: int = 0) -> None:
        self.folder = folder
        self.durable_end = durable_end

    def read(self, start: int, end: int | None = None) -> Iterator[tuple[int, int, bytes]]:
        end = self.durable_end if end is None else end
        starts = sorted(int(p.stem) for p in self.folder.glob("*.log"))  # the writer rolls
        return _read(self.folder, starts or [0], start, end)


def _read(
    folder: Path, starts: list[int], start: int, end: int
) -> Iterator[tuple[int, int, bytes]]:
    i = max(bisect_right(starts, start) - 1, 0)
    pos = start
    while pos < end and i < len(starts):
        seg = starts[i]
        seg_end = starts[i + 1] if i + 1 < len(starts) else end
        with open(folder / f"{seg:020d}.log", "rb") as f:
            for rpos, rnext, payload in iter_records(f, pos - seg, min(end, seg_end) - seg):
                yield seg + rpos, seg + rnext, payload
                pos = seg + rnext
        i += 1
        if i < len(starts):
            pos = max(pos, starts[i])
