"""The dashboard's questions about runs: the runs table, one run's page, which metrics runs have.

Every function takes a DuckDB connection over the store (a cursor of the server's
`traintape.connect()`, see traintape.ui.server) and returns plain JSON-ready values
(`jsonable`). Per-run questions read only that run's folders (traintape.read.query).

The runs table shows the last and best value of every metric of every run. Computing them reads
every metric row of the store, so they are kept per run (`SummaryCache`) and recomputed only for
runs whose metrics folder changed since (new part files of a live run, a compaction's merge):
files are never rewritten in place, so the listing of a folder says whether its rows changed.
"""

from __future__ import annotations

import datetime
import logging
import math
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import duckdb

from traintape.errors import QueryError
from traintape.layout import StoreLayout, folder_run, run_folder_name
from traintape.read.history import (
    decode_param,
    flatten,
    metric_summary,
    records,
    rows,
    run_filter,
    run_rows,
    show,
)
from traintape.read.remote import RemoteTables
from traintape.read.store import connect
from traintape.ui.stores import Store, listing_of, root_of

__all__ = ["RunsCache", "SummaryCache", "jsonable", "metric_keys", "run_page", "runs_table"]

log = logging.getLogger("traintape.ui.api")

_RUN_COLUMNS = """run_id, name, project, status, tags, started, duration_s, host, git_commit, ranks,
                  world_size, attempts, ended, config"""


Summary = tuple[dict[str, Any], dict[str, Any]]
"""({metric: last value}, {metric: best value}) of one run"""


class SummaryCache:
    """Per run: the last and best value of each metric, kept while its metrics folder is
    unchanged (the same file names).

    A request computes the runs that changed itself when they are few (live runs, new runs: a
    few ms each). A larger backlog (a big store's first page: every metric row of every run, tens
    of seconds at 100 M rows) goes to one background thread, in chunks, newest runs first, over
    the connection `open_con` gives it (the server's: a database of its own, one DuckDB thread,
    so the page's requests keep the other cores); the request answers at once with what is ready
    and names the rest (`pending`), whose last and best the page gets on its next refresh.
    Whether a run changed is asked of its folders' listings (traintape.ui.listing).
    """

    INLINE = 32
    """Changed runs a request computes itself."""
    CHUNK = 50
    """Runs the background thread computes per query."""

    def __init__(self, store: Store, open_con: Callable[[], duckdb.DuckDBPyConnection]) -> None:
        self.layout = StoreLayout(root_of(store))
        self.listing = listing_of(store)
        self._open = open_con
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[frozenset[str], Summary]] = {}
        self._queue: dict[str, None] = {}  # an ordered set
        self._worker: threading.Thread | None = None
        self._stopped = False
        self._con: duckdb.DuckDBPyConnection | None = None  # the background thread's

    def stop(self) -> None:
        """No more background work (the server is closing): its running query is interrupted."""
        with self._lock:
            self._stopped = True
            self._queue.clear()
            if self._con is not None:
                self._con.interrupt()

    def idle(self) -> bool:
        """No background thread is computing."""
        with self._lock:
            return self._worker is None

    def _files(self, folders: list[str]) -> frozenset[str]:
        """The metrics files (`<folder>/<file>`) in these folders of the metrics table."""
        files: set[str] = set()
        table = str(self.layout.table("metrics"))
        for name in folders:
            files.update(f"{name}/{n}" for n in self.listing.names(f"{table}/{name}") or ())
        return frozenset(files)

    def _stale(self, run_ids: Sequence[str]) -> dict[str, frozenset[str]]:
        # Every collector's folder of a run (traintape.layout), from one listing of the table:
        # asking the layout run by run would list the whole table again for each run.
        names = self.listing.names(str(self.layout.table("metrics"))) or ()
        folders: dict[str, list[str]] = {}
        for name in names:
            folders.setdefault(folder_run(name), []).append(name)
        listing = {r: self._files(folders.get(run_folder_name(r), [])) for r in run_ids}
        with self._lock:
            return {
                r: f for r, f in listing.items() if r not in self._kept or self._kept[r][0] != f
            }

    def get(
        self, con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]
    ) -> tuple[dict[str, Summary], list[str]]:
        """({run_id: summary} of the runs ready, [run ids still being computed])."""
        stale = self._stale(run_ids)
        if len(stale) <= self.INLINE:
            self._compute(con, stale)
        else:
            self.schedule(list(stale))
        with self._lock:
            ready = {r: self._kept[r][1] for r in run_ids if r in self._kept}
            pending = [r for r in run_ids if r in self._queue or r not in self._kept]
        return ready, pending

    def _compute(self, con: duckdb.DuckDBPyConnection, listing: dict[str, frozenset[str]]) -> None:
        fresh: dict[str, Summary] = {r: ({}, {}) for r in listing}
        # Many runs' summaries are one query, not one per run.
        for m in metric_summary(con, list(listing)) if listing else []:
            fresh[m["run_id"]][0][m["key"]] = m["last"]
            fresh[m["run_id"]][1][m["key"]] = m["best"]
        with self._lock:
            for r, summary in fresh.items():
                self._kept[r] = (listing[r], summary)
                self._queue.pop(r, None)

    def schedule(self, run_ids: Sequence[str]) -> None:
        """Computes these runs' summaries in the background (in this order)."""
        with self._lock:
            self._queue.update(dict.fromkeys(run_ids))
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="traintape-ui-summaries", daemon=True
                )
                self._worker.start()

    def _work(self) -> None:
        try:
            con = self._open()
        except duckdb.Error:  # the server is closing its store
            with self._lock:
                self._worker = None
                self._queue.clear()
            return
        with self._lock:
            self._con = con
        try:
            while True:
                with self._lock:
                    batch = list(self._queue)[: self.CHUNK]
                    if not batch or self._stopped:
                        self._worker = None
                        return
                try:
                    self._compute(con, self._stale(batch))
                except duckdb.Error as exc:  # the store changed under it, or the server closes
                    if not self._stopped:
                        log.warning(
                            "traintape ui: summaries of %d runs failed: %s", len(batch), exc
                        )
                    with self._lock:
                        for r in batch:
                            self._queue.pop(r, None)
        finally:
            with self._lock:
                self._worker = self._con = None
            con.close()


class RunsCache:
    """The runs view's rows for a filter, kept while no run's events folder changed.

    A run's row comes from its events alone (run_start, run_end, the collector's run_status),
    and every new event lands in a new file: the same folders holding the same file names mean
    the same rows. Reading the view opens every run's events files (about 0.3 s at 1,000 runs);
    listing the folders takes a tenth of that. Durations of running runs are brought to now.
    """

    def __init__(self, store: Store, size: int = 32) -> None:
        self.folder = StoreLayout(root_of(store)).table("events")
        self.listing = listing_of(store)
        self.size = size
        self._lock = threading.Lock()
        self._kept: dict[tuple[Any, ...], tuple[Any, list[dict[str, Any]]]] = {}
        self._reading: dict[tuple[Any, ...], threading.Lock] = {}  # one reader per filter

    def signature(self) -> frozenset[tuple[str, frozenset[str]]]:
        """Every events folder with the names of its files."""
        out = []
        for name in self.listing.names(str(self.folder)) or ():
            # None: not a folder, or one swapped by a compaction (the next listing has it)
            files = self.listing.names(f"{self.folder}/{name}")
            if files is not None:
                out.append((name, files))
        return frozenset(out)

    def rows(
        self, key: tuple[Any, ...], read: Callable[[], list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """The rows `read()` gives for the filter `key`, from the cache when nothing changed."""
        sig = self.signature()
        with self._lock:
            reading = self._reading.setdefault(key, threading.Lock())
        # A request asking what another is reading (the server's warm-up at start) waits for it.
        with reading:
            with self._lock:
                hit = self._kept.get(key)
            if hit is not None and hit[0] == sig:
                found = [dict(r) for r in hit[1]]
            else:
                found = read()
                with self._lock:
                    if len(self._kept) >= self.size:
                        gone = next(iter(self._kept))
                        self._kept.pop(gone)
                        self._reading.pop(gone, None)
                    self._kept[key] = (sig, [dict(r) for r in found])
        now = datetime.datetime.now(datetime.timezone.utc)
        for r in found:
            if r.get("ended") is None and isinstance(r.get("started"), datetime.datetime):
                r["duration_s"] = (now - r["started"]).total_seconds()
        return found


def check_where(where: str) -> str:
    """`where` as one read-only SQL expression over the runs view, else QueryError."""
    sql = f"SELECT 1 FROM runs WHERE ({where})"
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        msg = f"where: {exc}"
        raise QueryError(msg) from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        msg = "where: one SQL expression over the runs view, e.g. status = 'running'"
        raise QueryError(msg)
    return where


def runs_table(
    con: duckdb.DuckDBPyConnection,
    cache: SummaryCache,
    *,
    runs_cache: RunsCache | None = None,
    project: str | None = None,
    tag: str | None = None,
    status: str | None = None,
    q: str | None = None,
    where: str | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """The runs table: one row per run (newest first) with its flat config and the last and
    best value of each metric; the union of metric keys and config keys for the column picker."""
    clause, params = run_filter(project, tag, status)
    extra = []
    if q:
        extra.append(
            "(name ILIKE ? OR project ILIKE ? OR run_id ILIKE ? "
            "OR array_to_string(tags, ' ') ILIKE ?)"
        )
        params += [f"%{q}%"] * 4
    if where:
        extra.append(f"({check_where(where)})")
    if extra:
        clause = (clause + " AND " if clause else "WHERE ") + " AND ".join(extra)
    sql = f"SELECT {_RUN_COLUMNS} FROM runs {clause} ORDER BY started DESC, run_id"

    def read() -> list[dict[str, Any]]:
        try:
            return records(con, sql, params)
        except duckdb.Error as exc:
            msg = f"where: {exc}" if where else str(exc)
            raise QueryError(msg) from None

    # A `where` may ask about the clock (duration_s, now()): always read afresh.
    cached = runs_cache is not None and not where
    found = runs_cache.rows((sql, *params), read) if cached and runs_cache else read()
    summaries, pending = cache.get(con, [r["run_id"] for r in found])
    metrics: set[str] = set()
    config_keys: set[str] = set()
    for run in found:
        config = decode_param(run.pop("config"))
        run["config"] = flatten(config) if isinstance(config, dict) else {}
        run["last"], run["best"] = summaries.get(run["run_id"], ({}, {}))
        run["tags"] = run["tags"] or []
        metrics.update(run["last"])
        config_keys.update(run["config"])
        if group:
            run["group"] = run["config"].get(group)
    return {
        "runs": found,
        "metrics": sorted(metrics),
        "config_keys": sorted(config_keys),
        "group": group or None,
        "pending": pending,  # runs whose last/best are still being computed (a big store's start)
    }


def run_page(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """traintape.read.history.show(), its text events, and the system keys sampled for it."""
    page = show(con, run_id)
    page["text"] = records(
        con,
        f"""SELECT step, rank, json_extract_string(body, '$.key') AS key,
                   json_extract_string(body, '$.text') AS text, ts
            FROM {run_rows(con, "events", [run_id])} WHERE kind = 'text' ORDER BY ts, rank""",
    )
    page["system_series"] = sorted({s["key"] for s in page["system"]})
    return page


def metric_keys(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> dict[str, Any]:
    """Each metric key the runs have, with the runs (in the order asked) that have it."""
    found = rows(
        con,
        f"SELECT DISTINCT key, run_id FROM {run_rows(con, 'metrics', run_ids)} ORDER BY key",
    )
    keys: dict[str, list[str]] = {}
    for key, run_id in found:
        keys.setdefault(key, []).append(run_id)
    order = {r: i for i, r in enumerate(run_ids)}
    return {"keys": [{"key": k, "runs": sorted(v, key=order.__getitem__)} for k, v in keys.items()]}


def jsonable(value: Any) -> Any:
    """`value` as strict JSON takes it: times as ISO text, NaN and ±Inf as "nan", "inf", "-inf"
    (JSON has no such numbers, and dropping them would hide a diverged run)."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return jsonable(float(value))
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    return value


def open_store(store: Store, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """The server's one `traintape.connect()`: files outside the store can be neither read nor
    written from it (a `where` filter is SQL the page sends), and that cannot be undone.
    `threads`: DuckDB's worker threads (default: one per core). An s3:// store has one database
    (its views follow the manifests, `cursor`): each call is a cursor of it, `threads` unused."""
    if isinstance(store, RemoteTables):
        store.lock_down()
        return store.database().cursor()
    con = connect(store)
    con.execute("SET enable_progress_bar = false")
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    con.execute("SET allowed_directories = [" + _sql_text(str(store.resolve())) + "]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def cursor(base: duckdb.DuckDBPyConnection, store: Store) -> duckdb.DuckDBPyConnection:
    """A connection for one request: a cursor of the server's, knowing its store (so per-run
    questions read only that run's folders). An s3:// store's views are first brought to its
    manifests as they are (cheap: a LIST at most every few seconds; RemoteTables.update)."""
    if isinstance(store, RemoteTables):
        store.update()
        return base.cursor()
    cur = base.cursor()
    cur.execute("SET VARIABLE traintape_store = " + _sql_text(str(store)))
    return cur


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
