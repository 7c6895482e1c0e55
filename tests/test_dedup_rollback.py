"""A group's admissions are taken back exactly when its journal write fails or is refused."""

from __future__ import annotations

import random

from traintape.collector.dedup import Deduplicator, SeqRanges


def test_remove_splits_trims_and_drops_ranges() -> None:
    """Removing a span cuts a range in two, trims its ends, and drops ranges it covers."""
    r = SeqRanges()
    r.add(0, 100)
    r.remove(10, 20)
    assert r.ranges() == [(0, 10), (20, 100)]
    r.remove(0, 5)
    r.remove(95, 120)
    assert r.ranges() == [(5, 10), (20, 95)]
    r.remove(0, 1000)
    assert r.ranges() == []


def test_rollback_restores_the_state_before_the_group() -> None:
    """Admissions since the last commit are forgotten; committed ones stay, resends are new."""
    d = Deduplicator()
    key = ("run", 0, "src")
    assert d.admit(key, 0, 10) == [(0, 10)]
    d.commit()
    assert d.admit(key, 10, 10) == [(10, 20)]
    assert d.admit(key, 5, 20) == [(20, 25)]
    assert d.admit(("other", 0, "s"), 0, 3) == [(0, 3)]
    d.rollback()
    assert d.admit(key, 0, 10) == []
    assert d.admit(key, 5, 20) == [(10, 25)]
    assert d.admit(("other", 0, "s"), 0, 3) == [(0, 3)]


def test_random_groups_with_failures_match_a_set_model() -> None:
    """Random groups, some rolled back, against a set of the seqs committed so far."""
    rng = random.Random(11)
    d, committed = Deduplicator(), set()
    key = ("r", 0, "s")
    for _ in range(500):
        group: set[int] = set()
        for _ in range(rng.randrange(1, 5)):
            lo = rng.randrange(0, 300)
            hi = lo + rng.randrange(1, 15)
            new = d.admit(key, lo, hi - lo)
            expected = set(range(lo, hi)) - committed - group
            assert {s for a, b in new for s in range(a, b)} == expected
            group |= expected
        if rng.random() < 0.4:
            d.rollback()
        else:
            d.commit()
            committed |= group
        assert {s for a, b in d._seen[key].ranges() for s in range(a, b)} == committed
