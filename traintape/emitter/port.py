"""What the Emitter's helpers may use of it: the port, and nothing of its private state.

The checkpoint writer (checkpointing/writer.py), the gradient watcher (gradients.py) and the
SIGTERM handler (signals.py) act on a run from other threads or other modules. Each is handed an
`EmitterPort`, made once by the Emitter: the run's identity, `emit` to queue an event, `send_now`
and `acked_below` to wait for the collector, the step the next `log()` without a step gets,
whether the run is finished, and the deferred queue GPU values go through. The SIGTERM handler
and the excepthook get a `RunEnd`: the port, the run's `finish`, and the status an exit ends it
with. `DeferredQueue` is what the Emitter and its helpers use of the deferred values
(`deferred.DeferredValues`, or a stand-in that `Emitter(deferred=...)` makes).
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

Emit = Callable[..., None]
"""`emit(kind, step, body, ts=None)`: queues one event of any kind (ts: now when None)."""

Build = Callable[[list[float]], dict[str, Any]]
"""Makes an event body from the values read back from the device."""


class DeferredQueue(Protocol):
    """Values still on their way from a device, emitted in the order of the calls."""

    unreadable: int
    """Values a device error left unreadable (FinishReport.unreadable)."""

    @property
    def queue(self) -> Sized:
        """Truth-tested on `log()`'s hot path: something is on its way, keep behind it."""
        ...

    def add(self, ts: int, step: int | None, kind: int, values: Any, build: Build) -> None: ...

    def add_ready(self, ts: int, step: int | None, kind: int, body: dict[str, Any]) -> bool: ...

    def poll(self, wait: bool = False) -> int: ...


@dataclass(frozen=True, slots=True)
class EmitterPort:
    """Everything a helper of one Emitter may touch; made by the Emitter, never by a helper."""

    run_id: str
    rank: int
    store: Path
    emit: Emit
    send_now: Callable[[], int | None]
    """Sends every queued event; returns the seq they are all below (None: run finished)."""
    acked_below: Callable[[], int | None]
    """A seq below which the collector acknowledged every event (None without a link)."""
    next_step: Callable[[], int]
    """The step the next `log()` without a step gets (the gradient watcher logs at it)."""
    finished: Callable[[], bool]
    """Whether `finish()` has ended the run (a helper then refuses new work)."""
    deferred: DeferredQueue


@dataclass(slots=True)
class RunEnd:
    """How one run ends when its process does: what the SIGTERM handler (signals.py) and the
    excepthook of `traintape.emitter` may touch of a live run."""

    port: EmitterPort
    finish: Callable[..., object]
    """`finish(status, timeout=...)` of the run."""
    status: str | None = None
    """The status the run ends with when the process exits without `finish()` (None:
    "completed"): "failed" after an uncaught exception, "killed" on SIGTERM or Ctrl-C."""
