"""The background thread of a run's helpers (traintape/emitter/worker.py): jobs run once each,
in call order; a burst of jobs queued before the thread runs wakes it once (each wake-up is a
lock and a notify on the training thread); a thread gone to sleep is never left asleep with a
job queued; close() waits for every job."""

from __future__ import annotations

import random
import threading
import time

import pytest

from traintape.emitter.worker import Worker


def test_jobs_run_once_each_in_call_order_and_close_waits_for_them() -> None:
    done: list[int] = []
    worker = Worker("test-worker", lambda job: (time.sleep(0.001), done.append(job)))
    for i in range(200):
        worker.put(i)
    worker.close()
    assert done == list(range(200))


def test_a_burst_queued_before_the_thread_runs_wakes_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thread asleep, 200 jobs queued at once (in far less than the interpreter's switch
    interval, so the thread cannot take the GIL meanwhile): one wake-up, not 200."""
    monkeypatch.setattr(Worker, "IDLE_S", 0.0)  # asleep as soon as the queue is empty
    done = threading.Event()
    worker = Worker("test-worker", lambda job: job and done.set())
    worker.put(None)  # starts the thread, which then sleeps
    deadline = time.monotonic() + 5
    while worker._awake and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not worker._awake
    sets = 0
    real_set = worker._wake.set

    def counted_set() -> None:
        nonlocal sets
        sets += 1
        real_set()

    monkeypatch.setattr(worker._wake, "set", counted_set)
    for _ in range(199):
        worker.put(None)
    worker.put(True)
    assert done.wait(5)
    assert sets <= 2  # one, or two if the switch interval fell inside the burst
    worker.close()


def test_no_job_is_left_waiting_on_a_sleeping_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs put at random moments around the thread's falling asleep (it sleeps as soon as it
    finds the queue empty): every one runs within seconds."""
    monkeypatch.setattr(Worker, "IDLE_S", 0.0)
    monkeypatch.setattr(Worker, "POLL_S", 0.0001)
    worker = Worker("test-worker", lambda job: job.set())
    rng = random.Random(18)
    for _ in range(1500):
        ran = threading.Event()
        worker.put(ran)
        if rng.random() < 0.5:
            time.sleep(rng.random() * 0.0003)
        assert ran.wait(5), "a job was left queued while the thread slept"
    worker.close()
