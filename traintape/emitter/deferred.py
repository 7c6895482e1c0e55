"""Tensor values that must not stall the GPU: copied to pinned host memory behind a CUDA event.

`emitter.log({"loss": loss})` with a CUDA tensor must not call `.item()` (a device sync that
drains the GPU pipeline, which W&B, MLflow and TensorBoard all do). Instead the values are copied
`non_blocking`, in their own dtype, into a reused pinned buffer, and a reused CUDA event recorded
after the copy says when the host can read them. For one loss that is one asynchronous copy and
no kernel. Completed entries are emitted, in order, with the step and timestamp of the `log`
call: from later `log` calls, from the emitter's keeper thread, and (waiting on the events) from
`finish()`. While an entry is on its way, plain values logged after it queue behind it
(`add_ready`), so events leave in the order of the calls, whatever the GPU's lag.

`take_tensors` is `log()`'s slow path: it splits device tensors from plain values and queues
them here. CPU tensors are read at once (that is no device sync). Tensors on other devices (MPS,
XLA) are read with `.tolist()`, which does synchronise: said here so nobody is surprised.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from traintape.emitter.port import Build, DeferredQueue
from traintape.emitter.values import check_metric_name, coerce_metrics
from traintape.schemas.events import METRICS

logger = logging.getLogger(__name__)

HOLD_S = 5.0
"""Longest that values needing no copy wait behind a GPU value: past it (a hung device, a stuck
collective) they go out at once, out of order, so the host's record of the hang keeps coming."""

Emit = Callable[[int, int | None, dict[str, Any], int], None]  # (kind, step, body, ts)


def torch_module() -> Any | None:
    """torch if the training script imported it; traintape never imports it for a tensor check."""
    return sys.modules.get("torch")


def is_tensor(value: Any) -> bool:
    torch = torch_module()
    return torch is not None and isinstance(value, torch.Tensor)


@dataclass(slots=True)
class _Slot:
    """A pinned host buffer and the event that says when the copy into it has landed."""

    host: Any
    event: Any
    key: tuple[int, Any, Any]  # (numel, dtype, device): what it can be reused for


@dataclass(slots=True)
class _Pending:
    ts: int
    step: int | None
    kind: int
    build: Build
    slot: _Slot | None  # None: ready, queued only to keep its place in line
    device_values: Any  # kept alive until the copy completed
    # Emitted (or dropped) out of line already; only leaves the queue when it reaches the head.
    # The queue's only changes are appends (any thread) and poll's popleft: never rebuilt.
    done: bool = False


class DeferredValues:
    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._queue: deque[_Pending] = deque()
        self._lock = threading.Lock()
        self._free: dict[tuple[int, Any, Any], list[_Slot]] = {}
        self.unreadable = 0  # GPU values dropped because the device failed (a CUDA error)
        self.error: str | None = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queue(self) -> deque[_Pending]:
        """What is on its way, in the order of the calls (truth-tested by `log()`)."""
        return self._queue

    def add(self, ts: int, step: int | None, kind: int, values: Any, build: Build) -> None:
        """Emits `build(values)` once the 1-D tensor `values` can be read without a sync."""
        values = values.detach()
        if values.device.type != "cuda":
            body = build(_floats(values.tolist()))
            if not self.add_ready(ts, step, kind, body):
                self._emit(kind, step, body, ts)
            return
        torch = torch_module()
        assert torch is not None
        slot = self._slot((values.numel(), values.dtype, values.device), torch)
        slot.host.copy_(values, non_blocking=True)
        slot.event.record(torch.cuda.current_stream(values.device))
        self._queue.append(_Pending(ts, step, kind, build, slot, values))

    def add_ready(self, ts: int, step: int | None, kind: int, body: dict[str, Any]) -> bool:
        """Queues a body that needs no copy behind values still on their way, so events leave in
        the order of the calls (W&B drops a row below its last step). False: nothing is on its
        way; emit it directly."""
        queue = self._queue
        if not queue:
            return False
        if ts - queue[0].ts > HOLD_S * 1e9:  # the GPU value at the head is overdue
            self.poll()  # lets out the values already waiting, so they still precede this one
            return False
        queue.append(_Pending(ts, step, kind, lambda _: body, None, None))
        self.poll()
        return True

    def _slot(self, key: tuple[int, Any, Any], torch: Any) -> _Slot:
        free = self._free.get(key)
        if free:
            return free.pop()
        # An event belongs to the device it was first recorded on: slots are kept per device.
        try:
            host = torch.empty(key[0], dtype=key[1], pin_memory=True)
        except RuntimeError:  # pinned memory exhausted: a pageable copy waits, but still works
            host = torch.empty(key[0], dtype=key[1])
        return _Slot(host, torch.cuda.Event(), key)

    def poll(self, wait: bool = False) -> int:
        """Emits every entry whose copy has completed (all of them, waiting, with `wait`)."""
        if not self._queue or not self._lock.acquire(blocking=wait):
            return 0
        emitted = 0
        try:
            queue = self._queue
            while queue:
                head = queue[0]
                slot = head.slot
                if head.done:
                    queue.popleft()
                    continue
                if slot is None:
                    values = []
                else:
                    try:
                        if wait:
                            slot.event.synchronize()
                        elif not slot.event.query():
                            if time.time_ns() - head.ts > HOLD_S * 1e9:
                                emitted += self._release_ready()
                            break
                        values = _floats(slot.host.tolist())
                    except Exception as exc:  # a CUDA error: the device can no longer be read
                        self._drop_device_values(exc)
                        continue
                    self._free.setdefault(slot.key, []).append(slot)
                # Emitted before it leaves the queue: a log() that finds the queue empty must
                # not get its event out ahead of this one.
                self._emit(head.kind, head.step, head.build(values), head.ts)
                queue.popleft()
                emitted += 1
        finally:
            self._lock.release()
        return emitted

    def _release_ready(self) -> int:
        """Emits the queued values that need no copy, leaving the GPU values in line."""
        released = 0
        for p in list(self._queue):  # a snapshot: the training thread may append meanwhile
            if p.slot is None and not p.done:
                self._emit(p.kind, p.step, p.build([]), p.ts)
                p.done = True
                released += 1
        return released

    def _drop_device_values(self, exc: Exception) -> None:
        """After a device error (CUDA errors are sticky: every later call fails too) the values
        still on the GPU are lost; everything else of the run goes on, so the crash that caused
        it is recorded. Values queued behind them that need no copy are kept, in order."""
        for p in list(self._queue):  # a snapshot, as in _release_ready
            if p.slot is not None and not p.done:
                p.done = True
                self.unreadable += 1
        self._free.clear()
        if self.error is None:
            self.error = f"{type(exc).__name__}: {exc}"
            logger.warning(
                f"traintape: values still on the GPU cannot be read ({self.error}); they are "
                "not logged, the rest of the run is"
            )


def _floats(values: list[Any]) -> list[float]:
    # Integer and bool tensors are numbers too; metrics are stored as doubles.
    return [float(v) for v in values]


def take_tensors(deferred: DeferredQueue, metrics: Any, step: int, ts: int) -> dict[str, Any]:
    """The slow path of `log`: numpy scalars, tensors, and errors. Returns the plain values and
    queues the device tensors on `deferred`.

    Everything is checked before anything is queued, so a bad value logs nothing.
    """
    if not isinstance(metrics, dict):
        return coerce_metrics(metrics)
    plain, tensors = split_tensors(metrics)
    plain = coerce_metrics(plain)
    if tensors:
        for key in tensors:
            check_metric_name(key)
        defer_tensors(deferred, ts, step, tensors)
    deferred.poll()
    return plain


def defer_tensors(
    deferred: DeferredQueue, ts: int, step: int | None, tensors: dict[str, Any]
) -> None:
    """Queues one-element tensors, one metrics event per device, on `deferred`."""
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
        deferred.add(ts, step, METRICS, values, _metrics_builder(keys))


def _metrics_builder(keys: list[str]) -> Build:
    return lambda values: dict(zip(keys, values))


def split_tensors(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separates one-element device tensors from the other values; TypeError for bigger tensors.

    A CPU tensor is read here (`.item()` waits on no device) and goes with the plain values.
    """
    plain: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    for key, value in metrics.items():
        if is_tensor(value):
            if value.numel() != 1:
                msg = (
                    f"metric {key!r}: a tensor of {value.numel()} elements; log one-element tensors"
                )
                raise TypeError(msg)
            if value.is_complex():
                msg = f"metric {key!r}: complex tensors are not numbers traintape stores"
                raise TypeError(msg)
            if value.device.type == "cpu":
                plain[key] = value.item()
            else:
                tensors[key] = value
        else:
            plain[key] = value
    return plain, tensors
