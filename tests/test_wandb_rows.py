"""traintape.wandb's rows written through `Emitter._log_checked` (rows.py, emitter/hot.py): the
rows handed over are checked and never changed afterwards, and the rows, steps, summary and
errors stay those of the general path."""

from __future__ import annotations

from typing import Any

from tests.test_wandb_compat import CheckingRecorder, run_differential


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
    handed = 0
    for seed in range(60):
        fast, slow = HandedOverRecorder(), CheckingRecorder()
        run_differential(seed, (fast, slow), by_hand=False)
        assert fast.metrics == slow.metrics and fast.summary == slow.summary, seed
        assert all(row == kept for row, kept in fast.handed), seed
        handed += len(fast.handed)
    assert handed > 500  # most rows of Python numbers went through _log_checked
