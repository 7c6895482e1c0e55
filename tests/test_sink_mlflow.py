"""MLflow sink against a real `mlflow server` on 127.0.0.1: every metric value of a 2-rank run
arrives exactly once, although the server is stopped for more than 5 s mid-run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CollectorProcess, free_port, query, start_ranks

STEPS = 600
METRICS = 5


class MlflowServer:
    """`mlflow server` in its own process group, on sqlite; stop() ends only that group."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MlflowServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    f"sqlite:///{self.folder / 'mlflow.db'}",
                    "--default-artifact-root",
                    str(self.folder / "artifacts"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers share the group, so stop() ends them all
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def mlflow_server(tmp_path: Path):
    server = MlflowServer(tmp_path / "mlflow").start()
    yield server
    server.stop()


def _sink_status(store: Path) -> dict[str, Any]:
    try:
        return json.loads((store / "state" / "collector.json").read_text())["sinks"]["mlflow"]
    except (OSError, ValueError, KeyError):
        return {}


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_every_value_arrives_once_across_a_server_outage(tmp_path: Path, mlflow_server):
    """ranks=all: each rank's values under KEY/rankN, each (step, value) once, with the event's
    timestamp; params, tags and status from the run; the outage shows in `traintape status`."""
    from mlflow.tracking import MlflowClient

    from traintape.cli import main

    store = tmp_path / "store"
    config = tmp_path / "tt.yaml"
    config.write_text(
        "sinks:\n  mlflow:\n    ranks: all\n    batch_events: 300\n    retry_max: 1\n"
    )
    collector = CollectorProcess(
        store,
        "--config",
        str(config),
        "--sink",
        f"mlflow={mlflow_server.uri}",
        "--system-interval",
        "0",
    ).start()
    procs: list[subprocess.Popen] = []
    try:
        procs = start_ranks(
            store,
            "mlrun",
            "--steps",
            STEPS,
            "--metrics",
            METRICS,
            "--pause-every",
            10,  # 6 s of logging: the outage must begin while values still come
            "--pause",
            0.1,
        )
        _wait(lambda: _sink_status(store).get("batches", 0) >= 2, 60, "first batches in MLflow")
        mlflow_server.stop()
        down = time.monotonic()
        _wait(lambda: _sink_status(store).get("errors", 0) > 0, 30, "the sink to report errors")
        # the scenario: a 5.5 s outage, while the ranks log on (6 s in all)
        time.sleep(max(0.0, 5.5 - (time.monotonic() - down)))
        status = _sink_status(store)
        assert status["state"] == "retrying" and status["last_error"]
        main(["status", "--store", str(store)])
        mlflow_server.start()
        for p in procs:
            assert p.wait(120) == 0
        _wait(
            lambda: (
                _sink_status(store).get("lag_events") == 0
                and _sink_status(store).get("state") == "idle"
            ),
            90,
            "the sink to catch up",
        )
        assert collector.stop() == 0
    finally:
        collector.close()
        for p in procs:
            if p.poll() is None:
                p.kill()

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`traintape.run_id` = 'mlrun'")
    assert run.info.status == "FINISHED" and run.info.run_name == "e2e-mlrun"
    assert run.data.params == {"steps": str(STEPS)}
    assert run.data.tags["traintape.world_size"] == "2"
    commit = query(store, "SELECT git_commit FROM runs WHERE run_id = 'mlrun'")[0][0]
    if commit:
        assert run.data.tags["mlflow.source.git.commit"] == commit

    parquet = str(store / "tables" / "metrics" / "*" / "*.parquet")  # ts in µs, truncated
    rows = query(
        store,
        f"SELECT rank, key, step, value, epoch_ns(ts) // 1000000 FROM read_parquet('{parquet}') "
        "WHERE run_id = 'mlrun'",
    )
    assert len(rows) == 2 * STEPS * METRICS
    expected: dict[str, list[tuple[int, int, Any]]] = {}
    for rank, key, step, value, ts_ms in rows:
        expected.setdefault(f"{key}/rank{rank}", []).append((step, ts_ms, _comparable(value)))
    assert set(run.data.metrics) == set(expected)
    for key, want in expected.items():
        got = [
            (m.step, m.timestamp, _comparable(m.value))
            for m in client.get_metric_history(run.info.run_id, key)
        ]
        assert sorted(got, key=repr) == sorted(want, key=repr), key


def _comparable(value: float) -> Any:
    """As MLflow stores it: NaN flagged, ±Inf as ±max double."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value) or abs(value) == 1.7976931348623157e308:
        return "inf" if value > 0 else "-inf"
    return value


def test_artifacts_of_a_sqlite_store_go_beside_the_database(tmp_path: Path, monkeypatch):
    """With a sqlite tracking store, the experiments the sink creates keep their artifacts in
    `<db folder>/mlartifacts/<experiment>`, not in `./mlruns` of the current folder, and the
    sink's stats (printed by `traintape sync`) say where."""
    from mlflow.tracking import MlflowClient

    from traintape.schemas.events import METRICS, RUN_END, TEXT
    from traintape.sinks import Event, RunInfo, SinkConfig

    cwd, db = tmp_path / "cwd", tmp_path / "db"
    cwd.mkdir()
    db.mkdir()
    monkeypatch.chdir(cwd)
    uri = f"sqlite:///{db / 'mlflow.db'}"
    sink = SinkConfig("mlflow", "mlflow", {"tracking_uri": uri}).create(tmp_path / "store")
    run = RunInfo("r1", "proj", "name", started_ns=time.time_ns())
    now = time.time_ns()
    sink.open_run(run)
    sink.write(
        run,
        [
            Event(METRICS, 0, 0, now, {"x": 1.0}),
            Event(TEXT, 0, 0, now, {"key": "note", "text": "hello"}),
            Event(RUN_END, 0, None, now, {"status": "completed"}),
        ],
    )
    sink.flush()
    sink.close()
    assert list(cwd.iterdir()) == []
    assert sink.stats()["artifacts_in"] == str(db / "mlartifacts" / "proj")
    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("proj").experiment_id])
    (note,) = (db / "mlartifacts" / "proj" / found.info.run_id).rglob("*.txt")
    assert note.read_text() == "hello"
