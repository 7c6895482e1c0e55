"""Folder listings for the dashboard's caches, each read again only when its folder changed.

The runs table asks, at every request, which files each run's folders hold (the caches of
traintape.ui.api keep their answers while the files are the same). Listing a thousand folders
costs a thousand directory reads; a folder's modification time changes whenever an entry is
added, removed or renamed in it, and a stat is several times cheaper than a read. The time has
a coarse clock behind it (a change in the same tick as the last listing can leave it as it was),
so a folder changed less than `SETTLE_NS` ago is always listed afresh.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["FolderCache"]

SETTLE_NS = 2_000_000_000
"""A folder whose modification time is younger than this is listed at every ask."""


class FolderCache:
    """The names in folders, each listed again only when its modification time moved."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[tuple[int, int], frozenset[str]]] = {}

    def names(self, path: str) -> frozenset[str] | None:
        """The entries of the folder `path`, None when it is not there (or not a folder)."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._forget(path)
            return None
        with self._lock:
            kept = self._kept.get(path)
        # The inode too: a compaction swaps a run's folder for another (renameat2).
        mtime = (st.st_ino, st.st_mtime_ns)
        if kept is not None and kept[0] == mtime and time.time_ns() - st.st_mtime_ns > SETTLE_NS:
            return kept[1]
        try:
            found = frozenset(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            self._forget(path)
            return None
        with self._lock:
            self._kept[path] = (mtime, found)
        return found

    def _forget(self, path: str) -> None:
        with self._lock:
            self._kept.pop(path, None)
