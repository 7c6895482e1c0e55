"""When compaction merges which run folders (compaction.py says how a merge is made safe).

Ended runs are compacted `settle` seconds after their end, and again after anything written to
them later (a batch resent after a collector restart can land after the run's end); sweeps look
at every folder at the first call (any with 2 small files or more, e.g. a run that ended while
no collector ran), then every `sweep_interval` seconds at the folders that grew since (those
with MIN_FILES_PERIODIC small files: live runs, the collector's system samples).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from traintape.layout import StoreLayout

MIN_FILES_PERIODIC = 16
"""A live run's folder is compacted by the periodic sweep once it has this many small files."""

SETTLE_S = 30.0
"""Seconds a run's folders are left as they are after its end (and after the collector starts)
before they are merged: whoever queries a run the moment it ends reads it undisturbed."""

SWEEP_INTERVAL_S = 300.0
"""Seconds between sweeps over every run folder (ended runs are compacted at once)."""


class CompactionSchedule:
    """Which folders are due, learnt from each materialized chunk; safe across threads (the
    materializer notes chunks while the compaction thread asks what is due)."""

    def __init__(self, layout: StoreLayout, sweep_interval: float, settle: float) -> None:
        self.layout = layout
        self.sweep_interval = sweep_interval
        self.settle = settle
        self._started = time.monotonic()
        # (table or "*", folder) -> when it became due: compacted `settle` seconds later.
        self._pending: dict[tuple[str, str], float] = {}
        self._touched: set[tuple[str, str]] = set()  # (table, folder) written since the sweep
        # Folders of runs that ended: a chunk written to one later (batches a restarted
        # collector receives again after the run's end) makes it due again; a new attempt's
        # run_start takes it out (a live run waits for the periodic sweep).
        self._ended: set[str] = set()
        self._last_sweep: float | None = None  # the first sweep, at startup, merges any 2 files
        self._lock = threading.Lock()

    def note_chunk(self, built: dict[tuple[str, str], Any]) -> None:
        """Remembers the folders a just-materialized chunk wrote to (`built`: (table, run id)
        -> its Arrow table), and the runs it ended."""
        kinds = {
            run_id: set(data.column("kind").to_pylist())
            for (table, run_id), data in built.items()
            if table == "events"
        }
        with self._lock:
            folder = self.layout.folder_name
            written = {(table, folder(run_id)) for table, run_id in built}
            self._touched.update(written)
            for run_id, seen in kinds.items():
                if "run_end" in seen:
                    self._ended.add(folder(run_id))
                elif "run_start" in seen:  # a new attempt: live again, until its own end
                    self._ended.discard(folder(run_id))
            for name in {name for _, name in written} & self._ended:
                self._pending.setdefault(("*", name), time.monotonic())

    def soon(self, table: str, folder: str) -> None:
        """Merge `folder` again once it settles (after a merge a crash interrupted)."""
        with self._lock:
            self._pending[table, folder] = time.monotonic()

    def at_next_sweep(self, table: str, folder: str) -> None:
        """A merge of `folder` failed: it is tried again at the next sweep."""
        with self._lock:
            self._touched.add((table, folder))

    def due(self) -> list[tuple[str, str, int]]:
        """(table, folder, the fewest small files worth a merge) of each folder due now."""
        now = time.monotonic()
        first = self._last_sweep is None and now - self._started >= self.settle
        sweep = first or (
            self._last_sweep is not None and now - self._last_sweep >= self.sweep_interval
        )
        with self._lock:
            ready = sorted(k for k, since in self._pending.items() if now - since >= self.settle)
            if not ready and not sweep:
                return []
            for key in ready:
                del self._pending[key]
            touched = sorted(self._touched) if sweep else []
            if sweep:
                self._touched = set()
        due: list[tuple[str, str, int]] = []
        for table, folder in ready:
            for name in table_names(self.layout) if table == "*" else [table]:
                due.append((name, folder, 2))
        if first:  # whatever was left uncompacted while no collector ran
            due += [(t, f, 2) for t, f in run_folders(self.layout)]
        elif sweep:
            due += [(t, f, MIN_FILES_PERIODIC) for t, f in touched]
        if sweep:
            self._last_sweep = time.monotonic()
        return [d for d in due if (self.layout.table(d[0]) / d[1]).is_dir()]


def table_names(layout: StoreLayout) -> list[str]:
    root = layout.tables
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def run_folders(layout: StoreLayout) -> list[tuple[str, str]]:
    """(table, run folder) of every run folder of the store that is the layout's collector's."""
    return [
        (table, folder.name)
        for table in table_names(layout)
        for folder in sorted(layout.table(table).iterdir())
        if folder.is_dir() and not folder.name.startswith("_") and layout.owns_folder(folder.name)
    ]
