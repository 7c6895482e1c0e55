"""The hot path of `Emitter.log`, made once per process (`hot_log`).

What it reads on every call (the clock, the type sets, the step bound) is bound as closure cells
(read as fast as locals), not as default arguments a caller could see or pass. A call whose
values are all int, float or bool under non-empty str names takes the fast path: one C-level
pass over the types, a copy, an append. Anything else (numpy scalars, tensors, an empty name, an
empty dict, a wrong type) goes through `take_tensors`, which checks and converts, or raises;
media values (`traintape.Image`, `Table`, `Text`) are split off first (media.py).
`hot_log_checked` makes `Emitter._log_checked`, `log`'s end alone, for rows that traintape.wandb
has checked and copied already (a row held open until a later step is written then).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sized
from typing import Any, Protocol

from traintape.emitter.checks import Event, check_step
from traintape.emitter.deferred import take_tensors
from traintape.emitter.helpers import RunHelpers
from traintape.emitter.media import MEDIA_TYPES, log_media
from traintape.emitter.outbox import Outbox
from traintape.emitter.port import DeferredQueue
from traintape.schemas.events import METRICS
from traintape.schemas.limits import MAX_INT64


class Logging(Protocol):
    """What `log` reads and sets of the Emitter it is a method of."""

    _step: int
    _deferred: DeferredQueue
    _deferred_queue: Sized
    _pending: deque[Event]
    _batch_size: int
    _outbox: Outbox
    _helpers: RunHelpers
    _ending: bool

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...

    def log_text(self, key: str, text: str, step: int | None = None) -> None: ...


def hot_log() -> Callable[..., None]:
    """Makes `Emitter.log`."""
    now = time.time_ns
    scalars = frozenset((float, int, bool))
    strs = frozenset((str,))
    type_ = type
    max_step = MAX_INT64
    media_types = MEDIA_TYPES

    def log(self: Logging, metrics: dict[str, Any], step: int | None = None) -> None:
        """Records metric values (int, float, bool, numpy scalars or one-element tensors) at
        `step`.

        Without `step`, the step after the last one logged is used (0 first), as W&B does.
        Raises TypeError naming the key if any value is not a number, ValueError for an empty
        name; nothing of that call is logged then. NaN and ±Inf are kept. An empty dict logs
        nothing (and takes its step, as a call with values would). `traintape.Image`, `Table`
        and `Text` values are stored too, at the same step: copied here, encoded and stored off
        this thread (emitter/media.py).
        """
        try:
            fast = scalars.issuperset(map(type_, metrics.values())) and strs.issuperset(
                map(type_, metrics)
            )
        except AttributeError:
            fast = False
        if step is None:
            step = self._step
        elif type_(step) is not int or not 0 <= step <= max_step:
            step = check_step(step)
        # An empty dict, or an empty name (a dict's own lookup of ""), takes the slow path.
        if fast and metrics and "" not in metrics:
            metrics = metrics.copy()
        else:
            if isinstance(metrics, dict) and (
                not media_types.isdisjoint(map(type_, metrics.values()))
                or list in map(type_, metrics.values())  # a list of images, maybe
            ):
                metrics = log_media(  # queues Image, Table, Text, lists of them
                    metrics, step, now(), self._deferred, self._helpers, self.log_text
                )
            else:
                metrics = take_tensors(self._deferred, metrics, step, now())
            if not metrics:
                self._step = step + 1
                return
        self._step = step + 1
        # Behind GPU values of earlier calls, to keep the order of the calls (log_text too; not
        # checkpoint events, whose seq the writer takes at once to wait for their ack).
        if self._deferred_queue and self._deferred.add_ready(now(), step, METRICS, metrics):
            return
        pending = self._pending
        pending.append((METRICS, now(), step, metrics))
        if len(pending) >= self._batch_size:
            self._outbox.flush(False)

    return log


def hot_log_checked() -> Callable[..., None]:
    """Makes `Emitter._log_checked`: `log(row, step)` of a row traintape's own code has checked.

    traintape.wandb (rows.py) copies and type-checks a row of W&B's `log(row, step=s)` when it
    comes, and writes it only when a later step arrives; `log` would check and copy it a second
    time. The caller guarantees what `log`'s fast path tests: `row` is a dict of int, float or
    bool values under str names (the type, not a subclass), handed over (nothing changes it
    afterwards), and `step` an int in 0..MAX_INT64. What it need not check goes through `log`
    itself: an empty row, an empty name (refused there), a run whose `finish()` began (`log` is
    then the method that raises). Never for values from outside traintape: nothing here checks
    them before they reach the journal.
    """
    now = time.time_ns

    def log_checked(self: Logging, row: dict[str, Any], step: int) -> None:
        if not row or "" in row or self._ending:
            self.log(row, step)
            return
        # From here as `log`'s end (kept in step with it): the step, the order behind the
        # deferred values, the batch.
        self._step = step + 1
        if self._deferred_queue and self._deferred.add_ready(now(), step, METRICS, row):
            return
        pending = self._pending
        pending.append((METRICS, now(), step, row))
        if len(pending) >= self._batch_size:
            self._outbox.flush(False)

    return log_checked
