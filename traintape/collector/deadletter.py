"""Dead letters: frames the collector could not read, kept (not dropped) for a person to look at.

`<store>/deadletter/deadletter.log` holds framed records (records.py) whose payload is msgpack
{"ts": ns, "reason": str, "frames": [bytes, ...]}.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgpack

from traintape.schemas.records import frame_record


class DeadLetters:
    def __init__(self, store: Path) -> None:
        self.path = store / "deadletter" / "deadletter.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._file = open(self.path, "ab")
        self._logged = 0

    def add(self, frames: list[bytes], reason: str) -> None:
        """Keeps the frames; written with the next journal fsync's batch (flush only here)."""
        self.count += 1
        payload = msgpack.packb({"ts": time.time_ns(), "reason": reason, "frames": frames})
        self._file.write(frame_record(b"", payload))
        self._file.flush()
        # A flood of garbage must not flood the log: the first 20, then every 1000th.
        if self.count <= 20 or self.count % 1000 == 0:
            print(
                f"traintape collector: dead letter #{self.count} ({reason}) kept in {self.path}",
                file=sys.stderr,
            )

    def close(self) -> None:
        self._file.close()
