"""SIGTERM in a training process: deliver what was logged, mark the run `killed`, die as asked.

torchrun sends SIGTERM to every rank when one of them fails; Slurm and Kubernetes send it on
preemption, and SIGKILL a grace period later (30 s by default in all three). Without a handler
Python dies at once: the events still in memory are gone and the run stays `running`.

`install()` (called by every `Emitter`, with `emitter.live_runs`: each live run's `RunEnd`, see
port.py, the only part of a run this module touches) puts `_on_term` in place once per process,
from the main thread only (the only thread that may), and only over a disposition that it can
give back: the default, or a Python callable. A SIGTERM that is ignored (SIG_IGN) or handled
from C stays so.
A script that installs its own handler after `init()` simply replaces this one.

On SIGTERM, with the default disposition before: every live run is finished as `killed` within
`TERM_TIMEOUT_S` (unacknowledged batches go to the spool), the default disposition is restored
and the signal raised again, so the process ends as SIGTERM ends it (exit status -15 / 143, and
no atexit). With a Python handler before: what was logged is sent and acknowledged (within
`CHAINED_WAIT_S`; what is not stays queued), then that handler is called. If it raises (SystemExit, KeyboardInterrupt, ...) the runs end `killed` when
the process exits, unless the exception says otherwise (an uncaught error: `failed`); if it
returns, the script handled the signal and its runs go on.

A signal that lands while the main thread is inside traintape's emitter code (it may hold the I/O
lock, which is not reentrant) is delivered again 20 ms later, for at most `TERM_TIMEOUT_S`.

Python runs signal handlers on the main thread between bytecodes: a main thread stuck in a C call
(a collective waiting on a dead rank) never runs this one. The launcher's SIGKILL then ends it,
and the collector marks the run `crashed` (traintape.collector.liveness).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from traintape.emitter.port import EmitterPort, RunEnd

logger = logging.getLogger(__name__)

TERM_TIMEOUT_S = 10.0
"""Longest the handler spends delivering before the process ends (a third of the usual grace)."""

CHAINED_WAIT_S = 2.0
"""Longest wait for acknowledgements before a previous Python handler is called: unlike the
default disposition, it may leave the process alive, and what is not acknowledged stays queued."""

RETRY_S = 0.02
"""Delay before a SIGTERM that met the main thread inside emitter code is raised again."""

_EMITTER_DIR = os.path.dirname(os.path.abspath(__file__))
_install_lock = threading.Lock()
_previous: Any = None
_runs: Callable[[], Iterable[RunEnd]] | None = None
_first_at: float | None = None  # when the first SIGTERM of a retry series arrived
_handling = False


def install(runs: Callable[[], Iterable[RunEnd]]) -> bool:
    """Installs the SIGTERM handler if this thread and the current disposition allow it.

    `runs` returns the process's live runs when the signal comes (`emitter.live_runs`: not
    finished, and not forked children that never logged). Returns whether the handler is in
    place now (installing twice is a no-op).
    """
    global _previous, _runs
    if threading.current_thread() is not threading.main_thread():
        return False  # signal.signal() works only there; a later init() on it installs
    with _install_lock:
        try:
            current = signal.getsignal(signal.SIGTERM)
        except (ValueError, OSError):
            return False
        if current is _on_term:
            _runs = runs
            return True
        # None: a handler set from C, which signal.signal() could not give back; SIG_IGN: the
        # process chose to survive SIGTERM, and so it shall.
        if current is None or current == signal.SIG_IGN:
            return False
        try:
            signal.signal(signal.SIGTERM, _on_term)
        except (ValueError, OSError):  # not the main interpreter
            return False
        _previous = current
        _runs = runs
        return True


def _on_term(signum: int, frame: Any) -> None:
    global _first_at, _handling
    if _handling:
        return  # a second SIGTERM while the first is being handled: that one ends the process
    now = time.monotonic()
    if _first_at is None:
        _first_at = now
    deadline = _first_at + TERM_TIMEOUT_S
    runs = list(_runs() if _runs is not None else ())
    if runs and _in_emitter_code(frame):
        if now < deadline:
            # The interrupted code may hold a lock that finishing needs: come back when it is
            # out of it.
            timer = threading.Timer(RETRY_S, _raise_again, (signum,))
            timer.daemon = True
            timer.start()
            return
        runs = []  # stuck in there all along: touching the runs could deadlock; end as asked
    _first_at = None
    previous = _previous
    if callable(previous):
        _handling = True
        try:
            for run in runs:
                _deliver(run.port, min(deadline, now + CHAINED_WAIT_S))
        finally:
            _handling = False
        marks = [(run, run.status) for run in runs]
        for run in runs:
            run.status = "killed"  # what atexit finishes them as, if `previous` ends us
        previous(signum, frame)
        for run, mark in marks:  # it returned: the script handled SIGTERM and goes on
            run.status = mark
        return
    _handling = True
    try:
        for run in runs:
            run.finish("killed", timeout=max(deadline - time.monotonic(), 0.5))
    except Exception as exc:  # the process must still end as SIGTERM ends it
        logger.warning(f"traintape: finishing on SIGTERM failed: {exc!r}")
    finally:
        _handling = False
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _in_emitter_code(frame: Any) -> bool:
    """Whether the interrupted main thread is inside traintape's emitter package."""
    while frame is not None:
        if os.path.dirname(frame.f_code.co_filename) == _EMITTER_DIR:
            return True
        frame = frame.f_back
    return False


def _raise_again(signum: int) -> None:
    os.kill(os.getpid(), signum)


def _deliver(port: EmitterPort, deadline: float) -> None:
    """Sends what a run holds and waits until the collector acknowledged it, or `deadline`."""
    try:
        port.deferred.poll(wait=True)  # values still on their way from the GPU
        below = port.send_now()
        while below is not None and time.monotonic() < deadline:
            acked = port.acked_below()
            if acked is None or acked >= below:
                return
            time.sleep(0.005)
    except Exception as exc:  # the script's own handler must still run
        logger.warning(f"traintape: delivering on SIGTERM failed: {exc!r}")
