"""The materializer's process: journal -> Parquet (and compaction) beside the collector, so
decoding and Arrow conversion never take the ingest loop's interpreter lock (follower.py has the
plumbing). At the collector's stop it materializes what is journaled for at most STOP_TIMEOUT_S,
then exits; what is left is materialized from the committed cursor at the next start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from traintape.collector.compaction import committed_position
from traintape.collector.follower import Follower, FollowerProcess

NAME = "materializer_process"
STOP_TIMEOUT_S = 5.0
"""At most this long to materialize what is left at a stop, so `serve` stops within seconds of a
SIGTERM (a chunk is committed whole or not at all; a restart resumes from the cursor)."""


class MaterializerProcess(FollowerProcess):
    def __init__(
        self,
        store: Path,
        journal: Any,
        interval: float,
        compact_settle: float | None,
        ingested: Callable[[], int],
    ) -> None:
        config = {"interval": interval, "compact_settle": compact_settle}
        super().__init__(
            NAME, store, journal, config, ingested=ingested, stop_timeout=STOP_TIMEOUT_S
        )

    @property
    def position(self) -> int:
        """The journal position materialized (committed) so far."""
        return committed_position(self.store)

    @property
    def last_error(self) -> str | None:
        return (self.status() or {}).get("last_error")


def build(store: Path, config: dict[str, Any], journal: Any, ingested: Any) -> Follower:
    from traintape.collector.materializer import Materializer

    return Materializer(store, journal, config["interval"], config.get("compact_settle"))
