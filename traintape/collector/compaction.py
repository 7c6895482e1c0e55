"""Compaction: merges a run's small Parquet files into one, never losing or duplicating a row.

The materializer writes one `part-<start>-<end>.parquet` per run and table per chunk, so a long
run ends up with thousands of small files and every query opens them all. Compaction replaces a
contiguous set of them by `compact-<first start>-<last end>.parquet` holding the same rows (metrics
sorted by key, rank, step, so one metric of one run is one row-group range of one file).

One compaction is a small transaction, safe against SIGKILL at any instant. Where the
filesystem can exchange two folders atomically and hold hard links (ext4, XFS, btrfs, tmpfs;
`swap.supported()` tries), the folder's next state is built beside it and swapped in:

1. in `tables/.staging/<table>/<run>/`: the merged rows as `compact-A-B.parquet` (fsync'd, row
   count checked) and a hard link of every other file of the run folder, then fsync;
2. write the intent `state/compaction.json` (method "swap", table, folder, inputs, merged name);
3. exchange the run folder and the staging folder (`renameat2(RENAME_EXCHANGE)`), fsync both
   parents;
4. delete the staging folder (now the old files), then the intent.

A reader globbing the run folder sees every old file or every new one, never fewer rows nor
twice the same. Recovery of a swap only deletes the staging folder: before the exchange it holds
the unfinished new state (rolled back), after it the old files (rolled forward); which one is
told by the merged file being in the run folder.

Elsewhere, the inputs are renamed one by one (method "hide"):

1. write the merged rows to `compact-A-B.parquet.tmp`, fsync, check its row count;
2. write the intent `state/compaction.json` (table, folder, inputs, merged name), tmp + rename;
3. hide each input from the readers' glob: `X.parquet` -> `X.parquet.compacted`;
4. rename the merged file into place, fsync the folder;
5. delete the hidden inputs, fsync the folder;
6. delete the intent.

Recovery (`recover()`, run when the collector starts and before each compaction) reads a leftover
intent: if the merged file is in place the transaction rolls forward (the hidden inputs are
deleted); otherwise it rolls back (inputs renamed back, the tmp deleted). Either way the folder
ends up with exactly the rows it had.

Readers glob `tables/<t>/<run>/*.parquet` at each query, so no order of single renames is
atomic for them. Hiding the inputs before the merged file appears means a query that runs during
steps 3-4 (a few renames, microseconds to milliseconds) can see *fewer* rows of that run, never
twice the same row: a transiently short answer that the next query corrects, rather than
silently doubled counts and means that nothing flags. With either method, a query that listed a
file just before it went away can fail with "file not found"; traintape's own readers
(`traintape.read.query`, `traintape query`) ask such a query again.

The materializer's own startup rule (files whose journal range starts at or past its cursor are
uncommitted leftovers) applies to compacted files too, and compaction only ever touches files
whose range ends at or below the cursor, so the two never delete each other's files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from traintape.collector import swap
from traintape.collector.merging import (
    SORT_KEYS,
    TARGET_BYTES,
    DataFile,
    data_files,
    merged_table,
    plan,
    sort_for_storage,
    write_parquet,
)
from traintape.collector.schedule import (
    MIN_FILES_PERIODIC,
    SETTLE_S,
    SWEEP_INTERVAL_S,
    CompactionSchedule,
    run_folders,
)
from traintape.durable import fsync_dir, write_json_atomic
from traintape.layout import StoreLayout, compacted_name, data_file_range

INTENT = StoreLayout(Path()).compaction_intent.relative_to(".")
"""The intent file, relative to the store (for tests)."""
HIDDEN = ".compacted"
STAGING = ".staging"
"""`tables/.staging/`: where a swap builds a folder's next state (outside every table's glob);
`.staging@<ID>` for collector ID (StoreLayout.compaction_staging)."""
METHODS = ("auto", "swap", "hide")
PAUSE_ENV = "TRAINTAPE_TEST_COMPACTION_PAUSE"
"""Tests only: `SECONDS[:STEP]` prints a `traintape compaction step: ...` line on stderr after
each step and sleeps SECONDS after each step (or only after those whose text contains STEP), so a
test can SIGKILL the process at a known point."""

logger = logging.getLogger(__name__)


class Compactor:
    """Compacts the run folders of a store, on a thread of its own beside the materializer's
    (a merge of a long run takes seconds; materializing never waits for it).

    `note_chunk()` learns from each materialized chunk which folders grew and which runs ended;
    `run_due()` compacts the ended runs at once, and sweeps: at its first call every folder (any
    with 2 small files or more, e.g. a run that ended while no collector ran), then every
    `sweep_interval` seconds the folders that grew since (those with MIN_FILES_PERIODIC small
    files: live runs, the collector's system samples).
    """

    def __init__(
        self,
        store: Path,
        *,
        sweep_interval: float = SWEEP_INTERVAL_S,
        settle: float = SETTLE_S,
        log: Callable[[str], None] | None = None,
        method: str = "auto",
        folder_lock: threading.Lock | None = None,
        collector: str | None = None,
    ) -> None:
        """`folder_lock`: held by whoever adds a file to a run folder while this compacts on
        another thread (the materializer); a swap holds it from listing the folder's other files
        to the exchange, so no file written meanwhile is left behind in the old folder.
        `collector`: whose run folders these are (layout.py); another collector's are never
        touched, so collectors sharing a store never wait on each other."""
        if method not in METHODS:
            msg = f"compaction method must be one of {METHODS}, got {method!r}"
            raise ValueError(msg)
        self.store = store
        self.layout = StoreLayout(store, collector)
        self.method = method  # "auto": swap where the filesystem can, decided at the first merge
        self.schedule = CompactionSchedule(self.layout, sweep_interval, settle)
        self._info = log or _info
        self._warning = log or _warning
        self._folder_lock = folder_lock or threading.Lock()
        self.merges = 0
        self.last_error: str | None = None

    # -- the transaction and its recovery ---------------------------------------------------

    def recover(self, committed: int) -> None:
        """Finishes or undoes an interrupted compaction; deletes merged files no commit covers.

        Run at startup, before the materializer removes its own uncommitted files: a rollback
        can bring back part files, which that rule must then see.
        """
        self.resolve_intent()
        shutil.rmtree(self._staging_root(), ignore_errors=True)  # no intent names any of it now
        for path in self.layout.run_files("compact-*"):
            bounds = data_file_range(path.name)
            if path.name.endswith(".tmp") or bounds is None or bounds[0] >= committed:
                path.unlink(missing_ok=True)  # a merge that never committed / a reset cursor
            elif path.name.endswith(HIDDEN):
                self._warning(f"{path} is hidden but no compaction intent names it; left as is")

    def resolve_intent(self, quiet: bool = False) -> None:
        """Rolls a leftover intent forward (merged file in place) or back (it is not)."""
        intent_path = self.layout.compaction_intent
        intent = _read_json(intent_path)
        if intent is None:
            return
        folder = self.layout.table(intent["table"]) / intent["folder"]
        done = (folder / intent["merged"]).exists()
        if intent.get("method") == "swap":
            # Before the exchange the staging folder is the unfinished new state, after it the
            # old files: deleting it rolls back or finishes, whichever applies.
            staging = self._staging_root() / intent["table"] / intent["folder"]
            shutil.rmtree(staging, ignore_errors=True)
            if staging.parent.exists():
                fsync_dir(staging.parent)
        elif done:
            for name in intent["inputs"]:
                (folder / name).unlink(missing_ok=True)
                (folder / (name + HIDDEN)).unlink(missing_ok=True)
        else:
            for name in intent["inputs"]:
                hidden = folder / (name + HIDDEN)
                if hidden.exists():
                    os.replace(hidden, folder / name)
        if intent.get("method") != "swap":
            (folder / (intent["merged"] + ".tmp")).unlink(missing_ok=True)
            fsync_dir(folder)
        if not done and not quiet:  # after a crash: merge again soon (a failure waits a sweep)
            self.schedule.soon(intent["table"], intent["folder"])
        intent_path.unlink()
        fsync_dir(intent_path.parent)
        if not quiet:
            action = "finished" if done else "rolled back"
            self._info(
                f"{action} an interrupted compaction of {intent['table']}/{intent['folder']}"
            )

    def _staging_root(self) -> Path:
        return self.layout.compaction_staging

    def _swaps(self) -> bool:
        if self.method == "auto":
            root = self._staging_root()
            root.mkdir(parents=True, exist_ok=True)
            self.method = "swap" if swap.supported(root) else "hide"
            if self.method == "hide":
                self._info(
                    "this filesystem cannot exchange folders atomically: compaction renames "
                    "files one by one (a query during a merge may count a run short)"
                )
        return self.method == "swap"

    def compact_folder(self, table: str, folder_name: str, committed: int, min_files: int) -> int:
        """Merges what `plan()` picks in one run folder; returns the number of merges done."""
        self.resolve_intent()
        folder = self.layout.table(table) / folder_name
        done = 0
        for group in plan(data_files(folder), committed, min_files):
            self.merge(table, folder, group)
            done += 1
        return done

    def merge(self, table: str, folder: Path, group: list[DataFile], name: str = "") -> None:
        """`name`: of the merged file, by default `compacted_name` of the group's range (never
        an input's name: footers are cached by name, conform.py)."""
        name = name or compacted_name(group[0].start, group[-1].end)
        if self._swaps():
            self._merge_swap(table, folder, group, name)
        else:
            self._merge_hide(table, folder, group, name)
        self.merges += 1

    def _merged_rows(self, table: str, folder: Path, group: list[DataFile], out: Path) -> int:
        """Writes the group's rows, sorted, to `out` (fsync'd); returns their count, checked."""
        data = merged_table(table, (f.path for f in group))
        expected = sum(pq.ParquetFile(f.path).metadata.num_rows for f in group)
        write_parquet(data, out, table)
        written = pq.ParquetFile(out).metadata.num_rows
        if written != expected or data.num_rows != expected:
            msg = f"merged {written} rows for {expected} in {folder}: compaction abandoned"
            raise RuntimeError(msg)
        return expected

    def _merge_swap(self, table: str, folder: Path, group: list[DataFile], name: str) -> None:
        """One compaction by folder exchange (the module docstring's first steps 1-4)."""
        staging = self._staging_root() / table / folder.name
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        inputs = {f.path.name for f in group}
        try:
            expected = self._merged_rows(table, folder, group, staging / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _pause("merged")
        # The slow part (the merge) is done; from listing the folder to the exchange, no file
        # may appear in it (it would stay in the old folder, which is deleted).
        with self._folder_lock:
            self._stage_and_exchange(table, folder, staging, name, inputs, expected)

    def _stage_and_exchange(
        self, table: str, folder: Path, staging: Path, name: str, inputs: set[str], rows: int
    ) -> None:
        try:
            for path in folder.iterdir():
                if path.name not in inputs:
                    os.link(path, staging / path.name)
            fsync_dir(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _pause("staged")
        intent = {
            "method": "swap",
            "table": table,
            "folder": folder.name,
            "merged": name,
            "inputs": sorted(inputs),
            "rows": rows,
        }
        write_json_atomic(self.layout.compaction_intent, intent, durable=True)
        _pause("intent written")
        try:
            swap.exchange(folder, staging)
            fsync_dir(folder.parent)
            fsync_dir(staging.parent)
            _pause("folders exchanged")
            shutil.rmtree(staging)
            fsync_dir(staging.parent)
            _pause("old files deleted")
        finally:
            self.resolve_intent(quiet=True)

    def _merge_hide(self, table: str, folder: Path, group: list[DataFile], name: str) -> None:
        """One compaction by renames (the module docstring's second steps 1-6)."""
        merged = folder / name
        tmp = merged.with_name(merged.name + ".tmp")
        try:
            expected = self._merged_rows(table, folder, group, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _pause("merged file written")
        intent = {
            "table": table,
            "folder": folder.name,
            "merged": merged.name,
            "inputs": [f.path.name for f in group],
            "rows": expected,
        }
        write_json_atomic(self.layout.compaction_intent, intent, durable=True)
        _pause("intent written")
        try:
            for f in group:
                os.replace(f.path, f.path.with_name(f.path.name + HIDDEN))
                _pause(f"hid {f.path.name}")
            os.replace(tmp, merged)
            fsync_dir(folder)
            _pause("merged file in place")
            for f in group:
                f.path.with_name(f.path.name + HIDDEN).unlink()
            fsync_dir(folder)
            _pause("inputs deleted")
        finally:
            # Done: drops the intent. Failed midway (a rename refused): rolls back or forward
            # now, exactly as a restart would, so the folder is whole before anything else runs.
            self.resolve_intent(quiet=True)

    # -- when to compact --------------------------------------------------------------------

    def note_chunk(self, built: dict[tuple[str, str], pa.Table]) -> None:
        """Remembers the folders a just-materialized chunk wrote to, and the runs it ended."""
        self.schedule.note_chunk(built)

    def run_due(self, committed: int) -> None:
        """Compacts what the schedule says is due (schedule.py): ended runs, and at each sweep
        the folders that grew.

        Never raises: the files stay valid whatever fails here; a folder that failed is tried
        again at a later sweep.
        """
        errors = []
        for table, folder, min_files in self.schedule.due():
            try:
                self.compact_folder(table, folder, committed, min_files)
            except Exception as exc:  # disk full, a damaged file: log, keep materializing
                errors.append(f"{table}/{folder}: {type(exc).__name__}: {exc}")
                self.schedule.at_next_sweep(table, folder)
        self.last_error = "; ".join(errors) or None
        if errors:
            self._warning(f"compaction failed (those files are unchanged): {self.last_error}")

    def compact_all(self, committed: int, min_files: int = 2) -> int:
        """Compacts every run folder of every table; returns the number of merges."""
        folders = run_folders(self.layout)
        return sum(self.compact_folder(t, f, committed, min_files) for t, f in folders)


def committed_position(store: Path) -> int:
    """The materializer's cursor: every file range below it is committed."""
    state = _read_json(StoreLayout(store).materializer_cursor)
    return int(state["position"]) if state else 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _pause(step: str) -> None:
    setting = os.environ.get(PAUSE_ENV)
    if setting:
        seconds, _, only = setting.partition(":")
        # A raw stderr line, not logging: the crash tests wait for it before they kill, and it
        # must appear even where a program silenced traintape's loggers.
        print(f"traintape compaction step: {step}", file=sys.stderr, flush=True)
        if only in step:
            time.sleep(float(seconds))


def _info(text: str) -> None:
    logger.info("%s", text)


def _warning(text: str) -> None:
    logger.warning("%s", text)


# Beside this module's own names, what it takes from merging.py and schedule.py.
__all__ = ["MIN_FILES_PERIODIC", "SETTLE_S", "SORT_KEYS", "SWEEP_INTERVAL_S", "TARGET_BYTES"]
__all__ += ["Compactor", "DataFile", "committed_position", "data_files", "merged_table", "plan"]
__all__ += ["sort_for_storage", "write_parquet"]


if __name__ == "__main__":  # `python -m traintape.collector.compaction`: offline.py
    from traintape.collector.offline import main

    sys.exit(main())
