"""traintape: a flight recorder for ML training.

`from traintape import emitter` in training code; `traintape serve` runs the collector;
`traintape.connect()` opens the store for SQL. Importing this package imports no torch, mlflow,
wandb or tensorboard.
"""

from traintape import emitter
from traintape.checkpoints import CheckpointPolicy, load_checkpoint
from traintape.emitter import Emitter, FinishReport
from traintape.store import connect

__version__ = "0.1.0"

__all__ = [
    "CheckpointPolicy",
    "Emitter",
    "FinishReport",
    "__version__",
    "connect",
    "emitter",
    "load_checkpoint",
]
