"""One background thread for a helper of a run, and its queue.

The artifact writer (artifacts.py) and the recorder of framework-written checkpoints
(checkpointing/external.py) each do slow file work off the training thread, one job at a time in
call order; so does the encoding of the images and tables `log()` takes (media.py). `Worker` is
that thread: started by the first job (a run that never logs one starts no thread), `close()`
waits until every job queued before it is done (`finish()` calls it before the run's end event),
and a forked child neither runs nor waits for its parent's thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class _Stop:
    def __init__(self) -> None:
        self.done = threading.Event()


class Worker:
    """Runs `work(job)` for each queued job on one daemon thread named `name`; `at_stop()` runs
    last, at `close()`. Neither may raise: a failure is the job's to report (it is logged here
    too, so the thread goes on and `close()` still returns).

    `put` is a deque append (about 0.1 µs) while the thread is awake: an awake thread looks for
    jobs every `POLL_S` and sleeps only after `IDLE_S` without any, so a job queued on every
    training step (an image of `log()`) costs the caller no wake-up (a futex syscall and a
    thread switch, 5-10 µs); the first job after a sleep wakes it, and the jobs queued before
    it runs do not wake it again."""

    POLL_S = 0.01
    IDLE_S = 1.0

    def __init__(
        self, name: str, work: Callable[[Any], None], at_stop: Callable[[], None] | None = None
    ) -> None:
        self._name = name
        self._work = work
        self._at_stop = at_stop
        self._jobs: deque[Any] = deque()
        self._wake = threading.Event()
        self._awake = False  # the thread polls: put() need not wake it
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.pid = os.getpid()
        self.closed = False

    def put(self, job: Any) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
        self._jobs.append(job)
        if not self._awake:  # read after the append: see _next's order
            # Said awake before the set, so the calls that follow this one (a burst of images,
            # before the thread gets the GIL to run) skip the set: 1-2 µs each. Never a lost
            # wake-up: the set always comes after this write, and the thread writes False
            # before its last look at the queue.
            self._awake = True
            self._wake.set()

    def close(self) -> None:
        """Waits until every job queued so far is done; later `put`s are the caller's to refuse
        (`closed`)."""
        if self.closed:
            return
        self.closed = True
        if os.getpid() != self.pid or self._thread is None or not self._thread.is_alive():
            return
        stop = _Stop()
        self._jobs.append(stop)
        self._wake.set()
        if self._thread is not threading.current_thread():
            stop.done.wait()

    def _next(self) -> Any:
        """The next job, waiting for one: polling while jobs came lately, asleep after that."""
        jobs, idle_since = self._jobs, time.monotonic()
        while not jobs:
            if time.monotonic() - idle_since < self.IDLE_S:
                self._awake = True
                self._wake.wait(self.POLL_S)
            else:
                # Asleep: said before the last look, so a put() after that look wakes us.
                self._awake = False
                if not jobs:
                    self._wake.wait()
            self._wake.clear()
        self._awake = True
        return jobs.popleft()

    def _run(self) -> None:
        while True:
            job = self._next()
            if isinstance(job, _Stop):
                try:
                    if self._at_stop is not None:
                        self._at_stop()
                except Exception:
                    logger.exception("traintape: %s failed at its end", self._name)
                finally:
                    job.done.set()
                return
            try:
                self._work(job)
            except Exception:  # never ends the thread: finish() waits for it
                logger.exception("traintape: %s failed", self._name)
