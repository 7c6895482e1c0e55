"""Checkpoints as the whole package sees them: the policy a run saves under (`policy`), and
resuming from what a store recorded (`load`). Writing lives on the training side, in
`traintape.emitter.checkpointing`."""

from traintape.checkpoint.load import (
    CheckpointFallbackWarning,
    CheckpointRecord,
    list_checkpoints,
    live_checkpoints,
    load_checkpoint,
    resolve_run,
    verify,
)
from traintape.checkpoint.policy import (
    CheckpointInfo,
    CheckpointPolicy,
    best_index,
    monitored_value,
    select_for_deletion,
)
from traintape.errors import CheckpointError, CheckpointNotFoundError, CheckpointVerifyError

__all__ = [
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointPolicy",
    "CheckpointRecord",
    "CheckpointVerifyError",
    "best_index",
    "list_checkpoints",
    "live_checkpoints",
    "load_checkpoint",
    "monitored_value",
    "resolve_run",
    "select_for_deletion",
    "verify",
]
