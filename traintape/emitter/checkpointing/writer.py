"""The checkpoint writer: a snapshot on the caller's thread, the durable file on a background one.

    handle = emitter.save_checkpoint(state, step=step, metrics={"val_loss": v})
    ...                                   # change the model at once: the snapshot is taken
    info = handle.result()                # CheckpointInfo(path, step, bytes, sha256, ...)

On the caller's thread (`CheckpointWriter.save`): take a free snapshot slot, copy every tensor of
`state` into that slot's CPU buffers (reused from save to save, keyed by the tensor's place in
the state; pinned buffers and one stream sync for CUDA tensors, never a clone on the GPU), and
rebuild the dicts, lists and tuples around them, so nothing the caller changes afterwards leaks
into the file (snapshot.py). Then queue the job and return.

On the writer thread (`_write`): a temporary file in the destination folder (O_EXCL, flock'd
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

Retention runs on the writer thread after a new checkpoint is durable, over the files this run
and rank wrote into the folder. They are listed in an append-only manifest
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
import re
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traintape.checkpoint import (
    CheckpointInfo,
    CheckpointPolicy,
    best_index,
    monitored_value,
    select_for_deletion,
)
from traintape.durable import fsync_dir
from traintape.emitter.checkpointing.files import HashingFile, Manifest
from traintape.emitter.checkpointing.snapshot import SnapshotSlot, Snapshotter
from traintape.emitter.emitter import _check_step
from traintape.emitter.values import coerce_scalar
from traintape.errors import RunFinishedError
from traintape.layout import StoreLayout
from traintape.schemas.events import CHECKPOINT

logger = logging.getLogger(__name__)

SUFFIX = ".pt"
TMP_NAME = re.compile(r"^\..+\.pt\.[0-9a-f]{8}\.tmp$")
"""`.<final name>.<8 hex>.tmp`: the temporary file of a write in progress (or of a crashed one)."""

_WRITE_BUFFER = 1 << 20
_DELETE_POLL_S = 0.05


class CheckpointHandle:
    """A future for one save: `done()`, `result(timeout)` -> CheckpointInfo, `exception()`.

    It resolves once the file is durable and its event emitted; `result()` raises whatever made
    the save fail (an OSError for a full disk, ...). Nothing is raised on the training thread.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self._future: Future[CheckpointInfo] = Future()
        self._future.set_running_or_notify_cancel()

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> CheckpointInfo:
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)

    @property
    def error(self) -> BaseException | None:
        """The failure, once done; None while writing or after a success."""
        return self._future.exception(0) if self._future.done() else None

    def add_done_callback(self, fn: Callable[[CheckpointHandle], Any]) -> None:
        self._future.add_done_callback(lambda _future: fn(self))

    def __repr__(self) -> str:
        state = "writing" if not self.done() else ("failed" if self.error else "done")
        return f"<CheckpointHandle step {self.step} {state}>"


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


class CheckpointWriter:
    """Saves one run's checkpoints from one process; made by the first `save_checkpoint`."""

    def __init__(self, emitter: Any) -> None:
        import torch

        policy = emitter.checkpoint_policy
        if policy is None:
            policy = CheckpointPolicy()
        elif not isinstance(policy, CheckpointPolicy):
            msg = f"checkpoint= takes a traintape.CheckpointPolicy, not {type(policy).__name__}"
            raise TypeError(msg)
        self.emitter = emitter
        self.policy = policy
        self.rank: int = emitter.rank
        self.writes = policy.ranks == "all" or self.rank == 0
        self.dir = (
            Path(policy.dir).expanduser().resolve()
            if policy.dir is not None
            else StoreLayout(emitter.store).checkpoints(emitter.run_id)
        )
        rank_part = f".rank{self.rank}" if policy.ranks == "all" else ""
        self.suffix = rank_part + SUFFIX
        self.manifest_name = f".traintape-{emitter.run_id}{rank_part}.jsonl"
        self._torch = torch
        self._free: queue.Queue[SnapshotSlot] = queue.Queue()
        for _ in range(policy.snapshots):
            self._free.put(SnapshotSlot())
        self._jobs: queue.Queue[_Job | _Stop] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self._manifest: Manifest | None = None
        self._deleting: dict[str, int | None] = {}  # name -> seq its event must be acked past

    # -- the caller's side -----------------------------------------------------------------

    def save(self, state: Any, step: int, metrics: dict[str, Any] | None) -> CheckpointHandle:
        if self._closed or self.emitter._report is not None:
            msg = f"run {self.emitter.run_id} is finished; call init() to start another"
            raise RunFinishedError(msg)
        if os.getpid() != self._pid:
            msg = "save_checkpoint() in a forked child: save from the training process"
            raise RuntimeError(msg)
        step = _check_step(step)
        metrics = _plain_metrics(metrics)
        handle = CheckpointHandle(step)
        if not self.writes:
            info = CheckpointInfo(None, step, 0, None, metrics, 0.0, 0.0, False, self.rank)
            handle._future.set_result(info)
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
                job = self._jobs.get(timeout=_DELETE_POLL_S if self._deleting else None)
            except queue.Empty:
                job = None
            try:
                if isinstance(job, _Stop):
                    self._finish_deletions(job.timeout)
                    if self._deleting:
                        logger.warning(
                            f"traintape: {len(self._deleting)} checkpoint files in {self.dir} "
                            "stay until the collector has recorded their deletion; "
                            "`traintape replay` (or the run's next attempt) removes them then"
                        )
                    return
                if job is not None:
                    self._write(job)
                if self._deleting:
                    self._finish_deletions(0.0)
            except Exception as exc:  # a bug here must not leave savers waiting for a slot
                traceback.print_exc()
                if isinstance(job, _Job):
                    self._release(job)
                    if not job.handle.done():
                        job.handle._future.set_exception(exc)

    def _release(self, job: _Job) -> None:
        slot, job.slot, job.snapshot = job.slot, None, None
        if slot is not None:
            self._free.put(slot)

    def _prepare(self) -> Manifest:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._manifest is None:
            manifest = self._manifest = Manifest(self.dir / self.manifest_name)
            self._remove_leftovers()
            # Deletions an earlier process of this run and rank decided but could not see
            # acknowledged: recorded again (a duplicate in the store is harmless), then done.
            earlier = [n for n in manifest.live if n in manifest.pending]
            if earlier:
                self._doom(manifest, earlier)
        return self._manifest

    def _write(self, job: _Job) -> None:
        start = time.perf_counter()
        policy = self.policy
        final: Path | None = None
        tmp: Path | None = None
        listed = replaced = False
        try:
            manifest = self._prepare()
            final = self.dir / self._free_name(job.base, manifest)
            tmp = self.dir / f".{final.name}.{secrets.token_hex(4)}.tmp"
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
                sha256 = out.hexdigest()
                earlier = [
                    monitored_value(r["metrics"], policy.monitor) for r in manifest.live.values()
                ]
                value = monitored_value(job.metrics, policy.monitor)
                is_best = value is not None and best_index([*earlier, value], policy.mode) == len(
                    earlier
                )
                # Listed before the rename: a file at a final path is always known to retention,
                # even when a crash takes its event. (An entry whose file never came is dropped.)
                manifest.saved(
                    {
                        "name": final.name,
                        "step": job.step,
                        "bytes": out.bytes,
                        "sha256": sha256,
                        "metrics": job.metrics,
                        "ts": time.time_ns(),
                    }
                )
                listed = True
                os.replace(tmp, final)
                replaced = True
            fsync_dir(self.dir)
        except Exception as exc:
            self._release(job)
            if listed:
                manifest.live.pop(final.name, None)  # type: ignore[union-attr]
            leftover = final if replaced else tmp  # no file of a failed save stays behind
            if leftover is not None:
                try:
                    leftover.unlink(missing_ok=True)
                except OSError:
                    pass
            self._failed(job.handle, final, exc, job.metrics, job.blocked_s)
            return
        write_s = time.perf_counter() - start
        info = CheckpointInfo(
            path=final,
            step=job.step,
            bytes=out.bytes,
            sha256=sha256,
            metrics=job.metrics,
            blocked_s=job.blocked_s,
            write_s=write_s,
            is_best=is_best,
            rank=self.rank,
        )
        body = {
            "action": "saved",
            "path": str(final),
            "bytes": out.bytes,
            "sha256": sha256,
            "metrics": job.metrics,
            "blocked_s": job.blocked_s,
            "write_s": write_s,
            "is_best": is_best,
            "monitor": policy.monitor,
            "mode": policy.mode,
        }
        self.emitter._emit(CHECKPOINT, job.step, body)
        self._send()
        job.handle._future.set_result(info)
        self._retain(manifest)

    def _free_name(self, base: str, manifest: Manifest) -> str:
        """`base` + suffix, or with -v1, -v2, ...: a file is never overwritten."""
        name, version = base + self.suffix, 0
        while name in manifest.live or name in self._deleting or (self.dir / name).exists():
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
        self.emitter._emit(CHECKPOINT, handle.step, body)
        logger.warning(
            f"traintape: checkpoint of step {handle.step} failed, training goes on: {error}"
        )
        handle._future.set_exception(exc)

    # -- retention -------------------------------------------------------------------------

    def _retain(self, manifest: Manifest) -> None:
        policy = self.policy
        names = [n for n in manifest.live if n not in self._deleting]
        values = [monitored_value(manifest.live[n]["metrics"], policy.monitor) for n in names]
        doomed = [
            names[i]
            for i in select_for_deletion(values, policy.keep_last, policy.best_to_keep, policy.mode)
        ]
        if not doomed:
            return
        manifest.deleting(doomed)  # first: a later attempt finishes what this one cannot
        self._doom(manifest, doomed)

    def _doom(self, manifest: Manifest, names: list[str]) -> None:
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
            self.emitter._emit(CHECKPOINT, entry.get("step"), body)
        target = self._send()
        for name in names:
            self._deleting[name] = target

    def _finish_deletions(self, wait: float) -> None:
        """Unlinks the files whose deletion event the collector has acknowledged."""
        deadline = time.monotonic() + wait
        while self._deleting:
            acked = self._acked_below()
            if acked is not None:
                for name, target in list(self._deleting.items()):
                    if target is not None and target <= acked:
                        del self._deleting[name]
                        self._unlink(name)
            if not self._deleting or time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def _unlink(self, name: str) -> None:
        try:
            (self.dir / name).unlink(missing_ok=True)
            fsync_dir(self.dir)
        except OSError as exc:
            logger.warning(f"traintape: cannot delete checkpoint {self.dir / name}: {exc}")
            return
        if self._manifest is not None:
            self._manifest.deleted(name)

    def _remove_leftovers(self) -> None:
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
            self.emitter._emit(CHECKPOINT, None, body)

    # -- the event stream ------------------------------------------------------------------

    def _send(self) -> int | None:
        """Sends what is queued; returns the seq every event queued so far is below."""
        return self.emitter.send_now()

    def _acked_below(self) -> int | None:
        """A seq every event below which the collector acknowledged; None when there is no link."""
        return self.emitter.acked_below()


def _plain_metrics(metrics: Any) -> dict[str, Any]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        msg = f"metrics must be a dict of name -> number, not {type(metrics).__name__}"
        raise TypeError(msg)
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            msg = f"metric names must be str, got {key!r}"
            raise TypeError(msg)
        numel = getattr(value, "numel", None)
        if callable(numel) and numel() == 1:  # a one-element tensor
            value = value.item()
        out[key] = coerce_scalar(key, value)
    return out


def save_checkpoint(
    emitter: Any, state: Any, step: int, metrics: dict[str, Any] | None = None
) -> CheckpointHandle:
    """`Emitter.save_checkpoint`: makes the run's writer on the first call."""
    writer = emitter._checkpoints
    if writer is None:
        if emitter._report is not None:
            msg = f"run {emitter.run_id} is finished; call init() to start another"
            raise RunFinishedError(msg)
        writer = emitter._checkpoints = CheckpointWriter(emitter)
    return writer.save(state, step, metrics)
