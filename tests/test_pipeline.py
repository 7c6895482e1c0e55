"""End to end: real emitter processes, a real collector process, real ZeroMQ, read back with DuckDB."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from tests.conftest import (
    REPO,
    WORKER,
    CollectorProcess,
    query,
    torchrun_argv,
    value_now,
    wait_for,
    worker_argv,
)
from tests.workers.log_steps import expected_value


def _progress(path: Path) -> int:
    """The last step a `--progress` worker wrote, -1 before the first."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return -1


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _run_worker(
    store: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        worker_argv(store, *args),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def _assert_exact(store: Path, run_id: str, ranks: int, steps: int, metrics: int) -> None:
    rows = query(
        store,
        "SELECT rank, step, key, value FROM metrics WHERE run_id = ? ORDER BY rank, step, key",
        run_id,
    )
    assert len(rows) == ranks * steps * metrics
    expected = sorted(
        (r, s, f"m{i}", expected_value(r, s, i))
        for r in range(ranks)
        for s in range(steps)
        for i in range(metrics)
    )
    mismatches = [
        (a, b) for a, b in zip(rows, expected) if a[:3] != b[:3] or _bits(a[3]) != _bits(b[3])
    ]
    assert not mismatches[:5]
    dupes = query(
        store,
        "SELECT count(*) FROM (SELECT rank, source, seq, key FROM metrics WHERE run_id = ? "
        "GROUP BY ALL HAVING count(*) > 1)",
        run_id,
    )
    assert dupes == [(0,)]


@pytest.mark.slow
@pytest.mark.share_collector
def test_torchrun_two_ranks_store_every_value_bit_exact(
    store: Path, collector: CollectorProcess
) -> None:
    """A 2-rank torchrun/gloo run of 5,000 steps x 10 metrics per rank stores exactly 100,000 rows, bit-exact."""
    env = {**os.environ, "TRAINTAPE_RUN_ID": "ddp-e2e", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        torchrun_argv(WORKER, "--store", store, "--steps", 5000, "--dist"),
        cwd=REPO,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'ddp-e2e'", 100_000)
    _assert_exact(store, "ddp-e2e", ranks=2, steps=5000, metrics=10)
    assert query(store, "SELECT status, ranks, world_size FROM runs WHERE run_id = 'ddp-e2e'") == [
        ("completed", 2, 2)
    ]


@pytest.mark.slow
def test_collector_sigkilled_mid_run_loses_and_duplicates_nothing(store: Path) -> None:
    """SIGKILL the collector mid-run and restart it a second later: the count stays exact."""
    coll = CollectorProcess(store).start()
    env = {**os.environ, "TRAINTAPE_RUN_ID": "killed-collector"}
    worker = subprocess.Popen(
        worker_argv(
            store,
            "--steps",
            "20000",
            "--pause-every",
            "200",
            "--pause",
            "0.02",
        ),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        mine = "SELECT count(*) FROM metrics WHERE run_id = 'killed-collector'"
        while not value_now(store, mine):  # the run is under way: the kill lands mid-run
            assert time.monotonic() < deadline, "nothing of the run reached the store"
            time.sleep(0.05)
        coll.kill()
        assert worker.poll() is None, "the kill must land mid-run"
        time.sleep(1.0)  # the scenario: the collector stays down a while, the worker logs on
        coll.start()
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'killed-collector'", 200_000)
        _assert_exact(store, "killed-collector", ranks=1, steps=20000, metrics=10)
    finally:
        worker.kill()
        coll.close()


@pytest.mark.slow
def test_emitters_started_before_the_collector_deliver_everything(store: Path) -> None:
    """Emitters that start logging before any collector runs get everything stored once it starts."""
    env = {**os.environ, "TRAINTAPE_RUN_ID": "early-bird"}
    worker = subprocess.Popen(
        worker_argv(
            store,
            "--steps",
            "3000",
            "--pause-every",
            "100",
            "--pause",
            "0.05",
            "--progress",
            store.parent / "progress",
        ),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    coll = CollectorProcess(store)
    try:
        deadline = time.monotonic() + 60
        while _progress(store.parent / "progress") < 1000:  # a third logged with no collector
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "the worker did not reach step 1000"
            time.sleep(0.02)
        coll.start()
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'early-bird'", 30_000)
        _assert_exact(store, "early-bird", ranks=1, steps=3000, metrics=10)
        assert not list((store / "spool").glob("*.spool"))
    finally:
        worker.kill()
        coll.close()


@pytest.mark.slow
def test_without_collector_events_spool_and_replay_exactly_once(
    store: Path, tmp_path: Path
) -> None:
    """No collector during the whole run: finish() returns in time, events wait in the spool, and
    `traintape replay` delivers them exactly once (twice is harmless)."""
    env = {**os.environ, "TRAINTAPE_RUN_ID": "offline"}
    report = tmp_path / "report"
    t0 = time.monotonic()
    _run_worker(store, "--steps", "5000", "--finish-timeout", "2", "--report", str(report), env=env)
    assert time.monotonic() - t0 < 60
    result = json.loads((tmp_path / "report.0").read_text())
    assert result["acked"] == 0
    assert result["spooled"] == 5000 + 3  # metrics events plus run_start, params, run_end
    assert Path(result["spool_path"]).exists()

    coll = CollectorProcess(store).start()
    try:
        cli = [sys.executable, "-m", "traintape.cli", "replay", "--store", str(store)]
        out = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
        assert "5003 events" in out.stdout
        assert not list((store / "spool").glob("*.spool"))
        wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'offline'", 50_000)
        _assert_exact(store, "offline", ranks=1, steps=5000, metrics=10)
        assert query(store, "SELECT status FROM runs WHERE run_id = 'offline'") == [("completed",)]
    finally:
        coll.close()


@pytest.mark.slow
def test_garbage_on_the_socket_is_dead_lettered_and_serving_goes_on(
    store: Path, collector: CollectorProcess
) -> None:
    """Random bytes and malformed frames are counted and kept aside; a normal run afterwards is complete."""
    import msgpack

    from traintape.schemas.wire import encode_body, encode_header

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(collector.address)
    bad = [
        [os.urandom(64)],
        [os.urandom(16), os.urandom(300)],
        [msgpack.packb([b"tt", 99, "r", 0, "s", 0, 1]), b"\x80"],  # unknown wire version
        [
            encode_header("r", 0, "s", 0, 2),
            encode_body([2], [1], [0], [{"a": 1.0}]),
        ],  # short column
        [
            encode_header("r", 0, "s", 0, 1),
            encode_body([2], [1], [0], [{"a": "text"}]),
        ],  # not a number
        [encode_header("r", 0, "s", 0, 1), encode_body([42], [1], [0], [{}])],  # unknown kind
        [b"", b"", b""],
    ]
    for frames in bad:
        sock.send_multipart(frames)
    sock.close(linger=10_000)
    ctx.term()  # returns once every frame above is sent (or after the linger)

    _run_worker(store, "--steps", "500", env={**os.environ, "TRAINTAPE_RUN_ID": "after-garbage"})
    wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'after-garbage'", 5000)
    _assert_exact(store, "after-garbage", ranks=1, steps=500, metrics=10)
    deadline = time.monotonic() + 10  # the status file is rewritten once a second
    while json.loads((store / "state" / "collector.json").read_text())["dead_letters"] != len(bad):
        assert time.monotonic() < deadline, "dead letters were not counted"
        time.sleep(0.1)
    assert collector.proc is not None and collector.proc.poll() is None
    assert (store / "deadletter" / "deadletter.log").stat().st_size > 0


@pytest.mark.slow
def test_sigterm_flushes_and_exits_zero(store: Path) -> None:
    """SIGTERM: everything received is journaled and materialized, and the exit code is 0."""
    from traintape import emitter

    coll = CollectorProcess(store).start()
    try:
        run = emitter.init(project="p", store=store)
        for step in range(100):
            emitter.log({"x": float(step)}, step=step)
        assert emitter.finish(timeout=30).complete
        assert coll.stop() == 0
        assert query(
            store, "SELECT count(*), sum(value) FROM metrics WHERE run_id = ?", run.run_id
        ) == [(100, float(sum(range(100))))]
    finally:
        coll.close()


@pytest.mark.share_collector
def test_forked_child_logs_under_its_own_source(store: Path, collector: CollectorProcess) -> None:
    """A forked child (a DataLoader worker) gets its own socket and source; both sides' events arrive."""
    from traintape import emitter

    run = emitter.init(project="fork", store=store)
    emitter.log({"parent": 1.0}, step=0)
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            emitter.log({"child": 2.0}, step=0)
            rep = run.finish(timeout=20)
            code = 0 if rep.acked == 1 else 3
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    emitter.log({"parent": 3.0}, step=1)
    assert emitter.finish(timeout=20).complete
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 3)
    rows = query(
        store,
        "SELECT key, count(DISTINCT source) FROM metrics WHERE run_id = ? GROUP BY key ORDER BY key",
        run.run_id,
    )
    assert rows == [("child", 1), ("parent", 1)]
    assert query(
        store, "SELECT count(DISTINCT source) FROM metrics WHERE run_id = ?", run.run_id
    ) == [(2,)]
    assert query(store, "SELECT status FROM runs WHERE run_id = ?", run.run_id) == [("completed",)]


@pytest.mark.share_collector
def test_nan_and_inf_survive_to_sql(store: Path, collector: CollectorProcess) -> None:
    """NaN and ±Inf are kept, not dropped."""
    from traintape import emitter

    run = emitter.init(project="p", store=store)
    emitter.log({"a": math.nan, "b": math.inf, "c": -math.inf}, step=0)
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 3)
    rows = dict(query(store, "SELECT key, value FROM metrics WHERE run_id = ?", run.run_id))
    assert math.isnan(rows["a"]) and rows["b"] == math.inf and rows["c"] == -math.inf
