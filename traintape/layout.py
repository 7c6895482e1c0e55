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
      spool/<run>.<rank>.<source>.spool               batches waiting for this collector
      checkpoints/<run_id>/                           checkpoint files
      artifacts/objects/<sha256[:2]>/<sha256[2:]>      logged artifacts, by content (private)
      artifacts/tmp/  artifacts/gc.lock               copies under way; gc against writers
      tensorboard/                                    the TensorBoard sink's event files
      keys/                                           CURVE keys

Several collectors (one per node, `traintape serve --collector-id ID`) can share one store root.
Each owns its own folder, `collectors/<ID>/`, holding what the root holds for the default
collector (collector.lock, .pid, .sock, journal/, state/, deadletter/, tensorboard/, spool/),
and its own run folders, `tables/<table>/<run folder>@<ID>/` (a run folder name never holds
`@`), so nothing is locked across collectors and every reader's `tables/<table>/*/*.parquet` glob
sees them all.
No id is the store's own collector: the layout above, unchanged.

Importing this module imports nothing but the standard library.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from traintape.errors import ConfigError
from traintape.schemas.limits import valid_run_id

COLLECTORS = "collectors"
"""`<store>/collectors/<ID>/`: the folder of collector ID (journal, state, lock, socket)."""
COLLECTOR_MARK = "@"
"""`<run folder>@<ID>`: collector ID's folder of a run in a table (never in a run folder name)."""
COLLECTOR_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
COLLECTOR_ID_ENV = "TRAINTAPE_COLLECTOR_ID"
"""The collector id of `traintape serve` and of emitters' default address, when not given."""

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


def check_collector_id(collector: str | None, where: str = "--collector-id") -> str | None:
    """`collector` if it names a collector safely (COLLECTOR_ID_PATTERN), None for none."""
    if collector is None or (type(collector) is str and COLLECTOR_ID_PATTERN.fullmatch(collector)):
        return collector  # (a YAML `collector_id: 42` is an int: refused as any other bad id)
    msg = (
        f"{where}: {collector!r} is not a collector id: 1-64 characters, letters, digits, "
        "`.`, `_`, `-`, starting with a letter or digit (the node's host name, say)"
    )
    raise ConfigError(msg)


def folder_collector(folder_name: str) -> str | None:
    """The collector id a table's run folder belongs to (None: the store's own collector)."""
    _, mark, collector = folder_name.partition(COLLECTOR_MARK)
    return collector if mark else None


def folder_run(folder_name: str) -> str:
    """The run folder name (`run_folder_name`) of a table's folder, whichever collector's."""
    return folder_name.partition(COLLECTOR_MARK)[0]


@dataclass(frozen=True)
class StoreLayout:
    """Paths of one store, as seen by one collector (`collector`: its id, None for the store's
    own). Build it once (`StoreLayout(resolve_store(...))`) and pass it on."""

    root: Path
    collector: str | None = None

    @property
    def home(self) -> Path:
        """The folder of this collector's own files: the root, or `collectors/<ID>/`."""
        if self.collector is None:
            return self.root
        return self.root / COLLECTORS / self.collector

    # -- the collector ---------------------------------------------------------------------------

    @property
    def lock(self) -> Path:
        return self.home / "collector.lock"

    @property
    def pid(self) -> Path:
        return self.home / "collector.pid"

    @property
    def socket(self) -> Path:
        """The collector's default ipc:// socket (traintape.paths.default_address)."""
        return self.home / "collector.sock"

    @property
    def journal(self) -> Path:
        return self.home / "journal"

    @property
    def deadletter(self) -> Path:
        return self.home / "deadletter"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    # -- state of the collector and its followers -----------------------------------------------

    @property
    def state(self) -> Path:
        return self.home / "state"

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

    def folder_name(self, run_id: str) -> str:
        """This collector's folder name for a run, in every table."""
        name = run_folder_name(run_id)
        return name if self.collector is None else f"{name}{COLLECTOR_MARK}{self.collector}"

    def run_folder(self, table: str, run_id: str) -> Path:
        """This collector's folder of a run (where it writes and compacts)."""
        return self.tables / table / self.folder_name(run_id)

    def run_folders_of(self, table: str, run_id: str) -> list[Path]:
        """Every collector's folder of a run in `table` that exists (what a reader reads)."""
        name = run_folder_name(run_id)  # [A-Za-z0-9._-] only: nothing a glob takes as special
        folders = [self.tables / table / name, *self.table(table).glob(name + COLLECTOR_MARK + "*")]
        return sorted(f for f in folders if f.is_dir())

    def owns_folder(self, folder_name: str) -> bool:
        """Whether a table's run folder is this collector's (it alone writes and compacts it)."""
        return folder_collector(folder_name) == self.collector

    @property
    def compaction_staging(self) -> Path:
        """Where this collector's compaction builds a folder's next state (outside every glob)."""
        name = ".staging" if self.collector is None else f".staging{COLLECTOR_MARK}{self.collector}"
        return self.tables / name

    def empty_table_file(self, table: str) -> Path:
        return self.tables / table / EMPTY_FOLDER / "empty.parquet"

    def run_files(self, pattern: str) -> Iterator[Path]:
        """The files matching `pattern` (a glob: "part-*") in this collector's run folders of
        every table (another collector's are never its to delete)."""
        return (p for p in self.tables.glob(f"*/*/{pattern}") if self.owns_folder(p.parent.name))

    # -- beside the collector --------------------------------------------------------------------

    @property
    def spool(self) -> Path:
        """Where emitters of this collector spool; $TRAINTAPE_SPOOL_DIR moves it off the store's
        disk. Each collector has its own (`<home>/spool`, `$TRAINTAPE_SPOOL_DIR/collectors/<ID>`),
        so `traintape replay` of one collector never delivers batches meant for another."""
        override = os.environ.get("TRAINTAPE_SPOOL_DIR")
        base = Path(override).expanduser().resolve() if override else None
        if self.collector is None:
            return base if base is not None else self.root / "spool"
        return base / COLLECTORS / self.collector if base is not None else self.home / "spool"

    def spools(self) -> list[Path]:
        """Every collector's spool folder that exists (the store's own first, then by id)."""
        ids = {p.name for p in (self.root / COLLECTORS).glob("*") if p.is_dir()}
        ids |= {p.name for p in (StoreLayout(self.root).spool / COLLECTORS).glob("*")}
        found = [StoreLayout(self.root).spool]
        found += [
            StoreLayout(self.root, i).spool
            for i in sorted(ids)
            if COLLECTOR_ID_PATTERN.fullmatch(i)
        ]
        return [f for f in found if f.is_dir()]

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
        return self.home / "tensorboard"
