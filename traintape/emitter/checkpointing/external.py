"""Checkpoints that other code wrote (Lightning's `ModelCheckpoint`, the Hugging Face Trainer's
`checkpoint-N` folders), recorded as the same `checkpoint` events the writer emits (writer.py):
path, bytes, sha256, metrics, monitor, mode, is_best. The `checkpoints` view, `traintape
checkpoints` and `list_checkpoints` read them like the writer's own.

    emitter.record_checkpoint("ckpt/epoch=1.ckpt", step=120, metrics={"val_loss": 0.31},
                              monitor="val_loss", mode="min")

On the caller's thread: the file (or every file of a folder) is opened, which takes
microseconds; the open descriptors go to a background thread that hashes them. Hashing an
open descriptor reads the bytes that were recorded even when the framework deletes or replaces
the file meanwhile (ModelCheckpoint removes the previous best right after a save).

Deletions: the framework deletes files by itself, without telling anyone. Before each new record
and when the run ends, the thread looks for recorded files that are gone and emits a `deleted`
event for each (reason "removed"), so `traintape checkpoints` lists only live files. Unlike the
writer's retention (reason "retention"), these files are gone already: `traintape replay` has
nothing to delete for them.

A folder is one checkpoint: its bytes are the sum of its files', its sha256 that of the lines
`<relative path>\\0<bytes>\\0<sha256>\\n` of its files in sorted order, and the event lists the
files (`files`). `load_checkpoint` reads single files only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traintape.checkpoint import CheckpointInfo, best_index, monitored_value
from traintape.emitter.checkpointing.handle import CheckpointHandle
from traintape.emitter.checks import check_step, checkpoint_metrics
from traintape.emitter.port import EmitterPort
from traintape.emitter.worker import Worker
from traintape.errors import RunFinishedError
from traintape.schemas.events import CHECKPOINT

logger = logging.getLogger(__name__)

_CHUNK = 8 << 20
OPEN_AT_MOST = 128
"""Files of a folder opened on the caller's thread; the rest (a sharded optimizer state's many
files) are opened by the hashing thread, within the process's limit on open files."""
MODES = ("min", "max")


@dataclass
class _Opened:
    """One file of a checkpoint, opened on the caller's thread (fd -1: to open when hashed)."""

    name: str  # relative to the checkpoint's folder; "" for a checkpoint that is one file
    path: Path
    fd: int


@dataclass
class _Record:
    path: Path
    step: int
    metrics: dict[str, Any]
    monitor: str | None
    mode: str
    is_best: bool | None
    origin: str | None
    files: list[_Opened]
    is_dir: bool
    blocked_s: float
    handle: CheckpointHandle


class ExternalCheckpoints:
    """Records one run's externally written checkpoints from one process (one thread hashes)."""

    def __init__(self, port: EmitterPort) -> None:
        self.port = port
        self._worker = Worker("traintape-checkpoint-hash", self._do, at_stop=self._end)
        # path -> what its saved event said; only the hashing thread reads or changes it.
        self._live: dict[str, dict[str, Any]] = {}

    # -- the caller's side -----------------------------------------------------------------

    def record(
        self,
        path: str | os.PathLike[str],
        step: int,
        metrics: dict[str, Any] | None = None,
        *,
        monitor: str | None = None,
        mode: str = "min",
        is_best: bool | None = None,
        origin: str | None = None,
    ) -> CheckpointHandle:
        """Queues the `saved` event of the file or folder at `path`, as it is now."""
        if self._worker.closed or self.port.finished():
            msg = f"run {self.port.run_id} is finished; call init() to start another"
            raise RunFinishedError(msg)
        if os.getpid() != self._worker.pid:
            msg = "record_checkpoint() in a forked child: record from the training process"
            raise RuntimeError(msg)
        if mode not in MODES:
            msg = f"mode must be one of {MODES}, got {mode!r}"
            raise ValueError(msg)
        step = check_step(step)
        plain = checkpoint_metrics(metrics)
        start = time.perf_counter()
        where = Path(path).absolute()
        files, is_dir = _open_checkpoint(where)
        handle = CheckpointHandle(step)
        job = _Record(
            where, step, plain, monitor, mode, is_best, origin, files, is_dir, 0.0, handle
        )
        job.blocked_s = time.perf_counter() - start
        self._worker.put(job)
        return handle

    def close(self) -> None:
        """Waits until every queued record is hashed and emitted, and the files that are gone
        by now are recorded as deleted. The run's `finish()` calls it before its end event."""
        self._worker.close()

    # -- the hashing thread ----------------------------------------------------------------

    def _do(self, job: _Record) -> None:
        try:
            self._sweep()
            self._saved(job)
        except Exception as exc:  # the job's failure, not the thread's: finish() waits for it
            _report(exc)
            _close_all(job.files)
            job.handle.fail(exc)

    def _end(self) -> None:
        try:
            self._sweep()
        except Exception as exc:
            _report(exc)

    def _saved(self, job: _Record) -> None:
        try:
            hashed = [(f.name, *_hash_file(f)) for f in job.files]
        finally:
            _close_all(job.files)
        if job.is_dir:
            listing = "".join(f"{name}\0{n}\0{sha}\n" for name, n, sha in hashed)
            sha256 = hashlib.sha256(listing.encode()).hexdigest()
        else:
            sha256 = hashed[0][2]
        size = sum(n for _, n, _ in hashed)
        is_best = job.is_best
        if is_best is None:
            earlier = [monitored_value(e["metrics"], job.monitor) for e in self._live.values()]
            value = monitored_value(job.metrics, job.monitor)
            is_best = value is not None and best_index([*earlier, value], job.mode) == len(earlier)
        body: dict[str, Any] = {
            "action": "saved",
            "path": str(job.path),
            "bytes": size,
            "sha256": sha256,
            "metrics": job.metrics,
            "blocked_s": job.blocked_s,
            "is_best": is_best,
            "monitor": job.monitor,
            "mode": job.mode,
        }
        if job.origin is not None:
            body["origin"] = job.origin
        if job.is_dir:
            body["files"] = [{"name": name, "bytes": n, "sha256": s} for name, n, s in hashed]
        entry = {"step": job.step, "bytes": size, "sha256": sha256, "metrics": job.metrics}
        self._live.pop(str(job.path), None)  # saved again under its name: the newer one is live
        self._live[str(job.path)] = entry
        self.port.emit(CHECKPOINT, job.step, body)
        self.port.send_now()
        job.handle.resolve(
            CheckpointInfo(
                path=job.path,
                step=job.step,
                bytes=size,
                sha256=sha256,
                metrics=job.metrics,
                blocked_s=job.blocked_s,
                write_s=0.0,  # the framework wrote it; traintape only read it
                is_best=is_best,
                rank=self.port.rank,
            )
        )

    def _sweep(self) -> None:
        """Recorded files the framework has deleted since: one `deleted` event each."""
        gone = [p for p in self._live if not os.path.exists(p)]
        for path in gone:
            entry = self._live.pop(path)
            body = {
                "action": "deleted",
                "path": path,
                "reason": "removed",
                "bytes": entry["bytes"],
                "sha256": entry["sha256"],
            }
            self.port.emit(CHECKPOINT, entry["step"], body)
        if gone:
            self.port.send_now()


def _open_checkpoint(path: Path) -> tuple[list[_Opened], bool]:
    """The checkpoint's files, opened: one for a file, every file below a folder."""
    if path.is_dir():
        names = sorted(
            os.path.relpath(os.path.join(root, name), path)
            for root, _, files in os.walk(path)
            for name in files
        )
        opened: list[_Opened] = []
        try:
            for i, name in enumerate(names):
                opened.append(_open(path / name, name, now=i < OPEN_AT_MOST))
        except BaseException:
            _close_all(opened)
            raise
        return opened, True
    if not path.exists():
        msg = f"record_checkpoint(): {path} does not exist (record a file once it is written)"
        raise FileNotFoundError(msg)
    return [_open(path, "")], False


def _open(path: Path, name: str, now: bool = True) -> _Opened:
    return _Opened(name, path, os.open(path, os.O_RDONLY | os.O_CLOEXEC) if now else -1)


def _hash_file(f: _Opened) -> tuple[int, str]:
    """(bytes, sha256) of a whole file, read through its descriptor (hashlib releases the GIL
    on large buffers, so training goes on meanwhile)."""
    if f.fd < 0:
        f.fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(f.fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return offset, digest.hexdigest()


def _close_all(files: list[_Opened]) -> None:
    for f in files:
        if f.fd >= 0:
            os.close(f.fd)
            f.fd = -1


def _report(exc: Exception) -> None:
    if isinstance(exc, OSError):  # a file of a folder gone before it was read
        logger.warning(f"traintape: cannot record a checkpoint: {exc}")
    else:
        logger.exception("traintape: recording a checkpoint failed")
