"""A full disk stops acknowledgements, never the collector; once space returns nothing is lost."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from tests.conftest import CollectorProcess, query, wait_for
from traintape.collector.journal import Journal
from traintape.collector.server import Collector
from traintape.durable import free_bytes
from traintape.emitter.emitter import Emitter
from traintape.emitter.spool import SpoolFile
from traintape.schemas.wire import decode_header, encode_header

MIB = 1 << 20


def until(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Polls `condition` until it is true; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs of its own, unmounted afterwards (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(path: Path, leave: int) -> None:
    """Writes `path` until `leave` bytes or fewer are free on its disk (0: until ENOSPC)."""
    with open(path, "ab") as f:
        for chunk in (MIB, 64 << 10, 4096, 1):
            while free_bytes(path.parent) - chunk >= leave:
                try:
                    f.write(b"\0" * chunk)
                    f.flush()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break


def test_spool_keeps_its_free_space_floor(tmp_path: Path) -> None:
    """A spool write that would leave less than its floor free is refused whole (ENOSPC)."""

    class Batch:
        header = b"h" * 10
        body = b"b" * 100

    floor_mb = free_bytes(tmp_path) / MIB + 1
    spool = SpoolFile(tmp_path / "spool" / "x.spool", min_free_mb=floor_mb)
    with pytest.raises(OSError) as caught:
        spool.append([Batch()])
    assert caught.value.errno == errno.ENOSPC
    assert not spool.exists()
    SpoolFile(tmp_path / "spool" / "x.spool", min_free_mb=0).append([Batch()])


@pytest.mark.slow
def test_a_full_disk_withholds_acks_and_never_stops_the_collector(small_disk: Path) -> None:
    """Store and spool on a small tmpfs: under the floor and then completely full, nothing is
    acknowledged, the collector (and a restarted one) keeps serving, and once space returns every
    event is stored exactly once and finish reports nothing lost."""
    store = small_disk  # the collector's log goes beside it, off the full disk
    options = ("--min-free-mb", "8", "--system-interval", "0")
    collector = CollectorProcess(store, *options).start()
    second: CollectorProcess | None = None
    em = Emitter("disk", store=store, resend_after=0.2, spool_after=1.0, flush_interval=0.05)
    try:
        step = 0

        def log(n: int) -> int:
            nonlocal step
            for _ in range(n):
                em.log({"a": float(step), "b": -float(step)}, step=step)
                step += 1
            seq = em.send_now()
            assert seq is not None
            return seq

        seq = log(1000)
        until(lambda: em.acked_below() == seq, "the first events to be acknowledged")
        rows = f"SELECT count(*) FROM metrics WHERE run_id = '{em.run_id}'"
        wait_for(store, rows, 2000)

        # Under the floor: acks stop, the status says why.
        fill(store / "filler-1", leave=4 * MIB)
        log(1000)
        until(lambda: "under the floor" in collector.log.read_text(), "the floor's log line")
        status = store / "state" / "collector.json"
        until(lambda: "under the floor" in status.read_text(), "the status to say why")
        assert em.acked_below() == seq

        # Completely full: the status file cannot be written either.
        fill(store / "filler-2", leave=0)
        log(500)
        until(lambda: "cannot write the status file" in collector.log.read_text(), "its log line")
        assert collector.proc is not None and collector.proc.poll() is None
        assert em.acked_below() == seq

        # Restarted on the full disk, a collector serves again (without acknowledging).
        assert collector.stop(timeout=60) == 0
        second = CollectorProcess(store, *options).start(wait=False)
        until(lambda: collector.log.read_text().count("serving ") == 2, "the second collector")
        last = log(500)
        until(lambda: collector.log.read_text().count("under the floor") >= 2, "its floor line")
        assert second.proc is not None and second.proc.poll() is None
        assert em.acked_below() == seq

        # Space returns: everything is acknowledged and stored exactly once.
        (store / "filler-1").unlink()
        (store / "filler-2").unlink()
        until(lambda: em.acked_below() == last, "the withheld events to be acknowledged")
        report = em.finish(timeout=60)
        assert report.complete and report.lost == 0 and report.spooled == 0, report
        wait_for(store, rows, 2 * step)
        assert query(
            store,
            "SELECT count(*), count(DISTINCT (step, key)) FROM metrics WHERE run_id = ?",
            em.run_id,
        ) == [(2 * step, 2 * step)]
        until(lambda: '"acks_withheld": null' in status.read_text(), "the status to clear")
        assert second.stop(timeout=60) == 0
    finally:
        em.finish(timeout=1)
        collector.close()
        if second is not None:
            second.close()


@pytest.mark.slow
def test_dead_letters_on_a_full_disk_do_not_stop_the_collector(small_disk: Path) -> None:
    """Garbage frames arriving while the disk is full are logged, and the collector goes on to
    store what arrives once space returns."""
    store = small_disk
    collector = CollectorProcess(store, "--min-free-mb", "8", "--system-interval", "0").start()
    em = Emitter("disk", store=store, resend_after=0.2, flush_interval=0.05)
    try:
        fill(store / "filler", leave=0)
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(collector.address)
            for _ in range(3):
                sock.send_multipart([b"not a header", b"not a body"])
            until(lambda: "dead letter" in collector.log.read_text(), "the dead letter's log line")
        em.log({"a": 1.0}, step=0)
        seq = em.send_now()
        until(lambda: "under the floor" in collector.log.read_text(), "the floor's log line")
        assert collector.proc is not None and collector.proc.poll() is None
        (store / "filler").unlink()
        until(lambda: em.acked_below() == seq, "the event to be acknowledged")
        assert em.finish(timeout=30).complete
        assert collector.stop(timeout=60) == 0
    finally:
        em.finish(timeout=1)
        collector.close()


@pytest.mark.slow
def test_a_spool_write_the_disk_cannot_hold_leaves_no_torn_record(small_disk: Path) -> None:
    """A spool append that runs out of space midway is cut back whole: the file keeps exactly
    its earlier records, and a later append (once space returns) reads back in order."""

    class Batch:
        def __init__(self, seq0: int, size: int) -> None:
            self.header = encode_header("run", 0, "src", seq0, 1)
            self.body = b"x" * size

    spool = SpoolFile(small_disk / "spool" / "x.spool", min_free_mb=0)
    spool.append([Batch(0, 1000)])
    before = spool.path.stat().st_size
    fill(small_disk / "filler", leave=256 << 10)
    with pytest.raises(OSError) as caught:
        spool.append([Batch(1, 4 * MIB)], keep_floor=False)
    assert caught.value.errno == errno.ENOSPC
    assert spool.path.stat().st_size == before
    (small_disk / "filler").unlink()
    spool.append([Batch(2, 1000)])
    assert [decode_header(h).seq0 for _, h, _ in spool.read()] == [0, 2]


@pytest.mark.slow
def test_serve_on_a_full_disk_without_a_store_fails_with_a_clear_message(
    small_disk: Path,
) -> None:
    """A new store that cannot be set up on a full disk: exit 1 with one line, no traceback."""
    fill(small_disk / "filler", leave=0)
    done = subprocess.run(
        [sys.executable, "-m", "traintape.collector", "serve", "--store", str(small_disk / "new")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "traintape serve: cannot start on" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_failed_journal_write_does_not_reread_the_journal(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on an fsync rolls back only that group's dedup admissions: the journal is not read
    again on the ingest thread, and the resent batches are stored once."""
    real_sync = Journal.sync
    failures = {"left": 2}

    def full_sync(self: Journal) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_sync(self)

    collector = Collector(store, materialize_interval=0.1, system_interval=0, quiet=True)
    reads: list[int] = []
    real_read = collector.journal.read
    monkeypatch.setattr(
        collector.journal, "read", lambda *a, **k: reads.append(1) or real_read(*a, **k)
    )
    monkeypatch.setattr(Journal, "sync", full_sync)
    thread = threading.Thread(target=collector.serve, daemon=True)
    thread.start()
    try:
        em = Emitter("disk", store=store, resend_after=0.2)
        for step in range(500):
            em.log({"a": float(step)}, step=step)
        report = em.finish(timeout=30)
        assert report.complete, report
        assert failures["left"] == 0 and collector.stats["journal_errors"] == 2
        assert reads == []
        assert query(store, "SELECT count(DISTINCT step), count(*) FROM metrics") == [(500, 500)]
    finally:
        collector.stop()
        thread.join(30)
