"""Reading a store whose tables are on object storage: `traintape.connect("s3://bucket/prefix")`.

The collectors publish (traintape.collector.publish) and each keeps one manifest listing its
current files (layout: traintape.schemas.objectstore). A connection's views read exactly the
objects the manifests list, through s3fs registered with DuckDB (no DuckDB extension to
download), so no reader ever reads a row twice, nor a partial object.

`traintape.connect()` reads every manifest once, when it opens: a snapshot, which sees newer
data when reconnected. An object a later manifest dropped (a compaction replaced it) is deleted
GRACE_S (5 minutes by default) after that manifest, so such a connection held longer may find
it gone: reconnect. A long-lived reader (the dashboard, `traintape tail`) uses `RemoteTables`
instead: its database's views follow the manifests (`update()`: one LIST of the manifests at
most every REFRESH_S, the changed ones read again, the views replaced in one transaction).

Credentials: s3fs's (botocore's): the AWS variables and files; an S3-compatible server's
endpoint from AWS_ENDPOINT_URL. None is stored in the connection's SQL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from traintape.errors import StoreError, StoreNotFoundError
from traintape.globs import sql_string
from traintape.layout import run_folder_name
from traintape.schemas import tables
from traintape.schemas.objectstore import Bucket, Manifest, ManifestFile, endpoint_url

logger = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # objects never change: any time will do
EMPTY_VIEW = "traintape_empty_{table}"
"""A table with no file yet reads this empty table of its schema."""
REFRESH_S = 2.0
"""How often a long-lived reader asks whether a manifest changed (one LIST request): far below
the grace the publisher keeps a dropped object (GRACE_S, 5 minutes), so its views never name
an object deleted since."""


def filesystem() -> Any:
    """An s3fs filesystem with the environment's credentials and endpoint (a fresh instance per
    connection: its listings are those of this connection's manifests)."""
    try:
        import s3fs
    except ImportError:
        msg = "reading an s3:// store needs s3fs: pip install 'traintape[s3]'"
        raise StoreError(msg) from None
    endpoint = endpoint_url()
    return s3fs.S3FileSystem(
        skip_instance_cache=True,
        client_kwargs={"endpoint_url": endpoint} if endpoint else {},
    )


def manifest_listing(fs: Any, bucket: Bucket) -> dict[str, tuple[Any, ...]]:
    """{key: (ETag, size)} of every manifest under the bucket's prefix, asked of the bucket now
    (not of s3fs's cached listings): what tells a long-lived reader that one changed."""
    prefix = f"{bucket.bucket}/{bucket.manifests()}"
    try:
        found = fs.ls(prefix, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {
        e["name"]: (e.get("ETag"), e.get("size"))
        for e in found
        if e.get("type") != "directory" and e["name"].endswith(".json")
    }


def read_manifests(
    fs: Any, bucket: Bucket, names: Sequence[str] | None = None
) -> dict[str | None, list[ManifestFile]]:
    """{collector id: its files} of every manifest under the bucket's prefix (or of `names`,
    keys `manifest_listing` gave)."""
    if names is None:
        names = list(manifest_listing(fs, bucket))
    manifests: dict[str | None, list[ManifestFile]] = {}
    for name in names:
        try:
            data = fs.cat_file(name)
        except FileNotFoundError:  # a collector's manifest deleted meanwhile: none to read
            continue
        manifest = Manifest.decode(data, f"s3://{name}")
        manifests[manifest.collector] = manifest.files
    return manifests


def object_urls(
    bucket: Bucket,
    manifests: dict[str | None, list[ManifestFile]],
    table: str,
    runs: Sequence[str] | None = None,
) -> list[str]:
    """The objects of `table` the manifests list; with `runs`, those of the runs' folders only
    (every collector's: `<run folder>` and `<run folder>@<ID>`)."""
    folders = None if runs is None else {run_folder_name(r) for r in runs}
    urls = []
    for files in manifests.values():
        for f in files:
            if f.table != table:
                continue
            if folders is not None and f.folder.partition("@")[0] not in folders:
                continue
            urls.append(bucket.object_url(bucket.data_key(f.table, f.folder, f.name)))
    return sorted(urls)


def know_sizes(fs: Any, bucket: Bucket, manifests: dict[str | None, list[ManifestFile]]) -> None:
    """Tells s3fs each listed object's size, as a listing of its folder would: DuckDB asks for a
    file's size at each bind of each view that reads it (a HEAD request each, 130 for the views
    of one small run), and the manifest already says it (objects are immutable)."""
    folders: dict[str, list[dict[str, Any]]] = {}
    for files in manifests.values():
        for f in files:
            path = f"{bucket.bucket}/{bucket.data_key(f.table, f.folder, f.name)}"
            entry = {"name": path, "Key": path, "size": f.size, "Size": f.size, "type": "file"}
            folders.setdefault(path.rsplit("/", 1)[0], []).append(entry | {"LastModified": _EPOCH})
    for folder, entries in folders.items():
        fs.dircache[folder] = entries


def connect_remote(url: str, runs: Sequence[str] | None = None) -> duckdb.DuckDBPyConnection:
    """`traintape.connect()` of an s3:// store (the module docstring): the manifests as of now."""
    return RemoteTables(url, runs).database()


def _no_tables(bucket: Bucket) -> StoreNotFoundError:
    msg = (
        f"no traintape tables at {bucket.url} (no {bucket.manifests()}*.json): start "
        f"`traintape serve --tables {bucket.url}`, or check the URL and AWS_ENDPOINT_URL"
    )
    return StoreNotFoundError(msg)


class RemoteTables:
    """An s3:// store's tables for a reader that lives on (the module docstring): one DuckDB
    database, made by `database()`, whose views `update()` keeps over the current manifests;
    readers take cursors of it (cursors share its views). `runs`: views over those runs only.
    `names()` answers what the dashboard's caches ask of folders, from the same manifests."""

    def __init__(
        self, url: str, runs: Sequence[str] | None = None, refresh_s: float = REFRESH_S
    ) -> None:
        self.bucket = Bucket.parse(url, "store")
        self.url = self.bucket.url
        self.root = Path(self.url)
        """Stands for the store in layout paths (`StoreLayout(root).table(...)`, `names`)."""
        self.runs = runs
        self.refresh_s = refresh_s
        self.fs = filesystem()
        self.manifests: dict[str | None, list[ManifestFile]] = {}
        self.generation = 0  # of self.manifests; the database's views are of self._views
        self._views = -1
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._checked = float("-inf")
        self._folders: dict[str, dict[str, frozenset[str]]] = {}
        self._con: duckdb.DuckDBPyConnection | None = None
        self._locked_down = False
        self._failing = False  # the last refresh failed (said once)
        self._lock = threading.RLock()
        self._refresh(force=True)
        if not self.manifests:
            raise _no_tables(self.bucket)

    def database(self) -> duckdb.DuckDBPyConnection:
        """The database, made with the views of the manifests at the first call."""
        with self._lock:
            if self._con is None:
                con = duckdb.connect(":memory:")
                con.register_filesystem(self.fs)
                # Objects are immutable (new data, merges: new keys): their footers can be cached.
                con.execute("SET parquet_metadata_cache = true")
                for table, schema in tables.TABLES.items():
                    # A table of the database, not a registered Arrow table: a cursor sees it.
                    con.register("traintape_schema", schema.empty_table())
                    name = EMPTY_VIEW.format(table=table)
                    con.execute(f"CREATE TABLE {name} AS SELECT * FROM traintape_schema")
                    con.unregister("traintape_schema")
                self._con = con
                self._apply()
            return self._con

    def update(self) -> bool:
        """Brings the views to the manifests as they are (asked of the bucket at most every
        `refresh_s`); True when they changed."""
        with self._lock:
            try:
                self._refresh()
            except Exception as exc:  # noqa: BLE001 (s3fs, botocore: any failure to reach it)
                # The bucket unreachable from here: the views stay as they are (their objects
                # are kept a grace period past a newer manifest) until an update reaches it.
                if not self._failing:
                    logger.warning("traintape: cannot read the manifests of %s: %s", self.url, exc)
                self._failing = True
                return False
            self._failing = False
            if self._con is None or self._views == self.generation:
                return False
            self._apply()
            return True

    def lock_down(self) -> None:
        """From now on the database reads the store's objects only (a dashboard runs SQL a page
        sends), and its settings cannot change; once is enough."""
        with self._lock:
            con = self.database()
            if self._locked_down:
                return
            con.execute("SET enable_progress_bar = false")
            con.execute("SET allowed_directories = [" + sql_string(self.url + "/") + "]")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            self._locked_down = True

    def names(self, path: str) -> frozenset[str] | None:
        """The run folders of `<root>/tables/<table>`, or the files of `<root>/tables/<table>/
        <folder>`, as the manifests the views read list them (traintape.ui.listing's question);
        None for a folder no manifest has."""
        base = f"{self.root}/tables/"
        if not path.startswith(base):
            return None
        table, _, folder = path[len(base) :].partition("/")
        with self._lock:
            folders = self._folders.get(table)
        if folders is None:
            return None
        if not folder:
            return frozenset(folders)
        return folders.get(folder)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.refresh_s:
            return
        self._checked = now
        seen = manifest_listing(self.fs, self.bucket)
        if seen == self._seen and not force:
            return
        self.manifests = read_manifests(self.fs, self.bucket, list(seen))
        self._seen = seen
        know_sizes(self.fs, self.bucket, self.manifests)
        self.generation += 1

    def _apply(self) -> None:
        """The views over self.manifests, replaced in one transaction (a query binds the old set
        or the new one, never a mix); the folder listings `names` gives, of the same set."""
        from traintape.read.store import view_sql

        con = self._con
        assert con is not None
        sources = {}
        for table in tables.TABLES:
            urls = object_urls(self.bucket, self.manifests, table, self.runs)
            listed = ", ".join(sql_string(u) for u in urls)
            sources[table] = f"read_parquet([{listed}])" if urls else EMPTY_VIEW.format(table=table)
        con.execute("BEGIN TRANSACTION")
        try:
            for sql in view_sql(self.root, self.runs, sources=sources):
                con.execute(sql)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        folders: dict[str, dict[str, set[str]]] = {}
        for files in self.manifests.values():
            for f in files:
                folders.setdefault(f.table, {}).setdefault(f.folder, set()).add(f.name)
        self._folders = {t: {d: frozenset(n) for d, n in fs.items()} for t, fs in folders.items()}
        self._views = self.generation
