"""The training-side API: `from traintape import emitter`.

    run = emitter.init(project="mnist", config={"lr": 1e-3})
    emitter.log({"loss": 0.31, "acc": 0.9}, step=10)
    emitter.finish()

The module functions act on the run of the latest `init()` in this process; an `Emitter` can also
be made and used directly. Before `init()`, `log`, `log_params` and `log_text` do nothing (after
one warning each).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from traintape.emitter.emitter import Emitter, FinishReport, RunFinishedError, run_end

logger = logging.getLogger(__name__)

__all__ = [
    "Emitter",
    "FinishReport",
    "RunFinishedError",
    "current",
    "finish",
    "init",
    "log",
    "log_artifact",
    "log_params",
    "log_text",
    "save_checkpoint",
    "watch",
]


class _NotStarted:
    """Stands in for the run before `init()`: each call is a bare return, after one warning per
    function (`log`, `log_params`, `log_text`) so nothing is dropped without a word."""

    warned: set[str] = set()

    @staticmethod
    def _warn(what: str) -> None:
        if what not in _NotStarted.warned:
            _NotStarted.warned.add(what)
            logger.warning(
                f"traintape: emitter.{what}() before emitter.init(): nothing is recorded"
            )

    def log(self, metrics: Any, step: int | None = None) -> None:
        self._warn("log")

    def log_params(self, params: Any) -> None:
        self._warn("log_params")

    def log_text(self, key: str, text: str, step: int | None = None) -> None:
        self._warn("log_text")

    def finish(
        self, status: str = "completed", timeout: float = 30.0, *, wait_visible: bool = True
    ) -> None:
        return None


_current: Emitter | _NotStarted = _NotStarted()
_hook_lock = threading.Lock()
_hook_installed = False


def init(
    project: str,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    tags: tuple[str, ...] | list[str] = (),
    address: str | None = None,
    run_id: str | None = None,
    **options: Any,
) -> Emitter:
    """Starts (or, with the `run_id` of an earlier run, resumes) a run and makes it current.

    Rank and world size come from torchrun's variables or torch.distributed; all ranks of a job
    share one run id. `address` defaults to $TRAINTAPE_ADDRESS, else the collector of the store
    ($TRAINTAPE_STORE or ./traintape-store). A current run that was not finished is finished.
    Use as a context manager to mark the run `failed` when the block raises.

    Values of secret-looking config, params, summary and text keys and argv flags (`api_key`,
    `db.password`, `--hf-token=...`) are stored as "***redacted***": `redact=None` uses the
    default names plus $TRAINTAPE_REDACT, a list adds names ("!name" keeps one), `redact=False`
    turns it off (see traintape.emitter.redact for the matching rule).
    """
    global _current
    if isinstance(_current, Emitter):
        _current.finish()
    _install_excepthook()
    _current = Emitter(project, name, config, tags, address, run_id, **options)
    return _current


def log(metrics: dict[str, Any], step: int | None = None) -> None:
    """Logs metric values at `step` on the current run (see `Emitter.log`)."""
    _current.log(metrics, step)


def log_params(params: dict[str, Any]) -> None:
    _current.log_params(params)


def log_text(key: str, text: str, step: int | None = None) -> None:
    _current.log_text(key, text, step)


def log_artifact(data: Any, name: str | None = None, *more: Any, **kw: Any) -> Any:
    """Stores a file or bytes with the current run (see `Emitter.log_artifact`)."""
    run = current()
    if run is None:
        msg = "log_artifact() needs a run: call emitter.init() first"
        raise RuntimeError(msg)
    return run.log_artifact(data, name, *more, **kw)


def save_checkpoint(state: Any, step: int, metrics: dict[str, Any] | None = None) -> Any:
    """Checkpoints `state` on the current run (see `Emitter.save_checkpoint`)."""
    run = current()
    if run is None:
        msg = "save_checkpoint() needs a run: call emitter.init() first"
        raise RuntimeError(msg)
    return run.save_checkpoint(state, step, metrics)


def watch(model: Any, every: int = 1, per_layer: bool = False, histograms: bool = False) -> Any:
    """Logs training-health metrics of `model` on the current run (see `Emitter.watch`)."""
    run = current()
    if run is None:
        msg = "watch() needs a run: call emitter.init() first"
        raise RuntimeError(msg)
    return run.watch(model, every=every, per_layer=per_layer, histograms=histograms)


def finish(
    status: str = "completed", timeout: float = 30.0, *, wait_visible: bool = True
) -> FinishReport | None:
    """Finishes the current run; returns what was delivered and what waits in the spool (see
    `Emitter.finish`: by default it returns once every reader sees the whole run)."""
    global _current
    report = _current.finish(status=status, timeout=timeout, wait_visible=wait_visible)
    _current = _NotStarted()
    return report


def current() -> Emitter | None:
    return _current if isinstance(_current, Emitter) else None


def _install_excepthook() -> None:
    """Marks the current run failed (or killed, on Ctrl-C) when the script dies of an exception."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        _hook_installed = True
        previous = sys.excepthook

        def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
            if isinstance(_current, Emitter):
                run_end(_current).status = (
                    "killed" if issubclass(exc_type, KeyboardInterrupt) else "failed"
                )
            previous(exc_type, exc, tb)

        sys.excepthook = hook


def _reset_for_tests() -> None:
    global _current
    _current = _NotStarted()
    _NotStarted.warned.clear()
