"""`wandb.run`: one run, written through a traintape Emitter.

Committed history rows become one `emitter.log(values, step=...)` each (numbers, and `Image`s and
`Table`s as traintape's media), `log_text` for str values, and histogram events for `Histogram`s,
at the row's step; the summary and the
define_metric rules follow W&B 0.31 (traintape.wandb.summary). A run made with
`mode="disabled"` has no Emitter and records nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traintape.errors import UnsupportedMediaError
from traintape.wandb.config import Config
from traintape.wandb.data_types import Table
from traintape.wandb.history import MEDIA, NUMBER, TEXT, StepHistory, kind_of
from traintape.wandb.rows import SCALARS, RunRows
from traintape.wandb.summary import Metric, MetricRules, Summary

logger = logging.getLogger("traintape.wandb")


class Run(RunRows):
    """What `traintape.wandb.init()` returns; `wandb.run` while it is the current run."""

    def __init__(
        self,
        emitter: Any,
        project: str,
        name: str | None,
        run_id: str,
        config: Config,
        *,
        tags: Sequence[str] = (),
        extras: dict[str, Any] | None = None,
        dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._emitter = emitter  # a traintape Emitter; None when disabled
        self.id = run_id
        self.name = name
        self.project = project
        self.tags = tuple(tags)
        extras = extras or {}
        self.entity: str | None = extras.get("entity")
        self.group: str | None = extras.get("group")
        self.job_type: str | None = extras.get("job_type")
        self.notes: str | None = extras.get("notes")
        self.config = config
        self.summary = Summary(
            emitter.summary if emitter is not None else {}, before_change=self._split_last
        )
        self._dir = dir
        self._history = StepHistory()
        self._rules = MetricRules()
        self._watchers: list[tuple[Any, Any]] = []
        self._warned: set[str] = set()
        self._finished = False
        self._plain = self._open_plain = True  # the fast path of log(): traintape.wandb.rows
        self._values = self.summary._values
        self._last = self._rules.last = self._values  # one dict until _split_last
        if emitter is not None:
            atexit.register(self._at_exit)  # after the Emitter's: runs before its finish

    # -- what W&B's Run shows ----------------------------------------------------------------

    @property
    def step(self) -> int:
        """The step the next `log()` without a step goes to (W&B's `run.step`)."""
        return self._history.step

    @property
    def disabled(self) -> bool:
        return self._emitter is None

    @property
    def offline(self) -> bool:
        return True  # everything stays on this machine's collector

    @property
    def url(self) -> None:
        return None

    @property
    def path(self) -> str:
        return f"{self.entity or ''}/{self.project}/{self.id}"

    @property
    def dir(self) -> str:
        """A folder for the run's files: `dir=` of init, else ./traintape-files/<run id>."""
        folder = Path(self._dir) if self._dir else Path("traintape-files") / self.id
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder.resolve())

    @property
    def emitter(self) -> Any:
        """The traintape Emitter underneath (None when disabled)."""
        return self._emitter

    # -- logging -----------------------------------------------------------------------------

    def _write(self, step: int, row: dict[str, Any]) -> None:
        rules = self._rules
        row = rules.sync_steps(row)
        scalars = SCALARS.issuperset(map(type, row.values()))
        if scalars and not (rules.exact or rules.globs):
            self.summary._values.update(row)  # the last values: what record() would store
        else:
            self.summary.record(row, rules)
        em = self._emitter
        if em is None or not row:
            return
        if scalars:
            em.log(row, step=step)
            return
        numbers: dict[str, Any] = {}
        for key, value in row.items():
            kind = kind_of(key, value)
            if kind == NUMBER:
                numbers[key] = value
            elif kind == MEDIA:  # an Image, a Table or a list of them: emitter.log stores
                numbers[key] = (  # them off this thread
                    [_media(v) for v in value] if type(value) is list else _media(value)
                )
            elif kind == TEXT:
                em.log_text(key, value, step)
            else:
                body = value.body(key)
                em.log_histogram(key, body["counts"], body["min"], body["max"], step)
        if numbers:
            em.log(numbers, step=step)

    def define_metric(
        self,
        name: str,
        step_metric: str | Any | None = None,
        step_sync: bool | None = None,
        hidden: bool | None = None,
        summary: str | None = None,
        goal: str | None = None,
        overwrite: bool | None = None,
    ) -> Metric:
        """W&B's `define_metric`; stored as params `wandb.metric.<name>.<field>`."""
        if step_metric is not None and not isinstance(step_metric, str):
            step_metric = step_metric.name  # a Metric, as W&B takes it
        self._split_last()
        metric = self._rules.define(
            name,
            overwrite,
            step_metric=step_metric,
            step_sync=step_sync,
            hidden=hidden,
            summary=summary,
            goal=goal,
        )
        self._plain = False  # every later row goes through sync_steps and the summary's rules
        if self._emitter is not None:
            self._emitter.log_params(metric.params())
        return metric

    def watch(
        self,
        models: Any,
        criterion: Any = None,
        log: str | None = "gradients",
        log_freq: int = 1000,
        idx: int | None = None,
        log_graph: bool = False,
    ) -> None:
        """`emitter.watch(model, every=log_freq)`: gradient norm and NaN/Inf counts, with
        histograms of weights and gradients unless `log=None`."""
        if criterion is not None or idx is not None or log_graph:
            self._warn_once("watch", "watch(criterion=, idx=, log_graph=) have no effect")
        if self._emitter is None:
            return
        for model in models if isinstance(models, (list, tuple)) else [models]:
            watcher = self._emitter.watch(model, every=log_freq, histograms=log is not None)
            self._watchers.append((model, watcher))

    def unwatch(self, models: Any = None) -> None:
        chosen = (
            None
            if models is None
            else list(models if isinstance(models, (list, tuple)) else [models])
        )
        keep = []
        for model, watcher in self._watchers:
            if chosen is None or any(model is m for m in chosen):
                watcher.remove()
            else:
                keep.append((model, watcher))
        self._watchers = keep

    def save(
        self, glob_str: str | None = None, base_path: str | None = None, policy: str = "live"
    ) -> bool:
        """Recorded as a text event `wandb/save`; traintape does not copy or upload files."""
        self._warn_once("save", "save() records the pattern as text; files are not copied")
        if self._emitter is not None and glob_str:
            self._emitter.log_text("wandb/save", str(glob_str), self.step)
        return True

    def alert(self, title: str, text: str, level: Any = None, wait_duration: Any = None) -> None:
        """Recorded as a text event `wandb/alert`; traintape sends no notification."""
        self._warn_once("alert", "alert() is recorded as text; no notification is sent")
        if self._emitter is not None:
            shown = f"[{getattr(level, 'value', level) or 'INFO'}] {title}: {text}"
            self._emitter.log_text("wandb/alert", shown, self.step)

    def log_artifact(self, *args: Any, **kwargs: Any) -> Any:
        msg = "traintape does not store artifacts yet; keep W&B itself for them"
        raise UnsupportedMediaError(msg)

    use_artifact = log_model = use_model = link_model = log_code = log_artifact

    # -- the end -----------------------------------------------------------------------------

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """Writes the row still open, then finishes the run: completed, or failed when
        `exit_code` is nonzero."""
        self._end("failed" if exit_code else "completed")

    def _end(self, status: str) -> None:
        if self._finished:
            return
        self._flush_open_row()
        self._finished = True
        self._plain = False
        if self._emitter is not None:
            atexit.unregister(self._at_exit)
            from traintape import emitter as emitter_api

            if emitter_api.current() is self._emitter:
                emitter_api.finish(status)
            else:
                self._emitter.finish(status)
        from traintape import wandb as module

        module._forget(self)

    def _flush_open_row(self) -> None:
        self._split_last()
        for step, row in self._history.take_open():
            self._write(step, row)

    def _at_exit(self) -> None:
        # The Emitter's own atexit hook (registered before this one, so run after it) finishes
        # the run with the right status; the row still open must be in it, as W&B writes it.
        if not self._finished:
            self._flush_open_row()

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(f"traintape.wandb: {text}")

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._end("completed")
        else:
            self._end("killed" if issubclass(exc_type, KeyboardInterrupt) else "failed")

    def __repr__(self) -> str:
        return f"<traintape.wandb Run {self.id} {self.name!r} project {self.project!r}>"


def _media(value: Any) -> Any:
    """traintape's media value for one of traintape.wandb's (a Table holds its own)."""
    return value.media() if isinstance(value, Table) else value
