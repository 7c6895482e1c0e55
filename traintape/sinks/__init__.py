"""Sinks: TensorBoard, MLflow and W&B fed from the journal, each from its own cursor.

`Sink` is the interface a backend implements (see `_base`); `traintape serve --sink ...` or a
YAML file configures them (see `config`); the collector's `SinkRunner` drives each one in its
own thread; `traintape sync RUN --to ...` replays a stored run into one (see `sync`). Importing
this package imports no backend: each is imported when its sink starts.
"""

from traintape.errors import ConfigError, MissingBackendError, SinkError, SinkRejected
from traintape.sinks._base import RANK_POLICIES, RUNNER_OPTIONS, Event, Option, RunInfo, Sink
from traintape.sinks.config import SINK_TYPES, SinkConfig

__all__ = [
    "RANK_POLICIES",
    "RUNNER_OPTIONS",
    "SINK_TYPES",
    "ConfigError",
    "Event",
    "MissingBackendError",
    "Option",
    "RunInfo",
    "Sink",
    "SinkConfig",
    "SinkError",
    "SinkRejected",
]
