"""TensorBoard's event files, written without TensorFlow: records framed as its RecordWriter
frames them (length, masked CRC32C, payload, masked CRC32C), and the scalar Events of the hot
path encoded by hand (a metric value costs a few bytes joins, not a protobuf object)."""

from __future__ import annotations

import functools
import os
import struct
import time
from pathlib import Path
from typing import Any

DOUBLE = struct.Struct("<d")
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
# TensorProto{dtype: DT_DOUBLE, double_val: [8 bytes]} as field 8 (tensor) of Summary.Value.
_TENSOR_PREFIX = b"\x42\x0c\x08\x02\x32\x08"


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


def value_prefix(tag: str, metadata: bytes = b"") -> bytes:
    """Summary.Value{tag (1), metadata (9), tensor (8): DT_DOUBLE scalar} up to the double."""
    raw = tag.encode("utf-8")
    inner = b"\x0a" + varint(len(raw)) + raw + metadata
    return b"\x0a" + varint(len(inner) + len(_TENSOR_PREFIX) + 8) + inner + _TENSOR_PREFIX


@functools.cache
def scalar_metadata() -> bytes:
    """The scalar plugin's SummaryMetadata, encoded as field 9 of a Summary.Value."""
    from tensorboard.plugins.scalar import metadata as scalar_metadata

    data = scalar_metadata.create_summary_metadata("", "").SerializeToString()
    return b"\x4a" + varint(len(data)) + data


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
