"""Accelerate: `Accelerator(log_with=TraintapeTracker("my-project"))`, then Accelerate's own
`init_trackers(...)`, `log(...)` and `end_training()`; or `log_with="traintape"` by name (the
class is registered under that name where the installed Accelerate has
`register_tracker_class`; Accelerate then makes the tracker on the main process only).

Accelerate calls trackers from its main process only (`Accelerator.init_trackers` and `.log` are
main-process functions, whatever the tracker says). So that every rank logs into the run,
`main_process_only` is False and the tracker itself works on any rank: keep it and call
`tracker.log(values, step=step)` on every rank (instead of `accelerator.log`, which would log the
main process's values twice); `tracker.log_images` and `tracker.log_table` as with W&B's
tracker. Each rank's run starts at its first call and is rank-tagged; all ranks share one run
id. `tracker.record_checkpoint(folder, step)` after
`accelerator.save_state(folder)` records that checkpoint. The run ends `completed` at
`end_training()` (`tracker.finish()`; on a process that never calls it, when it exits), `failed`
when the script dies of an exception, `killed` on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
from typing import Any

from traintape.emitter import Emitter
from traintape.emitter.checkpointing.handle import CheckpointHandle
from traintape.integrations._run import (
    is_live,
    join_or_start,
    missing_framework,
    sample_images,
    split_values,
    table_of,
)

try:
    from accelerate import tracking
    from accelerate.tracking import GeneralTracker
except ImportError as exc:
    raise missing_framework("accelerate", "accelerate", exc) from exc

__all__ = ["TraintapeTracker"]


class TraintapeTracker(GeneralTracker):
    """An Accelerate tracker writing to traintape from every rank.

    `run_name` is the project (Accelerate passes `init_trackers`'s `project_name` there when the
    tracker is named in `log_with`); `name`, `tags`, `run_id`, `store`, `address` and any other
    keyword are those of `traintape.emitter.init`. If a `traintape.emitter` run is current, the
    tracker logs into it and leaves its end to the script.
    """

    name = "traintape"
    requires_logging_directory = False
    main_process_only = False

    def __init__(
        self,
        run_name: str = "accelerate",
        *,
        name: str | None = None,
        tags: tuple[str, ...] | list[str] = (),
        run_id: str | None = None,
        store: str | os.PathLike[str] | None = None,
        address: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.run_name = run_name
        self._options: dict[str, Any] = {
            "name": name,
            "tags": tags,
            "run_id": run_id,
            "store": store,
            "address": address,
            **options,
        }
        self._run: Emitter | None = None
        self._owned = False

    def start(self) -> None:
        """Starts the run (Accelerate calls it from `init_trackers`; other calls start it too)."""
        if not is_live(self._run):
            self._run, self._owned = join_or_start(self.run_name, self._options)

    @property
    def tracker(self) -> Emitter:
        """The run's `traintape.Emitter`."""
        self.start()
        assert self._run is not None
        return self._run

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        """Records `values` (nested dicts as dotted keys) as params."""
        self.tracker.log_params(dict(values))

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """Logs numbers (and one-element tensors) at `step`; strings as text; nested dicts with
        "/" between the names."""
        run = self.tracker
        numbers, texts = split_values(values)
        run.log(numbers, step)
        for key, text in texts.items():
            run.log_text(key, text, step)

    def log_images(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """Logs each key's images (a list of numpy arrays, tensors or PIL images, or a batch)
        at `step`, as Accelerate's W&B tracker does: stored as key/0, key/1, ...; `caption=`
        a list of one caption per image."""
        self.tracker.log(
            {k: sample_images("log_images()", v, kwargs) for k, v in values.items()}, step
        )

    def log_table(
        self,
        table_name: str,
        columns: list[str] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Logs a table (`columns` and `data` rows, or a pandas/Arrow `dataframe`) at `step`,
        as Accelerate's W&B tracker does; stored as Parquet."""
        self.tracker.log({table_name: table_of(columns, data, dataframe)}, step)

    def record_checkpoint(
        self, path: str | os.PathLike[str], step: int, metrics: dict[str, Any] | None = None
    ) -> CheckpointHandle:
        """Records a checkpoint file or folder (e.g. of `accelerator.save_state`) written at
        `step`; once it is gone it is recorded as deleted (see `Emitter.record_checkpoint`)."""
        return self.tracker.record_checkpoint(path, step, metrics, origin="accelerate")

    def finish(self) -> None:
        """Ends the run `completed` (a run the script started stays the script's)."""
        run = self._run
        if run is not None and self._owned and is_live(run):
            run.finish("completed")


_register = getattr(tracking, "register_tracker_class", None)
if _register is not None:  # Accelerate >= 1.x: `log_with="traintape"` works by name
    _register(TraintapeTracker)
