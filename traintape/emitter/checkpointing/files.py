"""The files of the checkpoint writer: a hashing file wrapper torch.save writes through, and the
append-only manifest of the checkpoints one run and rank keep in a folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class HashingFile:
    """What torch.save writes to: every byte goes to the file and into sha256 (which releases
    the GIL on large buffers, as the file write does)."""

    __slots__ = ("_file", "_hash", "bytes", "error")

    def __init__(self, file: Any) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self.bytes = 0
        self.error: OSError | None = None  # torch.save reports a failed write as a RuntimeError

    def write(self, data: Any) -> int:
        self._hash.update(data)
        try:
            n = self._file.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.bytes += n
        return n

    def flush(self) -> None:
        self._file.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Manifest:
    """The files one run and rank keep in a folder, in save order.

    Append-only JSON lines (fsync'd), compacted when opened: a line torn by a crash is dropped
    then, as are entries whose file is gone. `pending` names the live files whose deletion was
    recorded as an event but not yet carried out (the collector had not acknowledged it when
    their process stopped waiting): the next writer of this run and rank carries it out.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.live: dict[str, dict[str, Any]] = {}
        self.pending: set[str] = set()
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                record = json.loads(line)
                name = record["name"]
            except (ValueError, KeyError, TypeError):
                continue
            action = record.pop("action", None)
            if action == "deleting":
                if name in self.live:
                    self.pending.add(name)
                continue
            self.live.pop(name, None)
            self.pending.discard(name)
            if action == "saved":
                self.live[name] = record
        self.live = {n: r for n, r in self.live.items() if (path.parent / n).exists()}
        self.pending &= self.live.keys()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            for name, record in self.live.items():
                f.write(json.dumps({"action": "saved", **record}) + "\n")
                if name in self.pending:
                    f.write(json.dumps({"action": "deleting", "name": name}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def saved(self, record: dict[str, Any]) -> None:
        self.live[record["name"]] = record
        self._append({"action": "saved", **record})

    def deleting(self, names: list[str]) -> None:
        """Records that the deletion of `names` was decided (their events are on their way)."""
        self.pending.update(names)
        self._append(*({"action": "deleting", "name": n} for n in names))

    def deleted(self, name: str) -> None:
        self.live.pop(name, None)
        self.pending.discard(name)
        self._append({"action": "deleted", "name": name})

    def _append(self, *records: dict[str, Any]) -> None:
        try:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(record) + "\n" for record in records))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # retention of later attempts suffers, this run does not
            logger.warning(f"traintape: cannot write {self.path}: {exc}")
