"""Retention on the writer thread: which checkpoint files go, and deleting them only once the
collector has recorded their deletion (see writer.py's docstring for the whole sequence).

A deletion is first recorded as a `checkpoint` event (action "deleted"); the file is unlinked
once the collector has acknowledged every event up to that one, so the store never names a file
that is gone. Temporary files of crashed writes (their flock is free) are removed on the first
save into a folder, each recorded with reason "leftover".
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from pathlib import Path

from traintape.checkpoint import CheckpointPolicy, monitored_value, select_for_deletion
from traintape.durable import fsync_dir
from traintape.emitter.checkpointing.files import Manifest
from traintape.emitter.port import EmitterPort
from traintape.schemas.events import CHECKPOINT

logger = logging.getLogger(__name__)

TMP_NAME = re.compile(r"^\..+\.pt\.[0-9a-f]{8}\.tmp$")
"""`.<final name>.<8 hex>.tmp`: the temporary file of a write in progress (or of a crashed one)."""


class Retention:
    """The files of one writer's folder that are doomed, and their deletion once recorded."""

    def __init__(self, port: EmitterPort, policy: CheckpointPolicy, folder: Path) -> None:
        self.port = port
        self.policy = policy
        self.dir = folder
        self.deleting: dict[str, int | None] = {}  # name -> seq its event must be acked past
        self.manifest: Manifest | None = None  # the folder's, once the writer opened it

    def retain(self, manifest: Manifest) -> None:
        """Dooms what the policy no longer keeps, after a new checkpoint became durable."""
        policy = self.policy
        names = [n for n in manifest.live if n not in self.deleting]
        values = [monitored_value(manifest.live[n]["metrics"], policy.monitor) for n in names]
        doomed = [
            names[i]
            for i in select_for_deletion(values, policy.keep_last, policy.best_to_keep, policy.mode)
        ]
        if not doomed:
            return
        manifest.deleting(doomed)  # first: a later attempt finishes what this one cannot
        self.doom(manifest, doomed)

    def doom(self, manifest: Manifest, names: list[str]) -> None:
        """Records the deletion of `names` as events; each file goes once they are acked. The
        sha256 lets `traintape replay` check that a file still holds what was doomed."""
        for name in names:
            entry = manifest.live[name]
            body = {
                "action": "deleted",
                "path": str(self.dir / name),
                "reason": "retention",
                "bytes": entry.get("bytes"),
                "sha256": entry.get("sha256"),
            }
            self.port.emit(CHECKPOINT, entry.get("step"), body)
        target = self.port.send_now()
        for name in names:
            self.deleting[name] = target

    def finish_deletions(self, wait: float) -> None:
        """Unlinks the files whose deletion event the collector has acknowledged."""
        deadline = time.monotonic() + wait
        while self.deleting:
            acked = self.port.acked_below()
            if acked is not None:
                for name, target in list(self.deleting.items()):
                    if target is not None and target <= acked:
                        del self.deleting[name]
                        self._unlink(name)
            if not self.deleting or time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def _unlink(self, name: str) -> None:
        try:
            (self.dir / name).unlink(missing_ok=True)
            fsync_dir(self.dir)
        except OSError as exc:
            logger.warning(f"traintape: cannot delete checkpoint {self.dir / name}: {exc}")
            return
        if self.manifest is not None:
            self.manifest.deleted(name)

    def remove_leftovers(self) -> None:
        """Temporary files of writes that crashed: their flock is free (a live write holds it)."""
        for path in sorted(self.dir.iterdir()):
            if not TMP_NAME.match(path.name):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
            except OSError:  # held by a live write (or no locks here): not ours to remove
                continue
            finally:
                os.close(fd)
            body = {"action": "deleted", "path": str(path), "reason": "leftover"}
            self.port.emit(CHECKPOINT, None, body)
