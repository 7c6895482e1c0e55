"""Materializer: journal -> partitioned Parquet files, about every `interval` seconds (in its own
process beside the collector: materializer_process.py).

Files are `tables/<table>/<run_id>/part-<start>-<end>.parquet`, named by the journal range they
hold, each written under a temporary name, fsync'd and renamed (a reader globbing the folder
never sees a half-written file). The cursor (`state/materializer.json`) moves only after the
files are in place; on start, files from a range at or past the cursor are leftovers of a run
that died before committing and are deleted, so no row is ever stored twice.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from traintape.collector.compaction import Compactor
from traintape.collector.journal import Journal
from traintape.collector.tables import TableBuilder
from traintape.durable import write_json_atomic
from traintape.schemas import tables
from traintape.schemas.records import split_payload
from traintape.schemas.wire import WireError, decode_body, decode_header

MAX_CHUNK_BYTES = 128 << 20  # journal bytes turned into one set of files at most


def tables_dir(store: Path) -> Path:
    return store / "tables"


def ensure_empty_tables(store: Path) -> None:
    """A schema-only file per table, so views over the folders work before any data arrives."""
    for name, schema in tables.TABLES.items():
        path = tables_dir(store) / name / "_empty" / "empty.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            pq.write_table(schema.empty_table(), tmp)
            os.replace(tmp, path)


class Materializer:
    def __init__(
        self,
        store: Path,
        journal: Journal,
        interval: float = 0.5,
        compact_settle: float | None = None,
    ) -> None:
        self.store = store
        self.journal = journal
        self.interval = interval
        self._cursor_path = store / "state" / "materializer.json"
        self._cursor_path.parent.mkdir(parents=True, exist_ok=True)
        self.position = self._load_cursor()
        self.rows_written = 0
        self.skipped_records = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="traintape-materializer", daemon=True
        )
        ensure_empty_tables(store)
        self.compactor = (
            Compactor(store) if compact_settle is None else Compactor(store, settle=compact_settle)
        )
        # First: rolling back an interrupted compaction can restore part files.
        self.compactor.recover(self.position)
        self._remove_uncommitted()

    def _load_cursor(self) -> int:
        try:
            return int(json.loads(self._cursor_path.read_text())["position"])
        except FileNotFoundError:
            return 0

    def _save_cursor(self, position: int) -> None:
        # Not fsync'd: an older cursor after a crash only means re-materializing (the files
        # past it are removed at start), never a row twice.
        write_json_atomic(self._cursor_path, {"position": position})

    def _remove_uncommitted(self) -> None:
        for path in tables_dir(self.store).glob("*/*/part-*"):
            start = _range_of(path)[0]
            if start is None or start >= self.position or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Materializes everything durable in the journal, then stops."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.catch_up()

    def status(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "rows_written": self.rows_written,
            "skipped_records": self.skipped_records,
            "last_error": self.last_error,
            "compaction_error": self.compactor.last_error,
        }

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.catch_up()
            except Exception as exc:  # keep serving; the journal still holds everything
                self.last_error = f"{type(exc).__name__}: {exc}"
                print(
                    f"traintape collector: materializer error: {self.last_error}", file=sys.stderr
                )
                time.sleep(1.0)

    def catch_up(self) -> None:
        while self.journal.durable_end > self.position:
            self._materialize_chunk(self.journal.durable_end)
        self.compactor.run_due(self.position)

    def _materialize_chunk(self, end: int) -> None:
        start = self.position
        builder = TableBuilder()
        stop = start
        for _, nxt, payload in self.journal.read(start, end):
            header_frame, body_frame = split_payload(payload)
            try:
                header = decode_header(header_frame)
                builder.add(header, decode_body(body_frame, header.n))
            except (WireError, ValueError, TypeError, KeyError) as exc:
                # Ingest validated it, so this is a bug or disk damage: skip, say so, go on.
                self.skipped_records += 1
                print(f"traintape collector: skipping journal record: {exc}", file=sys.stderr)
            stop = nxt
            if stop - start >= MAX_CHUNK_BYTES:
                break
        if stop == start:
            return
        built = builder.build()
        for (table, run_id), data in built.items():
            folder = tables_dir(self.store) / table / _safe(run_id)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"part-{start:020d}-{stop:020d}.parquet"
            tmp = path.with_name(path.name + ".tmp")
            pq.write_table(data, tmp, compression="zstd")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            self.rows_written += data.num_rows
        self._save_cursor(stop)
        self.position = stop
        self.compactor.note_chunk(built)


def _safe(run_id: str) -> str:
    """A run id as a folder name (ids are the user's choice when resuming)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id) or "_"


def _range_of(path: Path) -> tuple[int | None, int | None]:
    parts = path.name.split(".")[0].split("-")
    try:
        return int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return None, None
