"""The Emitter: what a training process holds to log into traintape.

The hot path (`log`) checks value types in one C-level pass, stamps the time, appends a tuple to
a deque and returns. Every `batch_size` calls the caller packs the batch (msgpack, columnar) and
hands it to ZeroMQ without blocking; if another thread holds the I/O lock at that moment, the
caller simply does not flush this time. A keeper thread sends what is pending every
`flush_interval` (15 ms, so a SIGKILL loses about that much; each send wakes threads of this
process and the collector, which a 2-core training loop feels at 10 ms), processes acks, resends,
sends a heartbeat now and then, and moves batches the collector did not take in time to the spool.

Where the parts are: this module is the run's API (events, checks, start and end); `hot.py`
makes `log`; `outbox.py` packs, sends and keeps (the keeper thread, `finish()`'s delivery);
`spooler.py` moves batches to and from the spool; `deferred.py` holds GPU values until they can
be read without a sync; `checkpointing/` and `gradients.py` act on the run through the
`EmitterPort` of `port.py` only; `runconfig.py` records changes of `run.config`; `absence.py`
says when no collector listens (at init, and so that `finish()` does not wait for nobody);
`report.py` is what `finish()` returns and says.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from traintape.emitter import environment, signals
from traintape.emitter.absence import Lookout, Where, look_at_start
from traintape.emitter.checks import check_arguments, check_body, check_step
from traintape.emitter.deferred import DeferredValues, defer_tensors
from traintape.emitter.helpers import RunHelpers
from traintape.emitter.hot import hot_log, hot_log_checked
from traintape.emitter.outbox import Outbox, OutboxOptions
from traintape.emitter.port import DeferredQueue, Emit, EmitterPort, RunEnd
from traintape.emitter.redact import Redaction
from traintape.emitter.report import FinishReport, say_what_is_missing
from traintape.emitter.runconfig import RunConfig, recorder
from traintape.emitter.start import start_bodies
from traintape.emitter.values import flatten, plain
from traintape.errors import RunFinishedError
from traintape.paths import resolve_address, resolve_store
from traintape.placement import placement
from traintape.probe import nothing_listens
from traintape.schemas.events import HISTOGRAM, PARAMS, RUN_END, RUN_START, RUN_STATUSES, TEXT

if TYPE_CHECKING:
    from traintape.emitter.checkpointing.handle import CheckpointHandle
    from traintape.emitter.gradients import GradientWatcher

__all__ = ["Emitter", "FinishReport", "RunFinishedError", "live_runs", "run_end"]

_live: weakref.WeakSet[Emitter] = weakref.WeakSet()


class Emitter:
    """One run as seen from one process. Use `traintape.emitter.init()` for the usual case.

    `config` is the run's config; a change made after init is recorded as params (runconfig.py).
    `summary` is a dict the run's end stores (`traintape show` prints it; the W&B sink sends it
    as the run's summary); its secret-looking keys are redacted like the config's.

    `deferred` makes the queue GPU values wait in (given the emit function); the default is
    `DeferredValues`, a stand-in fits tests that must see what would be copied.
    """

    def __init__(
        self,
        project: str,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        tags: tuple[str, ...] | list[str] = (),
        address: str | None = None,
        run_id: str | None = None,
        *,
        store: str | os.PathLike[str] | None = None,
        batch_size: int = 256,
        flush_interval: float = 0.015,
        resend_after: float = 2.0,
        spool_after: float = 5.0,
        max_memory_mb: float = 64.0,
        checkpoint: Any = None,
        redact: Any = None,
        deferred: Callable[[Emit], DeferredQueue] | None = None,
    ) -> None:
        check_arguments(project, batch_size)
        self.project = project
        self.store = resolve_store(store)
        self.placement = placement()
        self.rank = self.placement.rank
        self.world_size = self.placement.world_size
        self.run_id = environment.resolve_run_id(run_id, self.placement)
        self.name = name or f"{project}-{self.run_id[:6]}"
        # Secret values never leave this process (traintape.emitter.redact): not even run.config.
        self._redaction = Redaction.resolve(redact)
        initial = self._redaction.mapping(plain(dict(config or {})))
        self.tags = [str(t) for t in tags]
        self.address = resolve_address(address, self.store)
        self._where = Where.resolve(address, store, (self.address, self.store))
        self.summary: dict[str, Any] = {}
        self.checkpoint_policy = checkpoint  # a traintape.CheckpointPolicy, or None for defaults
        self._batch_size = batch_size
        transport = {"resend_after": resend_after, "spool_after": spool_after}
        transport["max_memory_bytes"] = int(max_memory_mb * (1 << 20))
        self._outbox_options = OutboxOptions(
            self.run_id, self.rank, self.store, self.address, flush_interval, transport
        )
        self._make_helpers(deferred or DeferredValues)
        # Later changes are recorded as params (runconfig.py); the run_start keeps `initial`.
        record = recorder(self.run_id, self._redaction, self._emit, self._port.finished)
        self.config = RunConfig(initial, record)
        # Checked before anything is sent: a config that cannot be stored fails init() here.
        start_body, params = start_bodies(
            project, self.name, initial, self.tags, self.placement, self._redaction
        )
        self._go_live()
        self._emit(RUN_START, None, start_body)
        if params:
            self._emit(PARAMS, None, params)

    def _make_helpers(self, make_deferred: Callable[[Emit], DeferredQueue]) -> None:
        """The run's own state, its deferred queue, its outbox and the port its helpers use."""
        self._step = 0
        self._warned: set[str] = set()
        self._fork_child = False
        self._report: FinishReport | None = None
        self._ending = False  # finish() began: the lookout at start says nothing then
        self._last_ts = 0  # the latest timestamp queued through _emit (run_end is not before)
        self._deferred = make_deferred(self._emit)
        self._deferred_queue = self._deferred.queue  # one truth test on the hot path
        self._new_outbox()
        self._port = EmitterPort(
            run_id=self.run_id,
            rank=self.rank,
            store=self.store,
            emit=self._emit,
            send_now=self.send_now,
            acked_below=self.acked_below,
            next_step=lambda: self._step,
            finished=lambda: self._report is not None,
            deferred=self._deferred,
        )
        self._end = RunEnd(self._port, self.finish)
        self._helpers = RunHelpers(self._port, self._redaction)

    def _go_live(self) -> None:
        """Opens the link (and its keeper), and ends the run with the process if nobody does."""
        self._outbox.open()
        look_at_start(self._where, self._outbox.warn_once, lambda: self._ending)
        _live.add(self)
        atexit.register(self._at_exit)
        signals.install(live_runs)  # SIGTERM: deliver, mark killed, then end as asked

    # -- process identity and I/O ----------------------------------------------------------

    def _new_outbox(self) -> None:
        """A fresh source, sequence, buffer, lock and link: at init, and in a forked child."""
        self._outbox = Outbox(self._outbox_options, self._deferred.poll, self._warned)
        self._pending = self._outbox.pending  # appended to on the hot path

    @property
    def source(self) -> str:
        """The random id of this process's events (a forked child gets its own)."""
        return self._outbox.source

    def _after_fork_in_child(self) -> None:
        # The parent's socket, lock and buffered events stay the parent's (pyzmq never closes a
        # parent's socket from a child). The child gets its own source, so what it logs is never
        # taken for a duplicate of the parent's events, and a socket only once it logs something.
        if self._report is not None:
            return
        self._fork_child = True
        self._new_outbox()
        # multiprocessing children (DataLoader workers) end with os._exit, which skips atexit,
        # after running multiprocessing's own finalizers: one of those delivers what the child
        # logged. (It is registered from an after-fork hook because the child's bootstrap
        # clears the finalizers it inherited, then runs those hooks.)
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            mp_util.register_after_fork(self, _finalize_in_mp_child)

    def _idle_child(self) -> bool:
        """A forked child (a DataLoader worker) that never logged: its exit ends nothing."""
        return self._fork_child and self._outbox.transport is None and not self._pending

    # -- the hot path ----------------------------------------------------------------------

    if TYPE_CHECKING:  # the signature type checkers see; the method is made by _hot_log

        def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...

    else:
        log = hot_log()
    _log_checked = hot_log_checked()  # rows traintape.wandb has checked (hot.py)

    def defer_values(self, ts: int, step: int | None, tensors: dict[str, Any]) -> None:
        """Queues one-element tensors; emitted as one metrics event when readable without a sync."""
        defer_tensors(self._deferred, ts, step, tensors)

    # -- the other event kinds -------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        """Records hyperparameters; nested dicts are flattened with "." ({"opt": {"lr": 1}} -> opt.lr)."""
        if not isinstance(params, dict):
            msg = f"log_params() takes a dict, not {type(params).__name__}"
            raise TypeError(msg)
        body = self._redaction.mapping(flatten(params))
        check_body(body, "log_params()")
        self._emit(PARAMS, None, body)

    def log_text(self, key: str, text: str, step: int | None = None) -> None:
        if not isinstance(key, str) or not isinstance(text, str):
            msg = "log_text(key, text) takes two str"
            raise TypeError(msg)
        step = step if step is None else check_step(step)
        body = {"key": key, "text": self._redaction.text(key, text)}
        check_body(body, f"log_text({key[:40]!r})")
        ts = time.time_ns()
        # Text lands in its step's row in W&B, as metrics do: it keeps its place in line too.
        if not (self._deferred_queue and self._deferred.add_ready(ts, step, TEXT, body)):
            self._emit(TEXT, step, body, ts)

    def log_histogram(
        self, key: str, counts: Sequence[float], low: float, high: float, step: int | None = None
    ) -> None:
        """Records a histogram of equal-width bins between `low` and `high` (what `watch()`
        records for weights and gradients; TensorBoard and W&B sinks show it as theirs)."""
        if not isinstance(key, str) or not key:
            msg = "log_histogram() takes a non-empty str key"
            raise TypeError(msg)
        counts = [float(c) for c in counts]
        low, high = float(low), float(high)
        if not counts or not math.isfinite(low) or not math.isfinite(high) or high < low:
            msg = f"log_histogram({key!r}): counts must not be empty, and low <= high, finite"
            raise ValueError(msg)
        step = step if step is None else check_step(step)
        body = {"key": key, "min": low, "max": high, "counts": counts}
        check_body(body, f"log_histogram({key[:40]!r})")
        ts = time.time_ns()
        if not (self._deferred_queue and self._deferred.add_ready(ts, step, HISTOGRAM, body)):
            self._emit(HISTOGRAM, step, body, ts)

    def save_checkpoint(
        self, state: Any, step: int, metrics: dict[str, Any] | None = None
    ) -> CheckpointHandle:
        """Snapshots `state` to CPU memory on this thread and writes it on a background thread.

        Returns a future-like handle (see traintape.emitter.checkpointing.writer).
        """
        return self._helpers.save_checkpoint(state, step, metrics, self.checkpoint_policy)

    def watch(
        self, model: Any, every: int = 1, per_layer: bool = False, histograms: bool = False
    ) -> GradientWatcher:
        """Logs gradient norms and NaN/Inf counts of `model` every `every` backward passes,
        computed on its device without a sync (see traintape.emitter.gradients). Returns the watcher;
        `.remove()` stops it."""
        return self._helpers.watch(model, every, per_layer, histograms)

    def _emit(
        self, kind: int, step: int | None, body: dict[str, Any], ts: int | None = None
    ) -> None:
        """Queues one event of any kind; for callers inside traintape (checkpoints, watch)."""
        ts = ts or time.time_ns()
        if ts > self._last_ts:
            self._last_ts = ts
        self._pending.append((kind, ts, step, body))
        if len(self._pending) >= self._batch_size:
            self._outbox.flush(False)

    # -- sending ---------------------------------------------------------------------------

    def _flush(self, wait: bool) -> None:
        """Packs what is pending and sends it; without `wait`, gives up if the lock is busy."""
        self._outbox.flush(wait)

    def send_now(self) -> int | None:
        """Sends every queued event now (waiting for the I/O lock); returns the seq that all of
        them are below, or None once the run is finished. For traintape's own threads."""
        return self._outbox.send_now()

    def acked_below(self) -> int | None:
        """A seq below which the collector acknowledged every event (None without a link)."""
        return self._outbox.acked_below()

    # -- finishing -------------------------------------------------------------------------

    def finish(
        self, status: str = "completed", timeout: float = 30.0, *, wait_visible: bool = True
    ) -> FinishReport:
        """Ends the run: flushes, waits up to `timeout` s for the collector to acknowledge every
        event, and spools whatever it did not. Safe to call twice.

        With `wait_visible` (the default) it then waits, within the same `timeout`, until every
        reader (`traintape.connect()`, the CLI, `load_checkpoint`) sees the whole run; the report's
        `visible` says whether it does. Without, it returns once everything is acknowledged
        (in the journal, fsync'd): what a benchmark of ingest measures."""
        if status not in RUN_STATUSES:
            msg = f"status must be one of {RUN_STATUSES}, got {status!r}"
            raise ValueError(msg)
        if self._report is not None:
            return self._report
        called = time.time_ns()  # the run ends here, or at its last event: not after the waits
        self._ending = True
        self._helpers.stop_watching()
        deadline = time.monotonic() + timeout  # one budget for everything below
        self._end_inputs(timeout)
        if not self._fork_child:  # a DataLoader worker's exit is not the run's end
            summary = self._redaction.value(plain(self.summary))
            body = {"status": status, "summary": summary}
            self._emit(RUN_END, None, body, max(called, self._last_ts))
        self.log = self._log_after_finish  # type: ignore[method-assign]
        # A forked child's exit ends no run: nothing to wait for readers to see.
        visible_for = status if wait_visible and not self._fork_child else None
        lookout = Lookout(self._where)  # nothing listens: spool at once, not after `timeout`
        report = self._outbox.close(
            deadline, visible_for, lambda: self._deferred.unreadable, lookout
        )
        self._report = report
        absent = self._outbox.absent
        say_what_is_missing(report, self._outbox.refused, self._where, timeout, absent)
        return report

    def _end_inputs(self, timeout: float) -> None:
        """What still feeds the run comes in before its end: the values on their way from the
        GPU, the queued checkpoint writes, the hashing of recorded checkpoint files."""
        self._deferred.poll(wait=True)
        if self._helpers.writer is not None and nothing_listens(self.address) is not None:
            timeout = 0.0  # no deletion can be acknowledged: they stay for `traintape replay`
        self._helpers.close(timeout)

    def _log_after_finish(self, metrics: Any, step: int | None = None) -> None:
        msg = f"run {self.run_id} is finished; call init() to start another"
        raise RunFinishedError(msg)

    def _at_exit(self) -> None:
        if self._report is not None or self._idle_child():
            return
        self.finish(status=self._end.status or "completed", timeout=10.0)

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish("completed")
        else:
            self.finish("killed" if issubclass(exc_type, KeyboardInterrupt) else "failed")

    def __repr__(self) -> str:
        return f"<Emitter run {self.run_id} {self.name!r} rank {self.rank}/{self.world_size}>"

    def record_checkpoint(
        self,
        path: str | os.PathLike[str],
        step: int,
        metrics: dict[str, Any] | None = None,
        **options: Any,
    ) -> CheckpointHandle:
        """Records a checkpoint file (or folder) that other code wrote, e.g. Lightning's
        ModelCheckpoint, as a `checkpoint` event; hashed off this thread, and recorded as deleted
        once it is gone. Options: monitor, mode, is_best, origin (checkpointing/external.py)."""
        return self._helpers.record_checkpoint(path, step, metrics, **options)

    def log_artifact(self, data: Any, name: str | None = None, *more: Any, **kw: Any) -> Any:
        """Stores a file (path) or bytes in the store by content, copied off this thread, then
        records an `artifact` event; then `kind`, `metadata` (redacted as the config), `step`."""
        return self._helpers.log_artifact(data, name, *more, **kw)


def live_runs() -> list[RunEnd]:
    """The runs of this process a SIGTERM must end: not finished, and not a forked child that
    never logged (signals.py)."""
    return [em._end for em in list(_live) if em._report is None and not em._idle_child()]


def run_end(em: Emitter) -> RunEnd:
    """How `em` ends if its process does (the excepthook of `traintape.emitter` marks it)."""
    return em._end


def _finalize_in_mp_child(em: Emitter) -> None:
    sys.modules["multiprocessing.util"].Finalize(None, em._at_exit, exitpriority=0)


def _after_fork_in_child() -> None:
    for em in list(_live):
        em._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
