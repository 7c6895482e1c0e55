"""The emitter's API contract, against a real collector where events must arrive."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CollectorProcess, query, wait_for
from traintape import emitter
from traintape.emitter import Emitter, RunFinishedError
from traintape.emitter.values import flatten

pytestmark = pytest.mark.share_collector  # each test reads back only its own run


def test_bad_value_raises_type_error_naming_key_and_logs_nothing(
    store: Path, collector: CollectorProcess
) -> None:
    """A non-number raises TypeError naming the key, and no part of that call is logged."""
    run = emitter.init(project="p", store=store)
    with pytest.raises(TypeError, match="'bad'"):
        emitter.log({"good": 1.0, "bad": "text"}, step=0)
    with pytest.raises(TypeError, match="names must be str"):
        emitter.log({1: 1.0}, step=0)
    with pytest.raises(TypeError, match="dict"):
        emitter.log([1.0], step=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="step"):
        emitter.log({"x": 1.0}, step=1.5)  # type: ignore[arg-type]
    emitter.log({"ok": 2.0}, step=1)
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 1)
    assert query(store, "SELECT key, step, value FROM metrics WHERE run_id = ?", run.run_id) == [
        ("ok", 1, 2.0)
    ]


def test_numpy_scalars_bools_ints_and_auto_steps(store: Path, collector: CollectorProcess) -> None:
    """numpy scalars, ints and bools land as floats; without step, steps count on from the last."""
    run = emitter.init(project="p", store=store)
    emitter.log({"f32": np.float32(0.5), "i64": np.int64(7), "b": True, "arr": np.array(2.5)})
    emitter.log({"x": 1}, step=10)
    emitter.log({"x": 2})
    emitter.log({"big": 10**400})
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 7)
    rows = query(
        store,
        "SELECT key, step, value FROM metrics WHERE run_id = ? ORDER BY step, key",
        run.run_id,
    )
    assert rows == [
        ("arr", 0, 2.5),
        ("b", 0, 1.0),
        ("f32", 0, 0.5),
        ("i64", 0, 7.0),
        ("x", 10, 1.0),
        ("x", 11, 2.0),
        ("big", 12, math.inf),
    ]


def test_params_config_and_text_are_stored(store: Path, collector: CollectorProcess) -> None:
    """Config and log_params land flattened in `params`; text in `events`."""
    run = emitter.init(
        project="p",
        name="named",
        config={"opt": {"lr": 1e-3, "betas": [0.9, 0.99]}},
        tags=["a"],
        store=store,
    )
    emitter.log_params({"model": {"depth": 4, "act": "gelu"}})
    emitter.log_text("note", "hello", step=3)
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM params WHERE run_id = '{run.run_id}'", 4)
    params = dict(query(store, "SELECT key, value FROM params WHERE run_id = ?", run.run_id))
    assert params == {
        "opt.lr": "0.001",
        "opt.betas": "[0.9,0.99]",
        "model.depth": "4",
        "model.act": '"gelu"',
    }
    assert query(
        store, "SELECT value_num FROM params WHERE run_id = ? AND key = 'model.depth'", run.run_id
    ) == [(4.0,)]
    text = query(
        store,
        "SELECT step, body->>'text' FROM events WHERE run_id = ? AND kind = 'text'",
        run.run_id,
    )
    assert text == [(3, "hello")]
    runs = query(store, "SELECT name, project, status, tags FROM runs WHERE run_id = ?", run.run_id)
    assert runs == [("named", "p", "completed", ["a"])]


def test_context_manager_marks_failed_and_reraises(
    store: Path, collector: CollectorProcess
) -> None:
    """An exception inside `with init(...)` marks the run failed and propagates."""
    with pytest.raises(ZeroDivisionError), emitter.init(project="p", store=store) as run:
        emitter.log({"x": 1.0})
        1 / 0  # noqa: B018
    wait_for(store, f"SELECT status FROM runs WHERE run_id = '{run.run_id}'", "failed")
    with pytest.raises(RunFinishedError):
        run.log({"x": 1.0})


def test_resumed_run_keeps_every_attempt(store: Path, collector: CollectorProcess) -> None:
    """init(run_id=old) continues the run: one row in runs, both attempts' events kept."""
    first = emitter.init(project="p", store=store)
    emitter.log({"loss": 1.0}, step=0)
    emitter.log({"loss": 0.9}, step=1)
    emitter.finish(status="failed")
    emitter.init(project="p", store=store, run_id=first.run_id)
    emitter.log({"loss": 0.95}, step=1)  # the step is logged again after a restart
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{first.run_id}'", 3)
    rows = query(
        store,
        "SELECT step, value, attempt FROM metrics WHERE run_id = ? ORDER BY attempt, step",
        first.run_id,
    )
    assert rows == [(0, 1.0, 1), (1, 0.9, 1), (1, 0.95, 2)]
    assert query(store, "SELECT status, attempts FROM runs WHERE run_id = ?", first.run_id) == [
        ("completed", 2)
    ]


def test_log_before_init_is_a_no_op() -> None:
    """Before init(), module-level log() records nothing and does not raise."""
    emitter.log({"x": 1.0})
    assert emitter.current() is None
    assert emitter.finish() is None


def test_warnings_go_through_logging_so_a_script_can_route_or_silence_them(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the emitter has to say in a training process is a `logging` record under
    `traintape.*` (printed on stderr when nothing is configured), so a script can silence it."""
    import logging

    import traintape.emitter as module

    monkeypatch.setattr(module._NotStarted, "warned", set())
    with caplog.at_level(logging.WARNING, logger="traintape"):
        emitter.log({"x": 1.0})
    [record] = caplog.records
    assert record.name == "traintape.emitter" and "before emitter.init()" in record.message
    caplog.clear()
    monkeypatch.setattr(module._NotStarted, "warned", set())
    logging.getLogger("traintape").setLevel(logging.ERROR)
    try:
        emitter.log({"x": 1.0})
    finally:
        logging.getLogger("traintape").setLevel(logging.NOTSET)
    assert caplog.records == []


def test_explicit_emitter_instances_and_validation(
    store: Path, collector: CollectorProcess
) -> None:
    """Emitter objects work without the module API; bad arguments are clear errors."""
    with pytest.raises(ValueError, match="project"):
        Emitter("", store=store)
    em = Emitter("p", store=store)
    em.log({"x": 1.0}, step=0)
    assert em.finish(timeout=10).complete
    assert em.finish() is em.finish()  # safe twice
    other = Emitter("p", store=store)
    with pytest.raises(ValueError, match="status"):
        other.finish(status="weird")
    assert other.finish(timeout=10).complete


def test_flatten_nested_params() -> None:
    """Nested dicts flatten with '.'; empty dicts are kept as values."""
    assert flatten({"a": {"b": {"c": 1}}, "d": {}, "e": (1, 2)}) == {
        "a.b.c": 1,
        "d": {},
        "e": [1, 2],
    }


def test_rank_and_run_id_come_from_torchrun_variables(
    monkeypatch: pytest.MonkeyPatch, store: Path
) -> None:
    """RANK/WORLD_SIZE set the rank; all ranks derive one run id from TORCHELASTIC_RUN_ID."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-42")
    a = Emitter("p", store=store)
    monkeypatch.setenv("RANK", "0")
    b = Emitter("p", store=store)
    assert (a.rank, a.world_size, b.rank) == (1, 2, 0)
    assert a.run_id == b.run_id
    a.finish(timeout=0.1)
    b.finish(timeout=0.1)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(RuntimeError, match="TRAINTAPE_RUN_ID"):
        Emitter("p", store=store)


@pytest.mark.slow
def test_unwritable_spool_keeps_batches_in_memory_until_the_collector_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No collector and a spool folder that cannot be written: nothing is dropped while the
    process lives; once a collector starts, everything is delivered."""
    store = tmp_path / "store"
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the spool folder should be")
    monkeypatch.setenv("TRAINTAPE_SPOOL_DIR", str(blocked / "spool"))
    run = emitter.init(project="p", store=store, spool_after=0.2, resend_after=0.2)
    for step in range(300):
        emitter.log({"x": float(step)}, step=step)
    import time

    deadline = time.monotonic() + 30
    while "cannot write the spool" not in caplog.text:  # the keeper tried, and keeps the batches
        assert time.monotonic() < deadline, "the keeper never tried to spool"
        time.sleep(0.05)
    coll = CollectorProcess(store).start()
    try:
        report = emitter.finish(timeout=30)
        assert report.complete, report
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 300)
    finally:
        coll.close()


def _log_in_worker() -> None:
    emitter.log({"from_worker": 7.0}, step=0)


def test_multiprocessing_worker_logs_arrive_although_it_exits_with_os_exit(
    store: Path, collector: CollectorProcess
) -> None:
    """A forked multiprocessing worker (as a DataLoader's) delivers what it logged before exit."""
    import multiprocessing

    run = emitter.init(project="p", store=store)
    proc = multiprocessing.get_context("fork").Process(target=_log_in_worker)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 1)
    assert query(store, "SELECT key, value FROM metrics WHERE run_id = ?", run.run_id) == [
        ("from_worker", 7.0)
    ]


@pytest.mark.slow
def test_replay_leaves_the_spool_of_a_live_emitter_alone(tmp_path: Path) -> None:
    """`traintape replay` skips a spool its emitter still holds; after finish() it delivers it."""
    import time

    from traintape.emitter.replay import replay
    from traintape.paths import default_address, spool_dir

    store = tmp_path / "store"
    run = emitter.init(project="p", store=store, spool_after=0.1, resend_after=0.1)
    for step in range(100):
        emitter.log({"x": float(step)}, step=step)
    deadline = time.monotonic() + 10
    while not list(spool_dir(store).glob("*.spool")):
        assert time.monotonic() < deadline, "nothing was spooled"
        time.sleep(0.05)
    coll = CollectorProcess(store, "--system-interval", "0").start()
    try:
        result = replay(spool_dir(store), default_address(store), timeout=10)
        assert (result.skipped, result.events) == (1, 0)
        report = emitter.finish(timeout=20)  # the live emitter replays its own spool
        assert report.complete, report
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 100)
        assert not list(spool_dir(store).glob("*.spool"))
    finally:
        coll.close()


def test_log_checked_writes_rows_as_log_does(store: Path, collector: CollectorProcess) -> None:
    """`_log_checked` (traintape.wandb's rows) takes the step as `log` does, refuses an empty
    name as `log` does (nothing of that row logged), and raises once the run is finished."""
    em = Emitter("p", store=store)
    em._log_checked({"a": 1.0, "b": 2}, 5)
    em.log({"a": 3.0})  # the step after the row's
    with pytest.raises(ValueError, match="empty"):
        em._log_checked({"": 1.0, "a": 9.0}, 9)
    em._log_checked({"c": True}, 20)
    assert em.finish(timeout=10).complete
    with pytest.raises(RunFinishedError):
        em._log_checked({"a": 1.0}, 30)
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{em.run_id}'", 4)
    rows = query(
        store,
        "SELECT key, step, value FROM metrics WHERE run_id = ? ORDER BY step, key",
        em.run_id,
    )
    assert rows == [("a", 5, 1.0), ("b", 5, 2.0), ("a", 6, 3.0), ("c", 20, 1.0)]
