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
file just before it went away can fail with "file not found"; `traintape.read.history` retries such
a query.

The materializer's own startup rule (files whose journal range starts at or past its cursor are
uncommitted leftovers) applies to compacted files too, and compaction only ever touches files
whose range ends at or below the cursor, so the two never delete each other's files.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from traintape.collector import swap
from traintape.durable import fsync_dir, write_json_atomic
from traintape.layout import StoreLayout, compacted_name, data_file_range, run_folder_name

TARGET_BYTES = 64 << 20
"""A file at least this big is left as it is; a merge reads at most about this many bytes."""

MIN_FILES_PERIODIC = 16
"""A live run's folder is compacted by the periodic sweep once it has this many small files."""

SETTLE_S = 30.0
"""Seconds a run's folders are left as they are after its end (and after the collector starts)
before they are merged: whoever queries a run the moment it ends reads it undisturbed."""

SWEEP_INTERVAL_S = 300.0
"""Seconds between sweeps over every run folder (ended runs are compacted at once)."""

ROW_GROUP_ROWS = 64 * 1024
"""Most rows per Parquet row group in merged files."""

MIN_GROUP_ROWS = 4096
"""Row groups of sorted tables start at a new key once they hold this many rows: a query for
one metric then reads only that metric's row groups (DuckDB skips the others by their min/max
statistics), while metrics logged rarely still share a group and keep the footer small."""

SORT_KEYS: dict[str, list[tuple[str, str]]] = {
    "metrics": [("key", "ascending"), ("rank", "ascending"), ("step", "ascending")],
    "system": [("key", "ascending"), ("ts", "ascending")],
}
"""How merged rows are ordered per table (other tables keep the journal's order)."""

INTENT = StoreLayout(Path()).compaction_intent.relative_to(".")
"""The intent file, relative to the store (for tests)."""
HIDDEN = ".compacted"
STAGING = ".staging"
"""`tables/.staging/`: where a swap builds a folder's next state (outside every table's glob)."""
METHODS = ("auto", "swap", "hide")
PAUSE_ENV = "TRAINTAPE_TEST_COMPACTION_PAUSE"
"""Tests only: `SECONDS[:STEP]` prints a `traintape compaction step: ...` line on stderr after
each step and sleeps SECONDS after each step (or only after those whose text contains STEP), so a
test can SIGKILL the process at a known point."""


@dataclass(frozen=True)
class DataFile:
    path: Path
    start: int
    end: int
    size: int


def data_files(folder: Path) -> list[DataFile]:
    """The `part-*` and `compact-*` Parquet files of one run folder, oldest range first."""
    found = []
    for path in folder.glob("*.parquet"):
        bounds = data_file_range(path.name)
        if bounds is not None:
            found.append(DataFile(path, *bounds, path.stat().st_size))
    return sorted(found, key=lambda f: f.start)


def plan(files: list[DataFile], committed: int, min_files: int) -> list[list[DataFile]]:
    """Groups of files to merge: contiguous small files past the last big one, each group under
    TARGET_BYTES, only ranges already committed by the materializer."""
    files = [f for f in files if f.end <= committed]
    tail: list[DataFile] = []
    for f in files:
        if f.size >= TARGET_BYTES:
            tail = []
        else:
            tail.append(f)
    if len(tail) < min_files:
        return []
    groups: list[list[DataFile]] = [[]]
    total = 0
    for f in tail:
        if groups[-1] and total + f.size > TARGET_BYTES:
            groups.append([])
            total = 0
        groups[-1].append(f)
        total += f.size
    return [g for g in groups if len(g) >= 2]


def merged_table(table: str, paths: Iterable[Path]) -> pa.Table:
    data = pa.concat_tables([pq.ParquetFile(p).read() for p in paths], promote_options="default")
    return sort_for_storage(table, data)


def sort_for_storage(table: str, data: pa.Table) -> pa.Table:
    keys = SORT_KEYS.get(table)
    return data.sort_by(keys) if keys else data


def write_parquet(data: pa.Table, path: Path, table: str | None = None) -> None:
    """Writes and fsyncs `path` (the caller renames it into place); a table sorted by key
    (`SORT_KEYS`) gets row groups that start at key boundaries."""
    bounds = _row_groups(data) if table in SORT_KEYS else None
    if bounds is None:
        pq.write_table(data, path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    else:
        with pq.ParquetWriter(path, data.schema, compression="zstd") as writer:
            for lo, hi in zip(bounds, bounds[1:]):
                writer.write_table(data.slice(lo, hi - lo), row_group_size=ROW_GROUP_ROWS)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _row_groups(data: pa.Table) -> list[int]:
    """Row offsets where groups start (and the end): at a key change once a group has
    MIN_GROUP_ROWS rows, and every ROW_GROUP_ROWS rows within a key."""
    keys = data.column("key").combine_chunks().dictionary_encode().indices.to_numpy()
    changes = (np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist() if len(keys) else []
    bounds = [0]
    for at in [*changes, len(keys)]:
        while at - bounds[-1] > ROW_GROUP_ROWS:
            bounds.append(bounds[-1] + ROW_GROUP_ROWS)
        if at - bounds[-1] >= MIN_GROUP_ROWS or at == len(keys):
            bounds.append(at)
    return [b for i, b in enumerate(bounds) if i == 0 or b > bounds[i - 1]]


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
    ) -> None:
        """`folder_lock`: held by whoever adds a file to a run folder while this compacts on
        another thread (the materializer); a swap holds it from listing the folder's other files
        to the exchange, so no file written meanwhile is left behind in the old folder."""
        if method not in METHODS:
            msg = f"compaction method must be one of {METHODS}, got {method!r}"
            raise ValueError(msg)
        self.store = store
        self.layout = StoreLayout(store)
        self.method = method  # "auto": swap where the filesystem can, decided at the first merge
        self.sweep_interval = sweep_interval
        self.settle = settle
        self._log = log or _stderr
        self._started = time.monotonic()
        # (table or "*", folder) -> when it became due: compacted `settle` seconds later.
        self._pending: dict[tuple[str, str], float] = {}
        self._touched: set[tuple[str, str]] = set()  # (table, folder) written since the sweep
        self._last_sweep: float | None = None  # the first sweep, at startup, merges any 2 files
        self._folder_lock = folder_lock or threading.Lock()
        self._due_lock = (
            threading.Lock()
        )  # _pending and _touched: note_chunk runs on another thread
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
        for path in self.layout.tables.glob("*/*/compact-*"):
            bounds = data_file_range(path.name)
            if path.name.endswith(".tmp") or bounds is None or bounds[0] >= committed:
                path.unlink(missing_ok=True)  # a merge that never committed / a reset cursor
            elif path.name.endswith(HIDDEN):
                self._log(f"{path} is hidden but no compaction intent names it; left as is")

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
            self._pending[intent["table"], intent["folder"]] = time.monotonic()
        intent_path.unlink()
        fsync_dir(intent_path.parent)
        if not quiet:
            action = "finished" if done else "rolled back"
            self._log(f"{action} an interrupted compaction of {intent['table']}/{intent['folder']}")

    def _staging_root(self) -> Path:
        return self.layout.tables / STAGING

    def _swaps(self) -> bool:
        if self.method == "auto":
            root = self._staging_root()
            root.mkdir(parents=True, exist_ok=True)
            self.method = "swap" if swap.supported(root) else "hide"
            if self.method == "hide":
                self._log(
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
            self._merge(table, folder, group)
            done += 1
        return done

    def _merge(self, table: str, folder: Path, group: list[DataFile]) -> None:
        if self._swaps():
            self._merge_swap(table, folder, group)
        else:
            self._merge_hide(table, folder, group)
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

    def _merge_swap(self, table: str, folder: Path, group: list[DataFile]) -> None:
        """One compaction by folder exchange (the module docstring's first steps 1-4)."""
        name = compacted_name(group[0].start, group[-1].end)
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

    def _merge_hide(self, table: str, folder: Path, group: list[DataFile]) -> None:
        """One compaction by renames (the module docstring's second steps 1-6)."""
        merged = folder / compacted_name(group[0].start, group[-1].end)
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
        ended = [
            run_id
            for (table, run_id), data in built.items()
            if table == "events" and "run_end" in data.column("kind").to_pylist()
        ]
        with self._due_lock:
            self._touched.update((table, run_folder_name(run_id)) for table, run_id in built)
            for run_id in ended:
                self._pending.setdefault(("*", run_folder_name(run_id)), time.monotonic())

    def run_due(self, committed: int) -> None:
        """Compacts ended runs now; every sweep interval, the folders written to since the last
        sweep that have MIN_FILES_PERIODIC small files; at the first call, every folder.

        Never raises: the files stay valid whatever fails here; a folder that failed is tried
        again at a later sweep.
        """
        now = time.monotonic()
        first = self._last_sweep is None and now - self._started >= self.settle
        sweep = first or (
            self._last_sweep is not None and now - self._last_sweep >= self.sweep_interval
        )
        with self._due_lock:
            ready = sorted(k for k, since in self._pending.items() if now - since >= self.settle)
            if not ready and not sweep:
                return
            for key in ready:
                del self._pending[key]
            touched = sorted(self._touched) if sweep else []
            if sweep:
                self._touched = set()
        due: list[tuple[str, str, int]] = []
        for table, folder in ready:
            for name in _table_names(self.store) if table == "*" else [table]:
                due.append((name, folder, 2))
        if first:  # whatever was left uncompacted while no collector ran
            due += [(t, f, 2) for t, f in self._all_folders()]
        elif sweep:
            due += [(t, f, MIN_FILES_PERIODIC) for t, f in touched]
        if sweep:
            self._last_sweep = time.monotonic()
        errors = []
        for table, folder, min_files in due:
            if not (self.layout.table(table) / folder).is_dir():
                continue
            try:
                self.compact_folder(table, folder, committed, min_files)
            except Exception as exc:  # disk full, a damaged file: log, keep materializing
                errors.append(f"{table}/{folder}: {type(exc).__name__}: {exc}")
                with self._due_lock:
                    self._touched.add((table, folder))
        self.last_error = "; ".join(errors) or None
        if errors:
            self._log(f"compaction failed (those files are unchanged): {self.last_error}")

    def _all_folders(self) -> list[tuple[str, str]]:
        return [
            (table, folder.name)
            for table in _table_names(self.store)
            for folder in sorted(self.layout.table(table).iterdir())
            if folder.is_dir() and not folder.name.startswith("_")
        ]

    def compact_all(self, committed: int, min_files: int = 2) -> int:
        """Compacts every run folder of every table; returns the number of merges."""
        return sum(self.compact_folder(t, f, committed, min_files) for t, f in self._all_folders())


def committed_position(store: Path) -> int:
    """The materializer's cursor: every file range below it is committed."""
    state = _read_json(StoreLayout(store).materializer_cursor)
    return int(state["position"]) if state else 0


def _table_names(store: Path) -> list[str]:
    root = StoreLayout(store).tables
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _pause(step: str) -> None:
    setting = os.environ.get(PAUSE_ENV)
    if setting:
        seconds, _, only = setting.partition(":")
        print(f"traintape compaction step: {step}", file=sys.stderr, flush=True)
        if only in step:
            time.sleep(float(seconds))


def _stderr(text: str) -> None:
    print(f"traintape collector: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m traintape.collector.compaction --store DIR`: compacts a store offline."""
    from traintape.paths import resolve_store

    p = argparse.ArgumentParser(prog="python -m traintape.collector.compaction")
    p.add_argument("--store", default=None)
    p.add_argument("--min-files", type=int, default=2)
    p.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="swap: exchange folders atomically; hide: rename file by file; auto: swap if "
        "this filesystem can (default)",
    )
    args = p.parse_args(argv)
    store = resolve_store(args.store)
    with open(StoreLayout(store).lock, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"a collector serves {store}; it compacts by itself", file=sys.stderr)
            return 2
        committed = committed_position(store)
        compactor = Compactor(store, method=args.method)
        compactor.recover(committed)
        merges = compactor.compact_all(committed, args.min_files)
    print(f"{merges} merges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
