"""MLflow sink: names MLflow cannot take stay distinct, under the same keys in every process.

`损失` and `精度` both clean to `__`; unsuffixed, their histories merged into one. Against a real
`mlflow server` on 127.0.0.1, a run logs such names through a real collector, the collector is
restarted (a new sink process) while the run is resumed, and `traintape sync` sends the run
again: each name keeps its own MLflow key and history, the run's tags map each key to its
original name, and the collector warns once per name.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CollectorProcess
from tests.test_sink_mlflow import MlflowServer, _sink_status
from traintape import emitter
from traintape.cli import main as cli_main
from traintape.sinks.mlflow import clean_key

LONG = "x" * 240 + "@" + "y" * 60  # cleaned alike to LONG2 up to the cut
LONG2 = "x" * 240 + "#" + "y" * 60
NAMES = ["损失", "精度", "loss@val", "loss#val", "plain/loss", LONG, LONG2]
PARAMS = {"学习率": 0.1, "批量": 32, "lr": 0.5}


def _caught_up(store: Path) -> bool:
    status = _sink_status(store)
    return status.get("lag_events") == 0 and status.get("state") == "idle"


def _until(condition: Any, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _attempt(store: Path, server: MlflowServer, steps: range) -> str:
    """One collector lifetime: the run `names` (started or resumed) logs `steps`."""
    collector = CollectorProcess(
        store, "--sink", f"mlflow={server.uri}", "--system-interval", "0"
    ).start()
    try:
        emitter.init("names", name="names", store=store, run_id="names")
        emitter.log_params(PARAMS)
        for step in steps:
            emitter.log({name: float(100 * i + step) for i, name in enumerate(NAMES)}, step=step)
        emitter.finish(timeout=30)
        _until(lambda: _caught_up(store), "the MLflow sink to catch up")
        assert collector.stop() == 0
    finally:
        collector.close()
    return collector.log.read_text()


@pytest.mark.slow
def test_distinct_names_keep_distinct_mlflow_keys(tmp_path: Path) -> None:
    """Seven names (five of them renamed) give seven MLflow keys, each with its own six values
    across a sink restart and a `traintape sync`; tags name each original; one warning each."""
    from mlflow.tracking import MlflowClient

    keys = [clean_key(n) for n in NAMES]
    assert len(set(keys)) == len(NAMES) and keys[4] == "plain/loss"
    assert all(len(k) <= 250 for k in keys)
    server = MlflowServer(tmp_path / "mlflow").start()
    store = tmp_path / "store"
    try:
        log = _attempt(store, server, range(3))
        log = _attempt(store, server, range(3, 6))  # the log file grows: both lifetimes
        assert (
            cli_main(["sync", "names", "--to", f"mlflow={server.uri}", "--store", str(store)]) == 0
        )
        client = MlflowClient(tracking_uri=server.uri)
        experiment = client.get_experiment_by_name("names")
        (run,) = client.search_runs([experiment.experiment_id])
        histories = {k: client.get_metric_history(run.info.run_id, k) for k in keys}
    finally:
        server.stop()
    assert sorted(run.data.metrics) == sorted(keys)
    for i, key in enumerate(keys):
        assert sorted((m.step, m.value) for m in histories[key]) == [
            (step, float(100 * i + step)) for step in range(6)
        ], NAMES[i]
    renamed = {k: n for k, n in zip(keys, NAMES) if k != n}
    param_keys = {clean_key(k): k for k in PARAMS}
    assert run.data.params == {k: str(PARAMS[n]) for k, n in param_keys.items()}
    renamed.update({k: n for k, n in param_keys.items() if k != n})
    assert len(renamed) == 8
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("traintape.key.")}
    assert sorted(tags.values()) == sorted(renamed.values())
    for key, name in renamed.items():
        tag = f"traintape.key.{key}"
        assert tags.get(tag if len(tag) <= 250 else f"traintape.key.{key[-10:]}") == name
    # One log line per name in each collector lifetime (a new process warns again, once).
    for key, name in renamed.items():
        assert log.count(f"{name[:80]!r} is sent as {key!r}") == 2, name


@pytest.mark.parametrize("name", NAMES)
def test_clean_key_is_deterministic_and_valid_for_mlflow(name: str) -> None:
    """The same name maps to the same key every time, and MLflow's own validation accepts it."""
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    key = clean_key(name)
    assert key == clean_key(name)
    _validate_metric_name(key)
    _validate_param_name(key)
