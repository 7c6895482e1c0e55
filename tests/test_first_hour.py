"""The first hour of a new user (issue 16), training side: no silent waits when no collector runs,
a run's duration that ends when the run did, clear errors for bad input, and a `run.config`
whose changes reach `traintape show` whenever they are made."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import CollectorProcess, query, wait_for
from traintape import CheckpointPolicy, emitter
from traintape.cli.main import main as cli_main
from traintape.emitter.spool import SpoolFile
from traintape.errors import ConfigError, RunFinishedError
from traintape.paths import spool_dir
from traintape.schemas.events import KIND_NAMES, METRICS, RUN_END, RUN_START
from traintape.schemas.wire import decode_body, decode_header

ABSENT_LOGGER = "traintape.emitter"


def _until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _spooled(store: Path) -> list[tuple[int, int, Any]]:
    """(kind, ts, body) of every event in the store's spool files."""
    out = []
    for path in sorted(spool_dir(store).glob("*.spool")):
        for _, header, body in SpoolFile(path).read():
            n = decode_header(header).n
            cols = decode_body(body, n)
            out.extend(zip(cols.kinds, cols.ts, cols.bodies))
    return out


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _section(out: str, title: str) -> str:
    """The block of `traintape show`'s output under `title` (blocks end at a blank line)."""
    [block] = [b for b in out.split("\n\n") if b.startswith(f"{title}\n")]
    return block


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- no collector: said at init, and finish() does not wait it out -------------------------------


@pytest.mark.parametrize("origin", ["argument", "variable", "current folder"])
def test_no_collector_is_said_once_at_init_with_the_address_the_store_and_serve(
    origin: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no collector, one warning within about a second of init() names the address tried,
    the store it was derived from and where that came from, and the command to start one."""
    store = tmp_path / "elsewhere"
    kwargs: dict[str, Any] = {}
    if origin == "argument":
        kwargs["store"], said = store, "init(store=...)"
    elif origin == "variable":
        monkeypatch.setenv("TRAINTAPE_STORE", str(store))
        said = "$TRAINTAPE_STORE"
    else:  # the test runs in tmp_path (conftest), as a user runs in their project folder
        store = Path.cwd() / "traintape-store"
        said = f"./traintape-store of the current folder {Path.cwd()}"
    with caplog.at_level(logging.WARNING, logger="traintape"):
        run = emitter.init(project="p", **kwargs)
        run.log({"loss": 1.0})
        _until(lambda: _lines(caplog, "start it with"), "the no-collector line")
        [line] = _lines(caplog, "start it with")
        assert run.address in line and str(store) in line and said in line
        assert f"`traintape serve --store {store}`" in line
        [record] = [r for r in caplog.records if "start it with" in r.getMessage()]
        assert record.name.startswith(ABSENT_LOGGER)
        emitter.finish(timeout=5)
    assert len(_lines(caplog, "start it with")) == 1  # said once (finish says its own line)


def test_a_collector_that_listens_is_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Something listening at the address (here a bare Unix socket) gets no no-collector line."""
    import socket

    store = tmp_path / "store"
    store.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(store / "collector.sock"))
    listener.listen(8)
    try:
        with caplog.at_level(logging.WARNING, logger="traintape"):
            from traintape.emitter.absence import GRACE_S, Lookout, Where

            run = emitter.Emitter("p", store=store)
            lookout = Lookout(Where.resolve(None, store, (run.address, store)))
            start = time.monotonic()
            # The lookout's own answer over its whole grace period, on the same socket.
            while time.monotonic() - start < GRACE_S * 2:
                assert lookout.look(time.monotonic()) is None
                time.sleep(0.05)
            run.finish(timeout=0.2, wait_visible=False)
    finally:
        listener.close()
    assert not _lines(caplog, "no collector at")


def test_finish_without_collector_does_not_wait_its_timeout_and_says_how_to_deliver(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """finish() with nothing listening spools at once instead of waiting out its timeout, and
    says where the events are and the commands that deliver them."""
    store = tmp_path / "store"
    with caplog.at_level(logging.WARNING, logger="traintape"):
        run = emitter.init(project="p", store=store)
        for step in range(10):
            emitter.log({"loss": float(step)}, step=step)
        started = time.monotonic()
        report = emitter.finish(timeout=120)
    assert time.monotonic() - started < 60  # far from its 120 s budget
    assert report is not None and report.spooled == 10 + 2 and report.acked == 0
    [line] = _lines(caplog, "did not wait")
    assert str(report.spool_path) in line and run.run_id in line
    assert f"`traintape serve --store {store}`" in line
    assert f"`traintape replay --store {store}`" in line


def test_the_commands_said_name_the_collector_a_run_aims_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With $TRAINTAPE_COLLECTOR_ID set (a collector per node), the serve and replay commands
    the emitter and doctor suggest name that collector: its spool is where the batches wait."""
    from types import SimpleNamespace

    from traintape.cli.doctor import _spool_check
    from traintape.emitter.absence import Where
    from traintape.emitter.report import _spooled

    store = tmp_path / "store"
    monkeypatch.setenv("TRAINTAPE_COLLECTOR_ID", "node-b")
    where = Where.resolve(None, store, ("ipc:///nowhere.sock", store))
    assert where.serve() == f"traintape serve --store {store} --collector-id node-b"
    report = SimpleNamespace(spooled=3, run_id="r1", spool_path=spool_dir(store))
    line = _spooled(report, where, 5.0, "no socket file")  # type: ignore[arg-type]
    assert f"`traintape replay --store {store} --collector-id node-b`" in line
    assert spool_dir(store) == store / "collectors" / "node-b" / "spool"
    run = emitter.init(project="p", store=store, address=f"ipc://{tmp_path}/nobody.sock")
    emitter.log({"loss": 1.0}, step=0)
    assert emitter.finish(timeout=0.1).spooled > 0  # type: ignore[union-attr]
    assert [f.name.split(".")[0] for f in spool_dir(store).iterdir()] == [run.run_id]
    assert _spool_check(store).fix == f"traintape replay --store {store} --collector-id node-b"


@pytest.mark.slow
def test_finish_waits_for_a_collector_that_is_restarting(tmp_path: Path) -> None:
    """A collector that answered this run moments ago and is down when finish() is called is
    restarting, not gone: finish() waits for it (within its timeout) and delivers everything,
    with nothing left in the spool for a `traintape replay`."""
    import threading

    store = tmp_path / "store"
    coll = CollectorProcess(store, "--system-interval", "0").start()
    try:
        run = emitter.init(project="p", store=store)
        emitter.log({"loss": 0.0}, step=0)
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 1)
        coll.stop()
        for step in range(1, 50):
            emitter.log({"loss": float(step)}, step=step)
        # Back after finish() has seen nothing listening for longer than its grace.
        later = threading.Timer(3.0, coll.start)
        later.start()
        report = emitter.finish(timeout=60)
        later.join()
        assert report is not None and report.complete and report.spooled == 0, report
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 50)
        assert not list(spool_dir(store).glob("*.spool"))
    finally:
        coll.close()


# -- the run ends when finish() is called ---------------------------------------------------------


@pytest.mark.slow
def test_run_end_is_stamped_at_finish_call_not_after_its_waits(tmp_path: Path) -> None:
    """A collector that accepts connections but answers nothing (stopped) makes finish() wait
    its whole budget; the run's end and `runs.duration_s` still end at finish()'s call."""
    store = tmp_path / "store"
    coll = CollectorProcess(store).start()
    assert coll.proc is not None
    try:
        coll.proc.send_signal(signal.SIGSTOP)
        policy = CheckpointPolicy(keep_last=1)  # deletions wait for acks inside finish()
        run = emitter.init(project="p", store=store, checkpoint=policy)
        for step in range(3):
            emitter.log({"loss": float(step)}, step=step)
            run.save_checkpoint({"w": [step]}, step=step).result(60)
        called = time.time_ns()
        report = emitter.finish(timeout=3)
        assert report is not None and report.acked == 0 and report.spooled > 0
        events = _spooled(store)
        [end_ts] = [ts for kind, ts, _ in events if kind == RUN_END]
        [start_ts] = [ts for kind, ts, _ in events if kind == RUN_START]
        assert called <= end_ts < called + 3e9  # at the call: before its 3 s wait ended
        coll.proc.send_signal(signal.SIGCONT)
        assert cli_main(["replay", "--store", str(store)]) == 0
        wait_for(store, f"SELECT status FROM runs WHERE run_id = '{run.run_id}'", "completed")
        [(duration,)] = query(store, "SELECT duration_s FROM runs WHERE run_id = ?", run.run_id)
        assert duration == pytest.approx((end_ts - start_ts) / 1e9, abs=1e-3)
    finally:
        coll.proc.send_signal(signal.SIGCONT)
        coll.close()


# -- bad input -------------------------------------------------------------------------------------


def test_an_empty_metric_name_is_refused_on_every_path(tmp_path: Path) -> None:
    """'' is refused with a ValueError naming it, for plain values, numpy scalars and tensors;
    nothing of that call is logged."""
    import torch

    run = emitter.init(project="p", store=tmp_path / "store")
    for metrics in ({"": 1.0}, {"ok": 1.0, "": 2.0}, {"": np.float32(1)}, {"": torch.tensor(1.0)}):
        with pytest.raises(ValueError, match="metric names must not be empty"):
            run.log(metrics, step=1)
    with pytest.raises(ValueError, match="step must be in 0"):
        run.log({"x": 1.0}, step=-7)
    run.finish(timeout=0.5)
    assert not [body for kind, _, body in _spooled(tmp_path / "store") if kind == METRICS]


def test_a_value_that_is_no_number_names_tensors_among_what_is_taken(tmp_path: Path) -> None:
    """The TypeError for a bad value lists what log() takes, tensors included."""
    run = emitter.init(project="p", store=tmp_path / "store")
    with pytest.raises(TypeError, match="numpy scalar or a one-element tensor"):
        run.log({"x": "high"})
    run.finish(timeout=0.5)


def test_log_of_an_empty_dict_queues_no_event(tmp_path: Path) -> None:
    """log({}) logs nothing on the fast path, as on the slow one, and takes its step."""
    run = emitter.init(project="p", store=tmp_path / "store")
    run.log({})
    run.log({"x": 1.0})
    run.finish(timeout=0.5)
    metrics = [body for kind, _, body in _spooled(tmp_path / "store") if kind == METRICS]
    assert metrics == [{"x": 1.0}]


def test_log_params_and_log_text_before_init_warn_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before init(), log_params and log_text say once that nothing is recorded, as log does."""
    with caplog.at_level(logging.WARNING, logger="traintape"):
        emitter.log({"x": 1.0})
        for _ in range(2):
            emitter.log_params({"lr": 0.1})
            emitter.log_text("note", "hello")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"traintape: emitter.{name}() before emitter.init(): nothing is recorded"
        for name in ("log", "log_params", "log_text")
    ]


# -- run.config and run.summary --------------------------------------------------------------------


def test_run_config_changes_are_params_events_redacted_and_checked(tmp_path: Path) -> None:
    """A change of run.config (item, nested item, update, setdefault) queues a params event
    through redaction; removal is refused; a copy is a plain dict."""
    store = tmp_path / "store"
    run = emitter.init(project="p", store=store, config={"lr": 0.01, "opt": {"beta": 0.9}})
    run.config["lr"] = 0.1
    run.config["opt"]["beta"] = 0.99
    run.config.update({"api_key": "s3cret"}, epochs=3)
    assert run.config.setdefault("epochs", 5) == 3
    assert run.config == {
        "lr": 0.1,
        "opt": {"beta": 0.99},
        "api_key": "***redacted***",
        "epochs": 3,
    }
    with pytest.raises(ConfigError, match="cannot be removed"):
        del run.config["lr"]
    with pytest.raises(ConfigError):
        run.config.pop("lr")
    with pytest.raises(ValueError, match="non-empty"):
        run.config[""] = 1
    for clone in (copy.deepcopy(run.config), pickle.loads(pickle.dumps(run.config))):
        assert type(clone) is dict and type(clone["opt"]) is dict
    assert json.loads(json.dumps(run.config))["opt"] == {"beta": 0.99}
    run.finish(timeout=0.5)
    with pytest.raises(RunFinishedError):
        run.config["lr"] = 0.5
    params = [body for kind, _, body in _spooled(store) if KIND_NAMES[kind] == "params"]
    assert params[1:] == [
        {"lr": 0.1},
        {"opt.beta": 0.99},
        {"api_key": "***redacted***", "epochs": 3},
    ]
    assert "s3cret" not in str(_spooled(store))


@pytest.mark.slow
def test_run_config_changed_long_after_init_and_the_summary_reach_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run.config changed after the run's start was stored, and run.summary, are printed by
    `traintape show`."""
    store = tmp_path / "store"
    coll = CollectorProcess(store).start()
    try:
        run = emitter.init(project="p", store=store, config={"lr": 0.01, "opt": {"beta": 0.9}})
        emitter.log({"loss": 1.0}, step=0)
        seq = run.send_now()
        assert seq is not None
        _until(lambda: run.acked_below() == seq, "the run's start to be acknowledged")
        run.config["lr"] = 0.1
        run.config["opt"]["beta"] = 0.99
        run.summary["best_loss"] = 0.25
        report = emitter.finish(timeout=30)
        assert report is not None and report.complete and report.visible
        capsys.readouterr()
        assert cli_main(["show", run.run_id, "--store", str(store)]) == 0
        out = capsys.readouterr().out
        params = _section(out, "params (logged after init, or changed since)").split("\n")[1:]
        assert sorted(line.split() for line in params) == [["lr", "0.1"], ["opt.beta", "0.99"]]
        summary = _section(out, "summary").split("\n")[1:]
        assert [line.split() for line in summary] == [["best_loss", "0.25"]]
    finally:
        coll.close()


# -- the store a checkpoint creates is private ---------------------------------------------------


def test_a_checkpoint_saved_before_any_collector_makes_the_store_private(
    tmp_path: Path, umask_zero: None
) -> None:
    """Under umask 0, the folders the first checkpoint creates (the store among them) are 0700."""
    store = tmp_path / "store"
    run = emitter.init(project="p", store=store)
    run.save_checkpoint({"w": [1.0]}, step=0).result(60)
    folder = Path(run.save_checkpoint({"w": [2.0]}, step=1).result(60).path).parent
    for path in (store, store / "checkpoints", folder):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    run.finish(timeout=0.5)


def test_log_histogram_checks_what_it_is_given(tmp_path: Path) -> None:
    """`Emitter.log_histogram` (what traintape.wandb's Histogram goes through) refuses an empty
    key, no counts, and bounds that are not finite or in order, naming the key."""
    run = emitter.init(project="p", store=tmp_path / "store")
    try:
        run.log_histogram("w", [1, 2, 3], -1.0, 1.0, step=0)
        with pytest.raises(TypeError, match="non-empty str key"):
            run.log_histogram("", [1], 0.0, 1.0)
        for counts, low, high in (([], 0.0, 1.0), ([1], 1.0, 0.0), ([1], 0.0, float("inf"))):
            with pytest.raises(ValueError, match="log_histogram\\('w'\\)"):
                run.log_histogram("w", counts, low, high)
    finally:
        emitter.finish(timeout=0.5, wait_visible=False)
