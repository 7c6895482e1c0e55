"""The collector's follower processes (materializer, sinks): beside the collector, restarted
when they die, gone when the collector is, and exactly once throughout (the store counted,
TensorBoard read back with its own reader)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import CollectorProcess, query, start_ranks, value_now
from tests.test_sink_tensorboard import read_scalars
from traintape.collector.follower import status_path


def _children(collector: CollectorProcess, module: str) -> list[psutil.Process]:
    assert collector.proc is not None
    return [
        c
        for c in psutil.Process(collector.proc.pid).children()
        if c.cmdline()[2:4] == ["traintape.collector.child", module]
    ]


def _sink_children(collector: CollectorProcess) -> list[psutil.Process]:
    return _children(collector, "sink_process")


def _logging(store: Path, run_id: str) -> bool:
    """The run's ranks are under way: some of their values are in the store (mid-run)."""
    return (value_now(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run_id}'") or 0) > 0


def _wait(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_sink_process_killed_mid_run_is_restarted_and_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL of the sink process while two ranks log: the collector starts another, and every
    stored value is in TensorBoard exactly once; `status` shows the sink from the child."""
    store = tmp_path / "store"
    collector = CollectorProcess(store, "--sink", "tensorboard", "--system-interval", "0").start()
    try:
        [child] = _sink_children(collector)
        procs = start_ranks(
            store, "sp", "--steps", 600, "--metrics", 4, "--pause-every", 10, "--pause", 0.02
        )
        _wait(lambda: _logging(store, "sp"))
        child.send_signal(signal.SIGKILL)
        _wait(lambda: "the sink process exited" in collector.log.read_text())
        _wait(lambda: len(_sink_children(collector)) == 1 and _sink_children(collector)[0] != child)
        for p in procs:
            assert p.wait(120) == 0
        _wait(lambda: status_path(store, "sink_process").exists())
        status = json.loads((store / "state" / "collector.json").read_text())
        assert status["sinks"]["tensorboard"]["type"] == "tensorboard"
        assert collector.stop() == 0
    finally:
        collector.close()
    tb = read_scalars(store / "tensorboard" / "e2e" / "e2e-sp")
    rows = query(store, "SELECT step, key, value FROM metrics WHERE run_id = 'sp' AND rank = 0")
    assert len(rows) == 600 * 4
    expected: dict[str, list[tuple[int, float]]] = {}
    for step, key, value in rows:
        expected.setdefault(key, []).append((step, value))
    assert set(tb) == set(expected)
    for key, want in expected.items():
        got = sorted((s, v) for s, v, _ in tb[key])
        assert [s for s, _ in got] == sorted(s for s, _ in want), key  # each step once


@pytest.mark.slow
def test_sink_process_ends_with_a_killed_collector(tmp_path: Path) -> None:
    """SIGKILL of the collector closes the pipe: the sink process drains and exits by itself,
    and the next collector's sink process takes over."""
    store = tmp_path / "store"
    collector = CollectorProcess(store, "--sink", "tensorboard", "--system-interval", "0").start()
    try:
        [child] = _sink_children(collector)
        collector.kill()
        child.wait(30)  # raises psutil.TimeoutExpired if it stayed behind
        collector.start()
        assert len(_sink_children(collector)) == 1
        assert collector.stop() == 0
    finally:
        collector.close()


@pytest.mark.slow
def test_materializer_process_killed_mid_run_is_restarted_and_stores_each_row_once(
    tmp_path: Path,
) -> None:
    """SIGKILL of the materializer process while two ranks log: another one resumes from the
    committed cursor; every row is in the store exactly once."""
    store = tmp_path / "store"
    collector = CollectorProcess(store, "--system-interval", "0").start()
    try:
        [child] = _children(collector, "materializer_process")
        procs = start_ranks(
            store, "mp", "--steps", 800, "--metrics", 5, "--pause-every", 10, "--pause", 0.02
        )
        _wait(lambda: _logging(store, "mp"))
        child.send_signal(signal.SIGKILL)
        _wait(lambda: "the materializer process exited" in collector.log.read_text())
        for p in procs:
            assert p.wait(120) == 0
        assert collector.stop() == 0
    finally:
        collector.close()
    assert query(
        store,
        "SELECT count(*), count(DISTINCT (rank, step, key)) FROM metrics WHERE run_id = 'mp'",
    ) == [(2 * 800 * 5, 2 * 800 * 5)]


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_stops_everything_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the collector and its children at once: the children ignore
    it, the collector stops them in order, and everything logged is stored and in TensorBoard."""
    import os
    import subprocess
    import sys

    from traintape import emitter

    store = tmp_path / "store"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "traintape.cli", "serve", "--store", str(store)]
        + ["--sink", "tensorboard", "--system-interval", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a shell job has
    )
    try:
        _wait(lambda: (store / "state" / "collector.json").exists())
        run = emitter.init(project="ctrlc", name="c", store=store)
        for step in range(500):
            emitter.log({"x": float(step)}, step=step)
        assert emitter.finish(timeout=30).complete
        children = psutil.Process(proc.pid).children()
        assert len(children) == 2  # the materializer and sink processes
        os.killpg(proc.pid, signal.SIGINT)  # the collector's group: not its children's
        assert proc.wait(60) == 0
        psutil.wait_procs(children, timeout=30)
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert query(store, "SELECT count(*) FROM metrics WHERE run_id = ?", run.run_id) == [(500,)]
    tb = read_scalars(store / "tensorboard" / "ctrlc" / "c")
    assert sorted(s for s, _, _ in tb["x"]) == list(range(500))
    text = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in text and "exited" not in text  # no child was interrupted


@pytest.mark.slow
def test_a_child_that_cannot_be_started_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If starting a dead child's replacement fails (no memory to fork, say), the collector says
    so and tries again; the work waits in the journal meanwhile."""
    import subprocess

    from traintape.collector import follower
    from traintape.collector.journal import Journal
    from traintape.collector.materializer import ensure_empty_tables

    store = tmp_path / "store"
    journal = Journal(store / "journal")
    ensure_empty_tables(store)
    logs: list[str] = []
    monkeypatch.setattr(follower, "RESTART_AFTER_S", 0.1)
    proc = follower.FollowerProcess(
        "materializer_process",
        store,
        journal,
        {"interval": 0.1, "compact_settle": None},
        ingested=lambda: 0,
        log=logs.append,
        stop_timeout=60,
    )
    real_popen = subprocess.Popen
    failures = {"left": 2}

    def flaky_popen(*args: Any, **kwargs: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(12, "Cannot allocate memory")
        return real_popen(*args, **kwargs)

    proc.start()
    try:
        first = psutil.Process(proc._proc.pid)
        monkeypatch.setattr(follower.subprocess, "Popen", flaky_popen)
        first.send_signal(signal.SIGKILL)
        _wait(lambda: failures["left"] == 0 and proc._proc.poll() is None)
        assert proc._proc.pid != first.pid
        assert sum("cannot start the materializer process" in line for line in logs) == 2
    finally:
        proc.stop()
        journal.close()
    assert proc._proc.returncode == 0


@pytest.mark.slow
def test_a_follower_that_hangs_at_its_stop_exits_within_its_budget(tmp_path: Path) -> None:
    """An orphaned child whose follower hangs (a backend that never answers) still exits after
    its stop budget, so it never holds its lock against the next collector's child."""
    import subprocess
    import sys

    script = (
        "import io, time\n"
        "from pathlib import Path\n"
        "from traintape.collector.follower import FollowerChild\n"
        "from traintape.collector.logs import to_stderr\n"
        "class Hangs:\n"
        "    def start(self): pass\n"
        "    def stop(self): time.sleep(600)\n"
        "    def status(self): return {}\n"
        "to_stderr()\n"
        "stdin = io.BytesIO(b'{\"stop_timeout\": 0.5}\\n0 0\\n')  # the config, one end, EOF\n"
        f"child = FollowerChild('hangs_process', Path({str(tmp_path)!r}), stdin)\n"
        "child.run(lambda *args: Hangs())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    from traintape.collector.follower import UNFINISHED_EXIT

    assert done.returncode == UNFINISHED_EXIT, done.stderr
    assert "traintape collector: did not finish" in done.stderr
    assert "resumes from the cursor" in done.stderr


@pytest.mark.slow
def test_a_failing_materializer_makes_serve_exit_non_zero_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """A stage that cannot write (the events table's folder replaced by a file) is reported by
    `traintape serve` loudly with a non-zero exit; once the store is mended, a restart stores
    every event."""
    import shutil

    from traintape.emitter import Emitter

    store = tmp_path / "store"
    collector = CollectorProcess(store, "--system-interval", "0").start()
    try:
        _wait(lambda: status_path(store, "materializer_process").exists())  # it runs
        events = store / "tables" / "events"
        shutil.rmtree(events)
        events.write_text("not a folder")
        run = Emitter("broken", store=store)
        for step in range(50):
            run.log({"x": float(step)}, step=step)
        report = run.finish(timeout=5)
        assert report.complete and report.visible is False  # acknowledged, not visible
        _wait(lambda: collector.log.read_text().count("materializer error") > 0)
        assert collector.stop(timeout=60) == 1
        assert "FAILED" in collector.log.read_text()
        events.unlink()  # mended
        collector.start()
        assert collector.stop(timeout=60) == 0
    finally:
        collector.close()
    assert query(store, "SELECT count(*) FROM metrics WHERE run_id = ?", run.run_id) == [(50,)]
    assert query(store, "SELECT status FROM runs WHERE run_id = ?", run.run_id) == [("completed",)]
