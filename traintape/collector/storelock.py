"""The store's lock: one collector per store, or per collector id where several share a store
(layout.py), and no offline compaction while that collector serves.

`collector.lock` (in the collector's home) is held with flock(2) while its file is open, so it
goes when its process does, however it ends; `collector.pid` says who holds it.
"""

from __future__ import annotations

import fcntl
from typing import IO

from traintape.errors import CollectorError
from traintape.layout import StoreLayout


def take_store(layout: StoreLayout) -> IO[str]:
    """The store's lock, held while this collector lives (one collector per store and id)."""
    layout.home.mkdir(parents=True, exist_ok=True)
    lock = open(layout.lock, "a")  # never truncated: nothing is in it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        owner = layout.pid.read_text().strip() if layout.pid.exists() else "?"
        msg = (
            f"a collector (pid {owner}) already serves {layout.root}; stop it or use another "
            "--store"
        )
        if layout.collector is not None:
            msg = (
                f"collector {layout.collector} (pid {owner}) already serves {layout.root}; stop "
                "it or use another --collector-id"
            )
        raise CollectorError(msg) from None
    return lock
