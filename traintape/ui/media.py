"""A run's images and tables for the dashboard (issue 18's media), and the bytes of its objects.

Media are `artifact` events (traintape.emitter.artifacts) with kind "image" or "table" and
`metadata.media` equal to the kind (docs: the media contract); anything else is a plain artifact.
`/api/media?run=ID` lists them per key, step by step (the images of a list, key/0, key/1, ...,
under their key, each with its index); `/api/object/SHA256?run=ID` serves the bytes
of an object only when an artifact event of that run records that sha256: the file is found by
the hash (64 hex digits, never by a path an event or a request spells), its size and hash are
checked against the event before a byte is sent, and nothing is ever written.
`/api/table?run=ID&sha256=...` reads a table's Parquet object (its first rows) for the page.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from traintape.errors import ArtifactNotFoundError, ArtifactVerifyError, QueryError
from traintape.globs import sql_string
from traintape.layout import StoreLayout
from traintape.read.artifacts import artifact_rows, copy_hashing
from traintape.read.query import rows
from traintape.schemas.media import listed

__all__ = [
    "MEDIA_KINDS",
    "TABLE_ROWS",
    "media_list",
    "metadata_of",
    "object_bytes",
    "stream",
    "table_rows",
]

MEDIA_KINDS = ("image", "table")
TABLE_ROWS = 500
"""Rows of a table the page shows (its row count is said beside them)."""
WHOLE_MAX = 16 << 20
"""Objects up to this size are read whole, checked and sent from memory; a larger one is checked
a chunk at a time, then streamed (every object is checked before a byte of it is sent)."""
_HEX = frozenset("0123456789abcdef")


def metadata_of(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def media_list(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """The run's media, one entry per (kind, key) with its steps in logging order:
    {"media": [{"name", "kind", "items": [{step, rank, sha256, bytes, ts, ...metadata}]}]}."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in artifact_rows(con, run_id):
        meta = metadata_of(row["metadata"])
        if row["kind"] not in MEDIA_KINDS or meta.get("media") != row["kind"]:
            continue  # a plain artifact (a file), not media
        item = {k: row[k] for k in ("step", "rank", "sha256", "bytes", "ts")}
        for k in ("width", "height", "channels", "caption", "rows", "columns", "format"):
            item[k] = meta.get(k)
        name, item["index"] = listed(row["name"]) if row["kind"] == "image" else (row["name"], None)
        found.setdefault((row["kind"], name), []).append(item)
    media = [{"name": n, "kind": k, "items": items} for (k, n), items in sorted(found.items())]
    return {"run_id": run_id, "media": media}


def _recorded(con: duckdb.DuckDBPyConnection, run_id: str, sha256: str) -> dict[str, Any]:
    """The run's artifact event that records `sha256` (the newest), else ArtifactNotFoundError."""
    if len(sha256) != 64 or not _HEX.issuperset(sha256):
        msg = f"{sha256!r} is not a sha256 (64 lowercase hex digits)"
        raise QueryError(msg)
    matches = [r for r in artifact_rows(con, run_id) if r["sha256"] == sha256]
    if not matches:
        msg = f"run {run_id!r} records no artifact with sha256 {sha256}"
        raise ArtifactNotFoundError(msg)
    return matches[-1]


def object_bytes(
    con: duckdb.DuckDBPyConnection, store: Path, run_id: str, sha256: str
) -> tuple[dict[str, Any], Path, bytes | None]:
    """(the event, the object's file, its bytes when checked whole) of an object of the run;
    ArtifactNotFoundError when no event of the run refers to it or it is gone,
    ArtifactVerifyError when its size or hash differs from the event's."""
    row = _recorded(con, run_id, sha256)
    path = StoreLayout(store).artifact_object(sha256)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        msg = f"the object {sha256} of run {run_id!r} is gone from the store"
        raise ArtifactNotFoundError(msg) from None
    if row["bytes"] is not None and size != row["bytes"]:
        msg = f"object {sha256}: {size} bytes in the store, its event recorded {row['bytes']}"
        raise ArtifactVerifyError(msg)
    try:
        if size > WHOLE_MAX:
            with open(path, "rb") as f:
                digest = copy_hashing(f)[1]
            data = None  # streamed once checked: too big to hold
        else:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
    except FileNotFoundError:  # removed by `traintape gc` since
        msg = f"the object {sha256} of run {run_id!r} is gone from the store"
        raise ArtifactNotFoundError(msg) from None
    if digest != sha256:
        msg = f"object {sha256}: the stored bytes do not hash to it"
        raise ArtifactVerifyError(msg)
    return row, path, data


def stream(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A big object's bytes, a chunk at a time."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            yield block


def table_rows(
    con: duckdb.DuckDBPyConnection, store: Path, run_id: str, sha256: str
) -> dict[str, Any]:
    """A table logged by the run: its columns and first TABLE_ROWS rows, and its row count."""
    row = _recorded(con, run_id, sha256)
    meta = metadata_of(row["metadata"])
    if row["kind"] != "table" or meta.get("media") != "table":
        msg = f"the artifact {row['name']!r} with sha256 {sha256} is not a table"
        raise QueryError(msg)
    object_bytes(con, store, run_id, sha256)  # there, and what its event says
    path = sql_string(str(StoreLayout(store).artifact_object(sha256)))
    cur = con.execute(f"SELECT * FROM read_parquet({path}) LIMIT {TABLE_ROWS}")
    columns = [d[0] for d in cur.description]
    found = cur.fetchall()
    total = rows(con, f"SELECT count(*) FROM read_parquet({path})")[0][0]
    return {
        "name": row["name"],
        "step": row["step"],
        "rank": row["rank"],
        "columns": columns,
        "rows": [list(r) for r in found],
        "total_rows": int(total),
    }
