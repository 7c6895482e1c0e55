"""The sinks' process: one `SinkRunner` thread per sink, beside the collector (follower.py has
the plumbing: the pipe, the status file, restarts). As threads of the collector the sinks' backends
took its interpreter lock: with all three on, acknowledged ingest fell to half."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traintape.collector.follower import Follower, FollowerProcess
from traintape.sinks.config import SinkConfig

NAME = "sink_process"


class SinkProcess(FollowerProcess):
    def __init__(
        self,
        store: Path,
        journal: Any,
        configs: list[SinkConfig],
        ingested: Callable[[], int],
    ) -> None:
        """`ingested()`: events the collector has journaled since it started (for the lag)."""
        self.configs = configs
        drain = max(c.runner_option("drain_timeout") for c in configs)
        config = {"sinks": [dataclasses.asdict(c) for c in configs]}
        super().__init__(NAME, store, journal, config, ingested=ingested, stop_timeout=drain + 60)

    def sinks_status(self) -> dict[str, Any]:
        """Each sink's status as its runner reports it (`state: starting` before that)."""
        reported = self.status()  # SinkRunners.status(): {sink name: its runner's status}
        if reported:
            return reported
        return {c.name: {"type": c.type, "state": "starting"} for c in self.configs}


def build(store: Path, config: dict[str, Any], journal: Any, ingested: Any) -> Follower:
    from traintape.sinks.runner import SinkRunners

    configs = [SinkConfig(**c) for c in config["sinks"]]
    return SinkRunners(store, journal, configs, ingested=ingested)
