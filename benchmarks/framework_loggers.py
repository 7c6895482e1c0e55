"""Lightning loggers as `benchmarks/overhead.py` measures them: traintape's `TraintapeLogger`
beside Lightning's own `CSVLogger` and `WandbLogger` (offline), each called the way Lightning's
logger connector calls it at every logging step: `log_metrics(metrics, step)` then `save()`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LogFn = Any


def _as_lightning_calls(logger: Any) -> LogFn:
    log_metrics, save = logger.log_metrics, logger.save

    def log(metrics: dict[str, float], step: int) -> None:
        log_metrics(metrics, step)
        save()

    return log


@contextmanager
def traintape_logger_session(ctx: Any, name: str) -> Iterator[LogFn]:
    from traintape.integrations.lightning import TraintapeLogger

    logger = TraintapeLogger(project="overhead", name=name, store=ctx.store)
    try:
        yield _as_lightning_calls(logger)
    finally:
        logger.finalize("success")


@contextmanager
def csv_logger_session(ctx: Any, name: str) -> Iterator[LogFn]:
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=ctx.root / "lightning-csv", name=name)
    try:
        yield _as_lightning_calls(logger)
    finally:
        logger.finalize("success")


@contextmanager
def wandb_logger_session(ctx: Any, name: str) -> Iterator[LogFn]:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="overhead", name=name, save_dir=ctx.root / "wandb", offline=True)
    try:
        yield _as_lightning_calls(logger)
    finally:
        logger.finalize("success")
        wandb.finish()
