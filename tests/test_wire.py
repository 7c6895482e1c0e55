"""The wire format: batches round-trip, and anything else is a WireError (never a crash)."""

from __future__ import annotations

import math

import msgpack
import pytest

from traintape.schemas.events import METRICS, PARAMS
from traintape.schemas.wire import (
    ACK_STORED,
    WIRE_VERSION,
    WireError,
    decode_ack,
    decode_body,
    decode_header,
    encode_ack,
    encode_body,
    encode_header,
)


def test_batch_round_trips_with_nan_and_none_steps() -> None:
    """Header and columnar body decode to what was encoded; NaN stays NaN."""
    header = decode_header(encode_header("run", 3, "src", 10, 2))
    assert (header.run_id, header.rank, header.source, header.seq0, header.n) == (
        "run",
        3,
        "src",
        10,
        2,
    )
    assert header.seq_end == 12
    body = decode_body(
        encode_body((METRICS, PARAMS), (1, 2), (5, None), ({"x": math.nan}, {"lr": 0.1})), 2
    )
    assert body.kinds == [METRICS, PARAMS] and body.steps == [5, None]
    assert math.isnan(body.bodies[0]["x"]) and body.bodies[1] == {"lr": 0.1}


def test_ack_round_trips() -> None:
    """Acks name the batch by source and first seq."""
    assert decode_ack(encode_ack("s", 7, 3, ACK_STORED)) == ("s", 7, 3, ACK_STORED)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",
        msgpack.packb({"a": 1}),
        msgpack.packb([b"tt", WIRE_VERSION + 1, "r", 0, "s", 0, 1]),
        msgpack.packb([b"xx", WIRE_VERSION, "r", 0, "s", 0, 1]),
        msgpack.packb([b"tt", WIRE_VERSION, "", 0, "s", 0, 1]),
        msgpack.packb([b"tt", WIRE_VERSION, "r", -1, "s", 0, 1]),
        msgpack.packb([b"tt", WIRE_VERSION, "r", 0, "s", 0, 0]),
    ],
)
def test_bad_headers_raise_wire_error(frame: bytes) -> None:
    """Garbage, unknown versions and out-of-range fields are WireErrors."""
    with pytest.raises(WireError):
        decode_header(frame)


@pytest.mark.parametrize(
    ("frame", "n"),
    [
        (b"\x00\x01", 1),
        (msgpack.packb([1, 2]), 1),
        (msgpack.packb({"k": [METRICS], "t": [1], "s": [0]}), 1),
        (encode_body([METRICS], [1], [0], [{}]), 2),
        (encode_body([99], [1], [0], [{}]), 1),
        (encode_body([METRICS], [1.5], [0], [{}]), 1),
        (encode_body([METRICS], [1], ["x"], [{}]), 1),
        (encode_body([METRICS], [1], [0], [[1, 2]]), 1),
    ],
)
def test_bad_bodies_raise_wire_error(frame: bytes, n: int) -> None:
    """Bodies with missing, short or mistyped columns are WireErrors."""
    with pytest.raises(WireError):
        decode_body(frame, n)
