"""Ingest validation: every field's range and every body's shape, before anything is acknowledged.

What the journal holds must be storable by every later stage (Parquet's int64 and int32 columns,
run folders named by run id, JSON bodies the views parse, the sinks), so a record that would fail
one of them is set aside here, with a reason, instead of poisoning everything behind it.

Two levels:

* `check_header`: the batch's identity (run id, rank, source, seq range). A bad header
  rejects the whole batch: there is no run to put its events in.
* `bad_events`: per event (ts, step, body shape by kind, nesting depth, value types). The good
  events of a batch are journaled; the bad ones are dead-lettered one by one with their reason.

A batch of metrics only (the bulk of all traffic) is checked with C-level passes over whole
columns (min/max, type sets), never a Python loop per value; events of the other kinds are rare
and are walked one by one, iteratively, so a deep body cannot raise RecursionError.
"""

from __future__ import annotations

import re
from itertools import chain
from typing import Any

from traintape.schemas.events import (
    ARTIFACT,
    CHECKPOINT,
    HISTOGRAM,
    LIVENESS_STATUSES,
    METRICS,
    PARAMS,
    RUN_END,
    RUN_START,
    RUN_STATUS,
    SYSTEM,
    TEXT,
)
from traintape.schemas.limits import (
    MAX_INT64,
    MAX_RANK,
    MAX_SOURCE_CHARS,
    RUN_ID_PATTERN,
    valid_run_id,
)
from traintape.schemas.shape import MIN_INT64, artifact_problem, body_problem
from traintape.schemas.wire import BatchBody, BatchHeader, WireError, encode_body, encode_header

_SOURCE_PATTERN = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_SOURCE_CHARS}}}")
_NUMBER = frozenset((int, float, bool))
_REAL = frozenset((int, float))
_STR = frozenset((str,))


def check_header(h: BatchHeader, run_id_pattern: bool = True) -> str | None:
    """Why a batch's header cannot be stored, or None if it can. Without `run_id_pattern`
    (the materializer, on a journal written before ingest checked ids) any run id goes: the
    materializer maps it to a safe folder name."""
    if run_id_pattern and not valid_run_id(h.run_id):
        return (
            f"run id {h.run_id[:80]!r} (length {len(h.run_id)}) does not match "
            f"{RUN_ID_PATTERN.pattern}"
        )
    if not 0 <= h.rank <= MAX_RANK:
        return f"rank {h.rank} is out of range 0..{MAX_RANK}"
    if _SOURCE_PATTERN.fullmatch(h.source) is None:
        return f"source {h.source[:80]!r} is not 1..{MAX_SOURCE_CHARS} of [A-Za-z0-9._-]"
    if h.seq0 + h.n - 1 > MAX_INT64:
        return f"seq range {h.seq0}+{h.n} passes {MAX_INT64}"
    return None


def bad_events(body: BatchBody) -> dict[int, str]:
    """{index: reason} of the events of a batch that cannot be stored (empty: all good)."""
    bad: dict[int, str] = {}
    _check_ints(body.ts, "timestamp", False, bad)
    _check_ints(body.steps, "step", True, bad)
    kinds = body.kinds
    bodies = body.bodies
    if METRICS in kinds and kinds.count(METRICS) == len(kinds):
        if not _metrics_ok(bodies):  # something is off: find which events, one by one
            for i, b in enumerate(bodies):
                reason = _metrics_reason(b)
                if reason is not None:
                    bad.setdefault(i, reason)
        return bad
    for i, (kind, b) in enumerate(zip(kinds, bodies)):
        if i in bad:
            continue
        reason = _metrics_reason(b) if kind == METRICS else _other_reason(kind, b)
        if reason is not None:
            bad[i] = reason
    return bad


def _check_ints(col: list[Any], name: str, nullable: bool, bad: dict[int, str]) -> None:
    """Every int of `col` in 0..MAX_INT64 (types were checked by decode_body)."""
    try:
        lo, hi = min(col), max(col)  # C-level; TypeError when None is among ints
    except TypeError:
        present = [v for v in col if v is not None]
        if not present:
            return
        lo, hi = min(present), max(present)
    except ValueError:  # empty
        return
    if lo is None or (lo >= 0 and hi <= MAX_INT64):
        return
    for i, v in enumerate(col):
        if v is None:
            if not nullable:
                bad.setdefault(i, f"{name} is missing")
        elif not 0 <= v <= MAX_INT64:
            bad.setdefault(i, f"{name} {v} is out of range 0..{MAX_INT64}")


def _metrics_ok(bodies: list[dict[str, Any]]) -> bool:
    """The whole column at once: str names, number values, ints within int64."""
    if not _STR.issuperset(map(type, chain.from_iterable(bodies))):
        return False
    types = set(map(type, chain.from_iterable(map(dict.values, bodies))))
    if not _NUMBER.issuperset(types):
        return False
    if int in types:  # rare: only then a second pass, for the int64 range
        ints = [v for v in chain.from_iterable(map(dict.values, bodies)) if type(v) is int]
        if min(ints) < MIN_INT64 or max(ints) > MAX_INT64:
            return False
    return True


def _metrics_reason(b: dict[str, Any]) -> str | None:
    for key, value in b.items():
        if type(key) is not str:
            return f"metric name {key!r} is not a str"
        t = type(value)
        if t not in _NUMBER:
            return f"metric {key!r}: {t.__name__} is not a number"
        if t is int and not MIN_INT64 <= value <= MAX_INT64:
            return f"metric {key!r}: int {value} is out of int64 range"
    return None


# -- the other kinds: shape of each field the later stages read ----------------------------------


def _other_reason(kind: int, b: dict[str, Any]) -> str | None:
    reason = body_problem(b)
    if reason is not None:
        return f"body {reason}"
    check = _SHAPES.get(kind)
    return None if check is None else check(b)


def _field(b: dict[str, Any], name: str, types: tuple[type, ...], required: bool) -> str | None:
    if name not in b:
        return f"lacks {name!r}" if required else None
    value = b[name]
    if type(value) not in types:
        wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        return f"{name!r} must be {wanted}, got {type(value).__name__}"
    return None


def _fields(b: dict[str, Any], spec: list[tuple[str, tuple[type, ...], bool]]) -> str | None:
    for name, types, required in spec:
        reason = _field(b, name, types, required)
        if reason is not None:
            return reason
    return None


_S = (str,)
_S0 = (str, type(None))
_I = (int,)
_N = (int, float)
_N0 = (int, float, type(None))
_M = (dict,)
_M0 = (dict, type(None))
_B0 = (bool, type(None))


def _run_status(b: dict[str, Any]) -> str | None:
    """The collector's word on a process (liveness.py); a client may not make it up either."""
    reason = _fields(
        b,
        [
            ("status", _S, True),
            ("source", _S, True),
            ("reason", _S0, False),
            ("pid", (int, type(None)), False),
            ("host", _S0, False),
        ],
    )
    if reason is None and b["status"] not in LIVENESS_STATUSES:
        reason = f"run_status {b['status']!r} is not one of {LIVENESS_STATUSES}"
    return reason


def _run_start(b: dict[str, Any]) -> str | None:
    reason = _fields(
        b,
        [
            ("project", _S, True),
            ("name", _S, True),
            ("world_size", _I, True),
            ("config", _M, False),
            ("tags", (list,), False),
            ("environment", _M, False),
        ],
    )
    if reason is not None:
        return reason
    if not 1 <= b["world_size"] <= MAX_RANK:
        return f"world_size {b['world_size']} is out of range 1..{MAX_RANK}"
    if not _STR.issuperset(map(type, b.get("tags", ()))):
        return "tags must be a list of str"
    env = b.get("environment") or {}
    reason = _fields(
        env,
        [
            ("host", _S0, False),
            ("pid", (int, type(None)), False),
            ("git_commit", _S0, False),
            ("git_dirty", _B0, False),
        ],
    )
    return None if reason is None else f"environment: {reason}"


def _checkpoint(b: dict[str, Any]) -> str | None:
    reason = _fields(
        b,
        [
            ("action", _S, True),
            ("path", _S0, False),
            ("name", _S0, False),
            ("bytes", (int, type(None)), False),
            ("sha256", _S0, False),
            ("metrics", _M0, False),
            ("blocked_s", _N0, False),
            ("write_s", _N0, False),
            ("is_best", _B0, False),
            ("error", _S0, False),
            ("monitor", _S0, False),
            ("mode", _S0, False),
            ("reason", _S0, False),
        ],
    )
    if reason is None and b.get("bytes") is not None and b["bytes"] < 0:
        reason = f"'bytes' {b['bytes']} is negative"
    return reason


def _system(b: dict[str, Any]) -> str | None:
    reason = _fields(b, [("host", _S, True), ("device", _S, True), ("values", _M, True)])
    if reason is not None:
        return reason
    values = b["values"]
    if not _STR.issuperset(map(type, values)):
        return "system value names must be str"
    if not _NUMBER.issuperset(map(type, values.values())):
        return "system values must be numbers"
    return None


def _histogram(b: dict[str, Any]) -> str | None:
    reason = _fields(b, [("key", _S, True), ("min", _N, True), ("max", _N, True)])
    if reason is None:
        reason = _field(b, "counts", (list,), True)
    if reason is None and not _REAL.issuperset(map(type, b["counts"])):
        reason = "histogram counts must be numbers"
    return reason


_SHAPES: dict[int, Any] = {
    RUN_START: _run_start,
    PARAMS: lambda b: None if _STR.issuperset(map(type, b)) else "param names must be str",
    TEXT: lambda b: _fields(b, [("key", _S, True), ("text", _S, True)]),
    CHECKPOINT: _checkpoint,
    SYSTEM: _system,
    RUN_END: lambda b: _fields(b, [("status", _S, True), ("summary", _M, False)]),
    HISTOGRAM: _histogram,
    RUN_STATUS: _run_status,
    ARTIFACT: artifact_problem,
}


def check_size(header_frame: bytes, body_frame: bytes, limit: int) -> None:
    """WireError if a message is over the collector's limit (ZeroMQ's MAXMSGSIZE is per frame)."""
    size = len(header_frame) + len(body_frame)
    if size > limit:
        msg = f"message of {size} bytes is over the limit of {limit} (serve --max-message-mb)"
        raise WireError(msg)


def check_batch(h: BatchHeader, run_id_pattern: bool = True) -> None:
    """WireError naming why a batch's header cannot be stored (the whole batch is rejected)."""
    reason = check_header(h, run_id_pattern)
    if reason is not None:
        raise WireError(reason)


def split_new(
    h: BatchHeader, new: list[tuple[int, int]], bad: dict[int, str]
) -> tuple[list[tuple[int, int]], list[int]]:
    """The unseen seq ranges `new` of a batch as (good ranges to journal, seqs of bad events)."""
    if not bad:
        return new, []
    good: list[tuple[int, int]] = []
    dead: list[int] = []
    for lo, hi in new:
        start = lo
        for seq in range(lo, hi):
            if seq - h.seq0 in bad:
                if start < seq:
                    good.append((start, seq))
                dead.append(seq)
                start = seq + 1
        if start < hi:
            good.append((start, hi))
    return good, dead


def event_frames(h: BatchHeader, body: BatchBody, seq: int) -> list[bytes]:
    """One event of a batch as its own (header, body) frames: what a dead letter keeps."""
    i = seq - h.seq0
    return [
        encode_header(h.run_id, h.rank, h.source, seq, 1),
        encode_body(
            body.kinds[i : i + 1], body.ts[i : i + 1], body.steps[i : i + 1], [body.bodies[i]]
        ),
    ]
