"""Checkpoint policy: what a run saves under, what a save returns, and what retention keeps.

Shared by the writer (`traintape.emitter.checkpointing`) and the readers
(`traintape.checkpoint.load`); it imports neither, nor torch.

Which records are live: the store's `checkpoints` view holds one row per checkpoint event
(action `saved`, `deleted` or `failed`). A path is live when its newest event is `saved`. "latest"
is the live checkpoint saved last; "best" is the live one with the best value of the metric the
policy monitored (ties: the earlier one, as it was the best first).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_FILENAME",
    "MODES",
    "RANKS",
    "CheckpointInfo",
    "CheckpointPolicy",
    "best_index",
    "monitored_value",
    "select_for_deletion",
]

DEFAULT_FILENAME = "step-{step:08d}"
MODES = ("min", "max")
RANKS = ("zero", "all")


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and how a run's checkpoints are kept; pass it as `init(..., checkpoint=...)`.

    dir        folder for the files; default `<store>/checkpoints/<run_id>`.
    keep_last  keep the N newest checkpoints (None: keep every checkpoint, as the HF Trainer's
               `save_total_limit=None` does).
    keep_best  also keep the K best by `monitor` (default: 1 when `monitor` is set, else 0).
               The newest and the best are never deleted, whatever N and K are.
    monitor    the metric passed to `save_checkpoint(metrics=...)` that ranks checkpoints.
    mode       "min" (a loss) or "max" (an accuracy).
    ranks      "zero": only rank 0 writes (other ranks get a handle that is already done, with no
               file), as for DDP where every rank holds the same state; "all": every rank writes
               its own file (`<name>.rank<R>.pt`), for sharded state.
    filename   name template without suffix; fields: step, rank, and any metric name
               (`"{step}-{val_loss:.3f}"`). A name that exists already gets `-v1`, `-v2`, ...:
               a file is never overwritten, so a path in the store always means one content.
    snapshots  CPU snapshots kept (each a full copy of the state, reused from save to save): with
               2, one is being written while the next waits; a save that finds all of them busy
               waits until the oldest write ends.
    """

    dir: str | os.PathLike[str] | None = None
    keep_last: int | None = None
    keep_best: int | None = None
    monitor: str | None = None
    mode: str = "min"
    ranks: str = "zero"
    filename: str = DEFAULT_FILENAME
    snapshots: int = 2

    def __post_init__(self) -> None:
        if self.keep_last is not None and (type(self.keep_last) is not int or self.keep_last < 1):
            msg = f"keep_last must be an int >= 1 or None (keep all), got {self.keep_last!r}"
            raise ValueError(msg)
        if self.keep_best is not None and (type(self.keep_best) is not int or self.keep_best < 0):
            msg = f"keep_best must be an int >= 0 or None, got {self.keep_best!r}"
            raise ValueError(msg)
        if self.keep_best and self.monitor is None:
            msg = "keep_best needs monitor= (the metric that ranks checkpoints)"
            raise ValueError(msg)
        if self.mode not in MODES:
            msg = f"mode must be 'min' or 'max', got {self.mode!r}"
            raise ValueError(msg)
        if self.ranks not in RANKS:
            msg = f"ranks must be 'zero' (rank 0 writes) or 'all' (every rank), got {self.ranks!r}"
            raise ValueError(msg)
        if type(self.snapshots) is not int or self.snapshots < 1:
            msg = f"snapshots must be an int >= 1, got {self.snapshots!r}"
            raise ValueError(msg)
        try:
            self.filename.format_map(_TemplateProbe(step=0, rank=0))
        except (ValueError, IndexError, AttributeError) as exc:
            msg = f"filename template {self.filename!r} is not valid: {exc}"
            raise ValueError(msg) from None

    @property
    def best_to_keep(self) -> int:
        if self.keep_best is not None:
            return self.keep_best
        return 1 if self.monitor is not None else 0


class _TemplateProbe(dict):  # type: ignore[type-arg]
    """Checks a filename template at construction: unknown fields are metrics, known later."""

    def __missing__(self, key: str) -> float:
        return 0.0


@dataclass(frozen=True)
class CheckpointInfo:
    """What one save wrote; `handle.result()` returns it. `path` is None on a rank that does not
    write (with `ranks="zero"`, every rank but 0)."""

    path: Path | None
    step: int
    bytes: int
    sha256: str | None
    metrics: dict[str, Any]
    blocked_s: float
    write_s: float
    is_best: bool
    rank: int = 0


def monitored_value(metrics: dict[str, Any] | None, monitor: str | None) -> float | None:
    """The monitored metric as a float, or None when it is absent or NaN (never the best)."""
    if not monitor or not metrics or monitor not in metrics:
        return None
    try:
        value = float(metrics[monitor])
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def best_index(values: list[float | None], mode: str) -> int | None:
    """Index of the best value (the earliest on ties), or None when no value is set."""
    best: int | None = None
    for i, value in enumerate(values):
        if value is None:
            continue
        if best is None:
            best = i
            continue
        current = values[best]
        assert current is not None
        if (value < current) if mode == "min" else (value > current):
            best = i
    return best


def select_for_deletion(
    values: list[float | None], keep_last: int | None, keep_best: int, mode: str
) -> list[int]:
    """Indices (of checkpoints listed oldest first, by monitored value) retention deletes.

    Keeps the `keep_last` newest, the `keep_best` best (the earlier on ties), and always the
    newest and the best. `keep_last=None` keeps everything.
    """
    n = len(values)
    if keep_last is None or n == 0:
        return []
    keep = set(range(max(0, n - keep_last), n))
    keep.add(n - 1)
    scored = [i for i, v in enumerate(values) if v is not None]
    sign = 1.0 if mode == "min" else -1.0
    scored.sort(key=lambda i: (sign * values[i], i))  # type: ignore[operator]
    keep.update(scored[: max(keep_best, 1)])
    return [i for i in range(n) if i not in keep]
