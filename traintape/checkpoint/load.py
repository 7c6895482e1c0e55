"""Resuming: the live checkpoints a store recorded, checked against their sha256, loaded.

    from traintape import CheckpointPolicy, emitter, load_checkpoint

    emitter.init("mnist", checkpoint=CheckpointPolicy(keep_last=3, monitor="val_loss"))
    handle = emitter.save_checkpoint({"model": model.state_dict(), "step": step}, step=step,
                                     metrics={"val_loss": val_loss})
    ...
    state = load_checkpoint("latest")  # checked against the sha256 the store recorded

Writing lives in `traintape.emitter.checkpointing` (a snapshot on the caller's thread, the file
on a background thread); the policy both sides share in `traintape.checkpoint.policy`. This
module is the read side: `load_checkpoint`, `list_checkpoints` (what `traintape checkpoints`
prints). Importing it imports no torch; `load_checkpoint` imports it when called.
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

from traintape.checkpoint.policy import best_index, monitored_value
from traintape.errors import CheckpointError, CheckpointNotFoundError, CheckpointVerifyError

__all__ = [
    "CheckpointFallbackWarning",
    "CheckpointRecord",
    "list_checkpoints",
    "live_checkpoints",
    "load_checkpoint",
    "resolve_run",
    "verify",
]


class CheckpointFallbackWarning(UserWarning):
    """`load_checkpoint(fallback=True)` loaded another checkpoint than the one asked for."""


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
    """A run id from an id, a unique id prefix or a run name (`traintape.read.history.resolve_run`);
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
    from traintape.read.history import resolve_run as resolve_any

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
    from traintape.read.store import connect

    con = connect(store)
    try:
        return live_checkpoints(con, resolve_run(con, run), rank)
    finally:
        con.close()


def _process_rank() -> int:
    from traintape.placement import placement

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
    from traintape.read.store import connect

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
