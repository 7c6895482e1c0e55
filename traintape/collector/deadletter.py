"""Dead letters: what a stage could not take, kept (not dropped) for a person to look at.

`<store>/deadletter/deadletter.log` (the collector's ingest: frames it could not read, events that
failed validation) and `<store>/deadletter/materializer.log` (journal records the materializer
could not store) hold framed records (records.py) whose payload is msgpack::

    {"ts": ns, "reason": str, "frames": [prefix bytes, ...], "sizes": [int, ...],
     "sha256": [hex, ...], ...}        (+ "position": journal offset, for the materializer)

Each frame is kept up to PREFIX_BYTES, with its full length and sha256, so a flood of huge
garbage cannot fill the disk or the collector's memory. A file rotates to `<name>.1.log` when it
passes half the cap, so both together stay under `cap_bytes`. Writing a dead letter never raises:
a full disk is counted (`write_errors`) and said once, and ingest goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from traintape.layout import StoreLayout
from traintape.schemas.records import frame_record, iter_records, split_payload

PREFIX_BYTES = 64 << 10
"""Bytes of each frame kept in a dead letter."""
DEFAULT_CAP_BYTES = 64 << 20
"""Dead-letter files of one kind take at most this much disk (the file and its one rotation)."""

logger = logging.getLogger(__name__)


class DeadLetters:
    def __init__(
        self,
        store: Path,
        name: str = "deadletter.log",
        *,
        cap_bytes: int = DEFAULT_CAP_BYTES,
        prefix_bytes: int = PREFIX_BYTES,
        label: str = "",
    ) -> None:
        """`label`: whose dead letters these are, at the start of each message (the
        materializer's); none for the collector's ingest."""
        self.path = StoreLayout(store).deadletter / name
        self.rotated = self.path.with_name(self.path.stem + ".1" + self.path.suffix)
        self.cap_bytes = cap_bytes
        self.prefix_bytes = prefix_bytes
        self.label = f"{label}: " if label else ""
        self.count = 0
        self.write_errors = 0
        self._file: BinaryIO | None = None
        self._size = 0

    def add(self, frames: list[bytes], reason: str, **extra: Any) -> None:
        """Keeps a prefix, the length and the hash of each frame; never raises on I/O."""
        self.count += 1
        views = [memoryview(f) for f in frames]
        record: dict[str, Any] = {
            "ts": time.time_ns(),
            "reason": reason,
            "frames": [bytes(v[: self.prefix_bytes]) for v in views],
            "sizes": [v.nbytes for v in views],
            "sha256": [hashlib.sha256(v).hexdigest() for v in views],
            **extra,
        }
        try:
            self._write(frame_record(b"", msgpack.packb(record)))
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1:  # a full disk must not flood the log either
                logger.warning(
                    "%scannot write dead letter #%d to %s (%s); dead letters are counted but not "
                    "kept until it can",
                    self.label,
                    self.count,
                    self.path,
                    exc,
                )
            self._close_quietly()
            return
        # A flood of garbage must not flood the log: the first 20, then every 1000th.
        if self.count <= 20 or self.count % 1000 == 0:
            logger.warning(
                "%sdead letter #%d (%s) kept in %s", self.label, self.count, reason[:300], self.path
            )

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
            self._size = self._file.tell()
        if self._size and self._size + len(data) > self.cap_bytes // 2:
            self._file.close()
            self._file = None
            os.replace(self.path, self.rotated)  # the older half of the cap goes
            self._file = open(self.path, "ab")
            self._size = 0
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _close_quietly(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def close(self) -> None:
        self._close_quietly()


def read_dead_letters(path: Path) -> list[dict[str, Any]]:
    """The dead letters of one file (and of its rotation before it), oldest first."""
    out: list[dict[str, Any]] = []
    for p in (path.with_name(path.stem + ".1" + path.suffix), path):
        try:
            f = open(p, "rb")
        except FileNotFoundError:
            continue
        with f:
            out.extend(
                msgpack.unpackb(split_payload(payload)[1]) for _, _, payload in iter_records(f)
            )
    return out
