"""The store's on-disk layout: the one place that knows where each file of a store lives.

::

    <store>/
      collector.lock  collector.pid  collector.sock   one collector per store; its ipc socket
      journal/<first position, 20 digits>.log         segments (traintape.collector.journal)
      journal/damaged/<start>-<end>.bin               bytes the journal reader set aside
      tables/<table>/<run folder>/part-<start>-<end>.parquet   rows of journal range [start, end)
      tables/<table>/_empty/empty.parquet             so views work before any data
      state/collector.json                            the collector's counters and errors
      state/materializer.json                         the materializer's cursor
      state/<follower>.status.json, <follower>.lock   each child process's status and lock
      state/sinks/<sink>.json                         each sink's cursor and state
      state/liveness.json                             what the collector knows of live runs
      deadletter/                                     what the collector and materializer refused
      spool/<run>.<rank>.<source>.spool               batches waiting for a collector
      checkpoints/<run_id>/                           checkpoint files
      artifacts/objects/<sha256[:2]>/<sha256[2:]>      logged artifacts, by content (private)
      artifacts/tmp/  artifacts/gc.lock               copies under way; gc against writers
      tensorboard/                                    the TensorBoard sink's event files
      keys/                                           CURVE keys

Importing this module imports nothing but the standard library.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from traintape.schemas.limits import valid_run_id

EMPTY_FOLDER = "_empty"
"""The folder of each table's schema-only file; never a run's (run ids start alphanumeric)."""


_MAX_FOLDER_CHARS = 200  # below NAME_MAX (255 bytes), with room for `.tmp` names beside


def run_folder_name(run_id: str) -> str:
    """A run id as a folder name. Valid ids (traintape.schemas.limits: checked at ingest, and
    `system:<host>`) map to themselves, `:` to `_`; anything else (a journal written before ingest
    checked ids) to ASCII that is never hidden (`.`, `..`) nor too long, kept apart by a digest."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in run_id)
    if valid_run_id(run_id) and len(name) <= _MAX_FOLDER_CHARS:
        return name
    digest = hashlib.sha1(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"_{name[:64]}-{digest}"


def part_name(start: int, end: int) -> str:
    """The file of the rows that came from journal range [start, end)."""
    return f"part-{start:020d}-{end:020d}.parquet"


def compacted_name(start: int, end: int) -> str:
    """The file compaction merges the rows of journal range [start, end) into."""
    return f"compact-{start:020d}-{end:020d}.parquet"


def data_file_range(name: str) -> tuple[int, int] | None:
    """(start, end) of `part-S-E.parquet` or `compact-S-E.parquet[...]`, else None."""
    prefix, _, rest = name.partition("-")
    if prefix not in ("part", "compact"):
        return None
    bounds = rest.split(".", 1)[0].split("-")
    try:
        return int(bounds[0]), int(bounds[1])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class StoreLayout:
    """Paths of one store. Build it once (`StoreLayout(resolve_store(...))`) and pass it on."""

    root: Path

    # -- the collector ---------------------------------------------------------------------------

    @property
    def lock(self) -> Path:
        return self.root / "collector.lock"

    @property
    def pid(self) -> Path:
        return self.root / "collector.pid"

    @property
    def socket(self) -> Path:
        """The collector's default ipc:// socket (traintape.paths.default_address)."""
        return self.root / "collector.sock"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def deadletter(self) -> Path:
        return self.root / "deadletter"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    # -- state of the collector and its followers -----------------------------------------------

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def collector_status(self) -> Path:
        return self.state / "collector.json"

    @property
    def materializer_cursor(self) -> Path:
        return self.state / "materializer.json"

    @property
    def compaction_intent(self) -> Path:
        return self.state / "compaction.json"

    @property
    def liveness(self) -> Path:
        return self.state / "liveness.json"

    def follower_status(self, name: str) -> Path:
        return self.state / f"{name}.status.json"

    def follower_lock(self, name: str) -> Path:
        return self.state / f"{name}.lock"

    @property
    def sink_states(self) -> Path:
        return self.state / "sinks"

    def sink_state(self, file_name: str) -> Path:
        """A sink's cursor file; `file_name` is the sink's name made safe for a file."""
        return self.sink_states / f"{file_name}.json"

    # -- the tables ------------------------------------------------------------------------------

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    def table(self, table: str) -> Path:
        return self.tables / table

    def run_folder(self, table: str, run_id: str) -> Path:
        return self.tables / table / run_folder_name(run_id)

    def empty_table_file(self, table: str) -> Path:
        return self.tables / table / EMPTY_FOLDER / "empty.parquet"

    def run_files(self, pattern: str) -> Iterator[Path]:
        """The files matching `pattern` (a glob: "part-*") in every run folder of every table."""
        return self.tables.glob(f"*/*/{pattern}")

    # -- beside the collector --------------------------------------------------------------------

    @property
    def spool(self) -> Path:
        """Where emitters spool; $TRAINTAPE_SPOOL_DIR moves it off the store's disk."""
        override = os.environ.get("TRAINTAPE_SPOOL_DIR")
        return Path(override).expanduser().resolve() if override else self.root / "spool"

    def checkpoints(self, run_id: str) -> Path:
        return self.root / "checkpoints" / run_id

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def artifacts_lock(self) -> Path:
        """Held shared by artifact writers placing an object, exclusively by `traintape gc`."""
        return self.artifacts / "gc.lock"

    def artifact_object(self, sha256: str) -> Path:
        """Where the content of `sha256` (64 hex digits) lives (traintape.emitter.artifacts)."""
        return self.artifacts / "objects" / sha256[:2] / sha256[2:]

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"
