"""Journal batches -> sink operations, under a sink's rank policy.

One `Projection` per sink. `feed()` takes decoded journal batches in journal order and queues
operations, `take_ops()` hands them over::

    ("open", RunInfo)                  open (or reopen) the run in the backend
    ("write", RunInfo, [Event, ...])   consecutive events of one run

Rank policies:

- `rank0` (default): only rank 0's events; other ranks' batches are not even decoded.
- `all`: every rank's metric values, named `KEY/rankN` when the run has more than one rank;
  text, histogram, artifact and checkpoint events of every rank; params of rank 0.
- `mean`, `min`, `max`: one value per (step, key) across ranks. A step is sent once every rank
  has logged a later step or ended, or once it waited `wait_ranks` seconds of the run's own
  clock (then with the ranks that did report); steps go out in increasing order, and a value
  for a step already sent is dropped and counted in `late_values`. Params, text, histogram,
  artifact and checkpoint events come from rank 0.

A backend that wants increasing steps (`ordered_steps`: W&B) gets each step whole, in step
order: text, histogram and artifact events wait with the step's values (`all`), and with
`late_s` (the sink's `late_events_s`) a step also waits until the run logged for `late_s`
seconds past it, also under `rank0`: an artifact is stored on the emitter's background thread
and its event comes after the values of later steps, yet reaches its own step's row.

A multi-rank run ends in the backend when every rank has sent its `run_end` (failed if any
failed, else killed if any was killed); under `rank0`, with rank 0's `run_end`. `system`
events are not forwarded. The state that must survive a restart (steps waiting for ranks,
which ranks ended) is `state()`, persisted by the runner next to its cursor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from traintape.schemas.events import (
    ARTIFACT,
    CHECKPOINT,
    HISTOGRAM,
    METRICS,
    PARAMS,
    RUN_END,
    RUN_START,
    TEXT,
)
from traintape.schemas.wire import BatchBody, BatchHeader
from traintape.sinks._base import RANK_POLICIES, Event, RunInfo

Op = tuple[Any, ...]


def apply(sink: Any, op: Op) -> None:
    """Hands one operation to a sink: ("open", RunInfo) or (kind, events)."""
    if op[0] == "open":
        sink.open_run(op[1])
    else:
        sink.write(op[1], op[2])


def _mean(values: list[float]) -> float:
    try:
        return math.fsum(values) / len(values)
    except OverflowError:  # fsum refuses sums past the largest double; this gives ±inf
        return sum(values) / len(values)


_REDUCE: dict[str, Callable[[list[float]], float]] = {
    "mean": _mean,
    "min": min,
    "max": max,
}
_FORWARDED = frozenset((PARAMS, TEXT, CHECKPOINT, HISTOGRAM, ARTIFACT))
_STEPPED = frozenset((TEXT, HISTOGRAM, ARTIFACT))
"""Forwarded kinds that go in a step's row: held with the step's values for ordered sinks."""


def merge_status(statuses: list[str]) -> str:
    if "failed" in statuses:
        return "failed"
    if "killed" in statuses:
        return "killed"
    return "completed"


class _Run:
    """What the projection knows of one run."""

    __slots__ = (
        "ended",
        "first_ts",
        "held",
        "info",
        "last_ts",
        "opened",
        "pending",
        "run_id",
        "sent_through",
        "sources",
        "watermark",
    )

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.info: RunInfo | None = None
        self.opened = False  # an open op was issued in this process since the last run_end
        self.ended: dict[int, list[Any]] = {}  # rank -> [status, summary, ts]
        self.watermark: dict[int, int] = {}  # rank -> highest step logged (current attempt)
        self.pending: dict[int, dict[str, dict[int, float]]] = {}  # step -> key -> rank -> value
        self.held: dict[int, list[list[Any]]] = {}  # step -> [kind, rank, ts, body] (ordered)
        self.first_ts: dict[int, list[int]] = {}  # step -> [first ts, last ts]
        self.sent_through = -1
        self.last_ts = 0
        # Emitting processes heard from in this process: a run_start from one of them is the late
        # first batch of an attempt already under way, not a new attempt.
        self.sources: set[str] = set()

    def to_state(self) -> dict[str, Any] | None:
        if not (self.ended or self.pending or self.watermark or self.sent_through >= 0):
            return None
        held = {"held": {str(s): e for s, e in self.held.items()}} if self.held else {}
        return {
            "ended": {str(r): v for r, v in self.ended.items()},
            "watermark": {str(r): s for r, s in self.watermark.items()},
            "pending": {
                str(s): {k: {str(r): v for r, v in ranks.items()} for k, ranks in keys.items()}
                for s, keys in self.pending.items()
            },
            "first_ts": {str(s): t for s, t in self.first_ts.items()},
            "sent_through": self.sent_through,
            "last_ts": self.last_ts,
            **held,
        }

    @classmethod
    def from_state(cls, run_id: str, state: dict[str, Any]) -> _Run:
        run = cls(run_id)
        run.ended = {int(r): v for r, v in state.get("ended", {}).items()}
        run.watermark = {int(r): s for r, s in state.get("watermark", {}).items()}
        run.pending = {
            int(s): {k: {int(r): v for r, v in ranks.items()} for k, ranks in keys.items()}
            for s, keys in state.get("pending", {}).items()
        }
        run.first_ts = {int(s): t for s, t in state.get("first_ts", {}).items()}
        run.held = {int(s): e for s, e in state.get("held", {}).items()}
        run.sent_through = state.get("sent_through", -1)
        run.last_ts = state.get("last_ts", 0)
        return run


class Projection:
    def __init__(
        self,
        policy: str = "rank0",
        *,
        ordered_steps: bool = False,
        wait_ranks: float = 30.0,
        lookup: Callable[[str], RunInfo | None] | None = None,
        late_s: float = 0.0,
    ) -> None:
        if policy not in RANK_POLICIES:
            msg = f"rank policy {policy!r} is not one of {', '.join(RANK_POLICIES)}"
            raise ValueError(msg)
        self.policy = policy
        self.ordered_steps = ordered_steps
        # Values wait for every rank when they are reduced, or when the backend wants increasing
        # steps and several ranks' values (or late artifacts) would otherwise interleave.
        self.align = policy in _REDUCE or (ordered_steps and (policy == "all" or late_s > 0))
        self.hold = ordered_steps and self.align
        self.wait_ns = int(wait_ranks * 1e9)
        self.late_ns = int(late_s * 1e9)
        self.lookup = lookup
        self.runs: dict[str, _Run] = {}
        self.late_values = 0
        self._ops: list[Op] = []

    # -- input -------------------------------------------------------------------------------

    def wants(self, header: BatchHeader) -> bool:
        """False for a batch this policy ignores whole (so the caller need not decode it)."""
        return self.policy != "rank0" or header.rank == 0

    def feed(self, header: BatchHeader, body: BatchBody) -> None:
        if not self.wants(header):
            return
        run = self._run(header.run_id)
        rank = header.rank
        for kind, ts, step, b in zip(body.kinds, body.ts, body.steps, body.bodies):
            if kind == METRICS:
                self._metrics(run, rank, step, ts, b)
            elif kind in _FORWARDED:
                if rank == 0 or (self.policy == "all" and kind != PARAMS):
                    self._forward(run, Event(kind, rank, step, ts, b))
            elif kind == RUN_START:
                self._start(run, rank, ts, b, late=header.source in run.sources)
            elif kind == RUN_END:
                self._end(run, rank, ts, b)
        run.sources.add(header.source)
        if self.align and run.pending:
            self._release(run, force=False)

    def finish(self) -> None:
        """End of input (`traintape sync`): sends every step still waiting for ranks."""
        if self.align:
            for run in self.runs.values():
                if run.pending:
                    self._release(run, force=True)

    def knows(self, run_id: str) -> bool:
        """Whether the run's start (its name, project, config) is known here."""
        run = self.runs.get(run_id)
        return run is not None and run.info is not None

    def take_ops(self) -> list[Op]:
        ops, self._ops = self._ops, []
        return ops

    # -- state -------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        runs = {}
        for run_id, run in self.runs.items():
            s = run.to_state()
            if s is not None:
                runs[run_id] = s
        return {"runs": runs}

    def load_state(self, state: dict[str, Any] | None) -> None:
        for run_id, s in ((state or {}).get("runs") or {}).items():
            self.runs[run_id] = _Run.from_state(run_id, s)

    # -- per kind ----------------------------------------------------------------------------

    def _run(self, run_id: str) -> _Run:
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = _Run(run_id)
        return run

    def _info(self, run: _Run, ts: int) -> RunInfo:
        if run.info is None:
            found = self.lookup(run.run_id) if self.lookup else None
            run.info = found or RunInfo.unknown(run.run_id, ts)
        return run.info

    def _emit(self, run: _Run, event: Event) -> None:
        info = self._info(run, event.ts)
        ops = self._ops
        if not run.opened:
            ops.append(("open", info))
            run.opened = True
        if ops and ops[-1][0] == "write" and ops[-1][1].run_id == run.run_id:
            ops[-1][2].append(event)
        else:
            ops.append(("write", info, [event]))

    def _start(
        self, run: _Run, rank: int, ts: int, body: dict[str, Any], late: bool = False
    ) -> None:
        info = RunInfo.from_run_start(run.run_id, ts, body)
        if late:  # its first batch was journaled after later ones: the same attempt, not a new one
            if rank == 0 or run.info is None:
                run.info = info
            if not run.opened:
                self._ops.append(("open", run.info))
                run.opened = True
            return
        if rank == 0 or run.info is None:
            run.info = info
        run.ended.pop(rank, None)
        if rank in run.watermark:  # a new attempt logs its steps again
            run.watermark[rank] = -1
            if not self.ordered_steps:
                run.sent_through = -1
        if rank == 0 or not run.opened:
            # Opening again for a resumed attempt lets the backend mark the run running.
            self._ops.append(("open", run.info))
            run.opened = True

    def _metrics(self, run: _Run, rank: int, step: int | None, ts: int, body: dict) -> None:
        step = 0 if step is None else step
        # The step sent last can still take values, unless they were reduced (W&B merges them).
        if not self.align or (step == run.sent_through and self.policy not in _REDUCE):
            if self.policy == "all" and self._info(run, ts).world_size > 1:
                body = {f"{k}/rank{rank}": v for k, v in body.items()}
            self._emit(run, Event(METRICS, rank, step, ts, body))
            return
        if step <= run.sent_through:
            self.late_values += len(body)
            return
        slot = self._slot(run, rank, step, ts)
        for key, value in body.items():
            ranks = slot.get(key)
            if ranks is None:
                slot[key] = {rank: value}
            else:
                ranks[rank] = value

    def _slot(self, run: _Run, rank: int, step: int, ts: int) -> dict[str, dict[int, float]]:
        """The values waiting at `step`, made if new; `rank` is known to have reached it."""
        slot = run.pending.get(step)
        if slot is None:
            slot = run.pending[step] = {}
            run.first_ts[step] = [ts, ts]
        else:
            times = run.first_ts[step]
            times[1] = max(times[1], ts)
        if step > run.watermark.get(rank, -1):
            run.watermark[rank] = step
        if ts > run.last_ts:
            run.last_ts = ts
        return slot

    def _forward(self, run: _Run, event: Event) -> None:
        """A text, histogram, artifact, checkpoint or params event: now, or (ordered sinks)
        held with its step's values. One for a step already sent goes now: the sink counts it."""
        step = event.step
        if not self.hold or event.kind not in _STEPPED or step is None or step <= run.sent_through:
            self._emit(run, event)
            return
        self._slot(run, event.rank or 0, step, event.ts)
        run.held.setdefault(step, []).append([event.kind, event.rank, event.ts, event.body])

    def _end(self, run: _Run, rank: int, ts: int, body: dict[str, Any]) -> None:
        status = body.get("status") if isinstance(body.get("status"), str) else "completed"
        summary = body.get("summary") if isinstance(body.get("summary"), dict) else {}
        if self.policy == "rank0":
            if self.align:  # (ordered sinks with late_s) the held steps go first
                if run.pending:
                    self._release(run, force=True)
                run.watermark.clear()
                run.sent_through = -1
            self._emit(run, Event(RUN_END, rank, None, ts, {"status": status, "summary": summary}))
            run.opened = False
            return
        run.ended[rank] = [status, summary, ts]
        world = self._info(run, ts).world_size
        if not all(r in run.ended for r in range(world)):
            return
        if self.align and run.pending:
            self._release(run, force=True)
        ends = [run.ended[r] for r in sorted(run.ended)]
        body = {
            "status": merge_status([e[0] for e in ends]),
            "summary": run.ended.get(0, ends[0])[1],
        }
        self._emit(run, Event(RUN_END, None, None, max(e[2] for e in ends), body))
        run.ended.clear()
        run.watermark.clear()
        run.sent_through = -1  # nothing of an ended run needs to outlive a restart
        run.opened = False

    def _release(self, run: _Run, force: bool) -> None:
        """Sends the pending steps that every rank has passed (or waited long enough)."""
        if force:
            cut = max(run.pending)
        else:
            world = self._info(run, run.last_ts).world_size
            counted = (0,) if self.policy == "rank0" else range(world)
            low = min(math.inf if r in run.ended else run.watermark.get(r, -1) for r in counted)
            deadline = run.last_ts - self.wait_ns
            settled = run.last_ts - self.late_ns  # a late artifact of that step had its time
            times = run.first_ts
            ready = [
                s
                for s in run.pending
                if (s < low and times[s][1] <= settled) or times[s][0] <= deadline
            ]
            if not ready:
                return
            cut = max(ready)
        names = self.policy == "all" and self._info(run, run.last_ts).world_size > 1
        reduce = _REDUCE.get(self.policy)
        for step in sorted(s for s in run.pending if s <= cut):
            slot = run.pending.pop(step)
            ts = run.first_ts.pop(step)[1]
            if reduce is None:
                body = {
                    (f"{k}/rank{r}" if names else k): v
                    for k, ranks in slot.items()
                    for r, v in sorted(ranks.items())
                }
            else:
                body = {k: reduce(list(ranks.values())) for k, ranks in slot.items()}
            if body:  # a step may hold only text, histograms or artifacts
                self._emit(run, Event(METRICS, None, step, ts, body))
            for kind, rank, at, held in run.held.pop(step, ()):
                self._emit(run, Event(kind, rank, step, at, held))
            run.sent_through = step
