"""The journal: append-only, fsync'd segments of wire batches; the source of truth of a store.

Positions are byte offsets across all segments (a segment file is named by the offset of its
first byte, Kafka-style), so one int is a cursor for the materializer and for every sink. Only the
collector's ingest thread writes; readers read up to `durable_end`, which moves only after an
fsync (in the materializer and sink processes, `JournalFollower`, told it by the collector).

Every reader goes through `JournalReader`, which holds the one policy for what is not an intact
record (see traintape.schemas.records):

- a torn final record (an append a crash cut short: never fsync'd, so never acknowledged) is cut
  off when the writer opens the journal, with a log line;
- any other damage is copied aside to `journal/damaged/<start>-<end>.bin` with a loud message,
  left in place (so no position is ever reused), and reading resumes at the next intact record.

`JournalReader.batches()` decodes what it reads, with one policy for an intact record that
does not decode (a journal from an older version, a bug): it is yielded with its `error` and
reading goes on, never raised; what to do with it (skip, count, set aside) is the caller's.

A position never goes back: if a follower's cursor lies past the journal's end (files removed or
restored by hand), `advance_to` starts a new segment at that cursor, so the bytes a follower has
passed are never a different record's.
"""

from __future__ import annotations

import logging
import os
import struct
from bisect import bisect_right
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import NamedTuple

from traintape.durable import fsync_dir
from traintape.schemas.records import Damaged, Torn, is_legacy, scan, split_payload
from traintape.schemas.wire import BatchBody, BatchHeader, WireError, decode_body, decode_header

SEGMENT_BYTES = 64 << 20
DAMAGED_DIR = "damaged"

logger = logging.getLogger(__name__)

Log = Callable[[str], None]


def _warn(text: str) -> None:
    logger.warning("%s", text)


class _DamagePolicy:
    """Copies each damaged span aside once and says so once per process."""

    def __init__(self, folder: Path, log: Log | None) -> None:
        self.folder = folder
        self.log = log or _warn
        self.reported: set[tuple[int, int]] = set()
        self.damaged_bytes = 0

    def __call__(self, segment: int, start: int, end: int, reason: str) -> None:
        span = (segment + start, segment + end)
        if span in self.reported:
            return
        self.reported.add(span)
        self.damaged_bytes += end - start
        kept = self._set_aside(segment, start, end)
        self.log(
            f"journal damage: bytes {span[0]}-{span[1]} of segment {segment:020d}.log are not "
            f"an intact record ({reason}); {kept}; reading resumes after them"
        )

    def _set_aside(self, segment: int, start: int, end: int) -> str:
        target = self.folder / DAMAGED_DIR / f"{segment + start:020d}-{segment + end:020d}.bin"
        if target.exists():
            return f"a copy is in {target}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(self.folder / f"{segment:020d}.log", "rb") as f:
                f.seek(start)
                data = f.read(end - start)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            return f"copying them aside failed ({exc}); they stay in the segment"
        return f"copied to {target}"


class Batch(NamedTuple):
    """One journal record, decoded: where it lies, its header and body (the body only when the
    reader asked for it), or why it could not be decoded (`error`; then `header` is None when
    the header itself did not decode, `body` always). A tuple: one is made per record."""

    position: int
    next_position: int
    header: BatchHeader | None
    body: BatchBody | None
    error: WireError | None = None

    @property
    def events(self) -> int:
        """The events the record holds, as its header says (0 without a header)."""
        return self.header.n if self.header is not None else 0


class JournalReader:
    """The intact records of [start, end) in order, as (position, next_position, payload).

    `position` is how far reading got: past the last record yielded, and past damage met after
    it, so a follower whose whole range is damage still moves on.
    """

    def __init__(
        self,
        folder: Path,
        starts: list[int],
        start: int,
        end: int,
        on_damage: _DamagePolicy,
    ) -> None:
        self.position = start
        self._records = self._read(folder, starts, start, end, on_damage)

    def __iter__(self) -> JournalReader:
        return self

    def __next__(self) -> tuple[int, int, bytes]:
        return next(self._records)

    def close(self) -> None:
        self._records.close()

    def batches(self, want_body: bool | Callable[[BatchHeader], bool] = True) -> Iterator[Batch]:
        """The records as `Batch`es; `want_body` (or `want_body(header)`) says whether to decode
        a record's body (a reader that needs headers only, or some runs only, skips the cost)."""
        for position, next_position, payload in self:
            try:
                header_frame, body_frame = split_payload(payload)
                header = decode_header(header_frame)
            except (WireError, struct.error) as exc:
                error = exc if isinstance(exc, WireError) else WireError(f"no header: {exc}")
                yield Batch(position, next_position, None, None, error)
                continue
            if not (want_body(header) if callable(want_body) else want_body):
                yield Batch(position, next_position, header, None)
                continue
            try:
                decoded = decode_body(body_frame, header.n)
            except WireError as exc:
                yield Batch(position, next_position, header, None, exc)
                continue
            yield Batch(position, next_position, header, decoded)

    def _read(
        self, folder: Path, starts: list[int], start: int, end: int, on_damage: _DamagePolicy
    ) -> Generator[tuple[int, int, bytes], None, None]:
        i = max(bisect_right(starts, start) - 1, 0)
        while self.position < end and i < len(starts):
            seg = starts[i]
            stop = min(end, starts[i + 1]) if i + 1 < len(starts) else end
            try:
                f = open(folder / f"{seg:020d}.log", "rb")
            except FileNotFoundError:
                on_damage.log(f"journal segment {seg:020d}.log is missing; skipping to {stop}")
                f = None
            if f is not None:
                with f:
                    for item in scan(f, self.position - seg, stop - seg):
                        if isinstance(item, tuple):
                            self.position = seg + item[1]
                            yield seg + item[0], seg + item[1], item[2]
                            continue
                        # A torn record inside the durable range is damage too: those bytes
                        # were acknowledged, and something cut them short since.
                        reason = item.reason if isinstance(item, Damaged) else "cut short"
                        item_end = min(item.end, stop - seg)
                        on_damage(seg, item.start, item_end, reason)
                        self.position = seg + item_end
            i += 1
            if i < len(starts):
                self.position = max(self.position, starts[i])
            else:
                self.position = max(self.position, min(end, stop))


class Journal:
    def __init__(
        self, folder: Path, segment_bytes: int = SEGMENT_BYTES, log: Log | None = None
    ) -> None:
        self.folder = folder
        self.segment_bytes = segment_bytes
        self.damage = _DamagePolicy(folder, log)
        folder.mkdir(parents=True, exist_ok=True)
        self._starts = segment_starts(folder)
        if not self._starts:
            self._starts = [0]
            self._path(0).touch()
            fsync_dir(folder)
        last = self._starts[-1]
        good, legacy = self._open_last(last)
        self._file = open(self._path(last), "ab")
        self._segment_start = last
        self.end = last + good
        self.durable_end = self.end
        if legacy and good:
            self._roll()  # appends go to a segment of framed records, never after legacy ones

    def _open_last(self, last: int) -> tuple[int, bool]:
        """Scans the last segment: cuts a torn final record, reports damage; (its size, legacy)."""
        with open(self._path(last), "r+b") as f:
            legacy = is_legacy(f)
            for item in scan(f):
                if isinstance(item, Torn):
                    f.truncate(item.start)
                    os.fsync(f.fileno())
                    self.damage.log(
                        f"journal: cut a record torn by a crash ({item.end - item.start} bytes at "
                        f"{last + item.start}); it was never acknowledged"
                    )
                elif isinstance(item, Damaged):
                    self.damage(last, item.start, item.end, item.reason)
            return f.seek(0, 2), legacy

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

    def advance_to(self, position: int) -> None:
        """Makes `position` the end if the journal ends before it (see the module docstring)."""
        if position <= self.end:
            return
        self.damage.log(
            f"journal: a follower's cursor ({position}) lies past the journal's end ({self.end}); "
            "new records start at the cursor so no position is reused"
        )
        self._file.close()
        self._segment_start = self.end = self.durable_end = position
        self._starts.append(position)
        self._file = open(self._path(position), "ab")
        fsync_dir(self.folder)

    def _roll(self) -> None:
        """Starts the next segment; if it cannot be made (a full disk), appends stay in this
        one and the roll is tried again after the next sync: a segment may grow past its size,
        never be left without a file to append to."""
        path = self._path(self.end)
        try:
            new = open(path, "ab")
            try:
                fsync_dir(self.folder)
            except OSError:
                new.close()
                path.unlink(missing_ok=True)
                raise
        except OSError as exc:
            self.damage.log(f"journal: cannot start segment {path.name} ({exc}); appending on")
            return
        self._file.close()
        self._file = new
        self._segment_start = self.end
        self._starts.append(self.end)

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()

    def read(self, start: int, end: int | None = None) -> JournalReader:
        """The intact records in [start, end) (default: up to `durable_end`)."""
        end = self.durable_end if end is None else end
        return JournalReader(self.folder, list(self._starts), start, end, self.damage)

    def size_bytes(self) -> int:
        return self.end


class JournalFollower:
    """A read-only journal for another process (the materializer and sink processes, `sync`): it
    reads up to `durable_end`, which the writing collector tells it. Never past: bytes beyond it
    may be a torn record, or ones the writer rolls back after a failed fsync. It never truncates.
    """

    def __init__(self, folder: Path, durable_end: int = 0, log: Log | None = None) -> None:
        self.folder = folder
        self.durable_end = durable_end
        self.damage = _DamagePolicy(folder, log)

    def read(self, start: int, end: int | None = None) -> JournalReader:
        end = self.durable_end if end is None else end
        starts = segment_starts(self.folder) or [0]  # the writer rolls
        return JournalReader(self.folder, starts, start, end, self.damage)

    def files_end(self) -> int:
        """The end of what the segment files hold now (for readers without a collector)."""
        starts = segment_starts(self.folder)
        if not starts:
            return 0
        return starts[-1] + self._path_size(starts[-1])

    def _path_size(self, start: int) -> int:
        try:
            return (self.folder / f"{start:020d}.log").stat().st_size
        except FileNotFoundError:
            return 0


def segment_starts(folder: Path) -> list[int]:
    """The first positions of the journal's segments, in order."""
    starts = []
    for path in folder.glob("*.log"):
        try:
            starts.append(int(path.stem))
        except ValueError:
            continue  # not a segment (a file someone put there)
    return sorted(starts)
