"""Small file-system moves that every durable part of traintape makes the same way."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(folder: Path) -> None:
    """Makes a rename or a new file in `folder` survive a power loss."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mkdir_private(folder: Path) -> None:
    """`folder` and any missing parent made 0700 whatever the umask (a store is private to its
    user until `traintape serve --group` shares it; an emitter may be first to create it)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)  # the umask can only narrow it
        except FileExistsError:
            pass


@contextmanager
def flocked(path: Path, *, exclusive: bool = False) -> Iterator[None]:
    """Holds a shared (or exclusive) flock of `path`, created 0600 (the artifact writers hold
    `artifacts/gc.lock` shared, `traintape gc` exclusive)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_json_atomic(
    path: Path, value: Any, *, durable: bool = False, indent: int | None = None
) -> None:
    """Replaces `path` by a temp file and a rename: readers see the old or the new, never half.

    With `durable`, the data and the rename are fsync'd too (an intent that recovery relies on);
    without, a crash may leave the previous version, which is fine for cursors that only move
    forward over idempotent work.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=indent)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem of `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_room(folder: Path, nbytes: int, min_free_bytes: int) -> None:
    """Raises ENOSPC when writing `nbytes` in `folder` would leave under `min_free_bytes` free.

    A floor kept on purpose (the spool's, the collector's): whoever must write after a full disk
    frees up (the collector taking its batches back) finds room.
    """
    free = free_bytes(folder)
    if free - nbytes < min_free_bytes:
        msg = (
            f"{free / (1 << 20):.1f} MiB free in {folder}, and {min_free_bytes / (1 << 20):g} MiB "
            "are kept free"
        )
        raise OSError(errno.ENOSPC, msg)
