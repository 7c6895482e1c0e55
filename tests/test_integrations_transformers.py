"""`traintape.integrations.transformers.TraintapeCallback` in the Hugging Face Trainer's real
training loop: 2 ranks under torchrun (tests/workers/hf_trainer.py), a tiny BERT built from a
config (nothing downloaded)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tests.conftest import CollectorProcess, query  # noqa: E402
from tests.jobs import (  # noqa: E402
    files_in,
    params_of,
    rank_ends,
    run_job,
    sha256_of,
    steps_of,
    the_run,
    worker_output,
)
from traintape.checkpoint import list_checkpoints  # noqa: E402
from traintape.integrations.transformers import rewrite_logs  # noqa: E402


def test_rewrite_logs_names_keys_as_the_wandb_callback_does() -> None:
    """eval_x -> eval/x, test_x -> test/x, anything else -> train/x."""
    logs = {"loss": 1.0, "eval_loss": 2.0, "test_acc": 0.5, "epoch": 1.0}
    assert rewrite_logs(logs) == {
        "train/loss": 1.0,
        "eval/loss": 2.0,
        "test/acc": 0.5,
        "train/epoch": 1.0,
    }


@pytest.mark.slow
def test_trainer_run_has_both_ranks_arguments_and_checkpoints(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """6 steps evaluating and saving every 3 with save_total_limit=1: one completed run with
    both ranks' train/ and eval/ values at the global steps, the TrainingArguments and model
    config as params, checkpoint-6 live with the sha256 of its files, checkpoint-3 deleted."""
    root = tmp_path / "job"
    proc = run_job("hf_trainer.py", store, root)
    assert proc.returncode == 0, worker_output(proc)
    run_id = the_run(store, "completed")
    assert rank_ends(store, run_id) == {0: "completed", 1: "completed"}
    both = (0, 1)
    assert steps_of(store, run_id, "train/loss") == {(r, s) for r in both for s in range(1, 7)}
    assert steps_of(store, run_id, "train/learning_rate") == steps_of(store, run_id, "train/loss")
    assert steps_of(store, run_id, "eval/loss") == {(r, s) for r in both for s in (3, 6)}
    assert steps_of(store, run_id, "train/train_runtime") == {(0, 6), (1, 6)}
    summary = query(
        store,
        "SELECT json_extract(body, '$.summary.train_loss') IS NOT NULL FROM events "
        "WHERE run_id = ? AND kind = 'run_end'",
        run_id,
    )
    assert summary == [(True,), (True,)]
    params = params_of(store, run_id)
    assert json.loads(params["max_steps"]) == 6  # TrainingArguments
    assert json.loads(params["save_total_limit"]) == 1
    assert json.loads(params["hidden_size"]) == 16  # the model's config
    assert json.loads(params["model_type"]) == "bert"
    assert json.loads(params["model/num_parameters"]) > 0

    (live,) = list_checkpoints(store, run_id)
    folder = root / "checkpoint-6"
    assert (live.step, live.path, live.rank) == (6, folder, 0)
    assert files_in(root) == ["checkpoint-6"]
    body = json.loads(
        query(
            store,
            "SELECT body FROM events WHERE run_id = ? AND kind = 'checkpoint' AND step = 6",
            run_id,
        )[0][0]
    )
    names = [f["name"] for f in body["files"]]
    assert {"model.safetensors", "trainer_state.json", "optimizer.pt"} <= set(names)
    for f in body["files"]:
        assert f["sha256"] == sha256_of(folder / f["name"]), f["name"]
    listing = "".join(f"{f['name']}\0{f['bytes']}\0{f['sha256']}\n" for f in body["files"])
    assert live.sha256 == hashlib.sha256(listing.encode()).hexdigest()
    assert live.bytes == sum(f["bytes"] for f in body["files"])
    assert set(live.metrics) >= {"eval/loss"}
    deleted = query(
        store,
        "SELECT step, path, reason FROM checkpoints WHERE run_id = ? AND action = 'deleted'",
        run_id,
    )
    assert deleted == [(3, str(root / "checkpoint-3"), "removed")]


@pytest.mark.slow
def test_trainer_run_whose_training_raises_is_failed(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """The loss raising in the third step on both ranks (on_train_end never comes): the run is
    failed on both, with the values of the 2 steps done before it."""
    proc = run_job("hf_trainer.py", store, tmp_path / "job", "--fail-at", 2)
    assert proc.returncode != 0, worker_output(proc)
    assert "compute_loss fails on purpose" in proc.stderr
    run_id = the_run(store, "failed")
    assert rank_ends(store, run_id) == {0: "failed", 1: "failed"}
    assert steps_of(store, run_id, "train/loss") == {(r, s) for r in (0, 1) for s in (1, 2)}


@pytest.mark.slow
def test_callback_joins_a_current_run_and_leaves_its_end_to_the_script(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """With a traintape.emitter run already current, the callback logs into it (arguments as
    params) and on_train_end does not end it; the script's finish() does."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from traintape import emitter
    from traintape.integrations.transformers import TraintapeCallback

    run = emitter.init(project="mine", store=store)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    callback = TraintapeCallback()
    callback.on_train_begin(args, state, control)
    assert callback.run is run
    state.global_step = 4
    callback.on_log(args, state, control, logs={"loss": 0.5, "eval_acc": 0.9, "note": "hi"})
    callback.on_train_end(args, state, control)
    run.log({"after": 1.0}, step=5)  # still open
    emitter.finish()
    rows = query(store, "SELECT key, step, value FROM metrics ORDER BY key")
    assert rows == [("after", 5, 1.0), ("eval/acc", 4, 0.9), ("train/loss", 4, 0.5)]
    texts = query(
        store,
        "SELECT step, json_extract_string(body, '$.key'), json_extract_string(body, '$.text') "
        "FROM events WHERE kind = 'text'",
    )
    assert texts == [(4, "train/note", "hi")]
    assert json.loads(params_of(store, run.run_id)["output_dir"]) == str(tmp_path / "out")
    assert query(store, "SELECT project, status FROM runs") == [("mine", "completed")]
