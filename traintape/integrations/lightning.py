"""Lightning: `Trainer(logger=TraintapeLogger(project="mnist"))`, or `Fabric(loggers=[...])`.

Every rank logs into the same run (Lightning's own loggers write from rank zero only): metrics at
Lightning's steps, images and tables with WandbLogger's `log_image`/`log_table`/`log_text`,
hyperparameters as params (Namespace, dict, nested dicts as dotted keys), and
the files `ModelCheckpoint` writes as checkpoint events (path, bytes, sha256, the monitored
metric), with a `deleted` event once it removes one, so `traintape checkpoints` lists the live
files. `finalize("success")` ends the run `completed`, `finalize("failed")` (training raised)
`failed` (`killed` for Ctrl-C). Logging again after that (`trainer.test()` after `fit()`)
continues the same run as its next attempt.

The run starts when Lightning first touches `experiment` (at the setup of `fit`, after the process
group exists, so every rank agrees on one run id), or `version`/`log_dir`. `experiment` is the
`traintape.Emitter`: `self.logger.experiment.save_checkpoint(...)` uses traintape's own
background checkpointing in the same run.
"""

from __future__ import annotations

import os
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

from traintape.emitter import Emitter
from traintape.errors import RunFinishedError
from traintape.integrations._run import (
    is_live,
    missing_framework,
    sample_images,
    split_values,
    table_of,
)

try:
    from lightning.fabric.utilities.logger import _convert_params, _sanitize_callable_params
    from lightning.pytorch.loggers.logger import Logger
except ImportError as exc:
    raise missing_framework("lightning", "lightning", exc) from exc

__all__ = ["TraintapeLogger"]

_STATUSES = {"success": "completed", "failed": "failed"}
"""Lightning's finalize statuses that end the run. "finished" (Slurm's requeue signal, which
saves and requeues the job) ends nothing: the process goes on until the job is stopped."""


class TraintapeLogger(Logger):
    """A Lightning logger writing to traintape from every rank.

    `project`, `name`, `config`, `tags`, `run_id`, `store`, `address` and any other keyword are
    those of `traintape.emitter.init`. `save_dir` is where Lightning puts this logger's files
    (`ModelCheckpoint`'s default folder is `<save_dir>/<project>/<run id>/checkpoints`); None:
    the Trainer's `default_root_dir`. `prefix` is put before every metric name.
    """

    def __init__(
        self,
        project: str = "lightning",
        name: str | None = None,
        *,
        config: dict[str, Any] | None = None,
        tags: tuple[str, ...] | list[str] = (),
        run_id: str | None = None,
        store: str | os.PathLike[str] | None = None,
        address: str | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        prefix: str = "",
        **options: Any,
    ) -> None:
        super().__init__()
        self._project = project
        self._options: dict[str, Any] = {
            "name": name,
            "config": config,
            "tags": tags,
            "run_id": run_id,
            "store": store,
            "address": address,
            **options,
        }
        self._save_dir = None if save_dir is None else os.fspath(save_dir)
        self._prefix = prefix
        self._emitter: Emitter | None = None
        self._recorded: dict[str, tuple[int, int, int]] = {}  # path -> (inode, size, mtime)
        self._last_step = 0

    # -- what Lightning asks of a logger -----------------------------------------------------

    @property
    def experiment(self) -> Emitter:
        """The run's `traintape.Emitter` (started on first use, on every rank)."""
        run = self._emitter
        if run is None or not is_live(run):
            options = dict(self._options)
            if run is not None:  # finished by finalize(): logging again continues that run
                options["run_id"] = run.run_id
            run = self._emitter = Emitter(self._project, **options)
        return run

    @property
    def name(self) -> str:
        """The project: Lightning names this logger's folder with it."""
        return self._project

    @property
    def version(self) -> str:
        """The run id, the same on every rank (asking never starts another attempt)."""
        run = self._emitter
        return (run or self.experiment).run_id

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    def root_dir(self) -> str | None:
        return None if self._save_dir is None else os.path.join(self._save_dir, self.name)

    @property
    def log_dir(self) -> str | None:
        """`<save_dir>/<project>/<run id>`, or None without a `save_dir`."""
        root = self.root_dir
        return None if root is None else os.path.join(root, self.version)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Logs `metrics` at Lightning's `step` (its optimizer steps; the run's next step when
        None). Values that are not numbers are logged as text."""
        run = self._emitter or self.experiment
        if self._prefix:
            metrics = {f"{self._prefix}{k}": v for k, v in metrics.items()}
        try:
            run.log(metrics, step)
        except RunFinishedError:  # finalize() ended it: this continues it as its next attempt
            run = self.experiment
            run.log(metrics, step)
        except TypeError:  # a value that is not a number (rare): split, nothing dropped
            values, texts = split_values(metrics)
            run.log(values, step)
            for key, text in texts.items():
                run.log_text(key, text, step)
        if step is not None:
            self._last_step = step

    def log_image(
        self, key: str, images: list[Any], step: int | None = None, **kwargs: Any
    ) -> None:
        """Logs `images` (tensors, numpy arrays, PIL images or file paths) under `key`, as
        WandbLogger's `log_image` does: stored as key/0, key/1, ... at `step`; `caption=` a list
        of one caption per image."""
        self._log_media({key: sample_images("log_image()", images, kwargs)}, step)

    def log_table(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Logs a table (`columns` and `data` rows, or a pandas/Arrow `dataframe`) under `key`
        at `step`, as WandbLogger's `log_table` does; stored as Parquet."""
        self._log_media({key: table_of(columns, data, dataframe)}, step)

    def log_text(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[str]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """WandbLogger's `log_text`: a table of text (`log_table`)."""
        self.log_table(key, columns, data, dataframe, step)

    def _log_media(self, values: dict[str, Any], step: int | None) -> None:
        run = self._emitter or self.experiment
        try:
            run.log(values, step)
        except RunFinishedError:  # finalize() ended it: this continues it as its next attempt
            self.experiment.log(values, step)

    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        """Records `params` (a Namespace, a dict, nested dicts as dotted keys) as params."""
        plain = _sanitize_callable_params(_convert_params(params))
        if plain:
            self.experiment.log_params(dict(plain))

    def save(self) -> None:
        """Nothing to do: events are on their way as they are logged (the emitter sends what is
        queued every 15 ms), and Lightning calls this after every `log_metrics`."""

    def finalize(self, status: str) -> None:
        """`success` ends the run `completed`; `failed` ends it `failed` (`killed` when Ctrl-C
        stopped training). The files ModelCheckpoint removed by now are recorded as deleted."""
        end = _STATUSES.get(status)
        run = self._emitter
        if end is None or run is None or not is_live(run):
            return
        if end == "failed" and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            end = "killed"  # Lightning finalizes "failed" while it handles the Ctrl-C
        run.finish(end)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Records the file `checkpoint_callback` just wrote (Lightning calls this on global
        rank zero, which writes the checkpoints); files it removed are recorded as deleted."""
        path = self._newest_file(checkpoint_callback)
        if path is None:
            return
        step = getattr(checkpoint_callback, "_last_global_step_saved", None)
        monitor = getattr(checkpoint_callback, "monitor", None)
        metrics: dict[str, Any] = {}
        is_best = None
        if monitor:
            score = checkpoint_callback.best_k_models.get(path)
            if score is None and path in (
                getattr(checkpoint_callback, "_last_checkpoint_saved", None),
                checkpoint_callback.last_model_path,
            ):
                score = checkpoint_callback.current_score
            if score is not None:
                metrics[monitor] = score
            is_best = path == checkpoint_callback.best_model_path
        self.experiment.record_checkpoint(
            path,
            self._last_step if step is None else step,
            metrics,
            monitor=monitor or None,
            mode=getattr(checkpoint_callback, "mode", "min"),
            is_best=is_best,
            origin=checkpoint_callback.__class__.__name__,  # the callback comes as a weakref proxy
        )

    def _newest_file(self, callback: Any) -> str | None:
        """The file the callback wrote last: its `_last_checkpoint_saved`, else the newest of
        its known files that is not recorded as it is now."""
        wanted = [getattr(callback, "_last_checkpoint_saved", None)]
        if not wanted[0]:
            wanted = [
                callback.last_model_path,
                callback.best_model_path,
                *getattr(callback, "best_k_models", {}),
            ]
        found: list[tuple[int, str, tuple[int, int, int]]] = []
        for name in wanted:
            if not name:
                continue
            try:
                st = Path(name).stat()
            except OSError:
                continue
            mark = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._recorded.get(name) != mark:
                found.append((st.st_mtime_ns, name, mark))
        if not found:
            return None
        _, name, mark = max(found)
        self._recorded[name] = mark
        return name

    def __getstate__(self) -> dict[str, Any]:
        # A spawned process (strategy="ddp_spawn") gets the settings, not this process's run:
        # it starts its own (the same run id, agreed over the process group).
        state = self.__dict__.copy()
        state["_emitter"] = None
        return state
