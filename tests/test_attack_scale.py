"""Hostile environments for several collectors on one store root (issue 17): odd collector ids,
a second collector under an id already served, and collectors killed (SIGKILL of the whole
process group) or stopped (SIGTERM) in the middle of their work while another one serves on.
Nothing journaled is lost or counted twice, and every refusal says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CollectorProcess, query, wait_for
from traintape import emitter
from traintape.collector.server import Collector
from traintape.errors import CollectorError, ConfigError
from traintape.layout import StoreLayout

STEPS = 300


@pytest.mark.parametrize("bad", ["../n1", "n1/x", "", "-n", "n\n", "ä", "a" * 65, 42])
def test_a_collector_id_that_is_no_safe_folder_name_is_a_clear_error(
    tmp_path: Path, bad: object
) -> None:
    """An id that could leave `collectors/` or is not text (a YAML number) is refused with the
    rule it breaks; nothing is created for it."""
    with pytest.raises(ConfigError, match="is not a collector id"):
        Collector(tmp_path / "store", system_interval=0, quiet=True, collector_id=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "store" / "collectors").exists()


def test_a_second_collector_under_a_served_id_is_refused_and_others_still_start(
    tmp_path: Path,
) -> None:
    """While `n1` serves a store, another `n1` is refused naming the pid; `n2` and the store's
    default collector start beside it."""
    store = tmp_path / "store"
    first = Collector(store, system_interval=0, quiet=True, collector_id="n1")
    others = []
    try:
        with pytest.raises(CollectorError, match=r"collector n1 \(pid \d+\) already serves"):
            Collector(store, system_interval=0, quiet=True, collector_id="n1")
        others.append(Collector(store, system_interval=0, quiet=True, collector_id="n2"))
        others.append(Collector(store, system_interval=0, quiet=True))
        assert [c.layout.home for c in others] == [
            StoreLayout(store, "n2").home,
            StoreLayout(store).home,
        ]
    finally:
        for collector in [first, *others]:
            collector._shutdown()


def _log_run(collector: CollectorProcess, store: Path, name: str) -> str:
    run = emitter.init("attack", name=name, store=store, address=collector.address)
    for step in range(STEPS):
        emitter.log({"loss": float(step), "acc": step / STEPS}, step=step)
    emitter.finish(timeout=60)
    return run.run_id


@pytest.mark.slow
def test_collectors_killed_or_stopped_mid_work_lose_and_double_nothing(tmp_path: Path) -> None:
    """`n1` is stopped (SIGTERM) right after its run ends, while it materializes and compacts;
    `n2` is killed with its children (SIGKILL) right after its run ends; each restarts under
    its id, and every run holds each of its rows exactly once."""
    store = tmp_path / "store"
    args = ("--compact-settle", "0", "--system-interval", "0")
    n1 = CollectorProcess(store, *args, collector_id="n1").start()
    n2 = CollectorProcess(store, *args, collector_id="n2").start()
    try:
        first = _log_run(n1, store, "stopped")
        assert n1.stop() == 0, n1.log.read_text()[-2000:]
        second = _log_run(n2, store, "killed")
        n2.kill_all()
        n1.start()
        n2.start()
        for run_id in (first, second):
            wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run_id}'", 2 * STEPS)
            sql = "SELECT count(DISTINCT (step, key)) FROM metrics WHERE run_id = ?"
            assert query(store, sql, run_id) == [(2 * STEPS,)]
        wait_for(store, "SELECT count(*) FROM runs WHERE status = 'completed'", 2)
        assert n1.stop() == 0 and n2.stop() == 0
    finally:
        n1.close()
        n2.close()
    leftovers = [p for p in StoreLayout(store).tables.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert query(store, "SELECT count(*) FROM metrics") == [(4 * STEPS,)]
