"""traintape.wandb's rows written through `Emitter._log_checked` (rows.py, emitter/hot.py): the
rows handed over are checked and never changed afterwards, and the rows, steps, summary and
errors stay those of the general path."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.test_wandb_compat import CheckingRecorder, DictSubclass, _random_call
from traintape.wandb.config import Config
from traintape.wandb.run import Run


class HandedOverRecorder(CheckingRecorder):
    """A CheckingRecorder with the Emitter's `_log_checked`: checks its caller's promise (a dict
    of Python numbers under str names, an int step) and keeps each row it was handed, to check
    later that nothing changed it."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def _log_checked(self, row: dict[str, Any], step: int) -> None:
        assert type(row) is dict and type(step) is int and step >= 0
        assert all(type(v) in (float, int, bool) for v in row.values()), row
        assert all(type(k) is str for k in row), row
        assert all(row is not held for held, _ in self.handed), "a row handed over twice"
        self.log(row, step)  # refuses "" as the Emitter's log does
        self.handed.append((row, dict(row)))


def test_rows_handed_to_log_checked_are_checked_kept_and_the_same_as_the_general_path() -> None:
    """Random W&B calls (steps above, equal to and below the current one, commit=False merges,
    bad values and names, a define_metric midway) give the same rows, summary, step and errors
    when rows go through `_log_checked` as on the general path; every row handed over holds
    Python numbers under str names and is never changed after it was handed over."""
    np = pytest.importorskip("numpy")
    handed = 0
    for seed in range(60):
        rnd = random.Random(seed)
        fast, slow = HandedOverRecorder(), CheckingRecorder()
        runs = [Run(e, "p", "n", f"run{seed}", Config({})) for e in (fast, slow)]
        define_at = rnd.randint(0, 80) if seed % 4 < 2 else -1
        for i in range(60):
            data, step, commit = _random_call(rnd, np, runs[0].step, seed % 2 == 1)
            if i == define_at:
                for run in runs:
                    run.define_metric("b", step_metric="a", summary="max")
            outcomes = []
            for run, as_given in zip(runs, (data, DictSubclass(data))):
                try:
                    run.log(as_given, step, commit)
                    outcomes.append(None)
                except (TypeError, ValueError) as exc:
                    outcomes.append((type(exc), str(exc)))
            assert outcomes[0] == outcomes[1], (seed, i, data, step, commit)
            assert runs[0].step == runs[1].step
            assert runs[0].summary.as_dict() == runs[1].summary.as_dict()
        ends = []
        for run in runs:
            try:
                run.finish()
                ends.append(None)
            except ValueError as exc:
                ends.append(str(exc))
        assert ends[0] == ends[1], seed
        assert fast.metrics == slow.metrics and fast.summary == slow.summary, seed
        assert all(row == kept for row, kept in fast.handed), seed
        handed += len(fast.handed)
    assert handed > 500  # most rows of Python numbers went through _log_checked
