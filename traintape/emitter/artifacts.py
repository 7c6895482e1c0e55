"""Artifacts: files and bytes recorded with a run, stored once per content in the store.

    emitter.log_artifact("model.onnx", kind="model", metadata={"opset": 17})
    emitter.log_artifact(csv_bytes, name="predictions.csv", kind="table")

On the caller's thread: a file is opened (its descriptor keeps the bytes of the call even if
the file is replaced meanwhile), bytes are copied, and the job is queued; that is all. A
background thread then copies the content into `<store>/artifacts/tmp/`, hashing it as it goes
(sha256, 8 MiB at a time: a file of any size, never whole in memory), fsyncs it, and renames it to
`artifacts/objects/<sha[:2]>/<sha[2:]>` (layout.py) before the `artifact` event is sent. A process
killed during a copy leaves a file in `tmp/` only, never a partial object (`traintape gc` removes
such leftovers); the same content logged twice is one object.

Same filesystem: the copy is a reflink (FICLONE: copy-on-write, no bytes written) where the
filesystem can (btrfs, XFS), else a plain copy. Not a hard link: a file rewritten in place after
the call (a config saved again with `open(path, "w")`) would change the stored object under
every event that names it, and a hard-linked object would share the user's file's mode.

`traintape gc` (read/artifacts.py) removes objects no event refers to and that are older than its
grace period. An object logged again is touched here, under a shared lock of
`artifacts/gc.lock` (durable.flocked) that gc takes exclusively: gc either sees the fresh time and keeps it, or
removed it before, and then this thread writes it anew.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traintape.durable import flocked, fsync_dir, mkdir_private
from traintape.emitter.checks import check_artifact, check_body, check_step
from traintape.emitter.media_backlog import MediaBacklog
from traintape.emitter.port import EmitterPort
from traintape.emitter.worker import Worker
from traintape.errors import RunFinishedError
from traintape.layout import StoreLayout
from traintape.schemas.events import ARTIFACT
from traintape.schemas.values import plain

logger = logging.getLogger(__name__)

_CHUNK = 8 << 20
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


@dataclass
class _Job:
    name: str
    kind: str | None
    metadata: dict[str, Any]
    step: int
    ts: int
    fd: int  # the file's descriptor, or -1 for `data`
    data: bytes | None
    result: Future[dict[str, Any]] | None  # None: a media value of log(), which returns nothing
    # A media value of log() (media.py): its bytes and metadata, made on the copying thread.
    encode: Callable[[], tuple[bytes, dict[str, Any]]] | None = None
    snapshot_bytes: int = 0  # the memory a media value holds until it is encoded


class ArtifactWriter:
    """Stores one run's artifacts from one process (one thread copies, in call order)."""

    def __init__(
        self, port: EmitterPort, redact_text: Callable[[str, str], str] | None = None
    ) -> None:
        self.port = port
        # An image's caption passes through the run's redaction, as log_text's text does.
        self._redact_text = redact_text
        self.layout = StoreLayout(port.store)
        self._worker = Worker("traintape-artifacts", self._do)
        self._media = MediaBacklog()
        self._failures: dict[str, int] = {}  # artifacts not stored, per cause (written by _do)

    # -- the caller's side -----------------------------------------------------------------

    def log(
        self,
        data: str | os.PathLike[str] | bytes | bytearray | memoryview,
        name: str | None = None,
        kind: str | None = None,
        metadata: dict[str, Any] | None = None,
        step: int | None = None,
    ) -> Future[dict[str, Any]]:
        """Queues `data` (a file's path, or bytes); the future gives the event's body once the
        object is durable and the event sent."""
        self.check_open("log_artifact()")
        name, meta = _check_arguments(data, name, kind, metadata)
        step = self.port.next_step() if step is None else check_step(step)
        result: Future[dict[str, Any]] = Future()
        job = _Job(name, kind, meta, step, time.time_ns(), -1, None, result)
        if isinstance(data, (bytes, bytearray, memoryview)):
            job.data = bytes(data)  # the caller may change its buffer once this returns
        else:
            job.fd = _open_file(Path(data))
        self._worker.put(job)
        return result

    def check_open(self, what: str) -> None:
        """Raises unless this process can still queue artifacts of the run."""
        if self._worker.closed or self.port.finished():
            msg = f"run {self.port.run_id} is finished; call init() to start another"
            raise RunFinishedError(msg)
        if os.getpid() != self._worker.pid:
            msg = f"{what} in a forked child: log from the training process"
            raise RuntimeError(msg)

    def put_media(
        self,
        name: str,
        kind: str,
        encode: Callable[[], tuple[bytes, dict[str, Any]]],
        step: int,
        ts: int,
        size: int,
    ) -> None:
        """Queues a media value of `log()` (media.py) holding `size` bytes: `encode()` runs on the
        copying thread, then its bytes are stored as any artifact's (after `check_open`). Waits
        while the media not yet encoded hold more than MediaBacklog.LIMIT bytes."""
        self._media.add(size)
        self._worker.put((name, kind, encode, step, ts, size))  # its _Job is made by _do

    def close(self) -> None:
        """Waits until every queued artifact is stored and its event queued (`finish()` calls it
        before the run's end: a copy of any size ends first)."""
        self._worker.close()
        lost = sum(self._failures.values())
        if lost > len(self._failures):  # some were counted without a warning of their own
            logger.warning(f"traintape: {lost} artifacts of run {self.port.run_id} were not stored")

    # -- the copying thread ----------------------------------------------------------------

    def _do(self, queued: _Job | tuple[Any, ...]) -> None:
        if isinstance(queued, _Job):
            job = queued
        else:  # a media value of put_media, made a job here: not on the caller's time
            name, kind, encode, step, ts, size = queued
            job = _Job(name, kind, {}, step, ts, -1, None, None, encode, size)
        try:
            if job.encode is not None:  # PNG or Parquet, made here: off the training thread
                try:
                    job.data, job.metadata = job.encode()
                    caption = job.metadata.get("caption")
                    if caption and self._redact_text is not None:
                        job.metadata["caption"] = self._redact_text(job.name, caption)
                finally:
                    job.encode = None  # what it holds (a copy of an image) is freed now
                    self._media.done(job.snapshot_bytes)
            body = self._store(job)
        except Exception as exc:  # the job's failure, not the thread's: finish() waits for it
            self._failed(job, exc)
            if job.result is not None:
                job.result.set_exception(exc)
        else:
            if job.result is not None:
                job.result.set_result(body)
        finally:
            if job.fd >= 0:
                os.close(job.fd)

    def _failed(self, job: _Job, exc: Exception) -> None:
        """Warns of the first artifact lost to each cause (a full disk fails every later one:
        a warning per image logged would flood the training's output); close() says how many."""
        cause = f"errno {exc.errno}" if isinstance(exc, OSError) and exc.errno else repr(exc)
        seen = self._failures.get(cause, 0)
        self._failures[cause] = seen + 1
        if seen:
            logger.debug(f"traintape: artifact {job.name!r} was not stored: {exc}")
        else:
            logger.warning(
                f"traintape: artifact {job.name!r} was not stored: {exc} (later artifacts failing "
                "so are counted, and the count said when the run finishes)"
            )

    def _store(self, job: _Job) -> dict[str, Any]:
        tmp_dir = self.layout.artifacts / "tmp"
        mkdir_private(tmp_dir)
        tmp = tmp_dir / f"{uuid.uuid4().hex}.tmp"
        try:
            size, sha256 = _write_tmp(job, tmp)
            final = self.layout.artifact_object(sha256)
            mkdir_private(final.parent)
            with flocked(self.layout.artifacts_lock):  # gc decides under it exclusively
                if final.exists():  # stored before: touched, so gc's grace starts again
                    os.utime(final)
                else:
                    os.replace(tmp, final)
                    fsync_dir(final.parent)
                    fsync_dir(final.parent.parent)
        finally:
            tmp.unlink(missing_ok=True)
        body = {
            "name": job.name,
            "kind": job.kind,
            "bytes": size,
            "sha256": sha256,
            "path": str(final.relative_to(self.layout.root)),
            "metadata": job.metadata,
        }
        check_artifact(body, f"log_artifact({job.name[:40]!r})")
        self.port.emit(ARTIFACT, job.step, body, job.ts)
        self.port.send_now()
        return body


def _check_arguments(
    data: Any, name: str | None, kind: str | None, metadata: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The artifact's name (a file's own name by default) and its metadata as plain values."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if name is None:
            msg = "log_artifact(bytes) needs a name="
            raise ValueError(msg)
    elif isinstance(data, (str, os.PathLike)):
        name = os.path.basename(os.fspath(data)) if name is None else name
    else:
        msg = f"log_artifact() takes a file path or bytes, not {type(data).__name__}"
        raise TypeError(msg)
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        msg = f"log_artifact(): name must be a non-empty file name without '/', got {name!r}"
        raise ValueError(msg)
    if kind is not None and not isinstance(kind, str):
        msg = f"log_artifact(): kind must be a str, got {type(kind).__name__}"
        raise TypeError(msg)
    if metadata is not None and not isinstance(metadata, dict):
        msg = f"log_artifact(): metadata must be a dict, got {type(metadata).__name__}"
        raise TypeError(msg)
    meta = plain(dict(metadata or {}))
    check_body(meta, f"log_artifact({name[:40]!r}) metadata")
    return name, meta


def _open_file(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
    except FileNotFoundError:
        msg = f"log_artifact(): {path} does not exist"
        raise FileNotFoundError(msg) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        msg = f"log_artifact(): {path} is not a regular file (log each file of a folder)"
        raise IsADirectoryError(msg)
    return fd


def _write_tmp(job: _Job, tmp: Path) -> tuple[int, str]:
    """Writes the content to `tmp` (created 0600), fsync'd; returns (bytes, sha256)."""
    out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if job.data is not None:
            _write_all(out, job.data)
            result = len(job.data), hashlib.sha256(job.data).hexdigest()
        elif _reflink(job.fd, out):  # the same bytes, shared copy-on-write: hash the clone
            result = _copy_hashing(out, None)
        else:
            result = _copy_hashing(job.fd, out)
        os.fsync(out)
    finally:
        os.close(out)
    return result


def _reflink(src: int, dst: int) -> bool:
    try:
        fcntl.ioctl(dst, _FICLONE, src)
    except OSError as exc:  # another filesystem, or one that cannot (ext4, tmpfs): copy
        if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY):
            logger.debug(f"traintape: reflink refused ({exc}); copying")
        return False
    return True


def _copy_hashing(src: int, dst: int | None) -> tuple[int, str]:
    """(bytes, sha256) of `src` read from its start, written to `dst` when given (hashlib and
    os.write release the GIL on large buffers, so training goes on meanwhile)."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(src, _CHUNK, offset):
        digest.update(chunk)
        if dst is not None:
            _write_all(dst, chunk)
        offset += len(chunk)
    return offset, digest.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
