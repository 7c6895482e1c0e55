"""Reading artifacts back: a run's list, a verified copy of one, and `traintape gc`.

Objects live in `<store>/artifacts/objects/` by sha256 (traintape.emitter.artifacts writes them);
the `artifacts` view (read/store.py) has one row per `artifact` event. An object is found by the
sha256 its event recorded, never by the event's `path` text: a body a client made up cannot point
a reader outside the store.

`gc` removes the objects no `artifact` event refers to once they are older than its grace period.
An object a live run wrote (or logged again: the writer touches it) is younger than that, so it
stays while its event travels to the store; gc holds the writers' lock exclusively while it
decides and removes (durable.flocked). Spooled batches are not read: while
the spool holds any, gc refuses (their events may be the only ones referring to an object) unless
told to go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from traintape.durable import flocked, fsync_dir
from traintape.errors import ArtifactError, ArtifactNotFoundError, ArtifactVerifyError
from traintape.layout import StoreLayout
from traintape.read.query import records, rows, run_rows

_CHUNK = 8 << 20
_HEX = frozenset("0123456789abcdef")
_NAME_MAX = 255
"""Bytes of a file name (Linux, macOS)."""
DEFAULT_GRACE_S = 24 * 3600.0
"""Objects younger than this are never removed by gc: their events may still be on their way."""


def artifact_rows(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """The run's artifacts in the order they were logged (from its own folder on a
    `traintape.connect()` connection)."""
    source = run_rows(con, "events", [run_id])
    return records(
        con,
        f"""SELECT step, rank, ts::TIMESTAMPTZ AS ts, json_extract_string(body, '$.name') AS name,
                   json_extract_string(body, '$.kind') AS kind,
                   TRY_CAST(json_extract(body, '$.bytes') AS BIGINT) AS bytes,
                   json_extract_string(body, '$.sha256') AS sha256,
                   json_extract_string(body, '$.path') AS path,
                   json_extract(body, '$.metadata')::VARCHAR AS metadata
            FROM {source} WHERE kind = 'artifact' ORDER BY ts, rank, seq""",
    )


def media_summary(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (name, kind) of the media among `found` (rows of `artifact_rows`: images and tables
    of `log()`, as the `media` view picks them): events, steps, ranks and the last one's size."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in found:
        meta = _media_metadata(row)
        if meta is None:
            continue
        entry = out.setdefault(
            (row["name"], row["kind"]),
            {"name": row["name"], "kind": row["kind"], "count": 0, "ranks": set()},
        )
        entry["count"] += 1
        entry["ranks"].add(row["rank"])
        step = row["step"]
        if step is not None:
            entry["first_step"] = min(entry.get("first_step", step), step)
            entry["last_step"] = max(entry.get("last_step", step), step)
        if row["kind"] == "image":
            entry["last"] = f"{meta.get('width')}x{meta.get('height')}x{meta.get('channels')}"
        else:
            columns = meta.get("columns")  # a list, unless a client other than log() lied
            width = len(columns) if isinstance(columns, list) else "?"
            entry["last"] = f"{meta.get('rows')} rows x {width} columns"
    for entry in out.values():
        entry["ranks"] = len(entry["ranks"])
    return list(out.values())


def is_media(row: dict[str, Any]) -> bool:
    """Whether an `artifact_rows` row is an image or table of `log()` (the media contract)."""
    return _media_metadata(row) is not None


def _media_metadata(row: dict[str, Any]) -> dict[str, Any] | None:
    if row.get("kind") not in ("image", "table") or not row.get("metadata"):
        return None
    try:
        meta = json.loads(row["metadata"])
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and meta.get("media") == row["kind"] else None


def fetch(
    store: Path, found: list[dict[str, Any]], name: str, out: Path, rank: int | None = None
) -> Path:
    """Copies the newest artifact called `name` (of `rank`, if given) among `found` (rows of
    `artifact_rows`) to `out/<name>` (`_file_name`), verifying its size and sha256; returns the
    copy's path."""
    matches = [r for r in found if r["name"] == name and (rank is None or r["rank"] == rank)]
    if not matches:
        names = sorted({r["name"] for r in found})
        msg = f"no artifact {name!r} in this run; it has: {', '.join(names) or 'none'}"
        raise ArtifactNotFoundError(msg)
    row = matches[-1]
    sha256 = str(row["sha256"])
    if len(sha256) != 64 or not _HEX.issuperset(sha256):
        msg = f"artifact {name!r} records no valid sha256 ({sha256!r})"
        raise ArtifactVerifyError(msg)
    source = StoreLayout(store).artifact_object(sha256)
    out.mkdir(parents=True, exist_ok=True)
    target = out / _file_name(row)
    tmp = out / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            size, digest = copy_hashing(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
    except FileNotFoundError:
        tmp.unlink(missing_ok=True)
        msg = f"the object of artifact {name!r} ({source}) is gone from the store"
        raise ArtifactNotFoundError(msg) from None
    if size != row["bytes"] or digest != sha256:
        tmp.unlink(missing_ok=True)
        msg = (
            f"artifact {name!r}: the stored object has {size} bytes, sha256 {digest}; its event "
            f"recorded {row['bytes']} bytes, sha256 {sha256}"
        )
        raise ArtifactVerifyError(msg)
    os.replace(tmp, target)
    fsync_dir(out)
    return target


def _file_name(row: dict[str, Any]) -> str:
    """The fetched copy's name: the artifact's; a media key's ("samples/pred") with "/" as "_"
    and its format's suffix (samples_pred.png), never a name that leaves the folder."""
    # No control character (NUL is refused by open()), at most NAME_MAX bytes with the suffix.
    name = "".join("_" if c == "/" or ord(c) < 32 else c for c in str(row["name"]))
    if name in ("", ".", ".."):
        name = name.replace(".", "_") or "artifact"
    meta = _media_metadata(row)
    suffix = f".{meta.get('format')}" if meta is not None else ""
    if suffix not in (".png", ".parquet") or name.endswith(suffix):
        suffix = ""
    room = _NAME_MAX - len(suffix) - len(".tmp.") - 33  # the temporary copy's name is longer
    if len(name.encode()) > room:
        name = name.encode()[:room].decode(errors="ignore")
    return name + suffix


def copy_hashing(src: Any, dst: Any = None) -> tuple[int, str]:
    """(bytes, sha256) of the file `src` read to its end a chunk at a time (never whole in
    memory), each chunk written to `dst` when given."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(_CHUNK):
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


@dataclass
class GcReport:
    """What one `gc` pass did (dry_run: what it would do)."""

    removed: list[str] = field(default_factory=list)
    """sha256 of each object removed."""
    freed_bytes: int = 0
    referenced: int = 0
    fresh: int = 0
    """Unreferenced objects kept because they are younger than the grace period."""
    leftovers: int = 0
    """Copies a killed process left in artifacts/tmp/, removed."""


def gc(
    con: duckdb.DuckDBPyConnection,
    store: Path,
    grace_s: float = DEFAULT_GRACE_S,
    *,
    dry_run: bool = False,
    ignore_spool: bool = False,
) -> GcReport:
    """Removes the objects no `artifact` event of the store refers to, older than `grace_s`."""
    layout = StoreLayout(store)
    # Every collector's spool: an artifact event may wait in any of them.
    spools = layout.spools()
    spooled = sorted(p for folder in spools for p in folder.glob("*.spool"))
    if spooled and not ignore_spool:
        where = ", ".join(str(f) for f in spools if any(f.glob("*.spool")))
        msg = (
            f"{len(spooled)} spooled batch file(s) in {where} may refer to artifacts: "
            "deliver them first (`traintape replay [--collector-id ID]`), or pass --ignore-spool"
        )
        raise ArtifactError(msg)
    report = GcReport()
    objects = layout.artifacts / "objects"
    if not layout.artifacts.is_dir():
        return report
    referenced = {r[0] for r in rows(con, "SELECT DISTINCT sha256 FROM artifacts") if r[0]}
    cutoff = time.time() - grace_s
    with flocked(
        layout.artifacts_lock, exclusive=True
    ):  # no writer places or touches an object meanwhile
        for path in sorted(objects.glob("*/*")):
            sha256 = path.parent.name + path.name
            if sha256 in referenced:
                report.referenced += 1
                continue
            st = path.stat()
            if st.st_mtime > cutoff:
                report.fresh += 1
                continue
            report.removed.append(sha256)
            report.freed_bytes += st.st_size
            if not dry_run:
                path.unlink()
        for tmp in (layout.artifacts / "tmp").glob("*.tmp"):
            if tmp.stat().st_mtime <= cutoff:
                report.leftovers += 1
                if not dry_run:
                    tmp.unlink(missing_ok=True)
    return report
