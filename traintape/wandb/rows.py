"""`Run.log`: the calls of W&B's `log` made into history rows (traintape.wandb.history), by a
fast path for the common calls and the general path for the others, with the same rows, steps,
summary and errors (tests/test_wandb_compat.py holds the two to that).

The common calls log a dict of Python numbers while no metric is defined. `log` takes the two
commonest itself, with one C-level pass over the values and no Python call in between (a pass
costs a third of `emitter.log`, each call half a pass): a whole row at the next step, and a
new step, which writes the open row and keeps this one open. `_log_numbers` takes the others
(commit=False and the call that ends that row, a repeated step); the general path
(`_log_general`) flattens nested dicts and checks each value.

Rows are written with `Emitter._log_checked` (emitter/hot.py), not `log`: a row is checked (its
values Python numbers, its names str) and copied here when it comes, and a row held open until a
later step would otherwise be checked and copied again when written. Only rows checked here go
there; the emitter still refuses an empty name, and nothing of the call changes then.

Until anything but logging changes the summary (a value set by hand, define_metric, text,
histograms: `_split_last`), the summary's dict is also the last values that define_metric's
x-axes read, so one dict is updated per row, not two.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from traintape.errors import RunFinishedError
from traintape.schemas.limits import MAX_INT64
from traintape.wandb.history import StepHistory, check_step, flatten_row
from traintape.wandb.summary import MetricRules

SCALARS = frozenset((float, int, bool))
STRS = frozenset((str,))


class RunRows:
    """The logging part of `Run` (its base class), over the state `Run.__init__` sets."""

    id: str
    _emitter: Any  # a traintape Emitter; None when disabled
    _history: StepHistory
    _rules: MetricRules
    _finished: bool
    _plain: bool  # no metric defined and the run not finished: the fast path holds
    _open_plain: bool  # the open row of _history holds Python numbers only
    _values: dict[str, Any]  # the summary's values (the Emitter's summary dict)
    _last: dict[str, Any]  # the last values logged (the same dict until _split_last)

    @cached_property
    def _log_row(self) -> Any:
        """The emitter's `_log_checked` (emitter/hot.py) for rows checked here; the `log` of an
        object standing in for an Emitter that has none (a test's recorder)."""
        em = self._emitter
        return getattr(em, "_log_checked", None) or em.log

    def _write(self, step: int, row: dict[str, Any]) -> None:
        raise NotImplementedError  # Run's: text, histograms, media, define_metric's rules

    def log(
        self,
        data: dict[str, Any],
        step: int | None = None,
        commit: bool | None = None,
        sync: bool | None = None,
    ) -> None:
        """W&B's `log`: see traintape.wandb.history for how rows and steps are made."""
        # The two commonest calls are taken here, with no Python call in between (module doc).
        if self._plain and type(data) is dict and {*map(type, data.values())} <= SCALARS:
            history, em = self._history, self._emitter
            if (
                step is None
                and commit is None
                and not history.row
                and em is not None
                and data
                and {*map(type, data)} <= STRS
            ):
                try:  # the emitter refuses an empty name; the copy is handed over
                    self._log_row(data.copy(), history.step)
                except (TypeError, ValueError):
                    pass  # nothing logged: the general path says what W&B's checks say
                else:
                    history.step += 1
                    values = self._values
                    values.update(data)  # the last values: the default summary
                    if self._last is not values:  # as sync_steps remembers the x-axes
                        self._last.update(data)
                    return
            elif (
                type(step) is int
                and commit is None
                and history.step < step <= MAX_INT64
                and self._open_plain
                and {*map(type, data)} <= STRS
            ):
                row, row_step = history.row, history.step  # done: written after the state
                history.row, history.step = data.copy(), step  # changes, as StepHistory.add
                if row:
                    values = self._values
                    values.update(row)
                    if self._last is not values:
                        self._last.update(row)
                    if em is not None:  # checked as it came (_open_plain), and handed over
                        self._log_row(row, row_step)
                return
            elif self._log_numbers(data, step, commit):
                return
        self._log_general(data, step, commit)

    def _log_general(self, data: Any, step: Any, commit: bool | None) -> None:
        self._split_last()  # the summary keeps text, histograms, tensors as it stores them
        if self._finished:
            msg = f"run {self.id} is finished; call traintape.wandb.init() to start another"
            raise RunFinishedError(msg)
        flat = (  # a flat dict of Python numbers (define_metric in use) skips the per-value checks
            type(data) is dict
            and {*map(type, data)} <= STRS
            and {*map(type, data.values())} <= SCALARS
        )
        row = data.copy() if flat else flatten_row(data)
        if step is not None:
            step = check_step(step)
        history = self._history
        self._open_plain = False  # until known again: a write below may raise
        for done_step, done in history.add(row, step, commit):
            self._write(done_step, done)
        # The open row goes to _log_checked later: Python numbers under str names only.
        open_row = history.row
        self._open_plain = {*map(type, open_row.values())} <= SCALARS and {
            *map(type, open_row)
        } <= STRS

    def _log_numbers(self, data: dict[str, Any], step: Any, commit: bool | None) -> bool:
        """The other calls of Python numbers while no metric is defined, with the rows and
        steps `StepHistory.add` makes; False (nothing done) for what the general path takes:
        a step below the current one or not an int, an open row holding text or histograms,
        names the emitter refuses (the general path says why)."""
        history = self._history
        if not self._open_plain:
            return False
        em, row = self._emitter, history.row
        if step is None and commit is not False and em is not None and (row or data):
            # This call completes the row (commit=False's usual end): the emitter refuses an
            # empty name, and nothing changes then; other names are checked here.
            if not {*map(type, data)} <= STRS:
                return False
            row = {**row, **data}
            try:
                self._log_row(row, history.step)
            except (TypeError, ValueError):
                return False
            history.row = {}
            history.step += 1
            values = self._values
            values.update(row)
            if self._last is not values:
                self._last.update(row)
            return True
        if not {*map(type, data)} <= STRS:
            return False
        if step is not None:
            if type(step) is not int or not history.step <= step <= MAX_INT64:
                return False
            if step > history.step:  # the open row is done; this one opens
                done = [(history.step, history.row)] if history.row else []
                history.row, history.step = data.copy(), step
                if commit:
                    done.append(history.commit())
                for row_step, row in done:  # after the state changes, as StepHistory.add
                    self._write_numbers(row_step, row)
                return True
        if history.row:
            history.row.update(data)
        else:
            history.row = data.copy()
        if commit or (commit is None and step is None):
            self._write_numbers(*history.commit())
        return True

    def _write_numbers(self, step: int, row: dict[str, Any]) -> None:
        """`_write` of a row of Python numbers when no metric is defined: the same effect."""
        values = self._values
        values.update(row)  # the last values: the default summary
        if self._last is not values:  # as sync_steps remembers the x-axes
            self._last.update(row)
        if self._emitter is not None and row:
            self._log_row(row, step)  # checked as it came, and handed over

    def _split_last(self) -> None:
        """The summary may differ from the last values logged from now on: a dict for each."""
        if self._last is self._values:
            self._last = self._rules.last = dict(self._values)
