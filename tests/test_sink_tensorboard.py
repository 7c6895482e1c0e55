"""TensorBoard sink against TensorBoard's own reader: every scalar, step and value of the store is
in the event files exactly once, also across a collector killed with SIGKILL mid-run."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CollectorProcess, query, start_ranks
from traintape.schemas.events import METRICS, RUN_END
from traintape.sinks import Event, RunInfo, SinkConfig


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, value, wall_time)]} as TensorBoard's EventAccumulator reads the folder."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    scalars = set(acc.PluginTagToContent("scalars"))
    return {
        tag: [
            (e.step, float(tensor_util.make_ndarray(e.tensor_proto)), e.wall_time)
            for e in acc.Tensors(tag)
        ]
        for tag in scalars
    }


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b)
    )


def _workers(store: Path, run_id: str, steps: int, pause: float) -> list[subprocess.Popen]:
    return start_ranks(
        store, run_id, "--steps", steps, "--metrics", 6, "--pause-every", 10, "--pause", pause
    )


@pytest.mark.slow
def test_two_ranks_match_the_store_exactly_across_a_sigkill(tmp_path: Path):
    """ranks=all, 2 ranks, collector SIGKILLed and restarted mid-run: each store value is in
    TensorBoard once, with its step and wall time; params and status are in the HPARAMS data."""
    store = tmp_path / "store"
    config = tmp_path / "tt.yaml"
    config.write_text("sinks:\n  tensorboard:\n    ranks: all\n    batch_events: 500\n")
    collector = CollectorProcess(store, "--config", str(config), "--system-interval", "0").start()
    try:
        procs = _workers(store, "tbrun", steps=800, pause=0.02)
        time.sleep(1.2)
        collector.kill()
        time.sleep(0.5)
        collector.start()
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
            assert _same(gv, wv), (tag, gv, wv)
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
