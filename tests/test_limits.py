"""Limits: message size, dead letters kept small, the emitter's memory bound."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from tests.conftest import REPO, CollectorProcess, query, wait_for
from traintape import emitter
from traintape.collector.deadletter import DeadLetters, read_dead_letters
from traintape.schemas.events import TEXT
from traintape.schemas.limits import MAX_MESSAGE_BYTES
from traintape.schemas.wire import ACK_STORED, decode_ack_full, encode_body, encode_header


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), bytes: no sampling can miss a spike."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _good_run(store: Path) -> str:
    run = emitter.init(project="after", store=store)
    for step in range(200):
        emitter.log({"x": float(step)}, step=step)
    report = emitter.finish(timeout=60)
    assert report.complete, report
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 200, 60)
    return run.run_id


def test_one_event_over_the_message_limit_is_refused_at_the_call(tmp_path: Path) -> None:
    """log_text and log_params with a body over the limit raise a clear error; nothing is queued."""
    run = emitter.init(project="p", store=tmp_path / "s", address="ipc://" + str(tmp_path / "x"))
    with run._outbox.lock:  # sent or waiting (the keeper may flush meanwhile)
        queued = run._outbox.seq + len(run._pending)
    with pytest.raises(ValueError, match="limit"):
        emitter.log_text("big", "x" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(ValueError, match="limit"):
        emitter.log_params({"blob": "y" * MAX_MESSAGE_BYTES})
    with pytest.raises(ValueError, match="nested deeper"):
        nested: list = []
        for _ in range(100):
            nested = [nested]
        emitter.log_params({"deep": nested})
    with pytest.raises(ValueError, match="int64"):
        emitter.log_params({"seed": 2**70})
    with run._outbox.lock:
        assert run._outbox.seq + len(run._pending) == queued


@pytest.mark.slow
def test_large_events_are_split_into_messages_under_the_limit(
    store: Path, collector: CollectorProcess
) -> None:
    """Events that together pass the limit leave as several messages, all stored."""
    run = emitter.init(project="p", store=store, batch_size=1000, flush_interval=60)
    texts = [secrets.token_hex(3 << 20) for _ in range(4)]  # 6 MiB each, 24 MiB together
    for i, text in enumerate(texts):
        emitter.log_text("blob", text, step=i)
    report = emitter.finish(timeout=120)
    assert report.complete, report
    wait_for(
        store,
        f"SELECT count(*) FROM events WHERE run_id = '{run.run_id}' AND kind = 'text'",
        4,
        120,
    )
    got = query(
        store,
        "SELECT sha256(json_extract_string(body, '$.text')) FROM events "
        "WHERE run_id = ? AND kind = 'text' ORDER BY step",
        run.run_id,
    )
    assert [g[0] for g in got] == [hashlib.sha256(t.encode()).hexdigest() for t in texts]


@pytest.mark.slow
def test_an_oversized_raw_frame_is_never_buffered_whole(
    store: Path, collector: CollectorProcess
) -> None:
    """A 96 MiB garbage frame costs the collector far less memory than itself, is not kept
    whole as a dead letter, and the collector goes on serving."""
    assert collector.proc is not None
    before = _peak_rss(collector.proc.pid)
    frame = os.urandom(96 << 20)
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(collector.address)
        sock.send_multipart([encode_header("big", 0, "s", 0, 1), frame])
        del frame
        seen = []
        while zmq.EVENT_DISCONNECTED not in seen:  # the collector hung up on it
            assert monitor.poll(60_000), f"the collector kept the connection: {seen}"
            seen.append(recv_monitor_message(monitor)["event"])
        sock.disable_monitor()
        monitor.close(linger=0)
    run_id = _good_run(store)
    growth = _peak_rss(collector.proc.pid) - before
    assert growth < 32 << 20, growth
    letters = store / "deadletter" / "deadletter.log"
    assert not letters.exists() or letters.stat().st_size < 1 << 20
    assert collector.proc.poll() is None
    assert query(store, "SELECT count(*) FROM metrics WHERE run_id = ?", run_id) == [(200,)]


@pytest.mark.slow
def test_serve_max_message_mb_raises_the_limit(store: Path) -> None:
    """`serve --max-message-mb 40` takes a 24 MiB batch that the default limit refuses."""
    body = encode_body([TEXT], [time.time_ns()], [0], [{"key": "k", "text": "z" * (24 << 20)}])
    src = secrets.token_hex(8)
    coll = CollectorProcess(store, "--max-message-mb", "40").start()
    try:
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(coll.address)
            sock.send_multipart([encode_header("wide", 0, src, 0, 1), body])
            assert sock.poll(60_000), "no ack"
            assert decode_ack_full(sock.recv()) == (src, 0, 1, ACK_STORED, 0)
        wait_for(store, "SELECT count(*) FROM events WHERE run_id = 'wide'", 1, 60)
    finally:
        assert coll.stop() == 0
    out = subprocess.run(
        [sys.executable, "-m", "traintape.cli", "serve", "--store", str(store)]
        + ["--max-message-mb", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "max-message-mb" in out.stderr


def test_dead_letters_keep_a_prefix_and_hash_and_rotate_under_a_cap(tmp_path: Path) -> None:
    """Each frame keeps 64 KiB, its length and sha256; the files stay under the cap."""
    dead = DeadLetters(tmp_path, cap_bytes=1 << 20)
    frames = [os.urandom(300_000), b"short"]
    for _ in range(40):
        dead.add(frames, "garbage")
    dead.close()
    folder = tmp_path / "deadletter"
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total <= 1 << 20
    assert sorted(p.name for p in folder.iterdir()) == ["deadletter.1.log", "deadletter.log"]
    letters = read_dead_letters(folder / "deadletter.log")
    assert 0 < len(letters) < 40 and dead.count == 40
    first = letters[0]
    assert first["frames"][0] == frames[0][: 64 << 10] and first["frames"][1] == b"short"
    assert first["sizes"] == [300_000, 5]
    assert first["sha256"][0] == hashlib.sha256(frames[0]).hexdigest()


def test_a_dead_letter_on_a_full_disk_never_raises(tmp_path: Path) -> None:
    """ENOSPC while keeping a dead letter is counted and said once; it does not raise."""
    (tmp_path / "deadletter").mkdir()
    (tmp_path / "deadletter" / "deadletter.log").symlink_to("/dev/full")
    dead = DeadLetters(tmp_path)
    for _ in range(3):
        dead.add([b"x" * 100], "garbage")
    assert dead.count == 3 and dead.write_errors == 3
    dead.close()


_MEMORY_SCRIPT = """
import os, sys, tempfile
from pathlib import Path
from traintape.emitter.emitter import Emitter

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024

store = tempfile.mkdtemp(dir=sys.argv[1])
em = Emitter("mem", store=store, address="ipc://" + store + "/nobody.sock", max_memory_mb=64)
values = {f"m{i}": 0.5 * i for i in range(10)}
em.log(values, step=0)
base = rss("VmRSS:")
for step in range(1, 1_500_001):
    em.log(values, step=step)
print(rss("VmHWM:") - base)
os._exit(0)
"""


@pytest.mark.slow
def test_the_emitter_memory_bound_holds_with_no_collector(tmp_path: Path) -> None:
    """With no collector, 1.5 M logged events (about 200 MiB packed) take at most the 64 MiB
    bound plus 25 % of the process's memory: the rest goes to the spool."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout.split()[-1])
    assert growth <= 80 << 20, f"grew {growth >> 20} MiB"
