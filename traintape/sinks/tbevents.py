"""TensorBoard's event files, written without TensorFlow: records framed as its RecordWriter
frames them (length, masked CRC32C, payload, masked CRC32C), and the scalar Events of the hot
path encoded by hand (a metric value costs a few bytes joins, not a protobuf object).

Scalars are classic `simple_value` summaries (a float32), as PyTorch's
`SummaryWriter.add_scalar` writes them: TensorBoard's classic `EventAccumulator.Scalars()` reads
only those, and its plugin-based reader (the UI's) converts them to scalar-plugin tensors, so
every reader sees them. A scalar-plugin tensor would keep float64 but is invisible to the first.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import Any

DOUBLE = struct.Struct("<d")
FLOAT = struct.Struct("<f")
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
_INF = float("inf")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def load_crc32c() -> Any:
    """The CRC32C function: google_crc32c's, else TensorBoard's own."""
    try:
        import google_crc32c  # a C implementation, ~400x faster than the pure-Python fallback

        return google_crc32c.value
    except ImportError:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c

        return crc32c


class EventFile:
    """One tfevents file: records framed as TensorBoard's RecordWriter frames them."""

    def __init__(self, path: Path, crc: Any) -> None:
        from tensorboard.compat.proto import event_pb2

        self.path = path
        self._crc = crc
        self._f = open(path, "ab")
        self.tags: set[str] = set()  # tags whose summary metadata this file already holds
        self.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _masked(self, data: bytes) -> int:
        x = self._crc(data)
        return ((((x >> 15) | (x << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

    def write_bytes(self, data: bytes) -> None:
        header = _Q.pack(len(data))
        self._f.write(
            b"".join((header, _I.pack(self._masked(header)), data, _I.pack(self._masked(data))))
        )

    def write(self, event: Any) -> None:
        self.write_bytes(event.SerializeToString())

    def flush(self) -> int:
        self._f.flush()
        return self._f.tell()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def value_prefix(tag: str) -> bytes:
    """Summary.Value{tag (1), simple_value (2): float} up to the 4 bytes of the float."""
    raw = tag.encode("utf-8")
    inner = b"\x0a" + varint(len(raw)) + raw + b"\x15"
    return b"\x0a" + varint(len(inner) + 4) + inner


def float32(value: float) -> bytes:
    """`value` as simple_value's 4 bytes: rounded to the nearest float32, ±Inf beyond its range
    (as numpy and protobuf convert it; struct refuses to)."""
    try:
        return FLOAT.pack(value)
    except OverflowError:
        return FLOAT.pack(_INF if value > 0 else -_INF)


def scalar_event(ts: int, step: int, summary: bytes) -> bytes:
    """An Event of scalar values (`summary`: encoded Summary.Values) at `ts` (ns), `step`."""
    # Event{wall_time (1): double, step (2): varint, summary (5): Summary{value (1)...}}
    return b"".join(
        (
            b"\x09",
            DOUBLE.pack(ts / 1e9),
            b"\x10",
            varint(max(step, 0)),
            b"\x2a",
            varint(len(summary)),
            summary,
        )
    )
