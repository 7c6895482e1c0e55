"""traintape: a flight recorder for ML training.

`from traintape import emitter` in training code; `traintape serve` runs the collector;
`traintape.connect()` opens the store for SQL. Importing this package imports no torch, DuckDB,
pyarrow, mlflow, wandb or tensorboard: `connect` loads DuckDB when it is first used, so a
training process that only logs never pays for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from traintape import _aliases, emitter
from traintape.checkpoint import CheckpointPolicy, load_checkpoint
from traintape.emitter import Emitter, FinishReport
from traintape.errors import (
    AmbiguousRunError,
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactVerifyError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointVerifyError,
    CollectorError,
    ConfigError,
    LinkError,
    MissingBackendError,
    NoRunError,
    QueryError,
    ReplayError,
    RunError,
    RunFinishedError,
    RunLookupError,
    RunNotFoundError,
    SecurityError,
    SinkError,
    SinkRejected,
    StoreError,
    StoreNotFoundError,
    SyncError,
    TraintapeError,
    UnreadablePathError,
    UnsupportedMediaError,
    WireError,
)

if TYPE_CHECKING:
    from traintape.emitter.media import Image, Table, Text
    from traintape.read.store import connect

__version__ = "0.1.0"

_aliases.install()  # old module paths (traintape.history, ...) keep working for one release

_LAZY = {"connect": "traintape.read.store"}
_LAZY |= dict.fromkeys(("Image", "Table", "Text"), "traintape.emitter.media")  # log() media
"""Public names whose module is heavy, imported when first used."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'traintape' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


__all__ = [
    "AmbiguousRunError",
    "ArtifactError",
    "ArtifactNotFoundError",
    "ArtifactVerifyError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointPolicy",
    "CheckpointVerifyError",
    "CollectorError",
    "ConfigError",
    "Emitter",
    "FinishReport",
    "Image",
    "LinkError",
    "MissingBackendError",
    "NoRunError",
    "QueryError",
    "ReplayError",
    "RunError",
    "RunFinishedError",
    "RunLookupError",
    "RunNotFoundError",
    "SecurityError",
    "SinkError",
    "SinkRejected",
    "StoreError",
    "StoreNotFoundError",
    "SyncError",
    "Table",
    "Text",
    "TraintapeError",
    "UnreadablePathError",
    "UnsupportedMediaError",
    "WireError",
    "__version__",
    "connect",
    "emitter",
    "load_checkpoint",
]
