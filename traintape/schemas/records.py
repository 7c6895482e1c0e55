"""Framed records on disk, shared by the collector's journal, its dead letters and the emitter's
spool.

One record::

    4 bytes            MAGIC, so a reader can find the next record after damage
    u32 little-endian  payload length
    u32 little-endian  crc32 of the length field and the payload
    payload            u32 header length, header frame, body frame   (a wire batch, see wire.py)

`scan` reads records in order and says what it met instead of an intact record:

- `Torn`: the bytes from a record's start to the end of the file are the beginning of a record,
  and nothing intact follows. That is what a process killed mid-append leaves (its record was
  never fsync'd, so never acknowledged); a writer cuts it off on open.
- `Damaged`: bytes that are not an intact record (a flipped bit, an overwritten block). The scan
  resynchronises at the next MAGIC that starts an intact record and goes on; the damaged span
  is reported so the owner can set it aside loudly. A MAGIC inside a payload is harmless: only a
  candidate whose CRC matches ends a damaged span, and the scan never looks for MAGIC while
  records are intact.

Files written before MAGIC existed ("legacy": length, crc32 of the payload, payload) are read
with their old rule, stopping at the first record that is not whole; `scan` tells them apart by
their first bytes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"\xa9TT\x02"
_PREFIX = struct.Struct("<4sII")
_LENGTH = struct.Struct("<I")
_HLEN = struct.Struct("<I")
_LEGACY = struct.Struct("<II")
PREFIX_SIZE = _PREFIX.size
MAX_PAYLOAD = 1 << 30
"""No record is larger (wire messages are capped far below): a longer length field is damage."""

_RESYNC_CHUNK = 1 << 20


def frame_parts(header: bytes, body: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """One record as parts for `writelines`: the body is neither copied nor joined to hash it."""
    hlen = _HLEN.pack(len(header))
    length = _LENGTH.pack(len(hlen) + len(header) + len(body))
    crc = zlib.crc32(body, zlib.crc32(header, zlib.crc32(hlen, zlib.crc32(length))))
    return MAGIC + length + _LENGTH.pack(crc), hlen, header, body


def frame_record(header: bytes, body: bytes) -> bytes:
    return b"".join(frame_parts(header, body))


def split_payload(payload: bytes | memoryview) -> tuple[bytes, bytes]:
    (hlen,) = _HLEN.unpack_from(payload, 0)
    end = _HLEN.size + hlen
    return bytes(payload[_HLEN.size : end]), bytes(payload[end:])


@dataclass(frozen=True, slots=True)
class Damaged:
    """Bytes [start, end) of a file that hold no intact record; reading resumes at `end`."""

    start: int
    end: int
    reason: str


@dataclass(frozen=True, slots=True)
class Torn:
    """A record cut short at the end of the file, from `start`: an append that never finished."""

    start: int
    end: int


Item = tuple[int, int, bytes] | Damaged | Torn


def scan(f: BinaryIO, start: int = 0, end: int | None = None) -> Iterator[Item]:
    """Yields (offset, next_offset, payload) of each intact record from `start`, and a `Damaged`
    or `Torn` for what is not, stopping before `end` (exclusive) or at the end of the file.

    A Torn is always the last item. Within [start, end) a Damaged never extends past `end`.
    """
    size = f.seek(0, 2)
    limit = size if end is None else min(end, size)
    if _is_legacy(f, size):
        yield from _scan_legacy(f, start, limit, size)
        return
    pos = start
    while pos < limit:
        record = _record_at(f, pos, size)
        if isinstance(record, tuple):
            yield record
            pos = record[1]
            continue
        # Search to the file's end: a record cut short is torn only if nothing intact follows.
        resumed = _resync(f, pos + 1, size, size)
        if resumed is None and record == "short":
            yield Torn(pos, size)
            return
        stop = limit if resumed is None else min(resumed, limit)
        yield Damaged(pos, stop, record)
        pos = stop


def _record_at(f: BinaryIO, pos: int, size: int) -> tuple[int, int, bytes] | str:
    """The intact record at `pos`, else why not ("short" when it runs past the file's end)."""
    f.seek(pos)
    prefix = f.read(PREFIX_SIZE)
    if len(prefix) < PREFIX_SIZE:
        return "short" if MAGIC.startswith(prefix[: len(MAGIC)]) else "no record marker"
    magic, length, crc = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        return "no record marker"
    if length > MAX_PAYLOAD:
        return f"impossible record length {length}"
    nxt = pos + PREFIX_SIZE + length
    if nxt > size:
        return "short"
    payload = f.read(length)
    if zlib.crc32(payload, zlib.crc32(prefix[4:8])) != crc:
        return "checksum mismatch"
    return pos, nxt, payload


def _resync(f: BinaryIO, pos: int, limit: int, size: int) -> int | None:
    """The offset in [pos, limit) of the next intact record, or None."""
    while pos < limit:
        f.seek(pos)
        chunk = f.read(min(_RESYNC_CHUNK, limit - pos) + len(MAGIC) - 1)
        i = chunk.find(MAGIC)
        while i != -1 and pos + i < limit:
            if isinstance(_record_at(f, pos + i, size), tuple):
                return pos + i
            i = chunk.find(MAGIC, i + 1)
        pos += _RESYNC_CHUNK
    return None


def _is_legacy(f: BinaryIO, size: int) -> bool:
    """A file of records without MAGIC: its first bytes are a whole legacy record."""
    if size < _LEGACY.size:
        return False
    f.seek(0)
    head = f.read(_LEGACY.size)
    if head[: len(MAGIC)] == MAGIC:
        return False
    length, crc = _LEGACY.unpack(head)
    if length < _HLEN.size or _LEGACY.size + length > size:  # every payload has its u32
        return False
    return zlib.crc32(f.read(length)) == crc


def _scan_legacy(f: BinaryIO, start: int, limit: int, size: int) -> Iterator[Item]:
    pos = start
    while pos < limit:
        f.seek(pos)
        prefix = f.read(_LEGACY.size)
        length, crc = _LEGACY.unpack(prefix) if len(prefix) == _LEGACY.size else (size, 0)
        nxt = pos + _LEGACY.size + length
        if nxt > size:
            yield Torn(pos, size)
            return
        payload = f.read(length)
        if zlib.crc32(payload) != crc:  # no marker to resynchronise on: the rest is set aside
            yield Damaged(pos, limit, "legacy record does not match its checksum")
            return
        yield pos, nxt, payload
        pos = nxt


def iter_records(
    f: BinaryIO, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, bytes]]:
    """Yields (offset, next_offset, payload) of each intact record, skipping damage silently.

    For files nobody else depends on (tests, tools); the journal and the spool report damage.
    """
    for item in scan(f, start, end):
        if isinstance(item, tuple):
            yield item


def is_legacy(f: BinaryIO) -> bool:
    """Whether the file holds records without MAGIC (written by an earlier traintape)."""
    return _is_legacy(f, f.seek(0, 2))
