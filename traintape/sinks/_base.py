"""The sink interface: what a backend implements to receive a projection of the journal.

A sink is driven by one thread (the collector's `SinkRunner`, or `traintape sync`), never by
several at once, so implementations need no locks. The calls, in order::

    restore(checkpoint)            once, before anything else, with what flush() last returned
    open_run(run)                  before the first events of a run (again for a resumed attempt)
    write(run, events)             a batch of one run's events, in journal order
    flush() -> checkpoint | None   make everything written so far the backend's; the runner then
                                   persists its cursor (and the checkpoint) next to it
    close()                        at shutdown

Any call may raise: the runner retries the same batch later, with exponential backoff, so a
sink must accept a batch again after a failure, without duplicating what already arrived (see
each backend's module for how it does that). `SinkRejected` says a batch can never be written
(the runner logs it and moves on); everything else is taken as transient.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from traintape.errors import MissingBackendError
from traintape.schemas.values import flatten  # noqa: F401  (the sinks flatten params alike)


class Event(NamedTuple):
    """One event as a sink sees it, after the rank policy.

    `kind` is a `traintape.schemas.events` code (METRICS, PARAMS, TEXT, HISTOGRAM, CHECKPOINT,
    RUN_END; a sink ignores the kinds its backend has no place for);
    `rank` is None for a value reduced across ranks (`mean`, `min`, `max`); `ts` is wall-clock
    ns as the emitter stamped it; `body` is the event body (for METRICS, {name: float}).
    """

    kind: int
    rank: int | None
    step: int | None
    ts: int
    body: dict[str, Any]


@dataclass(frozen=True)
class RunInfo:
    """A run as its `run_start` event described it."""

    run_id: str
    project: str
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    started_ns: int = 0

    @classmethod
    def from_run_start(cls, run_id: str, ts: int, body: Mapping[str, Any]) -> RunInfo:
        env = body.get("environment")
        world = body.get("world_size")
        return cls(
            run_id=run_id,
            project=str(body.get("project") or "traintape"),
            name=str(body.get("name") or run_id),
            config=dict(body.get("config") or {}),
            tags=tuple(str(t) for t in body.get("tags") or ()),
            environment=dict(env) if isinstance(env, Mapping) else {},
            world_size=world if type(world) is int and world > 0 else 1,
            started_ns=ts,
        )

    @classmethod
    def unknown(cls, run_id: str, ts: int = 0) -> RunInfo:
        """For events whose run_start is nowhere in the journal (it should not happen)."""
        return cls(run_id=run_id, project="traintape", name=run_id, started_ns=ts)


@dataclass(frozen=True)
class Option:
    """One configuration option of a sink: its type, default and a line of help."""

    type: type
    default: Any
    help: str


RUNNER_OPTIONS: dict[str, Option] = {
    "ranks": Option(str, "rank0", "rank0, all, mean, min or max: which ranks' values to send"),
    "batch_events": Option(
        int, None, "events per batch at most, between cursor saves (default: the sink's own)"
    ),
    "interval": Option(float, 0.5, "seconds between polls of the journal when caught up"),
    "retry_initial": Option(float, 0.5, "first retry delay after a failure, seconds"),
    "retry_max": Option(float, 30.0, "longest retry delay, seconds (the delay doubles up to it)"),
    "wait_ranks": Option(
        float, 30.0, "mean/min/max/all: seconds a step waits for slow ranks before it is sent"
    ),
    "drain_timeout": Option(
        float, 10.0, "at shutdown, seconds the sink may take to catch up before it stops"
    ),
}
"""Options every sink takes; the runner, not the sink, uses them."""

RANK_POLICIES = ("rank0", "all", "mean", "min", "max")


class Sink:
    """Base class of the backends. Subclasses set the class attributes and override the calls."""

    type: ClassVar[str] = ""
    """The name used in `--sink TYPE[=VALUE]` and in the YAML file."""
    module: ClassVar[str | None] = None
    """The package the backend needs, imported lazily; None when it needs nothing."""
    extra: ClassVar[str | None] = None
    """The `pip install traintape[EXTRA]` that installs `module`."""
    value_option: ClassVar[str | None] = None
    """The option that `--sink TYPE=VALUE` sets."""
    options: ClassVar[dict[str, Option]] = {}
    """Backend options, beyond RUNNER_OPTIONS."""
    batch_events: ClassVar[int] = 20_000
    """Events per batch unless configured: a batch is what a failure makes the runner send
    again, and what must pass before the cursor (and the lag) moves."""
    ordered_steps: ClassVar[bool] = False
    """True when the backend drops a value whose step is below one it already has (W&B): the
    runner then holds multi-rank values back until every rank has passed the step."""
    late_events_s: ClassVar[float] = 0.0
    """With `ordered_steps`: seconds of the run's own clock a step waits for events that come
    late (artifacts, stored off the caller), so they still reach their step (projection.py)."""

    def __init__(self, name: str, options: Mapping[str, Any], store: Path, *, replay: bool = False):
        """`replay` is True under `traintape sync`: the run is written again from its start, so
        the backend's earlier copy is replaced or completed, never duplicated."""
        self.name = name
        self.store = store
        self.replay = replay
        self.config = {k: options.get(k, o.default) for k, o in self.options.items()}

    @classmethod
    def check_available(cls) -> None:
        """Raises MissingBackendError when the backend's package is not importable."""
        if cls.module and importlib.util.find_spec(cls.module) is None:
            msg = (
                f"the {cls.type} sink needs the {cls.module!r} package: "
                f"pip install traintape[{cls.extra or cls.module}]"
            )
            raise MissingBackendError(msg)

    def restore(self, checkpoint: Any) -> None:
        """Undo or reconcile what was written after the last flush (the collector stopped)."""

    def open_run(self, run: RunInfo) -> None:
        raise NotImplementedError

    def write(self, run: RunInfo, events: Sequence[Event]) -> None:
        raise NotImplementedError

    def flush(self) -> Any:
        """Returns a JSON-able checkpoint stored with the cursor, or None."""
        return None

    def close(self) -> None:
        self.flush()

    def stats(self) -> dict[str, Any]:
        """Backend counters shown by `traintape status` (values dropped, truncated, ...)."""
        return {}


def safe_name(text: str) -> str:
    """A string as one path component."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text).strip(".") or "_"


def histogram_bins(event: Event) -> tuple[str, list[float], list[float]] | None:
    """(tag, counts, edges) of a histogram event, `len(edges) == len(counts) + 1`, equal-width
    bins from its min to its max (as `watch(histograms=True)` counted them); the tag gets
    `/rank<N>` for ranks other than 0. None for a histogram without a finite value or counts."""
    body = event.body
    try:
        lo, hi = float(body["min"]), float(body["max"])
        counts = [float(c) for c in body["counts"]]
    except (KeyError, TypeError, ValueError):
        return None
    if not counts or not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        return None
    width = (hi - lo) / len(counts)
    edges = [lo + i * width for i in range(len(counts))] + [hi]
    tag = str(body.get("key") or "histogram")
    if event.rank not in (None, 0):
        tag = f"{tag}/rank{event.rank}"
    return tag, counts, edges
