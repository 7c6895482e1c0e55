"""Exactly-once admission: which sequence numbers of a batch the journal does not hold yet.

State is one set of half-open seq ranges per (run_id, rank, source). Emitters resend whole
batches with the boundaries they first had, so in practice a batch is either new or a duplicate;
ranges make partial overlaps and out-of-order arrival (spool replays) exact as well.
"""

from __future__ import annotations

from bisect import bisect_left

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

    def __contains__(self, seq: int) -> bool:
        i = bisect_left(self._his, seq + 1)
        return i < len(self._los) and self._los[i] <= seq

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._los, self._his))


class Deduplicator:
    def __init__(self) -> None:
        self._seen: dict[Key, SeqRanges] = {}

    def admit(self, key: Key, seq0: int, n: int) -> list[tuple[int, int]]:
        ranges = self._seen.get(key)
        if ranges is None:
            ranges = self._seen[key] = SeqRanges()
        return ranges.add(seq0, seq0 + n)

    def __len__(self) -> int:
        return len(self._seen)
