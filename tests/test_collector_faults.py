"""The collector under faults it must survive without losing or doubling anything."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.conftest import query, wait_for
from traintape import emitter
from traintape.collector.journal import Journal
from traintape.collector.server import Collector, CollectorError, check_bind_address


@pytest.mark.slow
def test_failed_journal_writes_are_not_acked_and_resends_are_stored_once(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error on fsync: nothing of that group is acknowledged; resends land exactly once."""
    real_sync = Journal.sync
    failures = {"left": 3}

    def flaky_sync(self: Journal) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        real_sync(self)

    monkeypatch.setattr(Journal, "sync", flaky_sync)
    collector = Collector(store, materialize_interval=0.1, system_interval=0, quiet=True)
    thread = threading.Thread(target=collector.serve, daemon=True)
    thread.start()
    try:
        run = emitter.init(project="faults", store=store, resend_after=0.3)
        for step in range(2000):
            emitter.log({"a": float(step), "b": -float(step)}, step=step)
        report = emitter.finish(timeout=30)
        assert report.complete, report
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 4000)
        assert query(
            store,
            "SELECT count(*), count(DISTINCT (step, key)) FROM metrics WHERE run_id = ?",
            run.run_id,
        ) == [(4000, 4000)]
        assert failures["left"] == 0
        assert collector.stats["journal_errors"] == 3
    finally:
        collector.stop()
        thread.join(30)


def test_a_second_collector_on_the_same_store_is_refused(store: Path) -> None:
    """Two collectors never write one journal: the second says which pid holds the store."""
    first = Collector(store, system_interval=0, quiet=True)
    try:
        with pytest.raises(CollectorError, match="already serves"):
            Collector(store, system_interval=0, quiet=True)
    finally:
        first._shutdown()


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("ipc:///tmp/x.sock", True),
        ("tcp://127.0.0.1:5555", True),
        ("tcp://10.1.2.3:5555", False),  # any address off loopback needs --allow-remote (#13)
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("udp://127.0.0.1:5555", False),
    ],
)
def test_bind_addresses_stay_on_loopback_unless_named(address: str, ok: bool) -> None:
    """Binding anything off loopback needs --allow-remote; unknown transports are refused."""
    if ok:
        check_bind_address(address, allow_remote=False)
    else:
        with pytest.raises(CollectorError):
            check_bind_address(address, allow_remote=False)
