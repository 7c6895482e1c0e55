"""One background thread for a helper of a run, and its queue.

The artifact writer (artifacts.py) and the recorder of framework-written checkpoints
(checkpointing/external.py) each do slow file work off the training thread, one job at a time in
call order. `Worker` is that thread: started by the first job (a run that never logs one starts
no thread), `close()` waits until every job queued before it is done (`finish()` calls it before
the run's end event), and a forked child neither runs nor waits for its parent's thread.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class _Stop:
    def __init__(self) -> None:
        self.done = threading.Event()


class Worker:
    """Runs `work(job)` for each queued job on one daemon thread named `name`; `at_stop()` runs
    last, at `close()`. Neither may raise: a failure is the job's to report (it is logged here
    too, so the thread goes on and `close()` still returns)."""

    def __init__(
        self, name: str, work: Callable[[Any], None], at_stop: Callable[[], None] | None = None
    ) -> None:
        self._name = name
        self._work = work
        self._at_stop = at_stop
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.pid = os.getpid()
        self.closed = False

    def put(self, job: Any) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def close(self) -> None:
        """Waits until every job queued so far is done; later `put`s are the caller's to refuse
        (`closed`)."""
        if self.closed:
            return
        self.closed = True
        if os.getpid() != self.pid or self._thread is None or not self._thread.is_alive():
            return
        stop = _Stop()
        self._jobs.put(stop)
        if self._thread is not threading.current_thread():
            stop.done.wait()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
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
