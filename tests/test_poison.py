"""Poison input: nothing acknowledged may stop the Parquet side for the whole store.

Each reproduction of the issue is sent to a real collector (through the public API, and as raw
frames from a ZeroMQ DEALER); a good run afterwards must reach Parquet whole, and the collector,
the views and `traintape runs` must keep working. A journal written before ingest checked
anything is materialized with its bad records set aside, never retried forever.
"""

from __future__ import annotations

import errno
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from tests.conftest import REPO, CollectorProcess, query, wait_for
from traintape import emitter
from traintape.collector.deadletter import read_dead_letters
from traintape.collector.journal import Journal
from traintape.emitter.environment import Placement, resolve_run_id
from traintape.schemas.events import CHECKPOINT, METRICS, PARAMS, RUN_START, SYSTEM, TEXT
from traintape.schemas.limits import MAX_INT64
from traintape.schemas.records import frame_parts
from traintape.schemas.wire import (
    ACK_REJECTED,
    ACK_STORED,
    decode_ack_full,
    encode_body,
    encode_header,
)

NOW = time.time_ns()


def _metrics_body(n: int = 1, step: int = 0, ts: int = NOW) -> bytes:
    return encode_body([METRICS] * n, [ts] * n, [step + i for i in range(n)], [{"a": 1.0}] * n)


def _nested_params_body(depth: int) -> bytes:
    """A params event nested `depth` maps deep (msgpack's packer refuses to make one)."""
    nested = b"\x81\xa1a" * depth + b"\xc0"
    return (
        b"\x84"
        + msgpack.packb("k")
        + msgpack.packb([PARAMS])
        + msgpack.packb("t")
        + msgpack.packb([NOW])
        + msgpack.packb("s")
        + msgpack.packb([None])
        + msgpack.packb("b")
        + b"\x91"
        + nested
    )


def _one(kind: int, body: dict[str, Any], step: int | None = None) -> bytes:
    return encode_body([kind], [NOW], [step], [body])


def _poison_batches() -> list[tuple[str, list[bytes], int]]:
    """(what, [header, body], events rejected) for every raw reproduction of the issue; each
    batch from a source of its own, so acks are told apart by source."""

    def hdr(run_id: str, rank: int, seq0: int, n: int) -> bytes:
        return encode_header(run_id, rank, secrets.token_hex(8), seq0, n)

    good_start = {"project": "p", "name": "n", "world_size": 1, "config": {}, "tags": []}
    mixed = encode_body(
        [METRICS] * 4, [NOW] * 4, [0, 1, 2, 2**63], [{"a": 1.0}, {"a": 2.0}, {"a": 3.0}, {"a": 4.0}]
    )
    return [
        ("rank 2**31", [hdr("poison-rank", 2**31, 0, 1), _metrics_body()], 1),
        ("seq 2**63", [hdr("poison-seq", 0, 2**63, 1), _metrics_body()], 1),
        ("ts 2**63", [hdr("poison-ts", 0, 0, 1), _metrics_body(ts=2**63)], 1),
        ("step 2**63", [hdr("poison-step", 0, 0, 1), _metrics_body(step=2**63)], 1),
        ("10 KB run id", [hdr("x" * 10_000, 0, 0, 1), _metrics_body()], 1),
        ("unicode run id", [hdr("é" * 200, 0, 0, 1), _metrics_body()], 1),
        ("run id .", [hdr(".", 0, 0, 1), _metrics_body()], 1),
        ("run id ..", [hdr("..", 0, 0, 1), _metrics_body()], 1),
        (
            "params 900 deep",
            [hdr("poison-deep", 0, 0, 1), _nested_params_body(900)],
            1,
        ),
        (
            "system body",
            [
                hdr("poison-system", 0, 0, 2),
                encode_body(
                    [SYSTEM] * 2,
                    [NOW] * 2,
                    [None] * 2,
                    [{"host": 5, "device": "cpu", "values": {}}, {"host": "h", "values": [1]}],
                ),
            ],
            2,
        ),
        (
            "world_size abc",
            [
                hdr("poison-start", 0, 0, 1),
                _one(RUN_START, {**good_start, "world_size": "abc"}),
            ],
            1,
        ),
        (
            "checkpoint bytes lots",
            [
                hdr("poison-ckpt", 0, 0, 1),
                _one(CHECKPOINT, {"action": "saved", "path": "/x", "bytes": "lots"}, 3),
            ],
            1,
        ),
        ("good rows, then step 2**63", [hdr("mixed-run", 0, 0, 4), mixed], 1),
    ]


def _send_raw(address: str, batches: list[list[bytes]], timeout: float = 30) -> list[tuple]:
    """Sends each batch from one DEALER and returns the acks, in the order they came."""
    acks = []
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        for frames in batches:
            sock.send_multipart(frames)
        deadline = time.monotonic() + timeout
        while len(acks) < len(batches) and time.monotonic() < deadline:
            if sock.poll(100):
                acks.append(decode_ack_full(sock.recv()))
    return acks


def _good_run(store: Path, steps: int = 300) -> str:
    run = emitter.init(project="after-poison", store=store)
    for step in range(steps):
        emitter.log({"x": float(step), "y": -float(step)}, step=step)
    emitter.log_text("note", "still here", step=steps)
    report = emitter.finish(timeout=60)
    assert report.complete, report
    return run.run_id


def _assert_store_healthy(store: Path, run_id: str, steps: int = 300) -> None:
    """Every row of the good run in Parquet; the views and `traintape runs` work."""
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run_id}'", 2 * steps, 60)
    wait_for(store, f"SELECT status FROM runs WHERE run_id = '{run_id}'", "completed", 60)
    assert query(store, "SELECT world_size FROM runs WHERE run_id = ?", run_id) == [(1,)]
    query(store, "SELECT count(*) FROM checkpoints")
    query(store, "SELECT count(*) FROM system")
    out = subprocess.run(
        [sys.executable, "-m", "traintape.cli", "runs", "--store", str(store)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert run_id in out.stdout


@pytest.mark.slow
def test_raw_poison_frames_are_set_aside_and_a_good_run_reaches_parquet(
    store: Path, collector: CollectorProcess
) -> None:
    """Every raw poison batch is refused (or its bad events are) with a reason; the good events
    of a mixed batch are stored; a good run afterwards is in Parquet whole."""
    poison = _poison_batches()
    acks = {a[0]: a for a in _send_raw(collector.address, [f for _, f, _ in poison])}
    assert len(acks) == len(poison)
    for what, frames, rejected in poison:
        _, _, n, status, got = acks[msgpack.unpackb(frames[0])[4]]
        assert got == rejected, what
        assert status == (ACK_REJECTED if rejected == n else ACK_STORED), what

    run_id = _good_run(store)
    _assert_store_healthy(store, run_id)
    # The three good events of the mixed batch are stored; no poisoned run has a row anywhere.
    wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'mixed-run'", 3)
    assert query(store, "SELECT max(step) FROM metrics WHERE run_id = 'mixed-run'") == [(2,)]
    poisoned = query(
        store, "SELECT count(*) FROM events WHERE run_id LIKE 'poison-%' OR run_id LIKE '.%'"
    )
    assert poisoned == [(0,)]
    letters = read_dead_letters(store / "deadletter" / "deadletter.log")
    reasons = " | ".join(d["reason"] for d in letters)
    for needle in ("rank", "seq range", "timestamp", "step", "run id", "deeper", "world_size"):
        assert needle in reasons, needle
    assert len(letters) == sum(r for _, _, r in poison)
    assert collector.proc is not None and collector.proc.poll() is None
    # Nothing the materializer met was bad: ingest caught it all.
    assert not (store / "deadletter" / "materializer.log").exists()


@pytest.mark.slow
@pytest.mark.share_collector
def test_public_api_poison_is_refused_at_the_call(store: Path, collector: CollectorProcess) -> None:
    """Steps past int64 or negative, and run ids that cannot name a folder, raise at the call;
    nothing is queued, and the store keeps materializing."""
    with pytest.raises(ValueError, match="run id"):
        emitter.init(project="p", store=store, run_id="x" * 300)
    with pytest.raises(ValueError, match="run id"):
        emitter.init(project="p", store=store, run_id="é" * 130)
    for bad in (".", ".."):
        with pytest.raises(ValueError, match="run id"):
            emitter.init(project="p", store=store, run_id=bad)
    run = emitter.init(project="p", store=store)
    for step in (2**63, 2**64, -7):
        with pytest.raises(ValueError, match="step"):
            emitter.log({"a": 1.0}, step=step)
        with pytest.raises(ValueError, match="step"):
            emitter.log_text("k", "v", step=step)
    emitter.log({"a": 1.0}, step=MAX_INT64)  # the largest step is stored
    assert emitter.finish(timeout=60).complete
    wait_for(store, f"SELECT max(step) FROM metrics WHERE run_id = '{run.run_id}'", MAX_INT64)
    _assert_store_healthy(store, _good_run(store))


def test_environment_run_ids_are_checked_and_torchelastic_ids_mapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$TRAINTAPE_RUN_ID must be a valid id; torchrun's id (any string) maps to a valid one,
    the same on every rank."""
    monkeypatch.setenv("TRAINTAPE_RUN_ID", "my run/1")
    with pytest.raises(ValueError, match="TRAINTAPE_RUN_ID"):
        resolve_run_id(None, Placement(0, 1, 0))
    monkeypatch.delenv("TRAINTAPE_RUN_ID")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job é/with spaces " + "z" * 300)
    ids = {resolve_run_id(None, Placement(rank, 4, rank)) for rank in range(4)}
    assert len(ids) == 1
    from traintape.collector.validate import valid_run_id

    assert valid_run_id(ids.pop())


@pytest.mark.slow
@pytest.mark.share_collector
def test_events_only_the_collector_can_refuse_are_counted_in_the_finish_report(
    store: Path, collector: CollectorProcess
) -> None:
    """An event the collector rejects at ingest is counted in FinishReport.rejected (the ack
    says how many of a batch were set aside), and the rest of its batch is stored."""
    run = emitter.init(project="p", store=store)
    emitter.log({"a": 1.0}, step=0)
    run._emit(CHECKPOINT, 1, {"action": "saved", "path": "/x", "bytes": "lots"})
    emitter.log({"a": 2.0}, step=2)
    report = emitter.finish(timeout=60)
    assert report.rejected == 1 and not report.complete
    assert report.acked == 4  # run_start, two metrics, run_end
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 2)
    wait_for(store, f"SELECT status FROM runs WHERE run_id = '{run.run_id}'", "completed")


@pytest.mark.slow
def test_an_event_that_cannot_be_packed_is_refused_and_counted_not_lost_silently(
    store: Path,
) -> None:
    """A queued event that cannot be sent (step past 64 bits, through an internal path) is
    refused and counted; the keeper thread lives on and the rest of the run is delivered."""
    from traintape.collector.server import Collector

    collector = Collector(store, system_interval=0, quiet=True)
    import threading

    thread = threading.Thread(target=collector.serve, daemon=True)
    thread.start()
    try:
        run = emitter.init(project="p", store=store, flush_interval=0.05)
        run._emit(TEXT, 2**64, {"key": "k", "text": "t"})
        deadline = time.monotonic() + 10
        while run._pending and time.monotonic() < deadline:  # the keeper flushes it
            time.sleep(0.01)
        assert not run._pending
        assert run._outbox.keeper is not None and run._outbox.keeper.is_alive()
        emitter.log({"a": 1.0}, step=1)
        report = emitter.finish(timeout=30)
        assert report.rejected == 1 and not report.complete
        assert report.acked == 3  # run_start, the metric, run_end
    finally:
        collector.stop()
        thread.join(30)


@pytest.mark.slow
def test_the_keeper_survives_a_failing_tick(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tick that raises is said once and the keeper goes on: what it held is delivered."""
    from traintape.collector.server import Collector
    from traintape.emitter.transport import Transport

    real = Transport.poll_acks
    calls = {"n": 0}

    def flaky(self: Transport) -> int:
        calls["n"] += 1
        if calls["n"] in (3, 4):
            raise RuntimeError("injected")
        return real(self)

    monkeypatch.setattr(Transport, "poll_acks", flaky)
    collector = Collector(store, system_interval=0, quiet=True)
    import threading

    thread = threading.Thread(target=collector.serve, daemon=True)
    thread.start()
    try:
        run = emitter.init(project="p", store=store, flush_interval=0.05)
        for step in range(10):
            emitter.log({"a": float(step)}, step=step)
        deadline = time.monotonic() + 10
        while calls["n"] < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert run._outbox.keeper is not None and run._outbox.keeper.is_alive()
        report = emitter.finish(timeout=30)
        assert report.complete, report
        assert report.acked == 12
    finally:
        collector.stop()
        thread.join(30)


# -- a journal written before ingest checked anything -----------------------------------------


def _poisoned_journal(store: Path) -> dict[str, Any]:
    """Journal records as an unchecking collector acknowledged them."""
    journal = Journal(store / "journal")
    src = secrets.token_hex(8)
    records = [
        ("good", encode_header("good", 0, src, 0, 10), _metrics_body(10)),
        (
            "good+poison",
            encode_header("good", 0, src, 10, 4),
            encode_body(
                [METRICS] * 4,
                [NOW] * 4,
                [10, 11, 2**63, 13],
                [{"a": 1.0}, {"a": 1.0}, {"a": 1.0}, {"a": 1.0}],
            ),
        ),
        ("dotdot", encode_header("..", 0, src, 0, 1), _metrics_body()),
        ("unicode", encode_header("é" * 130, 0, src, 0, 1), _metrics_body()),
        ("deep", encode_header("deep", 0, src, 0, 1), _nested_params_body(900)),
        (
            "world_size",
            encode_header("ws", 0, src, 0, 1),
            _one(RUN_START, {"project": "p", "name": "n", "world_size": "abc"}),
        ),
        ("rank", encode_header("rank", 2**31, src, 0, 1), _metrics_body()),
        ("not msgpack", encode_header("junk", 0, src, 0, 1), b"\xc1\xc1\xc1"),
        ("good2", encode_header("good", 0, src, 14, 5), _metrics_body(5, step=14)),
    ]
    for _, header, body in records:
        journal.append(*frame_parts(header, body))
    journal.sync()
    return {"journal": journal, "records": records}


def test_a_poisoned_journal_is_materialized_with_bad_records_set_aside(store: Path) -> None:
    """Records that fail decoding, checks or conversion go to the materializer's dead-letter
    file with their journal position and reason; every good row is stored once; the cursor
    reaches the end, so a restart has nothing to retry."""
    from traintape.collector.materializer import Materializer

    made = _poisoned_journal(store)
    journal = made["journal"]
    mat = Materializer(store, journal)
    mat.catch_up()
    assert mat.position == journal.durable_end
    assert query(
        store, "SELECT count(*), count(DISTINCT step) FROM metrics WHERE run_id = 'good'"
    ) == [(18, 18)]
    assert query(store, "SELECT count(*) FROM events WHERE run_id IN ('ws', 'deep')") == [(0,)]
    # Ids an older collector acknowledged are kept, visible, in folders safe to make.
    odd = query(
        store, "SELECT run_id, count(*) FROM metrics WHERE run_id NOT IN ('good') GROUP BY 1"
    )
    assert sorted(odd) == [("..", 1), ("é" * 130, 1)]
    query(store, "SELECT * FROM runs")
    letters = read_dead_letters(store / "deadletter" / "materializer.log")
    assert all(isinstance(d["position"], int) and d["sizes"][0] > 0 for d in letters)
    # Four whole records (deep, world_size, rank, not msgpack) and one event of a mixed one.
    assert len(letters) == 5, [d["reason"] for d in letters]
    # A restart has nothing to do: the chunk is never retried.
    again = Materializer(store, journal)
    again.catch_up()
    assert again.position == journal.durable_end
    assert len(read_dead_letters(store / "deadletter" / "materializer.log")) == 5
    assert query(store, "SELECT count(*) FROM metrics WHERE run_id = 'good'") == [(18,)]


def test_a_failed_write_retried_on_a_longer_journal_stores_no_row_twice(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error after one table's file was written: the retry, over a journal that grew
    meanwhile, leaves every row exactly once."""
    import pyarrow.parquet as pq

    from traintape.collector import materializer as mat_module

    journal = Journal(store / "journal")
    src = secrets.token_hex(8)
    start = _one(RUN_START, {"project": "p", "name": "n", "world_size": 1})
    journal.append(*frame_parts(encode_header("r", 0, src, 0, 1), start))
    journal.append(*frame_parts(encode_header("r", 0, src, 1, 20), _metrics_body(20)))
    journal.sync()
    real = pq.write_table
    calls = {"n": 0}

    def failing_second(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(*args, **kwargs)

    mat = mat_module.Materializer(store, journal)
    monkeypatch.setattr(mat_module.pq, "write_table", failing_second)
    with pytest.raises(OSError):
        mat.catch_up()
    journal.append(*frame_parts(encode_header("r", 0, src, 21, 5), _metrics_body(5, step=20)))
    journal.sync()
    mat.catch_up()
    assert query(
        store, "SELECT count(*), count(DISTINCT step) FROM metrics WHERE run_id = 'r'"
    ) == [(25, 25)]
    assert query(store, "SELECT count(*) FROM events WHERE run_id = 'r'") == [(1,)]
    assert list((store / "tables").rglob("*.tmp")) == []


def test_a_made_up_liveness_status_is_set_aside() -> None:
    """A run_status event (the collector's word on a process) with an unknown status or a
    missing target is refused with a reason; a well-formed one passes."""
    from traintape.collector.validate import bad_events
    from traintape.schemas.events import RUN_STATUS
    from traintape.schemas.wire import BatchBody

    bodies = [
        {"status": "crashed", "source": "ab12", "reason": "pid 7 is gone", "pid": 7},
        {"status": "exploded", "source": "ab12"},
        {"status": "running"},
    ]
    bad = bad_events(BatchBody([RUN_STATUS] * 3, [1] * 3, [None] * 3, bodies))
    assert sorted(bad) == [1, 2]
    assert "exploded" in bad[1] and "source" in bad[2]
