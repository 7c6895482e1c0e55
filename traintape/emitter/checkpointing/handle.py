"""`CheckpointHandle`: what `save_checkpoint()` returns, a future for one save."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from traintape.checkpoint import CheckpointInfo


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

    def resolve(self, info: CheckpointInfo) -> None:
        """For the writer: the save succeeded."""
        self._future.set_result(info)

    def fail(self, exc: BaseException) -> None:
        """For the writer: the save failed with `exc` (a second outcome is ignored)."""
        if not self._future.done():
            self._future.set_exception(exc)

    def __repr__(self) -> str:
        state = "writing" if not self.done() else ("failed" if self.error else "done")
        return f"<CheckpointHandle step {self.step} {state}>"
