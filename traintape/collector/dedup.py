"""Exactly-once admission: which sequence numbers of a batch the journal does not hold yet.

State is one set of half-open seq ranges per (run_id, rank, source). Emitters resend whole
batches with the boundaries they first had, so in practice a batch is either new or a duplicate;
ranges make partial overlaps and out-of-order arrival (spool replays) exact as well.

The collector admits a whole group of batches, then appends and fsyncs them at once. Each
admission is remembered until `commit()` (the fsync succeeded) or `rollback()` (the write failed,
or the disk is under its free-space floor): a rollback removes exactly the ranges the group added,
so the resends of its batches are taken as new, without re-reading the journal.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from traintape.collector.journal import Journal

Key = tuple[str, int, str]


class SeqRanges:
    """Disjoint, sorted, half-open [lo, hi) ranges; adjacent ranges are merged."""

    __slots__ = ("_his", "_los")

    def __init__(self) -> None:
        self._los: list[int] = []
        self._his: list[int] = []

    def add(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Adds [lo, hi); returns the parts of it that were not present before, in order."""
        los, his = self._los, self._his
        # Fast path: appending right after the last range (the steady state of every emitter).
        if los and his[-1] == lo:
            his[-1] = hi
            return [(lo, hi)]
        i = bisect_left(his, lo)  # first range whose end is >= lo: it may touch or overlap
        new: list[tuple[int, int]] = []
        cursor = lo
        j = i
        while j < len(los) and los[j] <= hi:
            if los[j] > cursor:
                new.append((cursor, los[j]))
            cursor = max(cursor, his[j])
            j += 1
        if cursor < hi:
            new.append((cursor, hi))
        merged_lo = min(lo, los[i]) if i < j else lo
        merged_hi = max(hi, his[j - 1]) if i < j else hi
        los[i:j] = [merged_lo]
        his[i:j] = [merged_hi]
        return new

    def remove(self, lo: int, hi: int) -> None:
        """Removes [lo, hi) (whether present or not); a range it cuts in the middle splits."""
        los, his = self._los, self._his
        i = bisect_left(his, lo + 1)  # first range ending after lo
        j = i
        keep_los: list[int] = []
        keep_his: list[int] = []
        while j < len(los) and los[j] < hi:
            if los[j] < lo:
                keep_los.append(los[j])
                keep_his.append(lo)
            if his[j] > hi:
                keep_los.append(hi)
                keep_his.append(his[j])
            j += 1
        los[i:j] = keep_los
        his[i:j] = keep_his

    def __contains__(self, seq: int) -> bool:
        i = bisect_left(self._his, seq + 1)
        return i < len(self._los) and self._los[i] <= seq

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._los, self._his))


class Deduplicator:
    def __init__(self) -> None:
        self._seen: dict[Key, SeqRanges] = {}
        self._uncommitted: list[tuple[SeqRanges, list[tuple[int, int]]]] = []

    def admit(self, key: Key, seq0: int, n: int) -> list[tuple[int, int]]:
        """The parts of [seq0, seq0+n) not admitted before; they stay admitted unless the next
        `rollback()` takes them back."""
        ranges = self._seen.get(key)
        if ranges is None:
            ranges = self._seen[key] = SeqRanges()
        new = ranges.add(seq0, seq0 + n)
        if new:
            self._uncommitted.append((ranges, new))
        return new

    def commit(self) -> None:
        """What was admitted since the last commit or rollback is in the journal for good."""
        self._uncommitted.clear()

    def rollback(self) -> None:
        """Forgets what was admitted since the last commit or rollback (it was not journaled)."""
        for ranges, new in reversed(self._uncommitted):
            for lo, hi in new:
                ranges.remove(lo, hi)
        self._uncommitted.clear()

    def __len__(self) -> int:
        return len(self._seen)

    def recover(self, journal: Journal) -> int:
        """Admits (and commits) every batch the journal holds, as it was acknowledged once;
        returns how many there were."""
        records = 0
        for batch in journal.read(0).batches(want_body=False):
            header = batch.header
            if header is None:
                continue  # no sequence numbers to remember; the materializer sets it aside
            self.admit((header.run_id, header.rank, header.source), header.seq0, header.n)
            records += 1
        self.commit()
        return records
