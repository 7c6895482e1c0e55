"""Runs whose processes vanish become `crashed` (by pid on this host, by silence elsewhere), and
`running` again when they resume; the collector keeps that across its own restarts."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, CollectorProcess, query, wait_for
from traintape.collector import liveness
from traintape.collector.journal import Journal
from traintape.emitter import transport as transport_module
from traintape.emitter.emitter import Emitter
from traintape.schemas.events import RUN_END, RUN_START, RUN_STATUS
from traintape.schemas.wire import decode_body, decode_header, encode_body, encode_header

UNTIL = REPO / "tests" / "workers" / "until_signal.py"
CRASH_BOUND_S = 30.0  # the promise: `crashed` within 30 s once the processes are gone
VISIBLE_S = 10.0  # materializing what the collector journaled, on a loaded machine


def _start(store: Path, progress: Path, *args: object) -> Any:
    argv = [sys.executable, str(UNTIL), "--store", str(store), "--progress", str(progress)]
    return subprocess.Popen([*argv, *map(str, args)], cwd=REPO)


def _wait_progress(path: Path, at_least: int, proc: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if int(path.read_text()) >= at_least:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, f"the worker exited {proc.returncode}"
        assert time.monotonic() < deadline, f"the worker did not reach step {at_least}"
        time.sleep(0.02)


def _status(run_id: str) -> str:
    return f"SELECT status FROM runs WHERE run_id = '{run_id}'"


def _kill_mid_run(store: Path, tmp_path: Path, run_id: str) -> None:
    progress = tmp_path / f"progress-{run_id}"
    proc = _start(store, progress, "--run-id", run_id, "--rate", 500)
    _wait_progress(progress.with_suffix(".0"), 100, proc)
    wait_for(store, _status(run_id), "running")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


@pytest.mark.slow
def test_a_sigkilled_run_is_crashed_then_running_and_completed_when_resumed(
    store: Path, collector: Any, tmp_path: Path
) -> None:
    """SIGKILL mid-run: `runs` says `crashed` within the bound; the same run id resumed by a new
    process is `running`, and `completed` once that process finishes."""
    _kill_mid_run(store, tmp_path, "sigkilled")
    wait_for(store, _status("sigkilled"), "crashed", timeout=CRASH_BOUND_S + VISIBLE_S)
    reason = query(
        store,
        "SELECT json_extract_string(body, '$.reason') FROM events "
        "WHERE run_id = 'sigkilled' AND kind = 'run_status'",
    )
    assert len(reason) == 1 and "is gone" in reason[0][0]

    progress = tmp_path / "progress-resumed"
    resumed = _start(store, progress, "--run-id", "sigkilled", "--handler", "flag", "--rate", 200)
    try:
        _wait_progress(progress.with_suffix(".0"), 20, resumed)
        wait_for(store, "SELECT attempts FROM runs WHERE run_id = 'sigkilled'", 2)
        wait_for(store, _status("sigkilled"), "running")
        resumed.send_signal(signal.SIGTERM)  # its own handler stops the loop; it finishes
        assert resumed.wait(30) == 0
    finally:
        if resumed.poll() is None:
            resumed.kill()
    wait_for(store, _status("sigkilled"), "completed")


@pytest.mark.slow
def test_a_restarted_collector_keeps_crashed_runs_and_finds_runs_that_died_meanwhile(
    store: Path, tmp_path: Path
) -> None:
    """After a restart the collector neither forgets nor repeats a crash it journaled, and a run
    whose process was SIGKILLed while the collector was down is `crashed` too."""
    first = CollectorProcess(store).start()
    try:
        _kill_mid_run(store, tmp_path, "before")
        wait_for(store, _status("before"), "crashed", timeout=CRASH_BOUND_S + VISIBLE_S)
        progress = tmp_path / "progress-meanwhile"
        proc = _start(store, progress, "--run-id", "meanwhile", "--rate", 500)
        _wait_progress(progress.with_suffix(".0"), 100, proc)
        wait_for(store, _status("meanwhile"), "running")
        state = store / "state" / "liveness.json"
        deadline = time.monotonic() + 30
        while "meanwhile" not in state.read_text():  # saved within a check period
            assert time.monotonic() < deadline, state.read_text()
            time.sleep(0.1)
        assert first.stop() == 0
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        first.close()
    second = CollectorProcess(store).start()
    try:
        wait_for(store, _status("meanwhile"), "crashed", timeout=CRASH_BOUND_S + VISIBLE_S)
        assert query(store, _status("before")) == [("crashed",)]
        counts = query(
            store,
            "SELECT run_id, count(*) FROM events WHERE kind = 'run_status' GROUP BY ALL "
            "ORDER BY run_id",
        )
        assert counts == [("before", 1), ("meanwhile", 1)]
        saved = json.loads((store / "state" / "liveness.json").read_text())
        assert saved["position"] > 0
    finally:
        second.close()


@pytest.mark.slow
def test_heartbeats_are_noted_never_journaled_nor_dead_lettered(
    store: Path, collector: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle emitter sends heartbeats; the collector stores none of them (no event, no dead
    letter) and the run stays `running`."""
    monkeypatch.setattr(transport_module, "HEARTBEAT_S", 0.1)
    sent: list[bytes] = []
    real = transport_module.Transport.heartbeat

    def spy(self: Any, header: bytes) -> None:
        sent.append(header)
        real(self, header)

    monkeypatch.setattr(transport_module.Transport, "heartbeat", spy)
    em = Emitter("beats", run_id="beats", store=store)
    em.log({"x": 1.0}, step=0)
    deadline = time.monotonic() + 30
    while len(sent) < 5:
        assert time.monotonic() < deadline, "no heartbeats were sent"
        time.sleep(0.05)
    report = em.finish()
    assert report.complete and report.acked == 3  # run_start, metrics, run_end
    wait_for(store, "SELECT count(*) FROM events WHERE run_id = 'beats'", 2)
    collector.stop()
    status = json.loads((store / "state" / "collector.json").read_text())
    assert status["dead_letters"] == 0
    assert query(store, "SELECT count(*) FROM metrics WHERE run_id = 'beats'") == [(1,)]


def _run_start_frames(run_id: str, source: str, env: dict[str, Any]) -> tuple[bytes, bytes]:
    body = {"project": "p", "name": "n", "world_size": 1, "environment": env}
    header = encode_header(run_id, 0, source, 0, 1)
    return header, encode_body([RUN_START], [time.time_ns()], [None], [body])


def _feed(watch: liveness.Liveness, header: bytes, body: bytes) -> None:
    h = decode_header(header)
    watch.observe(h, decode_body(body, h.n))


def test_a_silent_process_on_another_host_is_crashed_and_running_again_when_heard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process the collector cannot see by pid (another boot id: another host) is `crashed`
    after a silence, and `running` again on its next heartbeat."""
    monkeypatch.setattr(liveness, "MIN_SILENCE_S", 0.2)
    monkeypatch.setattr(liveness, "CHECK_S", 0.0)
    out: queue.SimpleQueue[tuple[bytes, bytes]] = queue.SimpleQueue()
    journal = Journal(tmp_path / "journal")
    watch = liveness.Liveness(tmp_path, out, log=lambda text: None)
    watch.load(journal)
    env = {
        "host": "elsewhere",
        "pid": 1,
        "liveness": {"start_ticks": 1, "pid_ns": "pid:[1]", "boot_id": "x", "heartbeat_s": 0.05},
    }
    _feed(watch, *_run_start_frames("remote", "src1", env))
    watch.tick(0)
    assert out.empty()  # heard from just now
    deadline = time.monotonic() + 10
    while out.empty():
        assert time.monotonic() < deadline
        time.sleep(0.05)
        watch.tick(0)
    header, body = out.get()
    decided = decode_body(body, 1)
    assert decode_header(header).run_id == "remote" and decided.kinds == [RUN_STATUS]
    assert decided.bodies[0]["status"] == "crashed" and decided.bodies[0]["source"] == "src1"
    _feed(watch, header, body)  # as the ingest loop journals it
    assert watch.procs["src1"]["state"] == "crashed"
    assert watch.heartbeat(encode_header("remote", 0, "src1", 1, 0))
    header, body = out.get_nowait()
    assert decode_body(body, 1).bodies[0]["status"] == "running"
    _feed(watch, header, body)
    assert watch.procs["src1"]["state"] == "running"
    journal.close()


def test_a_start_journaled_after_its_end_watches_nothing(tmp_path: Path) -> None:
    """A process's first batch resent late lands after its run_end: the collector must not start
    watching a finished process (it would call the run crashed once the process exits), and it
    remembers that across a restart."""
    out: queue.SimpleQueue[tuple[bytes, bytes]] = queue.SimpleQueue()
    journal = Journal(tmp_path / "journal")
    watch = liveness.Liveness(tmp_path, out, log=lambda text: None)
    watch.load(journal)
    end = encode_body([RUN_END], [time.time_ns()], [None], [{"status": "completed"}])
    _feed(watch, encode_header("late", 0, "src9", 5, 1), end)
    env = {"host": "elsewhere", "pid": 1, "liveness": {"heartbeat_s": 0.05}}
    _feed(watch, *_run_start_frames("late", "src9", env))
    assert "src9" not in watch.procs
    watch.save()
    again = liveness.Liveness(tmp_path, out, log=lambda text: None)
    again.load(journal)
    _feed(again, *_run_start_frames("late", "src9", env))
    assert "src9" not in again.procs and out.empty()
    journal.close()
