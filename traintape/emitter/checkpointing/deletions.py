"""Checkpoint deletions that `traintape replay` carries out once the collector has stored them.

Retention records a deletion as a `checkpoint` event (action "deleted") and unlinks the file only
once the collector has acknowledged that event. A process that ends first (the collector was
away) leaves the file in place and the event in its spool. When replay has delivered the event
and the collector answered that it stored the whole batch, the deletion is durable in the journal
and the file may go, provided it still holds the bytes retention doomed (size and sha256 as the
event recorded them): a file saved again under the same name since then is never touched.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from traintape.durable import fsync_dir
from traintape.schemas.events import CHECKPOINT
from traintape.schemas.wire import WireError, decode_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Doomed:
    """A file retention doomed, as its deletion event names it."""

    path: Path
    bytes: int | None
    sha256: str | None


def doomed_files(body: bytes, n: int) -> list[Doomed]:
    """The retention deletions among the `n` events of a batch body (wire format)."""
    if b"deleted" not in body:  # most batches are metrics: no need to unpack them
        return []
    try:
        batch = decode_body(body, n)
    except WireError:
        return []
    found = []
    for kind, event in zip(batch.kinds, batch.bodies):
        if kind != CHECKPOINT or event.get("action") != "deleted":
            continue
        path, size, sha = event.get("path"), event.get("bytes"), event.get("sha256")
        if event.get("reason") != "retention" or not isinstance(path, str):
            continue  # leftovers are removed before their event is sent
        found.append(
            Doomed(
                Path(path),
                size if type(size) is int else None,
                sha if isinstance(sha, str) else None,
            )
        )
    return found


GONE = "gone already"


def remove(doomed: Doomed) -> str | None:
    """Unlinks a doomed file whose deletion the collector has stored: None when this call
    removed it, GONE when it was gone already, else why it stays."""
    path = doomed.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return GONE  # removed by its process, a later attempt, or an earlier replay
    except OSError as exc:
        return f"cannot read it: {exc}"
    if doomed.sha256 is None:
        return "its deletion event has no sha256 to check the content against"
    if doomed.bytes is not None and size != doomed.bytes:
        return f"it has {size} bytes, the doomed checkpoint had {doomed.bytes}"
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
    except OSError as exc:
        return f"cannot read it: {exc}"
    if digest.hexdigest() != doomed.sha256:
        return "its content is not the doomed checkpoint's (saved again under that name?)"
    try:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
    except OSError as exc:
        return f"cannot delete it: {exc}"
    log.info("deleted checkpoint %s (its deletion is stored)", path)
    return None
