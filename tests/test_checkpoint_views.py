"""One meaning of "best" for checkpoints: the `checkpoints` view's `is_best` and `live` agree
with `traintape checkpoints` and `load_checkpoint("best")` after retention deleted files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import query, wait_for
from traintape import CheckpointPolicy, emitter
from traintape.checkpoint import list_checkpoints

torch = pytest.importorskip("torch")

VAL_LOSS = [0.9, 0.4, 0.7, 0.2, 0.6, 0.5, 0.8]
"""Step i's val_loss: the best (0.2, step 3) is neither the first nor among the newest two."""


def test_view_marks_the_live_files_and_the_one_best(store: Path, collector: Any) -> None:
    """After retention (keep the 2 newest and the best), the view's live rows are the files
    left on disk, and exactly one row, the best of those, has is_best."""
    run = emitter.init(
        "ckpt-best",
        store=store,
        checkpoint=CheckpointPolicy(keep_last=2, monitor="val_loss", mode="min"),
    )
    for step, loss in enumerate(VAL_LOSS):
        handle = emitter.save_checkpoint(
            {"w": torch.ones(4) * step}, step=step, metrics={"val_loss": loss}
        )
        handle.result(timeout=30)
    emitter.finish()
    wait_for(
        store,
        f"SELECT count(*) FROM checkpoints WHERE run_id = '{run.run_id}' AND action = 'deleted'",
        len(VAL_LOSS) - 3,
    )
    rows = query(
        store,
        f"""SELECT step, path, live, is_best, best_when_saved FROM checkpoints
            WHERE run_id = '{run.run_id}' AND action = 'saved' ORDER BY step""",
    )
    live = {step for step, _, is_live, _, _ in rows if is_live}
    on_disk = {step for step, path, _, _, _ in rows if Path(path).exists()}
    assert live == on_disk == {3, 5, 6}
    assert [step for step, _, _, best, _ in rows if best] == [3]
    # The flag an event carries says "best so far when saved": steps 0, 1 and 3 were.
    assert [step for step, _, _, _, when in rows if when] == [0, 1, 3]
    listed = list_checkpoints(store, run.run_id)
    assert {c.step for c in listed} == live
    assert [c.step for c in listed if c.best] == [3]
