"""Length- and CRC-framed records on disk, shared by the collector's journal and the emitter's spool.

One record::

    u32 little-endian  payload length
    u32 little-endian  crc32 of the payload
    payload            u32 header length, header frame, body frame   (a wire batch, see wire.py)

A process killed mid-write leaves a torn last record; readers stop at the first record whose length
runs past the end of the file or whose CRC does not match, and writers truncate there on open.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

_PREFIX = struct.Struct("<II")
_HLEN = struct.Struct("<I")
PREFIX_SIZE = _PREFIX.size


def frame_parts(header: bytes, body: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """One record as parts for `writelines`: the body is neither copied nor joined to hash it."""
    hlen = _HLEN.pack(len(header))
    crc = zlib.crc32(body, zlib.crc32(header, zlib.crc32(hlen)))
    return _PREFIX.pack(len(hlen) + len(header) + len(body), crc), hlen, header, body


def frame_record(header: bytes, body: bytes) -> bytes:
    return b"".join(frame_parts(header, body))


def split_payload(payload: bytes | memoryview) -> tuple[bytes, bytes]:
    (hlen,) = _HLEN.unpack_from(payload, 0)
    end = _HLEN.size + hlen
    return bytes(payload[_HLEN.size : end]), bytes(payload[end:])


def iter_records(
    f: BinaryIO, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, bytes]]:
    """Yields (offset, next_offset, payload) of each whole record from `start`.

    Stops before `end` (exclusive) when given, and at the first torn or corrupt record otherwise.
    """
    f.seek(start)
    pos = start
    while end is None or pos < end:
        prefix = f.read(PREFIX_SIZE)
        if len(prefix) < PREFIX_SIZE:
            return
        length, crc = _PREFIX.unpack(prefix)
        payload = f.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
            return
        nxt = pos + PREFIX_SIZE + length
        yield pos, nxt, payload
        pos = nxt


def valid_length(f: BinaryIO) -> int:
    """Offset just past the last whole record: where a writer truncates a torn tail."""
    pos = 0
    for _, nxt, _ in iter_records(f):
        pos = nxt
    return pos
