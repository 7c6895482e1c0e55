"""Reading a store whose tables are on object storage: `traintape.connect("s3://bucket/prefix")`.

The collectors publish (traintape.collector.publish) and each keeps one manifest listing its
current files (layout: traintape.schemas.objectstore). A connection reads every manifest once,
when it opens, and its views read exactly the objects they list, through s3fs registered with
DuckDB (no DuckDB extension to download). So a connection is a snapshot: it never reads a row
twice, nor a partial object, and it sees newer data when reconnected. An object a later manifest
dropped (a compaction replaced it) is deleted GRACE_S (5 minutes by default) after that
manifest; a connection held longer than that may then find it gone: reconnect.

Credentials: s3fs's (botocore's): the AWS variables and files; an S3-compatible server's
endpoint from AWS_ENDPOINT_URL. None is stored in the connection's SQL.
"""

from __future__ import annotations

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

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # objects never change: any time will do
EMPTY_VIEW = "traintape_empty_{table}"
"""A table with no file yet reads this registered empty Arrow table of its schema."""


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


def read_manifests(fs: Any, bucket: Bucket) -> dict[str | None, list[ManifestFile]]:
    """{collector id: its files} of every manifest under the bucket's prefix."""
    prefix = f"{bucket.bucket}/{bucket.manifests()}"
    try:
        names = [n for n in fs.ls(prefix, detail=False) if n.endswith(".json")]
    except FileNotFoundError:
        names = []
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
    """`traintape.connect()` of an s3:// store (the module docstring)."""
    from traintape.read.store import view_sql

    bucket = Bucket.parse(url, "store")
    fs = filesystem()
    manifests = read_manifests(fs, bucket)
    if not manifests:
        msg = (
            f"no traintape tables at {bucket.url} (no {bucket.manifests()}*.json): start "
            f"`traintape serve --tables {bucket.url}`, or check the URL and AWS_ENDPOINT_URL"
        )
        raise StoreNotFoundError(msg)
    know_sizes(fs, bucket, manifests)
    con = duckdb.connect(":memory:")
    con.register_filesystem(fs)
    # Objects are immutable (new data, merges: new keys): their footers can be cached.
    con.execute("SET parquet_metadata_cache = true")
    sources = {}
    for table, schema in tables.TABLES.items():
        urls = object_urls(bucket, manifests, table, runs)
        if urls:
            sources[table] = f"read_parquet([{', '.join(sql_string(u) for u in urls)}])"
        else:
            name = EMPTY_VIEW.format(table=table)
            con.register(name, schema.empty_table())
            sources[table] = name
    for sql in view_sql(Path(bucket.url), runs, sources=sources):
        con.execute(sql)
    return con
