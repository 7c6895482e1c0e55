"""`traintape.integrations.lightning.TraintapeLogger` in Lightning's real training loop: 2 DDP
ranks under torchrun (tests/workers/lightning_ddp.py), and the logger's own hooks on one rank."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from tests.conftest import CollectorProcess, query, wait_for  # noqa: E402
from tests.jobs import (  # noqa: E402
    media_of,
    params_of,
    rank_ends,
    run_job,
    sha256_of,
    steps_of,
    the_run,
    worker_output,
)
from traintape.checkpoint import list_checkpoints  # noqa: E402
from traintape.integrations.lightning import TraintapeLogger  # noqa: E402


@pytest.mark.slow
def test_ddp_run_has_both_ranks_hparams_and_checkpoints(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """Trainer(strategy="ddp", devices=2), Lightning launching its second rank itself: one
    completed run (its id agreed over the process group) with both ranks' metrics at Lightning's
    steps, the hyperparameters as params, and ModelCheckpoint's files as checkpoint events (the
    2 it kept live with their sha256, the 2 it removed recorded as deleted), and the images and
    table of WandbLogger's log_image/log_table as media of each rank."""
    root = tmp_path / "job"
    proc = run_job("lightning_ddp.py", store, root, torchrun=False)
    assert proc.returncode == 0, worker_output(proc)
    run_id = the_run(store, "completed")
    assert rank_ends(store, run_id) == {0: "completed", 1: "completed"}
    both = {0, 1}
    # 2 epochs of 4 optimizer steps per rank, logged at every step; validation after each epoch.
    assert steps_of(store, run_id, "train/loss") == {(r, s) for r in both for s in range(8)}
    assert steps_of(store, run_id, "val_loss") == {(r, s) for r in both for s in (3, 7)}
    media = media_of(store, run_id)
    assert [row[:7] for row in media] == [
        (rank, step, name, kind, *size, caption)
        for rank in (0, 1)
        for step in (4, 8)
        for name, kind, size, caption in (
            ("preds", "table", (None, None), None),
            ("samples/0", "image", (6, 4), f"rank {rank}"),
            ("samples/1", "image", (6, 4), "hwc"),
        )
    ]
    with PILImage.open(store / media[-2][7]) as stored:  # rank 1's first image at step 8
        assert np.array_equal(np.array(stored), np.full((4, 6, 3), 81, np.uint8))
    params = params_of(store, run_id)
    assert json.loads(params["lr"]) == 0.05
    assert json.loads(params["hidden"]) == 8
    assert json.loads(params["optimizer.name"]) == "sgd"  # a nested dict: dotted keys
    assert json.loads(params["optimizer.momentum"]) == 0.0

    folder = root / "checkpoints"
    on_disk = sorted(folder.iterdir())
    assert [p.name for p in on_disk] == ["epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt"]
    live = list_checkpoints(store, run_id)
    assert [(c.step, c.path, c.bytes, c.sha256) for c in live] == [
        (step, p, p.stat().st_size, sha256_of(p)) for step, p in zip((6, 8), on_disk)
    ]
    assert [(c.metrics, c.monitor, c.mode) for c in live] == [
        ({"step": 6}, "step", "max"),
        ({"step": 8}, "step", "max"),
    ]
    assert live[-1].best and live[-1].latest
    deleted = query(
        store,
        "SELECT step, path, reason FROM checkpoints WHERE run_id = ? AND action = 'deleted' "
        "ORDER BY step",
        run_id,
    )
    assert deleted == [
        (2, str(folder / "epoch=0-step=2.ckpt"), "removed"),
        (4, str(folder / "epoch=0-step=4.ckpt"), "removed"),
    ]


@pytest.mark.slow
def test_ddp_run_whose_training_step_raises_is_failed(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """Under torchrun, a training_step that raises at step 3 on both ranks: the run is failed
    on both, and the metrics logged before the failure are all stored."""
    proc = run_job("lightning_ddp.py", store, tmp_path / "job", "--fail-at", 3)
    assert proc.returncode != 0, worker_output(proc)
    assert "training_step fails on purpose" in proc.stderr
    run_id = the_run(store, "failed")
    assert rank_ends(store, run_id) == {0: "failed", 1: "failed"}
    assert steps_of(store, run_id, "train/loss") == {(r, s) for r in (0, 1) for s in range(3)}


@pytest.mark.slow
def test_logger_hooks_on_one_rank(store: Path, collector: CollectorProcess) -> None:
    """name is the project, version the run id; hyperparameters from a Namespace with a nested
    dict become dotted params; experiment.save_checkpoint saves into the same run;
    finalize("success") completes it, and logging again (a test() after fit()) continues it as
    its next attempt."""
    logger = TraintapeLogger(project="lit", store=store, save_dir=store.parent / "logs")
    run = logger.experiment
    assert (logger.name, logger.version) == ("lit", run.run_id)
    assert logger.log_dir == str(store.parent / "logs" / "lit" / run.run_id)
    logger.log_hyperparams(Namespace(lr=0.1, opt={"name": "adam", "betas": [0.9, 0.99]}))
    logger.log_metrics({"loss": 1.5, "acc": 0.25}, step=3)
    saved = logger.experiment.save_checkpoint({"w": torch.zeros(3)}, step=3).result(30)
    logger.finalize("success")
    wait_for(store, f"SELECT status FROM runs WHERE run_id = '{run.run_id}'", "completed")
    logger.log_metrics({"test/acc": 0.5}, step=4)
    assert logger.version == run.run_id
    logger.finalize("success")
    wait_for(store, f"SELECT attempts FROM runs WHERE run_id = '{run.run_id}'", 2)
    assert query(store, "SELECT status FROM runs")[0][0] == "completed"
    params = params_of(store, run.run_id)
    assert (json.loads(params["lr"]), json.loads(params["opt.name"])) == (0.1, "adam")
    assert json.loads(params["opt.betas"]) == [0.9, 0.99]
    values = query(store, "SELECT key, step, value, attempt FROM metrics ORDER BY key")
    assert values == [("acc", 3, 0.25, 1), ("loss", 3, 1.5, 1), ("test/acc", 4, 0.5, 2)]
    (live,) = list_checkpoints(store, run.run_id)  # traintape's own checkpointing, same run
    assert (live.step, live.path, live.sha256) == (3, saved.path, saved.sha256)


@pytest.mark.slow
def test_finalize_failed_during_ctrl_c_is_killed(store: Path, collector: CollectorProcess) -> None:
    """Lightning finalizes "failed" while it handles a KeyboardInterrupt: the run ends killed;
    a "failed" finalize otherwise ends it failed."""
    interrupted = TraintapeLogger(project="lit", store=store)
    interrupted.log_metrics({"loss": 1.0}, step=0)
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        assert isinstance(sys.exc_info()[1], KeyboardInterrupt)
        interrupted.finalize("failed")
    failed = TraintapeLogger(project="lit", store=store)
    failed.log_metrics({"loss": 1.0}, step=0)
    failed.finalize("failed")
    statuses: dict[str, Any] = dict(query(store, "SELECT run_id, status FROM runs"))
    assert statuses == {interrupted.version: "killed", failed.version: "failed"}
    assert query(store, "SELECT max(attempts) FROM runs") == [(1,)]  # asking started nothing


@pytest.mark.slow
def test_fabric_logs_through_the_logger(store: Path, collector: CollectorProcess) -> None:
    """Fabric(loggers=[TraintapeLogger(...)]): fabric.log and fabric.log_dict land in the run at
    their steps, and finalize ends it completed."""
    from lightning.fabric import Fabric

    logger = TraintapeLogger(project="fabric", store=store)
    fabric = Fabric(accelerator="cpu", devices=1, loggers=[logger])
    fabric.logger.log_hyperparams({"lr": 0.01})
    for step in range(3):
        fabric.log("loss", 1.0 / (step + 1), step=step)
    fabric.log_dict({"val/acc": 0.75, "val/loss": 0.5}, step=2)
    fabric.logger.finalize("success")
    wait_for(store, f"SELECT status FROM runs WHERE run_id = '{logger.version}'", "completed")
    rows = query(store, "SELECT key, step, value FROM metrics ORDER BY key, step")
    assert rows == [
        ("loss", 0, 1.0),
        ("loss", 1, 0.5),
        ("loss", 2, 1.0 / 3),
        ("val/acc", 2, 0.75),
        ("val/loss", 2, 0.5),
    ]
    assert params_of(store, logger.version) == {"lr": "0.01"}
