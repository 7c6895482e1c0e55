"""Exactly-once admission by seq ranges, whatever order batches arrive in."""

from __future__ import annotations

import random

from traintape.collector.dedup import Deduplicator, SeqRanges


def test_in_order_batches_are_new_and_resends_are_not() -> None:
    """The steady state: each new batch is new; a resend of any of them admits nothing."""
    r = SeqRanges()
    assert r.add(0, 10) == [(0, 10)]
    assert r.add(10, 20) == [(10, 20)]
    assert r.add(0, 10) == []
    assert r.add(5, 15) == []
    assert r.ranges() == [(0, 20)]


def test_gaps_and_partial_overlaps_admit_exactly_the_unseen_part() -> None:
    """Out-of-order arrival (spool replay) admits only seqs not seen before."""
    r = SeqRanges()
    assert r.add(20, 30) == [(20, 30)]
    assert r.add(0, 10) == [(0, 10)]
    assert r.add(5, 25) == [(10, 20)]
    assert r.ranges() == [(0, 30)]
    assert r.add(40, 50) == [(40, 50)]
    assert r.add(35, 60) == [(35, 40), (50, 60)]
    assert 45 in r and 34 not in r


def test_random_arrival_order_matches_a_set_model() -> None:
    """Against a plain set of seqs, for random batches in random order with repeats."""
    rng = random.Random(7)
    r, seen = SeqRanges(), set()
    for _ in range(2000):
        lo = rng.randrange(0, 500)
        hi = lo + rng.randrange(1, 20)
        new = r.add(lo, hi)
        expected = sorted(set(range(lo, hi)) - seen)
        assert [s for a, b in new for s in range(a, b)] == expected
        seen.update(range(lo, hi))


def test_keys_are_independent() -> None:
    """The same seqs from another source (a resumed attempt) are new."""
    d = Deduplicator()
    assert d.admit(("run", 0, "a"), 0, 5) == [(0, 5)]
    assert d.admit(("run", 0, "b"), 0, 5) == [(0, 5)]
    assert d.admit(("run", 1, "a"), 0, 5) == [(0, 5)]
    assert d.admit(("run", 0, "a"), 0, 5) == []
