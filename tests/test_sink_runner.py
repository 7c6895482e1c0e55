"""Sink runners in a real collector: a sink that fails on every call slows nothing and loses
nothing, and says so under its own name; the collector never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, CollectorProcess, query, worker_argv
from tests.test_sink_tensorboard import read_scalars

STEPS = 3000
METRICS = 10

FAILING_SINK = """
from traintape.sinks import Sink


class AlwaysFails(Sink):
    type = "always-fails"

    def open_run(self, run):
        raise RuntimeError("boom: backend unreachable")

    def write(self, run, events):
        raise RuntimeError("boom: backend unreachable")
"""


def _ingest(store: Path, *extra: str) -> tuple[float, CollectorProcess]:
    """Seconds one worker takes to log and deliver STEPS x METRICS values; the collector runs on."""
    collector = CollectorProcess(store, "--system-interval", "0", *extra).start()
    t0 = time.perf_counter()
    done = subprocess.run(
        worker_argv(
            store,
            "--steps",
            str(STEPS),
            "--metrics",
            str(METRICS),
        ),
        cwd=REPO,
        env={**os.environ, "TRAINTAPE_RUN_ID": "fast"},
        timeout=120,
    )
    assert done.returncode == 0
    return time.perf_counter() - t0, collector


@pytest.mark.slow
def test_a_failing_sink_slows_nothing_and_loses_nothing(tmp_path: Path, monkeypatch, capsys):
    """With a sink raising on every call beside TensorBoard, ingestion takes about as long as
    with no sink, the store and TensorBoard get every value, and the failing sink's error is
    reported under its name in the log and in `traintape status`."""
    from traintape.cli import main

    baseline, plain = _ingest(tmp_path / "plain")
    assert plain.stop() == 0

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "failing_sink.py").write_text(FAILING_SINK)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "plugins"))
    config = tmp_path / "tt.yaml"
    config.write_text(
        textwrap.dedent(
            """
            sinks:
              broken:
                type: failing_sink:AlwaysFails
                retry_initial: 0.05
                retry_max: 0.4
                drain_timeout: 1
              tensorboard: {}
            """
        )
    )
    store = tmp_path / "store"
    seconds, collector = _ingest(store, "--config", str(config))
    try:
        deadline = time.monotonic() + 60
        while True:
            status = json.loads((store / "state" / "collector.json").read_text())
            sinks = status["sinks"]
            # The status comes from the sink process: wait for what is asserted below, the
            # broken sink's retries too, not only TensorBoard's catching up.
            caught_up = status["events"] == STEPS + 3 and sinks["tensorboard"]["lag_bytes"] == 0
            if caught_up and (sinks["broken"].get("errors") or 0) >= 2:
                break
            assert time.monotonic() < deadline, sinks
            time.sleep(0.2)
        assert main(["status", "--store", str(store)]) == 0
        assert collector.stop() == 0
    finally:
        collector.close()

    print(f"ingest: {seconds:.2f}s with a failing sink and TensorBoard, {baseline:.2f}s with none")
    assert seconds < 2 * baseline + 2.0
    out = capsys.readouterr().out
    assert "sink broken" in out and "boom: backend unreachable" in out
    broken = sinks["broken"]
    assert broken["state"] == "retrying" and 2 <= broken["errors"] < 100  # backing off
    assert broken["lag_events"] == STEPS + 3 and broken["batches"] == 0
    log = collector.log.read_text()
    assert "sink broken: RuntimeError: boom: backend unreachable" in log

    count = query(store, "SELECT count(*) FROM metrics WHERE run_id = 'fast'")[0][0]
    assert count == STEPS * METRICS
    tb = read_scalars(store / "tensorboard" / "e2e" / "e2e-fast")
    assert sum(len(v) for v in tb.values()) == STEPS * METRICS


@pytest.mark.slow
def test_the_collector_with_every_sink_never_imports_torch(tmp_path: Path):
    """The three backends, imported and driven through a run, leave torch unimported."""
    code = textwrap.dedent(
        f"""
        import sys, time
        import traintape.collector.server
        from traintape.schemas.events import METRICS
        from traintape.sinks import Event, RunInfo, SinkConfig
        store = __import__("pathlib").Path({str(tmp_path)!r})
        run = RunInfo("r", "p", "n", started_ns=time.time_ns())
        options = {{"mlflow": {{"tracking_uri": "sqlite:///{tmp_path}/m.db"}}, "wandb": {{"mode": "offline"}}}}
        for kind in ("tensorboard", "mlflow", "wandb"):
            sink = SinkConfig(kind, kind, options.get(kind, {{}})).create(store)
            sink.open_run(run)
            sink.write(run, [Event(METRICS, 0, 0, time.time_ns(), {{"x": 1.0}})])
            sink.flush()
            sink.close()
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
