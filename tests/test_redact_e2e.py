"""End to end: a secret planted in the config, params, text, summary, argv and the environment of a
training process is in no file a real collector and its TensorBoard, MLflow (sqlite) and W&B
(offline) sinks write, and `traintape show` prints the marker in its place."""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CollectorProcess
from tests.test_sink_wandb import offline_run, wandb_records
from traintape import emitter
from traintape.cli import main as cli_main
from traintape.emitter.redact import REDACTED

SECRET = "pl4nted-Secret-0f-issue13"
SINKS = ("tensorboard", "mlflow", "wandb")


def _sinks_caught_up(store: Path) -> bool:
    try:
        sinks = json.loads((store / "state" / "collector.json").read_text())["sinks"]
    except (OSError, ValueError, KeyError):
        return False
    return all(
        sinks.get(name, {}).get("lag_events") == 0 and sinks[name].get("state") == "idle"
        for name in SINKS
    )


def _until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _readable_forms(path: Path) -> list[bytes]:
    """The file's bytes, and what a reader decodes from them where the bytes are compressed
    (zstd Parquet, gzip) or framed in blocks that may split a string (W&B's .wandb log)."""
    data = path.read_bytes()
    forms = [data]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        forms.append(repr(pq.read_table(path).to_pylist()).encode())
    elif path.suffix == ".wandb":
        forms.extend(record.SerializeToString() for record in wandb_records(path))
    elif data[:2] == b"\x1f\x8b":
        forms.append(gzip.decompress(data))
    return forms


def _scan(root: Path) -> tuple[list[Path], dict[str, bool]]:
    """Files under `root` holding the secret, and whether each output holds the marker."""
    leaked: list[Path] = []
    marked = dict.fromkeys(("journal", "parquet", "tensorboard", "wandb", "mlflow"), False)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        forms = _readable_forms(path)
        if any(SECRET.encode() in form for form in forms):
            leaked.append(path)
        if any(REDACTED.encode() in form for form in forms):
            where = path.relative_to(root).parts
            output = next((o for o in marked if o in where or path.suffix == f".{o}"), None)
            output = "journal" if where[:2] == ("store", "journal") else output
            output = "mlflow" if path.name == "mlflow.db" else output
            if output is not None:
                marked[output] = True
    return leaked, marked


@pytest.mark.slow
def test_a_planted_secret_reaches_no_store_file_and_no_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Journal, Parquet, TensorBoard, MLflow and W&B files hold the marker and never the secret;
    MLflow's params and W&B's config read back redacted; `traintape show` prints the marker."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    store = tmp_path / "store"
    (tmp_path / "mlflow").mkdir()
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    collector = CollectorProcess(
        store,
        *("--sink", "tensorboard", "--sink", "wandb=offline", "--sink", f"mlflow={mlflow_uri}"),
        *("--system-interval", "0"),
    ).start()
    # Only the training process holds these (the collector started without them).
    monkeypatch.setenv("HF_TOKEN", SECRET)
    argv = ["train.py", f"--hf-token={SECRET}", "--password", SECRET, f"db.password={SECRET}"]
    monkeypatch.setattr(sys, "argv", [*argv, "--db-url", f"postgres://u:{SECRET}@db/x"])
    try:
        run = emitter.init(
            "redact",
            name="redact",
            run_id="redactrun",
            store=store,
            config={
                "api_key": SECRET,
                "db": {"password": SECRET, "url": f"postgres://u:{SECRET}@db/x"},
                "tokenizer": "gpt2",
                "max_tokens": 512,
            },
        )
        emitter.log_params({"wandb_token": SECRET, "opt": {"lr": 0.1}})
        for step in range(3):
            emitter.log({"loss": 1.0 / (step + 1)}, step=step)
        emitter.log_text("authorization", SECRET, step=2)
        emitter.log_text("sample", f"fetched s3://k:{SECRET}@bucket/x", step=2)
        run.summary["client_secret"] = SECRET
        report = run.finish(timeout=60)
        assert report.complete and report.visible
        _until(lambda: _sinks_caught_up(store), "the three sinks to catch up")
        assert collector.stop() == 0
    finally:
        collector.close()

    assert cli_main(["show", "redactrun", "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert SECRET not in shown
    for line in ("api_key", "db.password", "wandb_token", "--hf-token="):
        assert any(line in row and REDACTED in row for row in shown.splitlines()), line
    assert "gpt2" in shown and "512" in shown  # lookalikes kept

    leaked, marked = _scan(tmp_path)
    assert leaked == []
    assert marked == dict.fromkeys(marked, True), marked  # the scan reads every output

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("redact")
    assert experiment is not None
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.data.params["api_key"] == REDACTED
    assert mlrun.data.params["wandb_token"] == REDACTED
    assert mlrun.data.params["tokenizer"] == "gpt2"
    wandb = offline_run(store, "redactrun")
    assert wandb["config"]["api_key"] == REDACTED and wandb["config"]["max_tokens"] == 512
