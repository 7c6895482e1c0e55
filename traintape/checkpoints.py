"""Checkpoints: the policy a run saves under, what a save returns, retention, and resuming.

    from traintape import CheckpointPolicy, emitter, load_checkpoint

    emitter.init("mnist", checkpoint=CheckpointPolicy(keep_last=3, monitor="val_loss"))
    handle = emitter.save_checkpoint({"model": model.state_dict(), "step": step}, step=step,
                                     metrics={"val_loss": val_loss})
    ...
    state = load_checkpoint("latest")  # checked against the sha256 the store recorded

Writing lives in `traintape.emitter.checkpoint` (a snapshot on the caller's thread, the file on a
background thread). This module holds what the writer and the readers share, and the read side:
`load_checkpoint`, `list_checkpoints` (what `traintape checkpoints` prints). Importing it imports
no torch; `load_checkpoint` imports it when called.

Which records are live: the store's `checkpoints` view holds one row per checkpoint event
(action `saved`, `deleted` or `failed`). A path is live when its newest event is `saved`. "latest"
is the live checkpoint saved last; "best" is the live one with the best value of the metric the
policy monitored (ties: the earlier one, as it was the best first).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from traintape.errors import CheckpointError, CheckpointNotFoundError, CheckpointVerifyError

__all__ = [
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointPolicy",
    "CheckpointRecord",
    "CheckpointVerifyError",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_run",
    "select_for_deletion",
]

DEFAULT_FILENAME = "step-{step:08d}"
MODES = ("min", "max")
RANKS = ("zero", "all")


class CheckpointFallbackWarning(UserWarning):
    """`load_checkpoint(fallback=True)` loaded another checkpoint than the one asked for."""


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


# -- the read side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointRecord:
    """One live checkpoint as the store recorded it."""

    run_id: str
    rank: int
    step: int
    path: Path
    bytes: int
    sha256: str
    metrics: dict[str, Any]
    ts: datetime
    monitor: str | None
    mode: str
    attempt: int | None
    latest: bool = False
    best: bool = False
    monitor_value: float | None = field(default=None, compare=False)


_RECORD_SQL = """
SELECT run_id, rank, step, ts, path, action, bytes, sha256, metrics, monitor, mode, attempt
FROM checkpoints WHERE run_id = ? AND action IN ('saved', 'deleted') AND path IS NOT NULL
ORDER BY ts, seq
"""


def _json_metrics(text: Any) -> dict[str, Any]:
    if text is None:
        return {}
    value = json.loads(text) if isinstance(text, str) else text
    if not isinstance(value, dict):
        return {}
    special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    return {k: special.get(v, v) if isinstance(v, str) else v for k, v in value.items()}


def live_checkpoints(con: Any, run_id: str, rank: int | None) -> list[CheckpointRecord]:
    """Live checkpoints of a run (of one rank, or all when None), oldest save first."""
    live: dict[str, CheckpointRecord] = {}
    for row in con.execute(_RECORD_SQL, [run_id]).fetchall():
        run, r, step, ts, path, action, size, sha, metrics, monitor, mode, attempt = row
        if action == "deleted":
            live.pop(path, None)
            continue
        if rank is not None and r != rank:
            continue
        live.pop(path, None)  # a name reused after a deletion: the newer save is the live one
        live[path] = CheckpointRecord(
            run_id=run,
            rank=r,
            step=step,
            path=Path(path),
            bytes=int(size or 0),
            sha256=sha or "",
            metrics=_json_metrics(metrics),
            ts=ts,
            monitor=monitor,
            mode=mode or "min",
            attempt=attempt,
        )
    records = list(live.values())
    if not records:
        return records
    monitor = next((r.monitor for r in reversed(records) if r.monitor), None)
    mode = next((r.mode for r in reversed(records) if r.monitor), "min")
    values = [monitored_value(r.metrics, monitor) for r in records]
    best = best_index(values, mode)
    return [
        replace(
            rec,
            latest=i == len(records) - 1,
            best=i == best,
            monitor_value=values[i],
            monitor=monitor,
            mode=mode,
        )
        for i, rec in enumerate(records)
    ]


def resolve_run(con: Any, run: str | None) -> str:
    """A run id from an id, a unique id prefix or a run name (`traintape.history.resolve_run`);
    None: the run that saved the most recent checkpoint."""
    if run is None:
        row = con.execute(
            "SELECT run_id FROM checkpoints WHERE action = 'saved' ORDER BY ts DESC LIMIT 1"
        ).fetchone()
        if row is None:
            msg = "no checkpoint in this store: save one with emitter.save_checkpoint()"
            raise CheckpointNotFoundError(msg)
        return str(row[0])
    from traintape.errors import AmbiguousRunError, RunNotFoundError
    from traintape.history import resolve_run as resolve_any

    try:
        return resolve_any(con, run)
    except RunNotFoundError as exc:
        raise CheckpointNotFoundError(str(exc)) from None
    except AmbiguousRunError as exc:
        raise CheckpointError(str(exc)) from None


def list_checkpoints(
    store: str | os.PathLike[str] | None = None, run: str | None = None, rank: int | None = None
) -> list[CheckpointRecord]:
    """The live checkpoints of `run` (see `resolve_run`), oldest first, with `latest`/`best` set.

    `rank=None` lists every rank's files; latest and best are then those of the whole run.
    """
    from traintape.store import connect

    con = connect(store)
    try:
        return live_checkpoints(con, resolve_run(con, run), rank)
    finally:
        con.close()


def _process_rank() -> int:
    from traintape.emitter.environment import placement

    return placement().rank


def verify(record: CheckpointRecord) -> str | None:
    """None when the file is there with the recorded size and sha256, else what is wrong."""
    try:
        size = record.path.stat().st_size
    except FileNotFoundError:
        return f"{record.path} (step {record.step}) is missing"
    if size != record.bytes:
        return f"{record.path} (step {record.step}) has {size} bytes, the store recorded {record.bytes}"
    digest = hashlib.sha256()
    with open(record.path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    if digest.hexdigest() != record.sha256:
        return (
            f"{record.path} (step {record.step}) has sha256 {digest.hexdigest()}, "
            f"the store recorded {record.sha256}"
        )
    return None


def load_checkpoint(
    which: str | os.PathLike[str] = "latest",
    store: str | os.PathLike[str] | None = None,
    run: str | None = None,
    map_location: Any = "cpu",
    *,
    fallback: bool = False,
    rank: int | None = None,
    weights_only: bool = False,
) -> Any:
    """The state saved by `save_checkpoint`, after checking the file against the store's record.

    which         "latest", "best" (by the metric the policy monitored) or a checkpoint's path.
    store         default: $TRAINTAPE_STORE, else ./traintape-store.
    run           run id, unique id prefix or run name; default: the run that saved the most
                  recent checkpoint (with a path: the run that recorded that path).
    map_location  passed to torch.load ("cpu" by default, so a GPU checkpoint loads anywhere).
    fallback      when the checkpoint is missing or does not verify, load the newest one of the
                  run that does, and say which in a CheckpointFallbackWarning.
    rank          whose files, for a run saved with `ranks="all"`; default: this process's rank
                  when that rank wrote checkpoints, else rank 0.
    weights_only  passed to torch.load. False by default: a checkpoint holds optimizer and RNG
                  state (numpy arrays, tuples), and the file was written by this run and matches
                  the sha256 recorded at that time. Set True for files from elsewhere.

    Raises CheckpointNotFoundError (no record, or the file is gone) or CheckpointVerifyError (size
    or sha256 differ) unless `fallback` finds another that verifies.
    """
    from traintape.store import connect

    con = connect(store)
    try:
        if isinstance(which, str) and which in ("latest", "best"):
            run_id = resolve_run(con, run)
            records = live_checkpoints(con, run_id, _pick_rank(con, run_id, rank))
            wanted = _named(records, which, run_id)
        else:
            path = Path(which).expanduser().resolve()
            run_id = resolve_run(con, run) if run is not None else _run_of_path(con, path)
            records = live_checkpoints(con, run_id, None)
            found = next((r for r in records if r.path == path), None)
            if found is None:
                msg = f"the store has no live checkpoint at {path} (run {run_id})"
                if not fallback:
                    raise CheckpointNotFoundError(msg)
                records = [r for r in records if r.rank == _pick_rank(con, run_id, rank)]
                return _load_newest(records, msg, map_location, weights_only, run_id)
            wanted = found
    finally:
        con.close()
    problem = verify(wanted)
    if problem is None:
        return _torch_load(wanted.path, map_location, weights_only)
    if not fallback:
        kind = CheckpointNotFoundError if not wanted.path.exists() else CheckpointVerifyError
        msg = f"{problem}; pass fallback=True to load the newest checkpoint that verifies"
        raise kind(msg)
    others = [r for r in records if r.path != wanted.path and r.rank == wanted.rank]
    return _load_newest(others, problem, map_location, weights_only, run_id)


def _pick_rank(con: Any, run_id: str, rank: int | None) -> int:
    if rank is not None:
        return rank
    mine = _process_rank()
    if mine == 0:
        return 0
    row = con.execute(
        "SELECT count(*) FROM checkpoints WHERE run_id = ? AND rank = ? AND action = 'saved'",
        [run_id, mine],
    ).fetchone()
    return mine if row and row[0] else 0


def _named(records: list[CheckpointRecord], which: str, run_id: str) -> CheckpointRecord:
    if not records:
        msg = f"run {run_id} has no checkpoint on record"
        raise CheckpointNotFoundError(msg)
    if which == "latest":
        return records[-1]
    best = next((r for r in records if r.best), None)
    if best is None:
        msg = (
            f"run {run_id} has no checkpoint with a monitored metric: save with "
            "CheckpointPolicy(monitor=...) and metrics={...}, or load 'latest'"
        )
        raise CheckpointNotFoundError(msg)
    return best


def _run_of_path(con: Any, path: Path) -> str:
    row = con.execute(
        "SELECT run_id FROM checkpoints WHERE path = ? AND action = 'saved' ORDER BY ts DESC",
        [str(path)],
    ).fetchone()
    if row is None:
        msg = (
            f"the store has no record of a checkpoint at {path}, so it cannot be verified; "
            "load it with torch.load() if you trust it"
        )
        raise CheckpointNotFoundError(msg)
    return str(row[0])


def _load_newest(
    records: list[CheckpointRecord], problem: str, map_location: Any, weights_only: bool, run: str
) -> Any:
    problems = [problem]
    for rec in reversed(records):
        issue = verify(rec)
        if issue is not None:
            problems.append(issue)
            continue
        state = _torch_load(rec.path, map_location, weights_only)
        note = f"traintape: {problem}; loaded {rec.path} (step {rec.step}) instead"
        warnings.warn(CheckpointFallbackWarning(note), stacklevel=3)
        return state
    msg = f"no checkpoint of run {run} verifies: " + "; ".join(problems)
    raise CheckpointError(msg)


def _torch_load(path: Path, map_location: Any, weights_only: bool) -> Any:
    import torch

    return torch.load(path, map_location=map_location, weights_only=weights_only)
