"""`traintape sync RUN --to tensorboard|mlflow|wandb`: a stored run replayed into a backend.

It reads the journal from its start (read-only, so a collector may be running), keeps the
run's batches, and sends them through the same projection and sink as the collector does, with
the sink in replay mode: TensorBoard writes a fresh folder and swaps it in, MLflow sends only
the rows the run does not hold yet, W&B offline replaces the run's offline folders by one
(online: sends only steps past the run's last). Running it twice leaves one copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traintape.collector.journal import JournalFollower, JournalReader, segment_starts
from traintape.errors import SinkRejected, SyncError
from traintape.layout import StoreLayout
from traintape.schemas.wire import BatchHeader
from traintape.sinks.config import SinkConfig
from traintape.sinks.projection import Op, Projection, apply

_NEVER = 1e12  # seconds: in a replay every rank's values are there; steps wait for all of them


@dataclass
class SyncResult:
    run_id: str
    sink: str
    events: int = 0
    operations: int = 0
    rejected: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


def journal_records(store: Path) -> JournalReader:
    """Every intact record of the store's journal, read-only (a live collector may append), with
    the journal's one policy for damage (set aside loudly, read on)."""
    folder = StoreLayout(store).journal
    if not segment_starts(folder):
        msg = f"no journal in {store}: is it a traintape store?"
        raise SyncError(msg)
    follower = JournalFollower(folder)
    return follower.read(0, follower.files_end())


def sync_run(
    store: Path,
    run_id: str,
    config: SinkConfig,
    progress: Callable[[str], None] | None = None,
) -> SyncResult:
    """Replays run `run_id` of `store` into the sink `config` describes."""
    result = SyncResult(run_id, config.name)
    sink = config.create(store, replay=True)
    projection = Projection(
        config.runner_option("ranks"),
        ordered_steps=config.sink_class.ordered_steps,
        wait_ranks=_NEVER,
        late_s=config.sink_class.late_events_s,
    )
    limit = config.runner_option("batch_events")
    pending = 0

    def wanted(header: BatchHeader) -> bool:
        return header.run_id == run_id and projection.wants(header)

    def deliver(ops: list[Op]) -> None:
        for op in ops:
            try:
                apply(sink, op)
            except SinkRejected as exc:
                result.rejected += 1
                if progress:
                    progress(f"skipped a batch the backend refused: {exc}")
            result.operations += 1

    try:
        for batch in journal_records(store).batches(want_body=wanted):
            header, body = batch.header, batch.body
            if header is None or body is None:
                continue  # another run's, or a record that does not decode
            try:
                projection.feed(header, body)
            except ValueError:
                continue
            result.events += header.n
            pending += header.n
            if pending >= limit:
                deliver(projection.take_ops())
                pending = 0
                if progress:
                    progress(f"{result.events} events sent")
        projection.finish()
        deliver(projection.take_ops())
        sink.flush()
        result.stats = sink.stats()
    finally:
        sink.close()
    return result
