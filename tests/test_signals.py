"""SIGTERM in training processes: what was logged is delivered, the run ends `killed`, and the
process still ends as SIGTERM (or the handler that was there before) would have ended it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, query, torchrun_argv, wait_for
from traintape.emitter import signals

UNTIL = REPO / "tests" / "workers" / "until_signal.py"

pytestmark = pytest.mark.share_collector  # each test reads back only its own run


def _start(store: Path, progress: Path, *args: object, env: dict[str, str] | None = None) -> Any:
    argv = [sys.executable, str(UNTIL), "--store", str(store), "--progress", str(progress)]
    return subprocess.Popen([*argv, *map(str, args)], cwd=REPO, env=env)


def _progress(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return -1


def _wait_progress(path: Path, at_least: int, proc: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _progress(path) < at_least:
        assert proc.poll() is None, f"the worker exited {proc.returncode} before step {at_least}"
        assert time.monotonic() < deadline, f"the worker did not reach step {at_least}"
        time.sleep(0.02)


def _values_up_to(store: Path, run_id: str, rank: int, last: int) -> int:
    """How many of the values 0..last of `rank` the store holds, each exactly as logged."""
    return query(
        store,
        "SELECT count(DISTINCT step) FROM metrics WHERE run_id = ? AND rank = ? AND key = 'v' "
        "AND step <= ? AND value = step",
        run_id,
        rank,
        last,
    )[0][0]


def _terminate_and_check(
    store: Path, tmp_path: Path, run_id: str, exit_status: int, *args: object
) -> None:
    """Starts a worker, SIGTERMs it mid-run: `exit_status`, the run `killed`, and every value it
    reported logging before the signal stored exactly."""
    progress = tmp_path / "progress"
    proc = _start(store, progress, "--run-id", run_id, *args)
    _wait_progress(progress.with_suffix(".0"), 300, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == exit_status
    last = _progress(progress.with_suffix(".0"))
    wait_for(store, f"SELECT status FROM runs WHERE run_id = '{run_id}'", "killed")
    wait_for(store, f"SELECT count(*) >= {last + 1} FROM metrics WHERE run_id = '{run_id}'", True)
    assert _values_up_to(store, run_id, 0, last) == last + 1


@pytest.mark.slow
def test_sigterm_delivers_marks_killed_and_ends_with_sigterm_status(
    store: Path, collector: Any, tmp_path: Path
) -> None:
    """SIGTERM mid-run: exit status is SIGTERM's, the run is `killed`, and every value logged
    before the signal is in the store."""
    _terminate_and_check(store, tmp_path, "term", -signal.SIGTERM, "--rate", 1000)


@pytest.mark.slow
def test_sigterm_calls_the_previous_python_handler_after_delivering(
    store: Path, collector: Any, tmp_path: Path
) -> None:
    """A SIGTERM handler the script installed before init() is called after the delivery: its
    SystemExit(3) is the exit status, and the run ends `killed` with every value stored."""
    _terminate_and_check(store, tmp_path, "chained", 3, "--handler", "exit")


@pytest.mark.slow
def test_a_script_that_handles_sigterm_itself_goes_on_and_completes(
    store: Path, collector: Any, tmp_path: Path
) -> None:
    """A previous handler that returns (sets a flag) keeps the process alive: the script stops
    its loop and finishes as it chooses, so the run is `completed`, not `killed`."""
    progress = tmp_path / "progress"
    proc = _start(store, progress, "--run-id", "graceful", "--handler", "flag")
    _wait_progress(progress.with_suffix(".0"), 300, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    last = _progress(progress.with_suffix(".0"))
    wait_for(store, "SELECT status FROM runs WHERE run_id = 'graceful'", "completed")
    assert _values_up_to(store, "graceful", 0, last) == last + 1


@pytest.mark.slow
@pytest.mark.share_collector(False)  # it finds its run as the store's only one
def test_torchrun_sigterms_the_other_ranks_when_one_fails(
    store: Path, collector: Any, tmp_path: Path
) -> None:
    """Under torchrun, rank 1 raising makes torchrun SIGTERM rank 0: rank 0 ends `killed` with
    every value it logged, rank 1 `failed`, and the run is `failed`."""
    pytest.importorskip("torch")
    progress = tmp_path / "progress"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINTAPE_")}
    argv = torchrun_argv(
        UNTIL, "--store", store, "--progress", progress, "--fail-rank", 1, "--fail-after", 400
    )
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=120)
    assert proc.returncode != 0, proc.stderr.decode()[-2000:]
    run_id = query(store, "SELECT DISTINCT run_id FROM events WHERE kind = 'run_start'")[0][0]
    last = _progress(progress.with_suffix(".0"))
    assert last >= 0
    wait_for(store, f"SELECT status FROM runs WHERE run_id = '{run_id}'", "failed")
    ends = dict(
        query(
            store,
            "SELECT rank, json_extract_string(body, '$.status') FROM events "
            "WHERE run_id = ? AND kind = 'run_end'",
            run_id,
        )
    )
    assert ends == {0: "killed", 1: "failed"}, proc.stderr.decode()[-2000:]
    assert _values_up_to(store, run_id, 0, last) == last + 1


def test_install_leaves_an_ignored_sigterm_and_other_threads_alone() -> None:
    """The handler is never installed over SIG_IGN, nor from a thread other than the main one."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert not signals.install(list)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        results: list[bool] = []
        thread = threading.Thread(target=lambda: results.append(signals.install(list)))
        thread.start()
        thread.join()
        assert results == [False]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)
