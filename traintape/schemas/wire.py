"""Versioned wire format between emitters and the collector.

A batch travels as one ZeroMQ message of two frames, emitter (DEALER) -> collector (ROUTER)::

    frame 0  header  msgpack [b"tt", version, run_id, rank, source, seq0, n]
    frame 1  body    msgpack {"k": [kind, ...], "t": [ts_ns, ...], "s": [step|None, ...],
                              "b": [body, ...]}                        (each list n long)

The body is columnar so the collector converts whole batches at once. Events of the batch have
the sequence numbers seq0 .. seq0+n-1, dense per `source` (one random id per emitting process).
For a `metrics` event the body is {name: float}; for the other kinds a map of plain values.

The collector answers each batch with one frame, collector -> emitter::

    ack      msgpack [source, seq0, n, status]     status: ACK_STORED or ACK_REJECTED
             msgpack [source, seq0, n, status, rejected]   when `rejected` events of the batch
                                                   failed validation (the rest is stored)

ACK_STORED means the batch is in the journal and fsync'd (or was already: a duplicate).
ACK_REJECTED means the collector could not read it and set it aside in its dead-letter file;
resending would not help.
ACK_VISIBLE comes after ACK_STORED, for a batch holding a `run_end` event: the journal as it was
when that batch was taken is now readable in the views (traintape.collector.visibility).

A heartbeat is a header with n=0 (seq0: the source's next seq) and an empty body frame. The
emitter's keeper sends one when nothing left for HEARTBEAT_S seconds; the collector notes the
source alive (traintape.collector.liveness: `crashed` after a silence, on other hosts) and never
journals, acknowledges or dead-letters it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from traintape.errors import WireError
from traintape.schemas.events import KIND_NAMES

MAGIC = b"tt"
WIRE_VERSION = 1
ACK_STORED = 0
ACK_REJECTED = 1
ACK_VISIBLE = 2
HEARTBEAT_S = 5.0
"""An emitter that sent nothing for this long sends a heartbeat."""


@dataclass(frozen=True, slots=True)
class BatchHeader:
    run_id: str
    rank: int
    source: str
    seq0: int
    n: int

    @property
    def seq_end(self) -> int:
        return self.seq0 + self.n


@dataclass(slots=True)
class BatchBody:
    kinds: list[int]
    ts: list[int]
    steps: list[int | None]
    bodies: list[Any]


def encode_header(run_id: str, rank: int, source: str, seq0: int, n: int) -> bytes:
    return msgpack.packb([MAGIC, WIRE_VERSION, run_id, rank, source, seq0, n])


def encode_body(kinds: Any, ts: Any, steps: Any, bodies: Any) -> bytes:
    # Tuples from zip(*events) pack as msgpack arrays, so no copy is made here.
    return msgpack.packb({"k": kinds, "t": ts, "s": steps, "b": bodies})


def decode_header(frame: bytes) -> BatchHeader:
    try:
        fields = msgpack.unpackb(frame)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        msg = f"header is not msgpack: {exc}"
        raise WireError(msg) from exc
    if not isinstance(fields, list) or len(fields) != 7 or fields[0] != MAGIC:
        msg = "header is not a traintape batch header"
        raise WireError(msg)
    version = fields[1]
    if version != WIRE_VERSION:
        msg = f"unknown wire version {version!r} (this collector reads {WIRE_VERSION})"
        raise WireError(msg)
    _, _, run_id, rank, source, seq0, n = fields
    if not (
        isinstance(run_id, str)
        and run_id
        and isinstance(source, str)
        and source
        and type(rank) is int
        and rank >= 0
        and type(seq0) is int
        and seq0 >= 0
        and type(n) is int
        and n > 0
    ):
        msg = f"header fields out of range: {fields[2:]!r}"
        raise WireError(msg)
    return BatchHeader(run_id, rank, source, seq0, n)


_INT = frozenset((int,))
_INT_OR_NONE = frozenset((int, type(None)))
_DICT = frozenset((dict,))
_KIND_CODES = frozenset(range(len(KIND_NAMES)))


def decode_body(frame: bytes, n: int) -> BatchBody:
    try:
        cols = msgpack.unpackb(frame)
    except Exception as exc:
        msg = f"body is not msgpack: {exc}"
        raise WireError(msg) from exc
    if not isinstance(cols, dict):
        msg = "body is not a map"
        raise WireError(msg)
    try:
        kinds, ts, steps, bodies = cols["k"], cols["t"], cols["s"], cols["b"]
    except KeyError as exc:
        msg = f"body lacks column {exc}"
        raise WireError(msg) from None
    for name, col in (("k", kinds), ("t", ts), ("s", steps), ("b", bodies)):
        if not isinstance(col, list) or len(col) != n:
            msg = f"body column {name!r} is not a list of {n}"
            raise WireError(msg)
    # One C-level pass per column (set of element types), not a Python loop per event.
    kind_set = set(kinds)
    if not _INT.issuperset(map(type, kind_set)) or not kind_set <= _KIND_CODES:
        msg = f"unknown event kind in {sorted(map(repr, kind_set))}"
        raise WireError(msg)
    if not _INT.issuperset(map(type, ts)):
        msg = "timestamps must be ints (ns)"
        raise WireError(msg)
    if not _INT_OR_NONE.issuperset(map(type, steps)):
        msg = "steps must be ints or nil"
        raise WireError(msg)
    if not _DICT.issuperset(map(type, bodies)):
        msg = "event bodies must be maps"
        raise WireError(msg)
    return BatchBody(kinds, ts, steps, bodies)


def encode_ack(source: str, seq0: int, n: int, status: int, rejected: int = 0) -> bytes:
    # The 5th element only when some events were set aside: older emitters read the 4 they know.
    if rejected:
        return msgpack.packb([source, seq0, n, status, rejected])
    return msgpack.packb([source, seq0, n, status])


def decode_ack(frame: bytes) -> tuple[str, int, int, int]:
    source, seq0, n, status = decode_ack_full(frame)[:4]
    return source, seq0, n, status


def decode_ack_full(frame: bytes) -> tuple[str, int, int, int, int]:
    """(source, seq0, n, status, rejected): `rejected` events of a stored batch failed validation
    and are in the dead-letter file (0 in the 4-element form; all n for ACK_REJECTED)."""
    fields = msgpack.unpackb(frame)
    source, seq0, n, status = fields[:4]
    rejected = fields[4] if len(fields) > 4 else (n if status == ACK_REJECTED else 0)
    return source, seq0, n, status, rejected
