"""`traintape sync RUN --to tensorboard|mlflow|wandb`: a stored run replayed into a backend.

It reads the journals from their start (read-only, so collectors may be running): every
collector's of the store (one per node: a run whose ranks logged to several is in several),
keeps the run's batches, and sends them through the same projection and sink as the collector
does, with the sink in replay mode: TensorBoard writes a fresh folder and swaps it in, MLflow
sends only the rows the run does not hold yet, W&B offline replaces the run's offline folders by
one (online: sends only steps past the run's last). Running it twice leaves one copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traintape.collector.journal import Batch, JournalFollower, segment_starts
from traintape.errors import SinkRejected, SyncError
from traintape.layout import COLLECTOR_ID_PATTERN, COLLECTORS, StoreLayout
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


def journal_folders(store: Path) -> list[Path]:
    """Every collector's journal in `store` that holds a segment, in a stable order: the store's
    own collector's, then each named collector's by id (`collectors/<ID>/journal`). A run whose
    ranks logged to several collectors (one per node) is in several of them."""
    ids = sorted(p.name for p in (store / COLLECTORS).glob("*") if p.is_dir())
    layouts = [StoreLayout(store)] + [
        StoreLayout(store, i) for i in ids if COLLECTOR_ID_PATTERN.fullmatch(i)
    ]
    return [layout.journal for layout in layouts if segment_starts(layout.journal)]


def journal_batches(store: Path, want_body: Callable[[BatchHeader], bool]) -> Iterator[Batch]:
    """Every intact batch of every collector's journal (`journal_folders`, one after the other:
    the projection orders each step's ranks), read-only (a live collector may append), with the
    journal's one policy for damage (set aside loudly, read on); bodies of `want_body`'s only."""
    folders = journal_folders(store)
    if not folders:  # said now, not at the first batch
        msg = f"no journal in {store}: is it a traintape store?"
        raise SyncError(msg)
    return _batches(folders, want_body)


def _batches(folders: list[Path], want_body: Callable[[BatchHeader], bool]) -> Iterator[Batch]:
    for folder in folders:
        follower = JournalFollower(folder)
        yield from follower.read(0, follower.files_end()).batches(want_body=want_body)


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
        for batch in journal_batches(store, wanted):
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
