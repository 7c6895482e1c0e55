"""Every error traintape raises on purpose, under one root. Catch `TraintapeError` for all of
them; the builtin beside a class (FileNotFoundError, ValueError, ...) is kept where callers
already catch that. Each docstring says what to do next.

::

    TraintapeError
    ├── StoreError
    │   ├── StoreNotFoundError          (FileNotFoundError)
    │   └── UnreadablePathError         (ValueError)
    ├── RunError
    │   ├── RunLookupError              (LookupError)
    │   │   ├── RunNotFoundError
    │   │   └── AmbiguousRunError
    │   ├── RunFinishedError            (RuntimeError)
    │   └── NoRunError                  (RuntimeError)
    ├── CheckpointError
    │   ├── CheckpointNotFoundError     (FileNotFoundError)
    │   └── CheckpointVerifyError
    ├── ArtifactError
    │   ├── ArtifactNotFoundError       (FileNotFoundError)
    │   └── ArtifactVerifyError
    ├── ConfigError                     (ValueError)
    ├── UnsupportedMediaError           (TypeError)
    ├── QueryError                      (ValueError)
    ├── SinkError                       (RuntimeError)
    │   ├── MissingBackendError
    │   ├── SinkRejected
    │   └── SyncError
    └── LinkError                       (RuntimeError)
        ├── CollectorError
        ├── SecurityError
        ├── ReplayError
        └── WireError                   (ValueError)
"""

from __future__ import annotations

from typing import Any


class TraintapeError(Exception):
    """The root of every error traintape raises on purpose."""


# -- the store ---------------------------------------------------------------------------------


class StoreError(TraintapeError):
    """A store cannot be read or written as asked."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store at the path: start `traintape serve --store PATH` or pass the right `store=`."""


class UnreadablePathError(StoreError, ValueError):
    """A store path DuckDB's globs cannot name (it holds a backslash): rename the folder."""


# -- runs --------------------------------------------------------------------------------------


class RunError(TraintapeError):
    """A run cannot be found or used as asked."""


class RunLookupError(RunError, LookupError):
    """A RUN argument names no run, or several: pass a longer id prefix or the full id."""


class RunNotFoundError(RunLookupError):
    """No run has this id, id prefix or name; `traintape runs` lists them."""


class AmbiguousRunError(RunLookupError):
    """Several runs match; `candidates` lists (run_id, name, project, started)."""

    def __init__(self, message: str, candidates: list[tuple[Any, ...]]) -> None:
        super().__init__(message)
        self.candidates = candidates


class RunFinishedError(RunError, RuntimeError):
    """The run was finished; start a new one with `init()` to log more."""


class NoRunError(RunError, RuntimeError):
    """No run is active (traintape.wandb before `init()` or after `finish()`): call `init()`."""


# -- checkpoints -------------------------------------------------------------------------------


class CheckpointError(TraintapeError):
    """A checkpoint cannot be found, verified or loaded; the message names which and why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No such checkpoint: no record in the store, or the file a record names is gone.

    Pass `fallback=True` to `load_checkpoint` to take the newest checkpoint that verifies.
    """


class CheckpointVerifyError(CheckpointError):
    """The file's size or sha256 differs from what the store recorded when it was written."""


class ArtifactError(TraintapeError):
    """An artifact cannot be found or verified; the message names which and why."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """No artifact of that name in the run (`traintape artifacts RUN` lists them), or its
    object is gone from the store."""


class ArtifactVerifyError(ArtifactError):
    """The stored object's size or sha256 differs from what its `artifact` event recorded."""


# -- configuration, sinks, the link ------------------------------------------------------------


class ConfigError(TraintapeError, ValueError):
    """An invalid configuration; the message names where the bad key or value came from."""


class UnsupportedMediaError(TraintapeError, TypeError):
    """Images, audio, video, tables, artifacts: traintape does not store media yet. Log numbers,
    text or histograms, or keep W&B itself for media."""


class QueryError(TraintapeError, ValueError):
    """A dashboard request (`traintape ui`'s API) asked what the store cannot answer: a bad
    parameter, or an SQL filter that is not one read-only expression; fix what the message names."""


class SinkError(TraintapeError, RuntimeError):
    """A sink cannot be configured or started; the message names the sink and what to change."""


class MissingBackendError(SinkError):
    """The backend's package is not installed; the message names the extra to install."""


class SinkRejected(SinkError):
    """The backend refused a batch for good (bad data, not a bad connection): it is skipped."""


class SyncError(SinkError):
    """A stored run cannot be synced (not found, ambiguous); the message says why."""


class LinkError(TraintapeError, RuntimeError):
    """The link between emitters and the collector cannot be set up or used."""


class CollectorError(LinkError):
    """The collector cannot start; the message says what to change."""


class SecurityError(LinkError):
    """A link or a store would not be private: a CURVE key is missing (the message says which
    to provide), or a socket, folder or group belongs to someone else (it says what to fix)."""


class ReplayError(LinkError):
    """The collector did not acknowledge in time: check that `traintape serve` runs there."""


class WireError(LinkError, ValueError):
    """A frame that is not a valid traintape batch. The collector dead-letters it."""


__all__ = [
    "AmbiguousRunError",
    "ArtifactError",
    "ArtifactNotFoundError",
    "ArtifactVerifyError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointVerifyError",
    "CollectorError",
    "ConfigError",
    "LinkError",
    "MissingBackendError",
    "NoRunError",
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
    "TraintapeError",
    "UnreadablePathError",
    "UnsupportedMediaError",
    "WireError",
]
