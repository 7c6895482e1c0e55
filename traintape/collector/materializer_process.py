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
from traintape.layout import StoreLayout

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
        collector: str | None = None,
        tables: dict[str, Any] | None = None,
    ) -> None:
        """`store`: the store's root; `collector`: whose journal (layout.py). The child's own
        files (lock, status, journal) are in the collector's home. `tables`: where to publish
        the tables ({"tables": "s3://...", "tables_grace": s}: collector/publish.py)."""
        config: dict[str, Any] = {"interval": interval, "compact_settle": compact_settle}
        config |= {"store": str(store), "collector": collector, **(tables or {})}
        home = StoreLayout(store, collector).home
        super().__init__(
            NAME, home, journal, config, ingested=ingested, stop_timeout=STOP_TIMEOUT_S
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

    # `store` is the collector's home; the tables are under the store's root (config["store"]).
    root = Path(config.get("store") or store)
    settle = config.get("compact_settle")
    materializer = Materializer(root, journal, config["interval"], settle, config.get("collector"))
    if config.get("tables"):  # --tables s3://...: a publisher beside it
        from traintape.collector.publish import publishing

        return publishing(materializer, config)
    return materializer
