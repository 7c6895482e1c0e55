"""TensorBoard sink against TensorBoard's own reader: every scalar, step and value of the store is
in the event files exactly once, also across a collector killed with SIGKILL mid-run."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CollectorProcess, query, start_ranks, value_now
from traintape.schemas.events import METRICS, RUN_END
from traintape.sinks import Event, RunInfo, SinkConfig


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, value, wall_time)]} as TensorBoard's classic EventAccumulator reads the
    folder (what `EventAccumulator(...).Scalars()` scripts see), every value kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }


def read_plugin_scalars(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """The same, as the plugin-based reader of TensorBoard's UI reads it."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return {
        tag: [
            (e.step, float(tensor_util.make_ndarray(e.tensor_proto)), e.wall_time)
            for e in acc.Tensors(tag)
        ]
        for tag in acc.PluginTagToContent("scalars")
    }


def as_float32(value: float) -> float:
    """A stored float64 as TensorBoard holds it: the nearest float32 (±Inf beyond its range)."""
    import numpy as np

    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b)
    )


def _tensorboard_batches(store: Path) -> int:
    """Batches the TensorBoard sink has written so far, as the collector's status file says."""
    try:
        status = json.loads((store / "state" / "collector.json").read_text())
        return status["sinks"]["tensorboard"].get("batches") or 0
    except (OSError, ValueError, KeyError):
        return 0


def _workers(
    store: Path, run_id: str, steps: int, pause: float, *extra: object
) -> list[subprocess.Popen]:
    pace = ("--metrics", 6, "--pause-every", 10, "--pause", pause)
    return start_ranks(store, run_id, "--steps", steps, *pace, *extra)


@pytest.mark.slow
def test_two_ranks_match_the_store_exactly_across_a_sigkill(tmp_path: Path):
    """ranks=all, 2 ranks, collector SIGKILLed and restarted mid-run: each store value is in
    TensorBoard once, with its step and wall time; params and status are in the HPARAMS data."""
    store = tmp_path / "store"
    config = tmp_path / "tt.yaml"
    config.write_text("sinks:\n  tensorboard:\n    ranks: all\n    batch_events: 500\n")
    collector = CollectorProcess(store, "--config", str(config), "--system-interval", "0").start()
    try:
        # The ranks finish once the collector is back: finish() while nothing listens would
        # spool at once (for `traintape replay`), which is not what this test is about.
        go = tmp_path / "finish"
        procs = _workers(store, "tbrun", 800, 0.02, "--finish-after", go)
        deadline = time.monotonic() + 60
        mine = "SELECT count(*) FROM metrics WHERE run_id = 'tbrun'"
        while _tensorboard_batches(store) < 1 or (value_now(store, mine) or 0) < 2 * 200 * 6:
            # mid-run: a quarter of the values stored, and some in TensorBoard already
            assert time.monotonic() < deadline, "the run did not get under way"
            time.sleep(0.05)
        collector.kill()
        time.sleep(0.5)  # the scenario: the collector stays down a while, the ranks log on
        collector.start()
        go.touch()
        for p in procs:
            assert p.wait(120) == 0
        assert collector.stop() == 0
    finally:
        collector.close()
        for p in procs:
            if p.poll() is None:
                p.kill()

    folder = store / "tensorboard" / "e2e" / "e2e-tbrun"
    tb = read_scalars(folder)
    rows = query(
        store,
        "SELECT rank, step, key, value, epoch_us(ts) FROM metrics WHERE run_id = 'tbrun'",
    )
    assert len(rows) == 2 * 800 * 6
    expected: dict[str, list[tuple[int, float, float]]] = {}
    for rank, step, key, value, ts_us in rows:
        expected.setdefault(f"{key}/rank{rank}", []).append((step, value, ts_us / 1e6))
    assert set(tb) == set(expected)
    for tag, want in expected.items():
        got = sorted(tb[tag], key=lambda r: r[0])
        want.sort(key=lambda r: r[0])
        assert [s for s, _, _ in got] == [s for s, _, _ in want], tag  # each step exactly once
        for (_, gv, gt), (_, wv, wt) in zip(got, want):
            assert _same(gv, as_float32(wv)), (tag, gv, wv)
            assert abs(gt - wt) < 1e-5

    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams import metadata as hp

    acc = EventAccumulator(str(folder))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = hp.parse_session_start_info_plugin_data(content[hp.SESSION_START_INFO_TAG])
    end = hp.parse_session_end_info_plugin_data(content[hp.SESSION_END_INFO_TAG])
    params = dict(query(store, "SELECT key, value_num FROM params WHERE run_id = 'tbrun'"))
    assert {k: v.number_value for k, v in start.hparams.items()} == params == {"steps": 800.0}
    assert end.status == api_pb2.STATUS_SUCCESS


def test_restore_truncates_what_was_written_after_the_checkpoint(tmp_path: Path):
    """A batch written after the last persisted checkpoint and written again after a restart
    (the collector died between flush and cursor) is in the event files once."""
    config = SinkConfig("tensorboard", "tensorboard", {"dir": str(tmp_path / "tb")})
    run = RunInfo("r1", "p", "n", world_size=1, started_ns=time.time_ns())

    def batch(first: int) -> list[Event]:
        return [
            Event(METRICS, 0, s, time.time_ns(), {"x": float(s)}) for s in range(first, first + 50)
        ]

    sink = config.create(tmp_path)
    sink.open_run(run)
    sink.write(run, batch(0))
    checkpoint = sink.flush()  # persisted with the cursor
    sink.write(run, batch(50))
    sink.flush()  # ... the cursor was not persisted: the collector died here
    sink._runs["r1"].file._f.close()

    again = config.create(tmp_path)
    again.restore(checkpoint)
    again.open_run(run)
    again.write(run, batch(50))
    again.write(run, [Event(RUN_END, 0, None, time.time_ns(), {"status": "completed"})])
    again.flush()
    again.close()
    got = read_scalars(tmp_path / "tb" / "p" / "n")["x"]
    assert sorted(s for s, _, _ in got) == list(range(100))


def _write_run(root: Path, run: RunInfo, values: list[dict[str, float]]) -> list[Event]:
    """Writes one metrics event per step of `values` and the run's end through the sink."""
    sink = SinkConfig("tensorboard", "tensorboard", {"dir": str(root)}).create(root)
    events = [Event(METRICS, 0, s, time.time_ns(), v) for s, v in enumerate(values)]
    sink.open_run(run)
    sink.write(run, [*events, Event(RUN_END, 0, None, time.time_ns(), {"status": "completed"})])
    sink.flush()
    sink.close()
    return events


def test_classic_and_plugin_readers_see_every_scalar(tmp_path: Path):
    """Scalars are classic simple_value summaries, as PyTorch's SummaryWriter writes them:
    TensorBoard's classic EventAccumulator.Scalars() and its plugin-based reader both see each
    value, as its nearest float32 (±Inf beyond float32's range, NaN and -0.0 kept)."""
    run = RunInfo("r1", "proj", "name", world_size=1, started_ns=time.time_ns())
    odd = [0.1, -0.0, math.nan, math.inf, -math.inf, 1e300, -1e300, 5e-324, 3.4028235e38, 7]
    values = [{"loss": v, "acc": float(i)} for i, v in enumerate(odd)]
    events = _write_run(tmp_path, run, values)
    want = {
        key: [(e.step, as_float32(e.body[key]), e.ts / 1e9) for e in events]
        for key in ("loss", "acc")
    }
    folder = tmp_path / "proj" / "name"
    for got in (read_scalars(folder), read_plugin_scalars(folder)):
        assert set(got) == set(want)
        for tag, rows in want.items():
            assert [s for s, _, _ in got[tag]] == [s for s, _, _ in rows], tag
            for (_, gv, gt), (_, wv, wt) in zip(got[tag], rows):
                assert _same(gv, wv), (tag, gv, wv)
                assert abs(gt - wt) < 1e-6


def test_scalar_values_are_encoded_as_pytorch_summarywriter_encodes_them(tmp_path: Path):
    """Each Summary.Value of a scalar is byte for byte the one `torch.utils.tensorboard`'s
    `add_scalar` builds for the same tag and value."""
    pytest.importorskip("torch")
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from torch.utils.tensorboard.summary import scalar

    run = RunInfo("r1", "proj", "name", world_size=1, started_ns=time.time_ns())
    values = [{"loss": 0.1, "lr/group 0": 3e-4, "损失": -2.5}, {"loss": 1e-45, "big": 1e39}]
    _write_run(tmp_path, run, values)
    (path,) = (tmp_path / "proj" / "name").glob("events.out.tfevents.*")
    got = [
        v.SerializeToString()
        for e in LegacyEventFileLoader(str(path)).Load()  # as written, not migrated
        for v in e.summary.value
        if v.WhichOneof("value") == "simple_value"
    ]
    want = [scalar(k, v).value[0].SerializeToString() for row in values for k, v in row.items()]
    assert got == want


def test_runs_with_the_same_project_and_name_get_their_own_folders(tmp_path: Path):
    """`<dir>/<project>/<run name>` for the first run of a name, `<run name>-<run id>` for
    another run of the same name, so no two runs share a folder."""
    first = RunInfo("r1", "proj", "same", world_size=1, started_ns=time.time_ns())
    second = RunInfo("r2", "proj", "same", world_size=1, started_ns=time.time_ns())
    _write_run(tmp_path, first, [{"x": 1.0}])
    _write_run(tmp_path, second, [{"x": 2.0}])
    assert read_scalars(tmp_path / "proj" / "same")["x"][0][1] == 1.0
    assert read_scalars(tmp_path / "proj" / "same-r2")["x"][0][1] == 2.0
