"""Read your writes: once `finish()` returns, every reader sees every event of the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import traintape
from tests.conftest import CollectorProcess, query, wait_for
from traintape import CheckpointPolicy, emitter, load_checkpoint
from traintape.emitter.emitter import Emitter
from traintape.emitter.visibility import VisibilityRequest
from traintape.schemas.wire import ACK_REJECTED, ACK_STORED, ACK_VISIBLE


@pytest.fixture
def collector_default_interval(store: Path) -> Iterator[CollectorProcess]:
    """A collector materializing on the serve command's default timer, not the tests' faster one."""
    proc = CollectorProcess(store, "--materialize-interval", "0.5").start()
    yield proc
    proc.close()


@pytest.mark.slow
def test_a_new_connect_right_after_finish_sees_every_value(
    store: Path, collector_default_interval: CollectorProcess
) -> None:
    """Ten runs in a row: the moment finish() returns, a new connect() counts all 6,000 values
    of the run and the run's row, and the report says the run is visible."""
    for r in range(10):
        em = Emitter("ryw", store=store)
        for step in range(3000):
            em.log({"loss": 1.0 / (step + 1), "acc": float(r)}, step=step)
        report = em.finish(timeout=30)
        con = traintape.connect(store)
        try:
            values = con.execute(
                "SELECT count(*) FROM metrics WHERE run_id = ?", [em.run_id]
            ).fetchone()
            status = con.execute("SELECT status FROM runs WHERE run_id = ?", [em.run_id]).fetchone()
        finally:
            con.close()
        assert values == (6000,), f"run {r}: {values[0] if values else 0} of 6000 values"
        assert status == ("completed",)
        assert report.complete and report.visible is True, report


@pytest.mark.slow
def test_load_checkpoint_right_after_finish_names_a_file_that_exists(
    store: Path, collector_default_interval: CollectorProcess
) -> None:
    """With keep_last=1, the save that made retention delete the previous file is what
    load_checkpoint("latest", run=...) loads the moment finish() returns, three runs in a row."""
    for r in range(3):
        policy = CheckpointPolicy(keep_last=1)
        run = emitter.init("ryw-ckpt", store=store, checkpoint=policy)
        for step in range(3):
            emitter.save_checkpoint({"step": step, "run": r}, step=step).result(timeout=30)
        # The store knows step 2 as the latest; the next save replaces it and deletes its file.
        wait_for(
            store,
            f"SELECT count(*) FROM checkpoints WHERE run_id = '{run.run_id}' AND action = 'saved'",
            3,
        )
        emitter.save_checkpoint({"step": 3, "run": r}, step=3).result(timeout=30)
        report = emitter.finish(timeout=30)
        state = load_checkpoint("latest", store=store, run=run.run_id)
        assert state == {"step": 3, "run": r}
        assert report.visible is True, report


@pytest.mark.slow
def test_finish_reports_a_run_not_yet_visible_instead_of_hanging(store: Path) -> None:
    """A collector whose materializer would take a minute: finish() returns within its timeout
    with every event acknowledged and `visible` False; the events show up later."""
    collector = CollectorProcess(store, "--materialize-interval", "60").start()
    try:
        em = Emitter("ryw-slow", store=store)
        em.log({"a": 1.0}, step=0)
        report = em.finish(timeout=2)
        assert report.complete and report.visible is False, report
        assert query(store, "SELECT count(*) FROM metrics WHERE run_id = ?", em.run_id) == [(0,)]
        assert collector.stop() == 0  # a stop materializes everything journaled
        assert query(store, "SELECT count(*) FROM metrics WHERE run_id = ?", em.run_id) == [(1,)]
    finally:
        collector.close()


def test_only_an_answer_after_the_requests_own_ack_counts() -> None:
    """An ACK_VISIBLE that reaches the emitter before its request's ACK_STORED answers an older
    registration (one whose journal may lack a late batch) and is ignored, as are answers for
    other batches; a rejected request ends the wait without `visible`."""
    request = VisibilityRequest("run", 0, "src", seq=40, status="completed", resend_after=2.0)
    assert not request.on_ack(40, 24, ACK_VISIBLE, 0)  # the run_end batch itself: not ours
    assert request.on_ack(40, 1, ACK_VISIBLE, 0) and not request.visible
    assert request.on_ack(40, 1, ACK_STORED, 0) and not request.visible
    assert request.on_ack(40, 1, ACK_VISIBLE, 0) and request.visible
    refused = VisibilityRequest("run", 0, "src", seq=40, status="completed", resend_after=2.0)
    assert refused.on_ack(40, 1, ACK_REJECTED, 1) and refused.refused and not refused.visible
