"""What every sink shares about `artifact` events: which are media, the tag they get, and the
object's content, found by its sha256 and checked against it.

An artifact event (traintape.emitter.artifacts) names its object by sha256; the content lives in
`<store>/artifacts/objects/`. A sink finds it by that sha256, never by the event's `path` text
(a body a client made up cannot point a sink outside the store, as in read/artifacts.py), and
hashes it before it hands it to a backend: a missing or damaged object is one event's error
(`ArtifactProblems`: counted, logged, the last one kept for `traintape status`), and the sink
goes on with the next event. Objects are hashed 8 MiB at a time: a large one is never read
whole into memory; only an image (which a backend takes as bytes) is, below a size bound.

Media (docs: the media contract of issue 18): kind "image" (a PNG) or "table" (a Parquet file
of one table) with `metadata["media"]` equal to the kind; any other artifact is a plain file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from traintape.errors import ArtifactError, ArtifactNotFoundError, ArtifactVerifyError
from traintape.layout import StoreLayout
from traintape.sinks._base import Event

MEDIA_KINDS = ("image", "table")
MAX_IMAGE_BYTES = 64 << 20
"""An image larger than this is not read into memory for a backend (it stays a plain file)."""
MAX_TABLE_ROWS = 10_000
"""Rows of a table sent as a table (W&B's own limit for `wandb.Table`); all rows stay in the
store, and MLflow gets the whole Parquet file as an artifact."""
_CHUNK = 8 << 20
_HEX = frozenset("0123456789abcdef")

logger = logging.getLogger(__name__)


def media_kind(body: dict[str, Any]) -> str | None:
    """The media kind ("image" or "table") of an artifact body, None for a plain artifact."""
    kind = body.get("kind")
    meta = body.get("metadata")
    if kind in MEDIA_KINDS and isinstance(meta, dict) and meta.get("media") == kind:
        return str(kind)
    return None


def media_tag(event: Event, name: str | None = None) -> str:
    """The artifact's name (or `name`), with `/rank<N>` for ranks other than 0 (as text and
    histograms)."""
    tag = name or str(event.body.get("name") or "artifact")
    if event.rank not in (None, 0):
        tag = f"{tag}/rank{event.rank}"
    return tag


def step_file(event: Event, suffix: str) -> str:
    """`step-<step, 9 digits>[-rank<N>]<suffix>`: one file per event of a name."""
    rank = "" if event.rank in (None, 0) else f"-rank{event.rank}"
    return f"step-{event.step or 0:09d}{rank}{suffix}"


def object_path(store: Path, body: dict[str, Any]) -> Path:
    """The object of an artifact event, after checking that it is there with the recorded size
    and sha256 (read 8 MiB at a time). Raises ArtifactNotFoundError / ArtifactVerifyError."""
    path, sha256 = _locate(store, body)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
            size = f.tell()
    except FileNotFoundError:
        raise _gone(body, path) from None
    _check(body, size, digest.hexdigest(), sha256)
    return path


def object_bytes(store: Path, body: dict[str, Any], limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The content of an artifact event's object (at most `limit` bytes), checked as in
    `object_path`."""
    path, sha256 = _locate(store, body)
    size = body.get("bytes")
    if isinstance(size, int) and size > limit:
        msg = f"artifact {_name(body)!r} has {size} bytes, more than {limit} to send inline"
        raise ArtifactError(msg)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise _gone(body, path) from None
    _check(body, len(data), hashlib.sha256(data).hexdigest(), sha256)
    return data


def linked(path: Path, folder: Path, name: str) -> Path:
    """`path` under `folder/<name>` (a symlink: backends name a file by its own name, and an
    object's is its hash), in a fresh subfolder so equal names never collide."""
    where = Path(tempfile.mkdtemp(dir=folder))
    link = where / os.path.basename(name)
    os.symlink(path, link)
    return link


def read_table(path: Path, limit: int = MAX_TABLE_ROWS) -> tuple[list[str], list[list[Any]], int]:
    """(columns, the first `limit` rows as Python values, total rows) of a table's Parquet file,
    read a row group at a time."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    columns = list(pf.schema_arrow.names)
    rows: list[list[Any]] = []
    for batch in pf.iter_batches(batch_size=min(limit, 4096) or 1):
        if len(rows) >= limit:
            break
        data = batch.to_pydict()
        n = min(batch.num_rows, limit - len(rows))
        rows.extend([data[c][i] for c in columns] for i in range(n))
    return columns, rows, pf.metadata.num_rows


class ArtifactProblems:
    """Artifact events a sink could not send (object missing or damaged, or refused by the
    backend): counted, each logged once, the last shown in the sink's status."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.count = 0
        self.last: str | None = None

    def note(self, event: Event, exc: Exception) -> None:
        self.count += 1
        where = f"step {event.step}, rank {event.rank}"
        self.last = f"{_name(event.body)!r} ({where}): {type(exc).__name__}: {exc}"
        logger.warning("sink %s: artifact not sent: %s", self.sink, self.last)

    def stats(self) -> dict[str, Any]:
        if not self.count:
            return {}
        return {"artifacts_failed": self.count, "last_artifact_error": self.last}


def _name(body: dict[str, Any]) -> str:
    return str(body.get("name") or "?")[:120]


def _locate(store: Path, body: dict[str, Any]) -> tuple[Path, str]:
    sha256 = body.get("sha256")
    if not isinstance(sha256, str) or len(sha256) != 64 or not _HEX.issuperset(sha256):
        msg = f"artifact {_name(body)!r} records no valid sha256 ({sha256!r})"
        raise ArtifactVerifyError(msg)
    return StoreLayout(store).artifact_object(sha256), sha256


def _gone(body: dict[str, Any], path: Path) -> ArtifactNotFoundError:
    msg = f"the object of artifact {_name(body)!r} ({path}) is gone from the store"
    return ArtifactNotFoundError(msg)


def _check(body: dict[str, Any], size: int, digest: str, sha256: str) -> None:
    if size != body.get("bytes") or digest != sha256:
        msg = (
            f"artifact {_name(body)!r}: the stored object has {size} bytes, sha256 "
            f"{digest[:16]}...; its event recorded {body.get('bytes')} bytes, sha256 "
            f"{sha256[:16]}..."
        )
        raise ArtifactVerifyError(msg)
