"""`traintape sync RUN --to ...`: a stored run replayed into each backend, twice, lands once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CollectorProcess, query, start_ranks
from tests.test_sink_tensorboard import as_float32, read_scalars
from tests.test_sink_wandb import offline_run
from traintape.cli import main

STEPS = 200
METRICS = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one finished 2-rank run, `syncrun`, written with no sink."""
    store = tmp_path_factory.mktemp("sync") / "store"
    collector = CollectorProcess(store, "--system-interval", "0").start()
    try:
        procs = start_ranks(store, "syncrun", "--steps", STEPS, "--metrics", METRICS)
        for p in procs:
            assert p.wait(120) == 0
        assert collector.stop() == 0
    finally:
        collector.close()
    return store


def _rank0(store: Path) -> dict[tuple[str, int], float]:
    rows = query(
        store, "SELECT key, step, value FROM metrics WHERE run_id = 'syncrun' AND rank = 0"
    )
    return {(k, s): v for k, s, v in rows}


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


@pytest.mark.slow
def test_sync_to_tensorboard_twice_leaves_one_exact_copy(store: Path, tmp_path: Path):
    """Both syncs leave one folder whose scalars are rank 0's values, each step once."""
    for _ in range(2):
        assert (
            main(["sync", "syncrun", "--to", f"tensorboard={tmp_path}", "--store", str(store)]) == 0
        )
    assert [p.name for p in (tmp_path / "e2e").iterdir()] == ["e2e-syncru"]
    tb = read_scalars(tmp_path / "e2e" / "e2e-syncru")
    want = _rank0(store)
    got = {(tag, step): value for tag, rows in tb.items() for step, value, _ in rows}
    assert sum(len(rows) for rows in tb.values()) == len(want) == STEPS * METRICS
    assert got.keys() == want.keys() and all(_same(got[k], as_float32(want[k])) for k in want)


@pytest.mark.slow
def test_sync_to_mlflow_twice_sends_each_row_once(store: Path, tmp_path: Path, capsys):
    """Into a local sqlite tracking store, by run name: the second sync finds every row there
    and sends none."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for _ in range(2):
        assert main(["sync", "e2e-syncru", "--to", f"mlflow={uri}", "--store", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"metric_values {STEPS * METRICS}" in out[0]
    assert f"already_stored {STEPS * METRICS}" in out[1] and "metric_values" not in out[1]
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.status == "FINISHED"
    want = _rank0(store)
    for key in {k for k, _ in want}:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(STEPS)), key


@pytest.mark.slow
def test_sync_to_wandb_offline_twice_leaves_one_run_folder(
    store: Path, tmp_path: Path, monkeypatch
):
    """Offline, the second sync replaces the first one's folder: one folder, every step once."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = tmp_path / "tt.yaml"
    config.write_text(f"sinks:\n  wandb: {{dir: {tmp_path}}}\n")
    args = [
        "sync",
        "syncrun",
        "--to",
        "wandb=offline",
        "--store",
        str(store),
        "--config",
        str(config),
    ]
    for _ in range(2):
        assert main(args) == 0
    run = offline_run(tmp_path, "syncrun")  # asserts a single folder, no step twice
    want = _rank0(store)
    assert sorted(run["history"]) == list(range(STEPS))
    assert all(_same(float(run["history"][s][k]), v) for (k, s), v in want.items())


@pytest.mark.slow
def test_sync_of_an_unknown_run_says_so(store: Path, tmp_path: Path, capsys):
    """An unknown run or sink type exits 2 with a message naming it."""
    assert main(["sync", "nope", "--to", f"tensorboard={tmp_path}", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "no run" in err and "'nope'" in err
    assert main(["sync", "syncrun", "--to", "grafana", "--store", str(store)]) == 2
    assert "unknown sink type 'grafana'" in capsys.readouterr().err
