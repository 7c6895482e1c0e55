"""The helpers one run makes on first use: the checkpoint writer (checkpointing/writer.py), the
recorder of checkpoints other code wrote (checkpointing/external.py) and the gradient watchers
(gradients.py). Each acts on the run through its `EmitterPort` only (port.py), and each ends
before the run does (`finish()` stops the watchers, then closes the writer and the recorder).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from traintape.emitter.port import EmitterPort
from traintape.emitter.values import plain
from traintape.errors import RunFinishedError

if TYPE_CHECKING:
    from concurrent.futures import Future

    from traintape.emitter.artifacts import ArtifactWriter
    from traintape.emitter.checkpointing.external import ExternalCheckpoints
    from traintape.emitter.checkpointing.handle import CheckpointHandle
    from traintape.emitter.checkpointing.writer import CheckpointWriter
    from traintape.emitter.gradients import GradientWatcher
    from traintape.emitter.redact import Redaction


class RunHelpers:
    """The helpers of one run (torch and the writer threads are loaded only when used)."""

    def __init__(self, port: EmitterPort, redaction: Redaction) -> None:
        self.port = port
        self.redaction = redaction
        self.writer: CheckpointWriter | None = None
        self.recorder: ExternalCheckpoints | None = None
        self.watchers: list[GradientWatcher] = []
        self.artifacts: ArtifactWriter | None = None

    def save_checkpoint(
        self, state: Any, step: int, metrics: dict[str, Any] | None, policy: Any
    ) -> CheckpointHandle:
        """Saves through the run's writer, made on the first save with `policy` (a
        traintape.CheckpointPolicy, or None for the defaults)."""
        from traintape.emitter.checkpointing.writer import CheckpointWriter

        if self.writer is None:  # made on the first save
            if self.port.finished():
                msg = f"run {self.port.run_id} is finished; call init() to start another"
                raise RunFinishedError(msg)
            self.writer = CheckpointWriter(self.port, policy)
        return self.writer.save(state, step, metrics)

    def record_checkpoint(
        self,
        path: str | os.PathLike[str],
        step: int,
        metrics: dict[str, Any] | None,
        **options: Any,
    ) -> CheckpointHandle:
        from traintape.emitter.checkpointing.external import ExternalCheckpoints

        if self.recorder is None:  # made on the first record
            self.recorder = ExternalCheckpoints(self.port)
        return self.recorder.record(path, step, metrics, **options)

    def log_artifact(
        self,
        data: Any,
        name: str | None = None,
        kind: str | None = None,
        metadata: dict[str, Any] | None = None,
        step: int | None = None,
    ) -> Future[dict[str, Any]]:
        if isinstance(metadata, dict):  # its secret-looking keys hidden, as the config's
            metadata = self.redaction.mapping(plain(metadata))
        return self.artifact_writer().log(data, name, kind, metadata, step)

    def artifact_writer(self) -> ArtifactWriter:
        """The run's artifact writer (files, and the media values of `log()`), made on first use."""
        from traintape.emitter.artifacts import ArtifactWriter

        if self.artifacts is None:  # made on the first artifact
            self.artifacts = ArtifactWriter(self.port, self.redaction.text)
        return self.artifacts

    def watch(self, model: Any, every: int, per_layer: bool, histograms: bool) -> GradientWatcher:
        from traintape.emitter.gradients import GradientWatcher

        watcher = GradientWatcher(self.port, model, every, per_layer, histograms)
        self.watchers.append(watcher)
        return watcher

    def stop_watching(self) -> None:
        """No more gradient statistics: the run is ending."""
        for watcher in self.watchers:
            watcher.remove()

    def close(self, timeout: float) -> None:
        """Queued checkpoint writes (however long) and the hashing of recorded files end."""
        if self.writer is not None:
            self.writer.close(timeout)
        if self.recorder is not None:  # files other code wrote, still being hashed
            self.recorder.close()
        if self.artifacts is not None:  # artifacts still being copied: stored before the end
            self.artifacts.close()
