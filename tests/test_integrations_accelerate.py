"""`traintape.integrations.accelerate.TraintapeTracker` in a real Accelerate loop: 2 ranks under
torchrun (tests/workers/accelerate_ddp.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

import numpy as np  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from tests.conftest import CollectorProcess, query  # noqa: E402
from tests.jobs import (  # noqa: E402
    files_in,
    media_of,
    params_of,
    rank_ends,
    run_job,
    steps_of,
    the_run,
    worker_output,
)
from traintape.checkpoint import list_checkpoints  # noqa: E402
from traintape.integrations.accelerate import TraintapeTracker  # noqa: E402


def test_tracker_is_registered_by_name_and_logs_on_every_process() -> None:
    """`log_with="traintape"` names the tracker (where Accelerate can register one), and it
    asks Accelerate to be called on every process, not only the main one."""
    from accelerate import tracking

    if hasattr(tracking, "register_tracker_class"):
        assert tracking.LOGGER_TYPE_TO_CLASS["traintape"] is TraintapeTracker
    assert TraintapeTracker.main_process_only is False
    assert TraintapeTracker.requires_logging_directory is False


@pytest.mark.slow
def test_accelerate_run_has_both_ranks_config_and_checkpoints(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """4 steps on 2 processes: one completed run with both ranks' losses at every step, the
    init_trackers config as params, the live save_state folder recorded and the removed one
    recorded as deleted, and each rank's images and table of log_images/log_table as media."""
    root = tmp_path / "job"
    proc = run_job("accelerate_ddp.py", store, root)
    assert proc.returncode == 0, worker_output(proc)
    run_id = the_run(store, "completed")
    assert rank_ends(store, run_id) == {0: "completed", 1: "completed"}
    assert steps_of(store, run_id, "train/loss") == {(r, s) for r in (0, 1) for s in range(1, 5)}
    params = params_of(store, run_id)
    assert {k: json.loads(v) for k, v in params.items()} == {
        "lr": 0.05,
        "model.hidden": 8,
        "model.act": "tanh",
    }
    (live,) = list_checkpoints(store, run_id)
    assert (live.step, live.path, live.rank) == (4, root / "state-4", 0)
    assert files_in(root) == ["state-4"]
    assert live.bytes == sum(p.stat().st_size for p in live.path.rglob("*") if p.is_file())
    loss_at_4 = query(
        store,
        "SELECT value FROM metrics WHERE run_id = ? AND rank = 0 AND step = 4 "
        "AND key = 'train/loss'",
        run_id,
    )[0][0]
    assert live.metrics == {"train/loss": loss_at_4}
    deleted = query(
        store,
        "SELECT step, path FROM checkpoints WHERE run_id = ? AND action = 'deleted'",
        run_id,
    )
    assert deleted == [(2, str(root / "state-2"))]
    media = media_of(store, run_id)
    assert [row[:7] for row in media] == [
        (rank, 4, name, kind, *size, caption)
        for rank in (0, 1)
        for name, kind, size, caption in (
            ("preds", "table", (None, None), None),
            ("samples/0", "image", (6, 4), f"rank {rank}"),
            ("samples/1", "image", (6, 4), "b"),
        )
    ]
    with PILImage.open(store / media[-1][7]) as stored:  # rank 1's second image
        assert np.array_equal(np.array(stored), np.full((4, 6, 3), 11, np.uint8))


@pytest.mark.slow
def test_accelerate_run_that_raises_is_failed(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """The loop raising at step 3 on both processes: the run is failed on both, with the values
    of steps 1 and 2."""
    proc = run_job("accelerate_ddp.py", store, tmp_path / "job", "--fail-at", 3)
    assert proc.returncode != 0, worker_output(proc)
    assert "the training loop fails on purpose" in proc.stderr
    run_id = the_run(store, "failed")
    assert rank_ends(store, run_id) == {0: "failed", 1: "failed"}
    assert steps_of(store, run_id, "train/loss") == {(r, s) for r in (0, 1) for s in (1, 2)}
