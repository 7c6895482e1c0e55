"""Tensor values that must not stall the GPU: copied to pinned host memory behind a CUDA event.

`emitter.log({"loss": loss})` with a CUDA tensor must not call `.item()` (a device sync that
drains the GPU pipeline, which W&B, MLflow and TensorBoard all do). Instead the values are cast to
float64 on the device, stacked, and copied `non_blocking` into a reused pinned buffer; a CUDA event
recorded after the copy says when the host can read them. Completed entries are emitted, in
order, with the step and timestamp of the `log` call: from later `log` calls, from the emitter's
keeper thread, and (waiting on the events) from `finish()`.

CPU tensors are read at once (that is no device sync). Tensors on other devices (MPS, XLA) are
read with `.tolist()`, which does synchronise: said here so nobody is surprised.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Build = Callable[[list[float]], dict[str, Any]]
Emit = Callable[[int, int | None, dict[str, Any], int], None]  # (kind, step, body, ts)


def torch_module() -> Any | None:
    """torch if the training script imported it; traintape never imports it for a tensor check."""
    return sys.modules.get("torch")


def is_tensor(value: Any) -> bool:
    torch = torch_module()
    return torch is not None and isinstance(value, torch.Tensor)


@dataclass(slots=True)
class _Pending:
    ts: int
    step: int | None
    kind: int
    build: Build
    host: Any  # pinned CPU tensor the values land in
    device_values: Any  # kept alive until the copy completed
    event: Any


class DeferredValues:
    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._queue: deque[_Pending] = deque()
        self._lock = threading.Lock()
        self._pool: dict[int, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, ts: int, step: int | None, kind: int, values: Any, build: Build) -> None:
        """Emits `build(values)` once the 1-D tensor `values` can be read without a sync."""
        device = values.device.type
        if device == "cpu":
            self._emit(kind, step, build(values.detach().double().tolist()), ts)
            return
        if device != "cuda":
            self._emit(kind, step, build(values.detach().double().tolist()), ts)
            return
        torch = torch_module()
        assert torch is not None
        device_values = values.detach().to(torch.float64)
        host = self._buffer(device_values.numel(), torch)
        host.copy_(device_values, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device_values.device))
        self._queue.append(_Pending(ts, step, kind, build, host, device_values, event))

    def _buffer(self, n: int, torch: Any) -> Any:
        free = self._pool.get(n)
        if free:
            return free.pop()
        return torch.empty(n, dtype=torch.float64, pin_memory=True)

    def poll(self, wait: bool = False) -> int:
        """Emits every entry whose copy has completed (all of them, waiting, with `wait`)."""
        if not self._queue or not self._lock.acquire(blocking=wait):
            return 0
        emitted = 0
        try:
            queue = self._queue
            while queue:
                head = queue[0]
                if wait:
                    head.event.synchronize()
                elif not head.event.query():
                    break
                queue.popleft()
                values = head.host.tolist()
                self._pool.setdefault(len(values), []).append(head.host)
                self._emit(head.kind, head.step, head.build(values), head.ts)
                emitted += 1
        finally:
            self._lock.release()
        return emitted


def split_tensors(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separates one-element tensors from the other values; TypeError for bigger tensors."""
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
            tensors[key] = value
        else:
            plain[key] = value
    return plain, tensors
