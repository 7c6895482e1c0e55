"""Materializer: journal -> partitioned Parquet files, about every `interval` seconds (in its own
process beside the collector: materializer_process.py).

Files are `tables/<table>/<run folder>/part-<start>-<end>.parquet` (`<run folder>@<ID>` for
collector ID: layout.py), named by the journal range they hold, each written under a temporary
name, fsync'd and renamed (a reader globbing the folder never sees a half-written file). The cursor (`state/materializer.json`) moves only after the
files are in place; on start, files from a range at or past the cursor are leftovers of a run
that died before committing and are deleted, so no row is ever stored twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from traintape.collector.compaction import SETTLE_S, Compactor, committed_position
from traintape.collector.conform import conform_old_files
from traintape.collector.deadletter import DeadLetters
from traintape.collector.journal import Batch, Journal
from traintape.collector.merging import parquet_options
from traintape.collector.tables import BuildError, TableBuilder
from traintape.collector.validate import (
    bad_events,
    check_batch,
    event_frames,
    split_new,
)
from traintape.durable import write_json_atomic
from traintape.layout import StoreLayout, data_file_range, part_name
from traintape.schemas import tables
from traintape.schemas.records import split_payload
from traintape.schemas.wire import BatchBody, BatchHeader, WireError

MAX_CHUNK_BYTES = 16 << 20
"""Journal bytes turned into one set of files at most (plus one record, itself at most a message,
16 MiB by default). Decoded, a chunk takes about 14x this: measured 225 MiB at the peak for a
chunk of metrics, 245 MiB for one of 12 MiB text events (at 32 MiB: 385 MiB, no faster)."""
COMPACTION_TICK_S = 1.0
"""How often the compaction thread looks for due work (runs ended `settle` seconds ago, sweeps)."""

logger = logging.getLogger(__name__)


def ensure_empty_tables(store: Path) -> None:
    """A schema-only file per table, so views over the folders work before any data arrives."""
    layout = StoreLayout(store)
    for name, schema in tables.TABLES.items():
        path = layout.empty_table_file(name)
        # A store written before microsecond `ts` gets the current schema: DuckDB binds a
        # table's types from its first file, and this one is usually it.
        if not path.exists() or not pq.read_schema(path).equals(schema):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # collectors sharing the store race
            pq.write_table(schema.empty_table(), tmp)
            os.replace(tmp, path)


class Materializer:
    def __init__(
        self,
        store: Path,
        journal: Journal,
        interval: float = 0.5,
        compact_settle: float | None = None,
        collector: str | None = None,
    ) -> None:
        """`collector`: whose journal this is; it writes its own run folders only (layout.py)."""
        self.store = store
        self.layout = StoreLayout(store, collector)
        self.journal = journal
        self.interval = interval
        self._cursor_path = self.layout.materializer_cursor
        self._cursor_path.parent.mkdir(parents=True, exist_ok=True)
        self.position = committed_position(self.layout.home)
        self.rows_written = 0
        self.skipped_records = 0
        self.skipped_events = 0
        self.last_error: str | None = None
        self._dead: DeadLetters | None = None  # made at the first record set aside
        self._unclean = False  # files of a failed attempt may still lie past the cursor
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="traintape-materializer", daemon=True
        )
        # Merging a long run takes seconds: on its own thread, so values keep becoming
        # visible meanwhile. The lock keeps a part file from appearing in a folder mid-swap.
        self._compaction_thread = threading.Thread(
            target=self._compact, name="traintape-compaction", daemon=True
        )
        self._files_lock = threading.Lock()
        ensure_empty_tables(store)
        settle = SETTLE_S if compact_settle is None else compact_settle
        self.compactor = Compactor(
            store, folder_lock=self._files_lock, settle=settle, collector=collector
        )
        # First: rolling back an interrupted compaction can restore part files.
        self.compactor.recover(self.position)
        self._remove_uncommitted()

    def _save_cursor(self, position: int) -> None:
        # Not fsync'd: an older cursor after a crash only means re-materializing (the files
        # past it are removed at start), never a row twice.
        write_json_atomic(self._cursor_path, {"position": position})

    def _remove_uncommitted(self) -> None:
        for path in self.layout.run_files("part-*"):
            bounds = data_file_range(path.name)
            if bounds is None or bounds[0] >= self.position or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)

    def start(self) -> None:
        self._thread.start()
        self._compaction_thread.start()

    def stop(self) -> None:
        """Materializes everything durable in the journal, then stops (a merge under way is
        finished first; the process's stop budget bounds both, and each is crash-safe)."""
        self._stop.set()
        for thread in (self._thread, self._compaction_thread):
            if thread.is_alive():
                thread.join()
        self.catch_up()
        self.compactor.run_due(self.position)  # what is due now (an interrupted merge, say)

    def _compact(self) -> None:
        conform_old_files(self.compactor, self.position)  # once per store: nanosecond `ts`
        # At once first: the first sweep is for what was left while no collector ran.
        while True:
            self.compactor.run_due(self.position)  # never raises: failures wait a sweep
            if self._stop.wait(COMPACTION_TICK_S):
                return

    def status(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "rows_written": self.rows_written,
            "skipped_records": self.skipped_records,
            "skipped_events": self.skipped_events,
            "last_error": self.last_error,
            "compaction_error": self.compactor.last_error,
        }

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.catch_up()
            except Exception as exc:  # keep serving; the journal still holds everything
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.error("materializer error: %s", self.last_error)
                time.sleep(1.0)

    def catch_up(self) -> None:
        while self.journal.durable_end > self.position:
            before = self.position
            self._materialize_chunk(self.journal.durable_end)
            if self.position <= before:  # a loop that cannot move on is an error, not a spin
                msg = (
                    f"no progress at journal position {before} (durable end "
                    f"{self.journal.durable_end}): no record there can be read"
                )
                raise RuntimeError(msg)

    def _materialize_chunk(self, end: int) -> None:
        """One chunk of the journal -> one part file per (table, run), then the cursor.

        A record that cannot be decoded, validated or converted is set aside
        (a dead letter with its journal position and reason) and the chunk goes on without it:
        each retry of a chunk sets aside at least one more record, so none is retried forever.
        A failed write (disk full) removes what it wrote before the chunk is tried again, so no
        row is ever stored twice.
        """
        start = self.position
        if self._unclean:  # an earlier attempt died after writing files it could not remove
            self._remove_uncommitted()
            self._unclean = False
        aside: dict[int, str] = {}  # journal position -> why that record is set aside
        while True:
            chunk = self._read_chunk(start, end, aside)
            if chunk.stop == start:
                return
            try:
                built = chunk.builder.build()
                self._write(start, chunk.stop, built)
            except BuildError as exc:
                chunk.builder = TableBuilder()  # its memory goes before the search
                self._find_culprits(chunk, exc.run_id, str(exc), aside)
                continue
            break
        self._set_aside(chunk, aside)
        self._save_cursor(chunk.stop)
        self.position = chunk.stop
        self.compactor.note_chunk(built)

    def _read_chunk(self, start: int, end: int, aside: dict[int, str]) -> _Chunk:
        chunk = _Chunk(start)
        records = self.journal.read(start, end)
        for batch in records.batches():
            chunk.stop = batch.next_position
            if batch.position not in aside:
                try:
                    self._add_record(chunk, batch)
                except Exception as exc:  # whatever a bad record raises, it alone is set aside
                    aside[batch.position] = f"cannot be stored: {type(exc).__name__}: {exc}"
            if chunk.stop - start >= MAX_CHUNK_BYTES:
                break
        else:
            chunk.stop = max(chunk.stop, records.position)  # past damage set aside at the end
        return chunk

    def _add_record(self, chunk: _Chunk, batch: Batch) -> None:
        """Checks one decoded record (ingest's checks again: a journal written before them, or
        damaged on disk, may hold anything) and adds its good events to the chunk; raises what
        makes it unstorable."""
        header, body, pos = batch.header, batch.body, batch.position
        if header is None:
            raise batch.error or WireError("no header")
        check_batch(header, run_id_pattern=False)  # acknowledged once: kept, in a safe folder
        if body is None:
            raise batch.error or WireError("no body")
        chunk.runs.setdefault(header.run_id, []).append((pos, batch.next_position))
        bad = bad_events(body)
        if not bad:
            chunk.builder.add(header, body)
            return
        good, dead = split_new(header, [(header.seq0, header.seq_end)], bad)
        for lo, hi in good:
            a, b = lo - header.seq0, hi - header.seq0
            part = BatchBody(body.kinds[a:b], body.ts[a:b], body.steps[a:b], body.bodies[a:b])
            chunk.builder.add(
                BatchHeader(header.run_id, header.rank, header.source, lo, hi - lo), part
            )
        for seq in dead:
            reason = f"event seq {seq}: {bad[seq - header.seq0]}"
            chunk.events_aside.append((pos, event_frames(header, body, seq), reason))

    def _find_culprits(self, chunk: _Chunk, run_id: str, error: str, aside: dict[int, str]) -> None:
        """The records of `run_id` that fail to convert alone; all of them if none does."""
        records = chunk.runs.get(run_id, [])
        found = False
        for pos, nxt in records:
            if pos in aside:
                continue
            solo = _Chunk(pos)
            try:
                for batch in self.journal.read(pos, nxt).batches():
                    self._add_record(solo, batch)
                solo.builder.build()
            except Exception as exc:
                aside[pos] = f"cannot be stored: {type(exc).__name__}: {exc}"
                found = True
        if not found:  # only together do they fail: none is kept back from the others forever
            for pos, _ in records:
                aside.setdefault(pos, f"cannot be stored with the rest of its chunk: {error}")

    def _write(self, start: int, stop: int, built: dict[tuple[str, str], Any]) -> None:
        """Writes the chunk's files; on failure removes those it wrote (then raises)."""
        written: list[Path] = []
        self._unclean = True
        try:
            for (table, run_id), data in built.items():
                # A folder that cannot be made is the store's problem, never a record's (run
                # folder names are safe by construction): the chunk fails and is tried again.
                folder = self.layout.run_folder(table, run_id)
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / part_name(start, stop)
                tmp = path.with_name(path.name + ".tmp")
                with self._files_lock:  # not while compaction swaps folders
                    written.append(tmp)
                    pq.write_table(data, tmp, **parquet_options(data.schema))
                    with open(tmp, "rb") as f:
                        os.fsync(f.fileno())
                    os.replace(tmp, path)
                    written.append(path)
        except BaseException:
            try:
                for path in written:
                    path.unlink(missing_ok=True)
                self._unclean = False
            except OSError:
                pass  # removed before the next attempt (_remove_uncommitted)
            raise
        self._unclean = False
        self.rows_written += sum(data.num_rows for data in built.values())

    def _set_aside(self, chunk: _Chunk, aside: dict[int, str]) -> None:
        """Dead letters for what this chunk could not store, before its cursor moves on."""
        if not aside and not chunk.events_aside:
            return
        dead = self._dead_letters()
        for pos, reason in sorted(aside.items()):
            frames: list[bytes] = []
            for _, _, payload in self.journal.read(pos, pos + 1):
                frames = list(split_payload(payload))
                break
            self.skipped_records += 1
            dead.add(frames, f"journal record at {pos}: {reason}", position=pos)
        for pos, frames, reason in chunk.events_aside:
            self.skipped_events += 1
            dead.add(frames, f"journal record at {pos}, {reason}", position=pos)

    def _dead_letters(self) -> DeadLetters:
        if self._dead is None:
            self._dead = DeadLetters(self.layout.home, "materializer.log", label="materializer")
        return self._dead


class _Chunk:
    """What one attempt at a chunk read: its builder, its records by run, events set aside."""

    def __init__(self, start: int) -> None:
        self.stop = start
        self.builder = TableBuilder()
        self.runs: dict[str, list[tuple[int, int]]] = {}
        self.events_aside: list[tuple[int, list[bytes], str]] = []
