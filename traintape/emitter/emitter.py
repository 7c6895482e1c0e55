"""The Emitter: what a training process holds to log into traintape.

The hot path (`log`) checks value types in one C-level pass, stamps the time, appends a tuple to
a deque and returns. Every `batch_size` calls the caller packs the batch (msgpack, columnar) and
hands it to ZeroMQ without blocking; if another thread holds the I/O lock at that moment, the
caller simply does not flush this time. A keeper thread sends what is pending every
`flush_interval` (15 ms, so a SIGKILL loses about that much; each send wakes threads of this
process and the collector, which a 2-core training loop feels at 10 ms), processes acks, resends,
sends a heartbeat now and then, and moves batches the collector did not take in time to the spool.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from traintape.emitter import environment, signals
from traintape.emitter.checks import MAX_EVENT_BYTES, check_body, split_batch
from traintape.emitter.deferred import DeferredValues, split_tensors, torch_module
from traintape.emitter.spool import SpoolFile
from traintape.emitter.transport import Transport
from traintape.emitter.values import coerce_metrics, flatten, plain
from traintape.emitter.visibility import finish_visible
from traintape.errors import RunFinishedError
from traintape.paths import resolve_address, resolve_store, spool_dir
from traintape.placement import placement
from traintape.schemas.events import (
    KIND_NAMES,
    METRICS,
    PARAMS,
    RUN_END,
    RUN_START,
    RUN_STATUSES,
    TEXT,
)
from traintape.schemas.limits import MAX_INT64
from traintape.schemas.values import to_float
from traintape.schemas.wire import encode_body, encode_header

logger = logging.getLogger(__name__)

_SCALARS = frozenset((float, int, bool))
_STR = frozenset((str,))
_live: weakref.WeakSet[Emitter] = weakref.WeakSet()
CHORES_S = 0.1
"""How often the keeper takes acks, resends, spools and sends a due heartbeat."""


@dataclass(frozen=True)
class FinishReport:
    """What `finish()` could deliver. `spooled` events wait in `spool_path` for `traintape replay`."""

    run_id: str
    acked: int
    spooled: int
    spool_path: Path | None
    rejected: int
    lost: int = 0  # neither acknowledged nor spooled: only when the spool could not be written
    unreadable: int = 0  # logged GPU values a device error left unreadable (never events)
    # Every reader (views, CLI, load_checkpoint) sees every event of this process; False: not
    # within finish's timeout (the collector's materializer is behind); None: not asked.
    visible: bool | None = None

    @property
    def complete(self) -> bool:
        """Every event is in the collector's journal, and every logged GPU value became one."""
        return self.spooled == 0 and self.rejected == 0 and self.lost == 0 and not self.unreadable


class Emitter:
    """One run as seen from one process. Use `traintape.emitter.init()` for the usual case."""

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
    ) -> None:
        if not isinstance(project, str) or not project:
            msg = "init() needs a project name (a non-empty str)"
            raise ValueError(msg)
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ValueError(msg)
        self.project = project
        self.store = resolve_store(store)
        self.placement = placement()
        self.rank = self.placement.rank
        self.world_size = self.placement.world_size
        self.run_id = environment.resolve_run_id(run_id, self.placement)
        self.name = name or f"{project}-{self.run_id[:6]}"
        self.config = plain(dict(config or {}))
        self.tags = [str(t) for t in tags]
        self.address = resolve_address(address, self.store)
        self.summary: dict[str, Any] = {}
        self.checkpoint_policy = checkpoint  # a traintape.CheckpointPolicy, or None for defaults
        self._checkpoints: Any = None  # the CheckpointWriter, made on the first save
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._transport_options: dict[str, Any] = {
            "resend_after": resend_after,
            "spool_after": spool_after,
            "max_memory_bytes": int(max_memory_mb * (1 << 20)),
        }
        self._step = 0
        self._deferred = DeferredValues(self._emit)
        self._deferred_queue = self._deferred._queue  # one truth test on the hot path
        self._watchers: list[Any] = []
        self._warned: set[str] = set()
        self._failed_by: str | None = None
        self._fork_child = False
        self._report: FinishReport | None = None
        # Checked before anything is sent: a config that cannot be stored fails init() here.
        start_body = self._run_start_body()
        check_body(start_body, "the run's config and environment")
        params = flatten(self.config) if self.config else None
        if params:
            check_body(params, "the config (as params)")
        self._reset_io()
        self._open_transport()
        _live.add(self)
        atexit.register(self._at_exit)
        signals.install(lambda: list(_live))  # SIGTERM: deliver, mark killed, then end as asked
        self._emit(RUN_START, None, start_body)
        if params:
            self._emit(PARAMS, None, params)

    # -- process identity and I/O ----------------------------------------------------------

    def _reset_io(self) -> None:
        """A fresh source, sequence, buffer and lock: at init, and in a forked child."""
        self.source = secrets.token_hex(8)
        self._seq = 0
        self._pending: deque[tuple[int, int, int | None, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._transport: Transport | None = None
        self._keeper: threading.Thread | None = None
        self._refused = 0  # events this process could not send at all (FinishReport.rejected)
        self._chores_at = 0.0  # monotonic time of the keeper's next acks/resend/spool round

    def _open_transport(self) -> Transport:
        spool = SpoolFile(spool_dir(self.store) / f"{self.run_id}.{self.rank}.{self.source}.spool")
        self._transport = Transport(self.address, self.source, spool, **self._transport_options)
        self._keeper = threading.Thread(target=self._keep, name="traintape-keeper", daemon=True)
        self._keeper.start()
        return self._transport

    def _after_fork_in_child(self) -> None:
        # The parent's socket, lock and buffered events stay the parent's (pyzmq never closes a
        # parent's socket from a child). The child gets its own source, so what it logs is never
        # taken for a duplicate of the parent's events, and a socket only once it logs something.
        if self._report is not None:
            return
        self._fork_child = True
        self._reset_io()
        # multiprocessing children (DataLoader workers) end with os._exit, which skips atexit,
        # after running multiprocessing's own finalizers: one of those delivers what the child
        # logged. (It is registered from an after-fork hook because the child's bootstrap
        # clears the finalizers it inherited, then runs those hooks.)
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            mp_util.register_after_fork(self, _finalize_in_mp_child)

    def _run_start_body(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "name": self.name,
            "config": self.config,
            "tags": self.tags,
            "environment": {
                **environment.environment(self.placement),
                "config_sha1": environment.config_hash(self.config),
            },
            "world_size": self.world_size,
        }

    # -- the hot path ----------------------------------------------------------------------

    def log(
        self,
        metrics: dict[str, Any],
        step: int | None = None,
        *,
        _now: Any = time.time_ns,
        _scalars: frozenset[type] = _SCALARS,
        _str: frozenset[type] = _STR,
        _type: type = type,
        _max_step: int = MAX_INT64,
    ) -> None:
        """Records metric values (int, float, bool or numpy scalars) at `step`.

        Without `step`, the step after the last one logged is used (0 first), as W&B does.
        Raises TypeError naming the key if any value is not a number; nothing of that call is
        logged then. NaN and ±Inf are kept.
        """
        try:
            fast = _scalars.issuperset(map(_type, metrics.values())) and _str.issuperset(
                map(_type, metrics)
            )
        except AttributeError:
            fast = False
        if step is None:
            step = self._step
        elif _type(step) is not int or not 0 <= step <= _max_step:
            step = _check_step(step)
        if fast:
            metrics = metrics.copy()
        else:
            metrics = self._take_tensors(metrics, step, _now())
            if not metrics:
                self._step = step + 1
                return
        self._step = step + 1
        # Behind GPU values of earlier calls, to keep the order of the calls (log_text too; not
        # checkpoint events, whose seq the writer takes at once to wait for their ack).
        if self._deferred_queue and self._deferred.add_ready(_now(), step, METRICS, metrics):
            return
        pending = self._pending
        pending.append((METRICS, _now(), step, metrics))
        if len(pending) >= self._batch_size:
            self._flush(False)

    def _take_tensors(self, metrics: Any, step: int, ts: int) -> dict[str, Any]:
        """The slow path of `log`: numpy scalars, tensors, and errors. Returns the plain values.

        Everything is checked before anything is queued, so a bad value logs nothing.
        """
        if not isinstance(metrics, dict):
            return coerce_metrics(metrics)
        plain, tensors = split_tensors(metrics)
        plain = coerce_metrics(plain)
        if tensors:
            for key in tensors:
                if not isinstance(key, str):
                    msg = f"metric names must be str, got {key!r} ({type(key).__name__})"
                    raise TypeError(msg)
            self.defer_values(ts, step, tensors)
        self._deferred.poll()
        return plain

    def defer_values(self, ts: int, step: int | None, tensors: dict[str, Any]) -> None:
        """Queues one-element tensors; emitted as one metrics event when readable without a sync."""
        torch = torch_module()
        assert torch is not None
        by_device: dict[Any, list[str]] = {}
        for key, value in tensors.items():
            by_device.setdefault(value.device, []).append(key)
        for keys in by_device.values():
            group = [tensors[k].detach().reshape(()) for k in keys]
            if len({t.dtype for t in group}) > 1:  # no promotion to a dtype that loses values
                group = [t.to(torch.float64) for t in group]
            # One tensor (the usual loss) is a view: no kernel, only the copy to the host.
            values = group[0].reshape(1) if len(group) == 1 else torch.stack(group)
            self._deferred.add(ts, step, METRICS, values, _metrics_builder(keys))

    # -- the other event kinds -------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        """Records hyperparameters; nested dicts are flattened with "." ({"opt": {"lr": 1}} -> opt.lr)."""
        if not isinstance(params, dict):
            msg = f"log_params() takes a dict, not {type(params).__name__}"
            raise TypeError(msg)
        body = flatten(params)
        check_body(body, "log_params()")
        self._emit(PARAMS, None, body)

    def log_text(self, key: str, text: str, step: int | None = None) -> None:
        if not isinstance(key, str) or not isinstance(text, str):
            msg = "log_text(key, text) takes two str"
            raise TypeError(msg)
        step = step if step is None else _check_step(step)
        body = {"key": key, "text": text}
        check_body(body, f"log_text({key[:40]!r})")
        ts = time.time_ns()
        # Text lands in its step's row in W&B, as metrics do: it keeps its place in line too.
        if not (self._deferred_queue and self._deferred.add_ready(ts, step, TEXT, body)):
            self._emit(TEXT, step, body, ts)

    def save_checkpoint(self, state: Any, step: int, metrics: dict[str, Any] | None = None) -> Any:
        """Snapshots `state` to CPU memory on this thread and writes it on a background thread.

        Returns a future-like handle (see traintape.emitter.checkpointing.writer).
        """
        from traintape.emitter.checkpointing.writer import save_checkpoint

        return save_checkpoint(self, state, step, metrics)

    def watch(
        self, model: Any, every: int = 1, per_layer: bool = False, histograms: bool = False
    ) -> Any:
        """Logs gradient norms and NaN/Inf counts of `model` every `every` backward passes,
        computed on its device without a sync (see traintape.emitter.gradients). Returns the watcher;
        `.remove()` stops it."""
        from traintape.emitter.gradients import GradientWatcher

        watcher = GradientWatcher(self, model, every, per_layer, histograms)
        self._watchers.append(watcher)
        return watcher

    def _emit(
        self, kind: int, step: int | None, body: dict[str, Any], ts: int | None = None
    ) -> None:
        """Queues one event of any kind; for callers inside traintape (checkpoints, watch)."""
        self._pending.append((kind, ts or time.time_ns(), step, body))
        if len(self._pending) >= self._batch_size:
            self._flush(False)

    # -- batching and the keeper -----------------------------------------------------------

    def _flush(self, wait: bool) -> None:
        """Packs what is pending and sends it; without `wait`, gives up if the lock is busy."""
        if not self._lock.acquire(blocking=wait):
            return
        try:
            self._flush_locked()
        finally:
            self._lock.release()

    def _flush_locked(self) -> None:
        pending = self._pending
        n = len(pending)
        if not n:
            return
        popleft = pending.popleft
        events = [popleft() for _ in range(n)]
        try:
            try:
                body: bytes | None = encode_body(*zip(*events))
            except (OverflowError, TypeError, ValueError):
                body = None
            if body is None or len(body) > MAX_EVENT_BYTES:
                # Slow path: storable values, batches under the message limit, and an event
                # that cannot be sent at all refused (counted), never blocking the others.
                batches, refused = split_batch(events, _storable)
                self._refuse(refused)
            else:
                batches = [(n, body)]
        except BaseException:
            pending.extendleft(reversed(events))  # kept for the next flush, never dropped
            raise
        transport = self._transport or self._open_transport()
        for count, packed in batches:
            seq0 = self._seq
            self._seq += count
            header = encode_header(self.run_id, self.rank, self.source, seq0, count)
            transport.send(seq0, count, header, packed)
        transport.poll_acks()
        if transport.memory_high():
            self._wake.set()  # the keeper spools now, not at its next tick: the bound holds
            if transport.memory_over():
                # The keeper is behind (it needs the GIL between writes): let it run now. Not a
                # wait on the disk: a blocked write releases the GIL straight back.
                time.sleep(0)

    def _refuse(self, refused: list[Any]) -> None:
        """Events that cannot be sent: counted in FinishReport.rejected, and said once each."""
        for (kind, _, step, _), reason in refused:
            self._refused += 1
            logger.warning(
                f"traintape: a {KIND_NAMES[kind]} event of run {self.run_id} (step {step}) "
                f"{reason}; it was not logged"
            )

    def send_now(self) -> int | None:
        """Sends every queued event now (waiting for the I/O lock); returns the seq that all of
        them are below, or None once the run is finished. For traintape's own threads."""
        with self._lock:
            if self._report is not None:
                return None
            self._flush_locked()
            return self._seq

    def acked_below(self) -> int | None:
        """A seq below which the collector acknowledged every event (None without a link)."""
        with self._lock:
            transport = self._transport
            if transport is None or transport.closed:
                return None
            transport.poll_acks()
            oldest = transport.oldest_unsettled()
            return self._seq if oldest is None else oldest

    def _keep(self) -> None:
        # The keeper never dies: a failing tick is said once, and its work stays queued for
        # the next one (and for finish()).
        while not self._stopping:
            try:
                self._tick()
            except Exception as exc:
                self._warn_once(
                    f"traintape: the keeper thread failed ({type(exc).__name__}: {exc}); "
                    "it goes on, and what it held stays queued"
                )

    def _tick(self) -> None:
        transport = self._transport
        assert transport is not None
        self._wake.wait(self._flush_interval)
        if self._stopping:
            return
        self._wake.clear()
        self._deferred.poll()
        # Whatever is pending leaves at every tick: a SIGKILL loses about one flush_interval.
        if self._pending:
            with self._lock:
                self._flush_locked()
        now = time.monotonic()
        if now < self._chores_at and not transport.memory_high():
            return  # the rest at a slower pace (resend_due walks every batch), or the bound
        self._chores_at = now + CHORES_S
        with self._lock:
            transport.poll_acks()
            transport.resend_due()
            to_spool = transport.take_for_spool()
            if transport.heartbeat_due(now):  # proof of life while idle (collector liveness)
                beat = encode_header(self.run_id, self.rank, self.source, self._seq, 0)
                transport.heartbeat(beat)
        self._service_spool(to_spool)

    def _service_spool(self, to_spool: list[Any]) -> None:
        """Disk work, outside the lock, so the training thread never waits on it."""
        transport = self._transport
        assert transport is not None
        if to_spool:
            pieces = _pieces(to_spool, SPOOL_PIECE_BYTES)
            transport.spooling_bytes += sum(b.size for b in to_spool)
            try:
                while pieces:
                    transport.spool.append(pieces[0])  # no copy of everything at once
                    transport.spooling_bytes -= sum(b.size for b in pieces.pop(0))
            except OSError as exc:
                with self._lock:
                    for piece in pieces:
                        transport.unspool(piece)
                transport.spooling_bytes = 0
                self._warn_once(
                    f"traintape: cannot write the spool {transport.spool.path} ({exc}); "
                    "keeping unacknowledged batches in memory instead"
                )
        try:
            wanted, start = transport.replay_wanted()
            if wanted:
                records = _spooled(transport.spool, start, 64)  # disk: outside the lock
                with self._lock:
                    transport.replay_step(records, 64)
            elif transport.settled and transport.spool.exists():
                transport.spool.delete()
        except OSError as exc:
            self._warn_once(f"traintape: cannot read the spool {transport.spool.path}: {exc}")

    def _warn_once(self, text: str) -> None:
        if text.split("(")[0] not in self._warned:
            self._warned.add(text.split("(")[0])
            logger.warning(text)

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
        for watcher in self._watchers:
            watcher.remove()
        deadline = time.monotonic() + timeout  # one budget for everything below
        self._deferred.poll(wait=True)  # what is still on its way from the GPU
        if self._checkpoints is not None:  # queued checkpoint writes end before the run does
            self._checkpoints.close(timeout)
        if not self._fork_child:  # a DataLoader worker's exit is not the run's end
            self._emit(RUN_END, None, {"status": status, "summary": plain(self.summary)})
        self.log = self._log_after_finish  # type: ignore[method-assign,assignment]
        self._stopping = True
        self._wake.set()
        keeper = self._keeper
        if keeper is not None and keeper.is_alive() and keeper is not threading.current_thread():
            keeper.join()
        with self._lock:
            self._flush_locked()
            transport = self._transport or self._open_transport()
            while True:
                transport.poll_acks()
                if transport.settled:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                transport.resend_due()
                self._replay_now()
                transport.wait_readable(min(remaining, 0.05))
            visible = finish_visible(self, transport, status, deadline) if wait_visible else None
            to_spool = transport.take_for_spool(force=True)
        if to_spool:
            try:
                transport.spool.append(to_spool, keep_floor=False)  # into the floor: no loss
            except OSError as exc:
                transport.unspool(to_spool)
                logger.warning(
                    f"traintape: LOST {sum(b.n for b in to_spool)} events of run {self.run_id}: "
                    f"the collector did not take them and the spool cannot be written ({exc})"
                )
        if transport.settled and transport.spool.exists():
            transport.spool.delete()
        spooled = transport.spooled_unacked
        lost = transport.unacked_events
        transport.close()
        transport.spool.release()  # `traintape replay` may take what is left
        report = FinishReport(
            run_id=self.run_id,
            acked=transport.stats.acked_events,
            spooled=spooled,
            spool_path=transport.spool.path if spooled else None,
            rejected=transport.stats.rejected_events + self._refused,
            lost=lost,
            unreadable=self._deferred.unreadable,
            visible=visible,
        )
        self._report = report
        if visible is False:
            logger.warning(
                f"traintape: run {self.run_id} is stored, but readers may not see all of it yet: "
                f"the collector did not materialize it within {timeout:g}s"
            )
        if spooled:
            logger.warning(
                f"traintape: the collector at {self.address} did not acknowledge {spooled} events "
                f"of run {self.run_id} in {timeout:g}s; they are safe in {transport.spool.path}. "
                f"Deliver them with `traintape replay --store {self.store}` once it runs."
            )
        if report.rejected > self._refused:
            logger.warning(
                f"traintape: the collector rejected {report.rejected - self._refused} events of "
                f"run {self.run_id}; they are in its dead-letter file."
            )
        if self._refused:  # each was named when it was refused
            logger.warning(
                f"traintape: {self._refused} events of run {self.run_id} could not be sent "
                "(see above); FinishReport.rejected counts them"
            )
        return report

    def _replay_now(self) -> None:
        """Resends spooled batches during finish (the keeper is stopped, the lock is ours)."""
        transport = self._transport
        assert transport is not None  # finish opened it
        wanted, start = transport.replay_wanted()
        if not wanted:
            return
        transport.replay_step(_spooled(transport.spool, start, 256), 256)

    def _log_after_finish(self, metrics: Any, step: int | None = None) -> None:
        msg = f"run {self.run_id} is finished; call init() to start another"
        raise RunFinishedError(msg)

    def _at_exit(self) -> None:
        if self._report is not None:
            return
        if self._fork_child and self._transport is None and not self._pending:
            return  # a forked child that never logged
        self.finish(status=self._failed_by or "completed", timeout=10.0)

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish("completed")
        else:
            self.finish("killed" if issubclass(exc_type, KeyboardInterrupt) else "failed")

    def __repr__(self) -> str:
        return f"<Emitter run {self.run_id} {self.name!r} rank {self.rank}/{self.world_size}>"


def _metrics_builder(keys: list[str]) -> Any:
    return lambda values: dict(zip(keys, values))


def _finalize_in_mp_child(em: Emitter) -> None:
    sys.modules["multiprocessing.util"].Finalize(None, em._at_exit, exitpriority=0)


def _check_step(step: Any) -> int:
    try:
        if isinstance(step, bool):
            raise TypeError
        value = step.__index__()
    except (AttributeError, TypeError):
        msg = f"step must be an int, got {step!r} ({type(step).__name__})"
        raise TypeError(msg) from None
    if not 0 <= value <= MAX_INT64:
        msg = f"step must be in 0..{MAX_INT64} (stored as int64), got {value}"
        raise ValueError(msg)
    return int(value)


def _storable(kind: int, body: dict[str, Any]) -> dict[str, Any]:
    """A body msgpack can pack: metric ints beyond 64 bits become floats (±inf past float range)."""
    if kind == METRICS:
        return {k: to_float(v) if type(v) is int else v for k, v in body.items()}
    return plain(body)


SPOOL_PIECE_BYTES = 4 << 20
"""Batches written to the spool per append: its join copies one piece, not all of them."""


def _pieces(batches: list[Any], size: int) -> list[list[Any]]:
    pieces: list[list[Any]] = [[]]
    total = 0
    for batch in batches:
        if pieces[-1] and total + batch.size > size:
            pieces.append([])
            total = 0
        pieces[-1].append(batch)
        total += batch.size
    return pieces


def _spooled(spool: SpoolFile, start: int, limit: int) -> list[tuple[int, bytes, bytes, int]]:
    """Up to `limit` spooled records from offset `start`, as `Transport.replay_step` takes them."""
    return [(nxt, h, b, _seq0_of(h)) for nxt, h, b in _take(spool.read(start), limit)]


def _seq0_of(header: bytes) -> int:
    return msgpack.unpackb(header)[5]


def _take(iterator: Any, n: int) -> list[Any]:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) >= n:
            break
    return out


def _after_fork_in_child() -> None:
    for em in list(_live):
        em._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
