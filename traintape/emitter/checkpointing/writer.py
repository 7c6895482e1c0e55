"""The checkpoint writer: a snapshot on the caller's thread, the durable file on a background one.

    handle = emitter.save_checkpoint(state, step=step, metrics={"val_loss": v})
    ...                                   # change the model at once: the snapshot is taken
    info = handle.result()                # CheckpointInfo(path, step, bytes, sha256, ...)

On the caller's thread (`CheckpointWriter.save`): take a free snapshot slot, copy every tensor of
`state` into that slot's CPU buffers (reused from save to save, keyed by the tensor's place in
the state; pinned buffers and one stream sync for CUDA tensors, never a clone on the GPU), and
rebuild the dicts, lists and tuples around them, so nothing the caller changes afterwards leaks
into the file (snapshot.py). Then queue the job and return.

The writer acts on the run through its `EmitterPort` (emitter/port.py): `emit`, `send_now`,
`acked_below`, and whether the run is finished.

On the writer thread (`_write`, then `_write_file`): a temporary file in the destination folder (O_EXCL, flock'd
while written) -> `torch.save` through a writer that hashes what it streams (files.py)
-> the slot is free again -> flush, fsync -> `os.replace` to the final name -> fsync of the folder -> manifest line
-> `checkpoint` event (action "saved") -> the handle resolves -> retention.

In flight: the policy's `snapshots` slots (default 2) bound memory to that many copies of the
state. With 2, one snapshot is being written while the next one waits; a save_checkpoint() that
finds both taken blocks until the oldest has been serialised (that wait counts in `blocked_s`).
No save is dropped and no pile of snapshots grows.

Failures (disk full, a folder that cannot be written, a state torch.save cannot pickle) leave no
file: the temporary file is removed, the handle carries the exception, a `checkpoint` event with
action "failed" records it, a line goes to stderr, and training goes on.

Retention (retention.py) runs on the writer thread after a new checkpoint is durable, over the
files this run and rank wrote into the folder. They are listed in an append-only manifest
(`.traintape-<run>[.rank<R>].jsonl`), so a resumed run still knows the metrics of the files an
earlier attempt wrote. A deletion is first recorded as a `checkpoint` event (action "deleted")
and the file is unlinked only once the collector has acknowledged that event: the store never
names a file that is gone, even after a SIGKILL. While the collector does not answer, the file
waits; the manifest marks it `deleting` first. When the process ends before the acknowledgement,
the deletion is carried out by `traintape replay` once it has delivered the spooled event (the
file's sha256 still matching, deletions.py), or by the run's next attempt at its first save.
Temporary files of crashed writes (their flock is free) are removed on the first save
into a folder, each recorded as a "deleted" event with reason "leftover".
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import secrets
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traintape.checkpoint import CheckpointInfo, CheckpointPolicy, best_index, monitored_value
from traintape.durable import fsync_dir, mkdir_private
from traintape.emitter.checkpointing.files import HashingFile, Manifest
from traintape.emitter.checkpointing.handle import CheckpointHandle
from traintape.emitter.checkpointing.retention import TMP_NAME, Retention
from traintape.emitter.checkpointing.snapshot import SnapshotSlot, Snapshotter
from traintape.emitter.checks import check_step, checkpoint_metrics
from traintape.emitter.port import EmitterPort
from traintape.errors import RunFinishedError
from traintape.layout import StoreLayout
from traintape.schemas.events import CHECKPOINT

logger = logging.getLogger(__name__)

__all__ = ["TMP_NAME", "CheckpointHandle", "CheckpointWriter"]

SUFFIX = ".pt"

_WRITE_BUFFER = 1 << 20
_DELETE_POLL_S = 0.05


# -- the writer ------------------------------------------------------------------------------


@dataclass
class _Job:
    snapshot: Any
    slot: SnapshotSlot | None
    step: int
    base: str
    metrics: dict[str, Any]
    handle: CheckpointHandle
    blocked_s: float


@dataclass
class _Stop:
    timeout: float


@dataclass
class _Attempt:
    """How far one write got: what `_undo` must take back."""

    manifest: Manifest | None = None
    final: Path | None = None
    tmp: Path | None = None
    listed: bool = False
    replaced: bool = False


@dataclass(frozen=True)
class _Written:
    bytes: int
    sha256: str
    is_best: bool


class CheckpointWriter:
    """Saves one run's checkpoints from one process; made by the first `save_checkpoint`."""

    def __init__(self, port: EmitterPort, policy: CheckpointPolicy | None) -> None:
        import torch

        if policy is None:
            policy = CheckpointPolicy()
        elif not isinstance(policy, CheckpointPolicy):
            msg = f"checkpoint= takes a traintape.CheckpointPolicy, not {type(policy).__name__}"
            raise TypeError(msg)
        self.port = port
        self.policy = policy
        self.rank: int = port.rank
        self.writes = policy.ranks == "all" or self.rank == 0
        self.dir = (
            Path(policy.dir).expanduser().resolve()
            if policy.dir is not None
            else StoreLayout(port.store).checkpoints(port.run_id)
        )
        rank_part = f".rank{self.rank}" if policy.ranks == "all" else ""
        self.suffix = rank_part + SUFFIX
        self.manifest_name = f".traintape-{port.run_id}{rank_part}.jsonl"
        self._torch = torch
        self._free: queue.Queue[SnapshotSlot] = queue.Queue()
        for _ in range(policy.snapshots):
            self._free.put(SnapshotSlot())
        self._jobs: queue.Queue[_Job | _Stop] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self._retention = Retention(port, policy, self.dir)

    # -- the caller's side -----------------------------------------------------------------

    def save(self, state: Any, step: int, metrics: dict[str, Any] | None) -> CheckpointHandle:
        if self._closed or self.port.finished():
            msg = f"run {self.port.run_id} is finished; call init() to start another"
            raise RunFinishedError(msg)
        if os.getpid() != self._pid:
            msg = "save_checkpoint() in a forked child: save from the training process"
            raise RuntimeError(msg)
        step = check_step(step)
        metrics = checkpoint_metrics(metrics)
        handle = CheckpointHandle(step)
        if not self.writes:
            info = CheckpointInfo(None, step, 0, None, metrics, 0.0, 0.0, False, self.rank)
            handle.resolve(info)
            return handle
        base = self._base_name(step, metrics)
        start = time.perf_counter()
        slot = self._free.get()  # waits while `snapshots` earlier saves are still in flight
        try:
            snapshot = Snapshotter(self._torch, slot).take(state)
        except Exception as exc:
            slot.buffers = {}
            self._free.put(slot)
            self._failed(handle, None, exc, metrics, time.perf_counter() - start)
            return handle
        blocked = time.perf_counter() - start
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="traintape-checkpoint", daemon=True
            )
            self._thread.start()
        self._jobs.put(_Job(snapshot, slot, step, base, metrics, handle, blocked))
        return handle

    def _base_name(self, step: int, metrics: dict[str, Any]) -> str:
        template = self.policy.filename
        try:
            base = template.format_map({**metrics, "step": step, "rank": self.rank})
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            msg = f"checkpoint filename {template!r} cannot be filled at step {step}: {exc!r}"
            raise ValueError(msg) from None
        base = base.replace(os.sep, "-").replace("\0", "").lstrip(".")
        return base or f"step-{step:08d}"

    def close(self, timeout: float = 30.0) -> None:
        """Waits for every queued write (however long: the last checkpoint matters more than a
        quick exit), then up to `timeout` s for deletions to be acknowledged."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if os.getpid() != self._pid or thread is None or not thread.is_alive():
            return
        self._jobs.put(_Stop(max(0.0, timeout)))
        if thread is not threading.current_thread():
            thread.join()

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=_DELETE_POLL_S if self._retention.deleting else None)
            except queue.Empty:
                job = None
            try:
                if isinstance(job, _Stop):
                    self._stop(job.timeout)
                    return
                if job is not None:
                    self._write(job)
                if self._retention.deleting:
                    self._retention.finish_deletions(0.0)
            except Exception as exc:  # a bug here must not leave savers waiting for a slot
                traceback.print_exc()
                if isinstance(job, _Job):
                    self._release(job)
                    job.handle.fail(exc)

    def _stop(self, timeout: float) -> None:
        retention = self._retention
        retention.finish_deletions(timeout)
        if retention.deleting:
            logger.warning(
                f"traintape: {len(retention.deleting)} checkpoint files in {self.dir} "
                "stay until the collector has recorded their deletion; "
                "`traintape replay` (or the run's next attempt) removes them then"
            )

    def _release(self, job: _Job) -> None:
        slot, job.slot, job.snapshot = job.slot, None, None
        if slot is not None:
            self._free.put(slot)

    def _prepare(self) -> Manifest:
        mkdir_private(self.dir)  # 0700 whatever the umask: the store may not exist yet
        retention = self._retention
        if retention.manifest is None:
            manifest = retention.manifest = Manifest(self.dir / self.manifest_name)
            retention.remove_leftovers()
            # Deletions an earlier process of this run and rank decided but could not see
            # acknowledged: recorded again (a duplicate in the store is harmless), then done.
            earlier = [n for n in manifest.live if n in manifest.pending]
            if earlier:
                retention.doom(manifest, earlier)
        return retention.manifest

    def _write(self, job: _Job) -> None:
        """One save: the durable file, its manifest line, its event, then retention."""
        start = time.perf_counter()
        attempt = _Attempt()
        try:
            manifest = attempt.manifest = self._prepare()
            attempt.final = self.dir / self._free_name(job.base, manifest)
            written = self._write_file(job, manifest, attempt)
        except Exception as exc:
            self._undo(job, attempt, exc)
            return
        self._saved(job, attempt.final, written, time.perf_counter() - start)
        self._retention.retain(manifest)

    def _write_file(self, job: _Job, manifest: Manifest, attempt: _Attempt) -> _Written:
        """tmp file (O_EXCL, flock'd) -> torch.save -> fsync -> manifest line -> rename -> fsync
        of the folder. `attempt` says how far it got, for `_undo`."""
        final = attempt.final
        assert final is not None
        tmp = attempt.tmp = self.dir / f".{final.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with open(fd, "wb", buffering=_WRITE_BUFFER) as f:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a cleanup elsewhere sees this write is alive
            except OSError:
                pass  # a file system without locks: the write matters more
            out = HashingFile(f)
            try:
                self._torch.save(job.snapshot, out)  # type: ignore[arg-type]  # a file-like
            except Exception:
                if out.error is not None:  # the disk's own error says more than torch's
                    raise out.error from None
                raise
            self._release(job)  # the buffers are read: the next snapshot may fill them
            f.flush()
            os.fsync(fd)
            written = _Written(out.bytes, out.hexdigest(), self._is_best(manifest, job.metrics))
            # Listed before the rename: a file at a final path is always known to retention,
            # even when a crash takes its event. (An entry whose file never came is dropped.)
            manifest.saved(
                {
                    "name": final.name,
                    "step": job.step,
                    "bytes": written.bytes,
                    "sha256": written.sha256,
                    "metrics": job.metrics,
                    "ts": time.time_ns(),
                }
            )
            attempt.listed = True
            os.replace(tmp, final)
            attempt.replaced = True
        fsync_dir(self.dir)
        return written

    def _is_best(self, manifest: Manifest, metrics: dict[str, Any]) -> bool:
        policy = self.policy
        earlier = [monitored_value(r["metrics"], policy.monitor) for r in manifest.live.values()]
        value = monitored_value(metrics, policy.monitor)
        return value is not None and best_index([*earlier, value], policy.mode) == len(earlier)

    def _undo(self, job: _Job, attempt: _Attempt, exc: Exception) -> None:
        """A failed save leaves no file and no manifest entry; its handle and event say why."""
        self._release(job)
        final = attempt.final
        if attempt.listed and attempt.manifest is not None and final is not None:
            attempt.manifest.live.pop(final.name, None)
        leftover = final if attempt.replaced else attempt.tmp  # no file of a failed save stays
        if leftover is not None:
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
        self._failed(job.handle, final, exc, job.metrics, job.blocked_s)

    def _saved(self, job: _Job, final: Path | None, written: _Written, write_s: float) -> None:
        """The file is durable: its event goes out, then the handle resolves."""
        assert final is not None
        policy = self.policy
        info = CheckpointInfo(
            path=final,
            step=job.step,
            bytes=written.bytes,
            sha256=written.sha256,
            metrics=job.metrics,
            blocked_s=job.blocked_s,
            write_s=write_s,
            is_best=written.is_best,
            rank=self.rank,
        )
        body = {
            "action": "saved",
            "path": str(final),
            "bytes": written.bytes,
            "sha256": written.sha256,
            "metrics": job.metrics,
            "blocked_s": job.blocked_s,
            "write_s": write_s,
            "is_best": written.is_best,
            "monitor": policy.monitor,
            "mode": policy.mode,
        }
        self.port.emit(CHECKPOINT, job.step, body)
        self.port.send_now()
        job.handle.resolve(info)

    def _free_name(self, base: str, manifest: Manifest) -> str:
        """`base` + suffix, or with -v1, -v2, ...: a file is never overwritten."""
        name, version = base + self.suffix, 0
        deleting = self._retention.deleting
        while name in manifest.live or name in deleting or (self.dir / name).exists():
            version += 1
            name = f"{base}-v{version}{self.suffix}"
        return name

    def _failed(
        self,
        handle: CheckpointHandle,
        path: Path | None,
        exc: BaseException,
        metrics: dict[str, Any],
        blocked_s: float,
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
        body = {
            "action": "failed",
            "path": None if path is None else str(path),
            "error": error,
            "metrics": metrics,
            "blocked_s": blocked_s,
        }
        self.port.emit(CHECKPOINT, handle.step, body)
        logger.warning(
            f"traintape: checkpoint of step {handle.step} failed, training goes on: {error}"
        )
        handle.fail(exc)
