"""Fast checks of the sink layer in-process: the rank policies, the contract every sink keeps, the
configuration (flags, YAML, environment) and its errors, and the runner's cursor and retries."""

from __future__ import annotations

import importlib.util
import json
import math
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from traintape.collector.journal import Journal
from traintape.schemas.events import CHECKPOINT, METRICS, PARAMS, RUN_END, RUN_START, TEXT
from traintape.schemas.records import frame_record
from traintape.schemas.wire import BatchBody, BatchHeader, encode_body, encode_header
from traintape.sinks import ConfigError, Event, MissingBackendError, RunInfo, Sink, SinkConfig
from traintape.sinks.config import resolve, single
from traintape.sinks.projection import Projection
from traintape.sinks.runner import JournalTail, SinkRunner, state_path

RUN = "r1"


def batch(rank: int, events: list[tuple[int, int | None, dict]], seq0: int = 0, ts0: int = 10**18):
    kinds = [e[0] for e in events]
    steps = [e[1] for e in events]
    bodies = [e[2] for e in events]
    ts = [ts0 + i for i in range(len(events))]
    return BatchHeader(RUN, rank, f"src{rank}", seq0, len(events)), BatchBody(
        kinds, ts, steps, bodies
    )


def start(world: int = 2) -> tuple[int, None, dict]:
    return (RUN_START, None, {"project": "p", "name": "n", "world_size": world, "config": {}})


def metric_events(ops: list) -> list[Event]:
    return [e for op in ops if op[0] == "write" for e in op[2] if e.kind == METRICS]


# -- rank policies ----------------------------------------------------------------------------


def test_rank0_keeps_rank_zero_only_and_ends_with_its_run_end():
    """rank0 passes rank 0's events, ignores other ranks, and ends the run with rank 0's end."""
    p = Projection("rank0")
    p.feed(*batch(0, [start(), (METRICS, 0, {"loss": 1.0}), (PARAMS, None, {"lr": 0.1})]))
    p.feed(*batch(1, [start(), (METRICS, 0, {"loss": 3.0}), (RUN_END, None, {"status": "failed"})]))
    p.feed(*batch(0, [(RUN_END, None, {"status": "completed", "summary": {"a": 1}})], seq0=3))
    ops = p.take_ops()
    assert ops[0][0] == "open" and ops[0][1].world_size == 2
    events = [e for op in ops if op[0] == "write" for e in op[2]]
    assert [(e.kind, e.body) for e in events] == [
        (METRICS, {"loss": 1.0}),
        (PARAMS, {"lr": 0.1}),
        (RUN_END, {"status": "completed", "summary": {"a": 1}}),
    ]


def test_all_names_values_per_rank():
    """all sends every rank's values as KEY/rankN, and ends the run when every rank ended."""
    p = Projection("all")
    p.feed(*batch(0, [start(), (METRICS, 0, {"loss": 1.0})]))
    p.feed(*batch(1, [start(), (METRICS, 0, {"loss": 3.0}), (RUN_END, None, {"status": "failed"})]))
    assert [e.body for e in metric_events(p.take_ops())] == [
        {"loss/rank0": 1.0},
        {"loss/rank1": 3.0},
    ]
    p.feed(*batch(0, [(RUN_END, None, {"status": "completed"})], seq0=2))
    ends = [e for op in p.take_ops() if op[0] == "write" for e in op[2] if e.kind == RUN_END]
    assert [e.body["status"] for e in ends] == ["failed"]


@pytest.mark.parametrize(("policy", "expected"), [("mean", 2.0), ("min", 1.0), ("max", 3.0)])
def test_reductions_wait_for_every_rank(policy: str, expected: float):
    """mean/min/max send a step once every rank logged a later one, reduced across ranks."""
    p = Projection(policy)
    p.feed(*batch(0, [start(), (METRICS, 0, {"loss": 1.0}), (METRICS, 1, {"loss": 5.0})]))
    assert metric_events(p.take_ops()) == []  # rank 1 has not reported step 0 yet
    p.feed(*batch(1, [start(), (METRICS, 0, {"loss": 3.0})]))
    assert metric_events(p.take_ops()) == []  # rank 1 may still log more at step 0
    p.feed(*batch(1, [(METRICS, 1, {"loss": 7.0})], seq0=2))
    got = metric_events(p.take_ops())
    assert [(e.step, e.body, e.rank) for e in got] == [(0, {"loss": expected}, None)]
    p.feed(*batch(0, [(RUN_END, None, {"status": "completed"})], seq0=3))
    p.feed(*batch(1, [(RUN_END, None, {"status": "completed"})], seq0=3))
    ops = p.take_ops()
    assert [e.step for e in metric_events(ops)] == [1]
    assert ops[-1][2][-1].kind == RUN_END


def test_reduction_state_survives_a_restart():
    """A projection rebuilt from its state() sends exactly what the original would have."""
    a = Projection("mean")
    a.feed(*batch(0, [start(), (METRICS, 0, {"x": 1.0}), (METRICS, 1, {"x": math.nan})]))
    state = json.loads(json.dumps(a.state()))
    b = Projection("mean", lookup=lambda run_id: RunInfo(run_id, "p", "n", world_size=2))
    b.load_state(state)
    for p in (a, b):
        p.take_ops()
        p.feed(*batch(1, [(METRICS, 0, {"x": 3.0}), (METRICS, 1, {"x": 1.0})], seq0=1))
        p.feed(*batch(1, [(METRICS, 2, {"x": 0.0})], seq0=3))
    ea, eb = metric_events(a.take_ops()), metric_events(b.take_ops())
    assert [(e.step, e.body["x"]) for e in ea][0] == (0, 2.0)
    assert repr([(e.step, e.body) for e in ea]) == repr([(e.step, e.body) for e in eb])


def test_slow_rank_steps_go_out_after_wait_ranks_and_late_values_are_counted():
    """A step waits `wait_ranks` s of run time for a silent rank, then goes out; late values
    for a step already sent are dropped and counted, never sent out of order."""
    p = Projection("max", wait_ranks=1.0)
    p.feed(*batch(0, [start(), (METRICS, 0, {"x": 1.0})], ts0=0))
    p.feed(*batch(0, [(METRICS, 1, {"x": 2.0})], seq0=2, ts0=2 * 10**9))
    assert [e.step for e in metric_events(p.take_ops())] == [0]
    p.feed(*batch(1, [start(), (METRICS, 0, {"x": 9.0})], ts0=3 * 10**9))
    assert metric_events(p.take_ops()) == [] and p.late_values == 1


def test_ordered_sinks_get_all_ranks_in_step_order():
    """For a sink that wants increasing steps, `all` holds values until every rank passed."""
    p = Projection("all", ordered_steps=True)
    p.feed(*batch(0, [start(), *[(METRICS, s, {"x": float(s)}) for s in range(3)]]))
    p.feed(*batch(1, [start(), *[(METRICS, s, {"x": -float(s)}) for s in range(2)]]))
    got = metric_events(p.take_ops())
    # Step 1 waits: rank 1 may still log more at step 1.
    assert [(e.step, e.body) for e in got] == [(0, {"x/rank0": 0.0, "x/rank1": -0.0})]


# -- the contract every sink keeps ------------------------------------------------------------

SINKS = ["tensorboard", "mlflow", "wandb"]


def _events(ts: int) -> list[Event]:
    return [
        Event(PARAMS, 0, None, ts, {"lr": 0.1, "name": "x" * 7000}),
        *[
            Event(METRICS, 0, s, ts + s, {"loss": 1.0 / (s + 1), "odd key!": float(s)})
            for s in range(5)
        ],
        Event(TEXT, 0, 2, ts + 2, {"key": "note", "text": "hello"}),
        Event(CHECKPOINT, 0, 4, ts + 4, {"path": "/ckpt/4.pt", "step": 4, "is_best": True}),
        Event(RUN_END, 0, None, ts + 5, {"status": "completed", "summary": {"best": 0.5}}),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kind", SINKS)
def test_every_sink_takes_a_run_through_its_life(kind: str, tmp_path: Path, monkeypatch):
    """open_run, write (every event kind), flush, close: no error, and stats() is a dict."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    options = {
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db"},
        "wandb": {"mode": "offline"},
    }
    sink = SinkConfig(kind, kind, options.get(kind, {})).create(tmp_path)
    ts = time.time_ns()
    run = RunInfo("abc123", "proj", "name", {"opt": {"lr": 0.1}}, ("t1",), {"host": "h"}, 1, ts)
    sink.restore(None)
    sink.open_run(run)
    sink.write(run, _events(ts))
    sink.flush()
    assert isinstance(sink.stats(), dict)
    sink.close()


@pytest.mark.parametrize("kind", SINKS)
def test_missing_backend_names_the_extra(kind: str, monkeypatch):
    """A sink whose package is missing says which `pip install traintape[extra]` fixes it."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == kind else real(n, *a)
    )
    with pytest.raises(MissingBackendError, match=rf"pip install traintape\[{kind}\]"):
        resolve([kind], environ={})


# -- configuration ----------------------------------------------------------------------------


def test_sink_flags_set_the_main_option():
    """--sink TYPE=VALUE sets dir / tracking_uri / mode; plain --sink TYPE takes defaults."""
    cfg = resolve(["tensorboard=/tmp/tb", "mlflow=http://127.0.0.1:5000", "wandb"], environ={})
    by = {s.name: s for s in cfg.sinks}
    assert by["tensorboard"].options == {"dir": "/tmp/tb"}
    assert by["mlflow"].options == {"tracking_uri": "http://127.0.0.1:5000"}
    assert by["wandb"].options == {} and by["wandb"].runner_option("ranks") == "rank0"


def test_yaml_file_with_env_overrides_and_cli_last(tmp_path: Path):
    """The file sets options, TRAINTAPE_SINK_* overrides them, --sink VALUE overrides both."""
    path = tmp_path / "traintape.yaml"
    path.write_text(
        textwrap.dedent(
            """
            store: /data/store
            bind: tcp://127.0.0.1:5555
            sinks:
              tensorboard: {dir: /a, ranks: mean, batch_events: 100}
              mlflow-archive:
                type: mlflow
                tracking_uri: sqlite:///a.db
              wandb: {enabled: false}
            """
        )
    )
    env = {
        "TRAINTAPE_SINK_TENSORBOARD_RANKS": "max",
        "TRAINTAPE_SINK_MLFLOW_ARCHIVE_EXPERIMENT": "exp",
        "TRAINTAPE_SINKS": "mlflow=http://x",
    }
    cfg = resolve(["tensorboard=/b"], path, environ=env)
    assert cfg.store == "/data/store" and cfg.bind == ["tcp://127.0.0.1:5555"]
    by = {s.name: s for s in cfg.sinks}
    assert set(by) == {"tensorboard", "mlflow-archive", "mlflow"}
    assert by["tensorboard"].options == {"dir": "/b"}
    assert by["tensorboard"].runner == {"ranks": "max", "batch_events": 100}
    assert by["mlflow-archive"].options == {"tracking_uri": "sqlite:///a.db", "experiment": "exp"}
    assert by["mlflow"].options == {"tracking_uri": "http://x"}


def test_yaml_serve_options_with_flags_over_them(tmp_path: Path):
    """The file may set serve's options; a flag given on the command line wins."""
    path = tmp_path / "traintape.yaml"
    path.write_text(
        "system_interval: 0.25\ncompact_settle: '5'\ncurve: yes\nmaterialize_interval: 2\n"
    )
    cfg = resolve([], path, environ={})
    assert cfg.option("system_interval", None, 1.0) == 0.25
    assert cfg.option("compact_settle", None, 30.0) == 5.0
    assert cfg.option("curve", None, False) is True
    assert cfg.option("allow_remote", None, False) is False  # not in the file: the default
    assert cfg.option("materialize_interval", 0.1, 0.5) == 0.1  # --materialize-interval 0.1


@pytest.mark.parametrize(
    ("yaml_text", "env", "error"),
    [
        ("sinks: {mlflow: {trackin_uri: x}}", {}, r"sinks\.mlflow\.trackin_uri: unknown option"),
        ("curve: maybe", {}, r"curve: expected true or false"),
        ("system_interval: often", {}, r"system_interval: expected a number"),
        ("sinks: {tensorboard: {ranks: avg}}", {}, r"sinks\.tensorboard\.ranks: ranks 'avg'"),
        ("sinks: {tensorboard: {batch_events: many}}", {}, r"batch_events: expected an integer"),
        ("sinks: {grafana: {}}", {}, r"sinks\.grafana: unknown sink type 'grafana'"),
        ("sink: {}", {}, r"unknown key 'sink'"),
        ("sinks: [tensorboard", {}, r"not valid YAML"),
        (
            "sinks: {tensorboard: {}}",
            {"TRAINTAPE_SINK_MLFLOW_RANKS": "all"},
            r"TRAINTAPE_SINK_MLFLOW_RANKS",
        ),
        (
            "sinks: {tensorboard: {}}",
            {"TRAINTAPE_SINK_TENSORBOARD_DIRR": "x"},
            r"TRAINTAPE_SINK_TENSORBOARD_DIRR: unknown option 'dirr'",
        ),
    ],
)
def test_invalid_configuration_names_the_key(tmp_path: Path, yaml_text: str, env: dict, error: str):
    """Every configuration error names the file and key, or the variable, it comes from."""
    path = tmp_path / "tt.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=error):
        resolve([], path, environ=env)


def test_serve_rejects_a_bad_config_before_starting(tmp_path: Path, capsys):
    """`traintape serve --config` with a bad key exits 2 with the key named, storing nothing."""
    from traintape.cli import main

    path = tmp_path / "tt.yaml"
    path.write_text("sinks:\n  mlflow:\n    tracking_url: http://x\n")
    assert main(["serve", "--store", str(tmp_path / "s"), "--config", str(path)]) == 2
    assert "sinks.mlflow.tracking_url: unknown option" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_sync_takes_one_sink_with_file_options(tmp_path: Path):
    """`sync --to TYPE` takes that sink's options from the config file, VALUE overriding."""
    path = tmp_path / "tt.yaml"
    path.write_text("sinks: {tensorboard: {dir: /a, ranks: all}, wandb: {}}\n")
    cfg = single("tensorboard=/b", str(path), environ={})
    assert (cfg.name, cfg.options, cfg.runner) == ("tensorboard", {"dir": "/b"}, {"ranks": "all"})


# -- the runner -------------------------------------------------------------------------------


class FlakySink(Sink):
    """Records what it receives; fails the first `fail` calls of write()."""

    type = "flaky"
    received: list[tuple[str, Any]] = []
    fail = 0

    def open_run(self, run: RunInfo) -> None:
        FlakySink.received.append(("open", run.run_id))

    def write(self, run: RunInfo, events: list[Event]) -> None:
        if FlakySink.fail > 0:
            FlakySink.fail -= 1
            raise ConnectionError("backend away")
        FlakySink.received.extend(("event", (e.kind, e.step)) for e in events)


def _journal_with_run(folder: Path, steps: int) -> Journal:
    journal = Journal(folder)
    events = [start(1), *[(METRICS, s, {"x": float(s)}) for s in range(steps)]]
    for i in range(0, len(events), 10):
        chunk = events[i : i + 10]
        header = encode_header(RUN, 0, "src", i, len(chunk))
        body = encode_body(
            [e[0] for e in chunk], [i] * len(chunk), [e[1] for e in chunk], [e[2] for e in chunk]
        )
        journal.append(frame_record(header, body))
    journal.sync()
    return journal


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_runner_retries_with_backoff_and_persists_its_cursor(tmp_path: Path, monkeypatch):
    """Failed writes are retried (same batch, growing delay) until they pass; every event
    arrives once; the cursor is persisted, and a new runner resumes after it."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    FlakySink.received = []
    FlakySink.fail = 3
    journal = _journal_with_run(tmp_path / "journal", 95)
    config = SinkConfig(
        "flaky",
        f"{__name__}:FlakySink",
        {},
        {"batch_events": 40, "retry_initial": 0.01, "interval": 0.01},
    )
    logs: list[str] = []
    runner = SinkRunner(config, tmp_path, journal, JournalTail(journal), logs.append)
    runner.start()
    _wait(lambda: runner.status()["lag_events"] == 0 and runner.position == journal.durable_end)
    status = runner.status()
    runner.stop(1.0)
    steps = [v[1] for k, v in FlakySink.received if k == "event"]
    assert steps == list(range(95))
    assert status["errors"] == 3 and status["batches"] == 3
    assert "sink flaky: ConnectionError: backend away (retrying in 0.0s)" in logs[0]
    saved = json.loads(state_path(tmp_path, "flaky").read_text())
    assert saved["position"] == journal.durable_end and saved["events"] == 96

    FlakySink.received = []
    again = SinkRunner(config, tmp_path, journal, JournalTail(journal), logs.append)
    again.start()
    time.sleep(0.2)  # 20 passes at interval 0.01 s: time for a resend that must not come
    again.stop(1.0)
    assert FlakySink.received == []  # nothing is sent twice


class NamingSink(Sink):
    """Records the run name each batch of values was written under."""

    type = "naming"
    written: list[tuple[str, int]] = []
    opened: list[str] = []

    def open_run(self, run: RunInfo) -> None:
        NamingSink.opened.append(run.name)

    def write(self, run: RunInfo, events: list[Event]) -> None:
        NamingSink.written.extend((run.name, e.step) for e in events if e.kind == METRICS)


def test_values_journaled_before_their_run_start_wait_for_it(tmp_path: Path, monkeypatch):
    """A run's first batch resent late lands in the journal after later ones: the sink holds
    those values until the run's start arrives, writes every one under the run's real name
    (not an unknown run's), and opens the run once (W&B would start a second run)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    NamingSink.written = []
    NamingSink.opened = []
    journal = Journal(tmp_path / "journal")
    now = time.time_ns()

    def append(seq0: int, events: list[tuple[int, int | None, dict]]) -> None:
        header = encode_header(RUN, 0, "src", seq0, len(events))
        kinds, steps, bodies = zip(*events)
        journal.append(frame_record(header, encode_body(kinds, [now] * len(events), steps, bodies)))
        journal.sync()

    append(
        2, [(METRICS, s, {"x": float(s)}) for s in range(1, 20)]
    )  # the late first batch's followers
    config = SinkConfig("naming", f"{__name__}:NamingSink", {}, {"interval": 0.01})
    runner = SinkRunner(config, tmp_path, journal, JournalTail(journal), lambda text: None)
    runner.start()
    try:
        time.sleep(0.3)  # 30 passes at interval 0.01 s: time for a write that must not come
        assert NamingSink.written == []  # held: the run's start is not journaled yet
        append(0, [start(1), (METRICS, 0, {"x": 0.0})])
        _wait(lambda: len(NamingSink.written) == 20)
    finally:
        runner.stop(1.0)
    assert {name for name, _ in NamingSink.written} == {"n"}
    assert NamingSink.opened == ["n"]
    assert sorted(step for _, step in NamingSink.written) == list(range(20))
