"""How much memory the media values of `log()` may hold before they are encoded.

`log()` copies an image on the caller's thread and the artifact thread encodes it later
(media.py, artifacts.py). A loop that logs images faster than they can be encoded would grow
that queue without end, so past `LIMIT` bytes of snapshots waiting, `log()` waits for the
thread to catch up (once said in a warning): memory stays bounded and nothing is dropped.

Two counters, each written by one side (the caller adds, the artifact thread subtracts), so the
common call takes no lock.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


class MediaBacklog:
    LIMIT = 64 << 20
    """Bytes of media snapshots waiting to be encoded, past which `log()` waits."""

    def __init__(self) -> None:
        self._added = 0  # written by the callers of log()
        self._done = 0  # written by the artifact thread
        self._room = threading.Event()
        self._warned = False

    def add(self, size: int) -> None:
        """Counts `size` bytes in; first waits while the backlog is over LIMIT (and not empty:
        one value larger than LIMIT still goes)."""
        if self._added - self._done + size > self.LIMIT:
            self._wait(size)
        self._added += size

    def done(self, size: int) -> None:
        """`size` bytes of snapshots were encoded and freed (the artifact thread)."""
        self._done += size
        self._room.set()

    def _wait(self, size: int) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                f"traintape: images and tables are logged faster than they are encoded; over "
                f"{self.LIMIT >> 20} MiB wait, so log() waits for the artifact thread"
            )
        while self._added > self._done and self._added - self._done + size > self.LIMIT:
            self._room.clear()
            if self._added > self._done and self._added - self._done + size > self.LIMIT:
                self._room.wait(1.0)  # done() sets it; the timeout only bounds a lost wake-up
