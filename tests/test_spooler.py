"""The Spooler (traintape.emitter.spooler): batches go to the spool file and come back from it,
through a real Transport (no collector behind it) and a real spool file."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from traintape.emitter import spooler as spooler_module
from traintape.emitter.spool import SpoolFile
from traintape.emitter.spooler import Spooler
from traintape.emitter.transport import Batch, Transport
from traintape.schemas.events import METRICS
from traintape.schemas.wire import encode_body, encode_header

SIZES = (5, 5, 5)
"""Events per batch sent: seq0s 0, 5 and 10."""


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[Transport]:
    """A transport whose collector never answers, holding three sent batches."""
    spool = SpoolFile(tmp_path / "spool" / "run.0.src.spool", min_free_mb=0)
    link = Transport("ipc://" + str(tmp_path / "nobody.sock"), "src", spool)
    seq0 = 0
    for n in SIZES:
        body = encode_body([METRICS] * n, [1] * n, list(range(n)), [{"x": 1.0}] * n)
        link.send(seq0, n, encode_header("run", 0, "src", seq0, n), body)
        seq0 += n
    yield link
    link.close()


def _unwritable(tmp_path: Path) -> SpoolFile:
    """A spool whose folder is a plain file: every write fails (even as root)."""
    (tmp_path / "a-file").write_text("")
    return SpoolFile(tmp_path / "a-file" / "run.0.src.spool", min_free_mb=0)


def test_spooled_batches_are_written_in_pieces_and_read_back_in_order(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each piece is appended on its own; the records come back with their seq0, and the spool
    stays while they are unacknowledged."""
    monkeypatch.setattr(spooler_module, "SPOOL_PIECE_BYTES", 1)  # one batch per piece
    spooler = Spooler(transport, threading.Lock(), pytest.fail)
    taken = transport.take_for_spool(force=True)
    spooler.append(taken)
    assert transport.spooling_bytes == 0 and transport.spooled_unacked == sum(SIZES)
    records = spooler.read(0, 64)
    assert [seq0 for *_, seq0 in records] == [0, 5, 10]
    assert [(h, b) for _, h, b, _ in records] == [(b.header, b.body) for b in taken]
    assert spooler.read(records[0][0], 1)[0][3] == 5  # from an offset: the next record
    spooler.tidy()
    assert spooler.spool.exists()  # nothing acknowledged yet: the spool stays


def test_a_failed_spool_write_gives_the_batches_back_and_says_so(
    tmp_path: Path, transport: Transport
) -> None:
    """A spool that cannot be written keeps every batch in memory, unacknowledged, and the
    keeper's warning names the spool."""
    said: list[str] = []
    transport.spool = _unwritable(tmp_path)
    spooler = Spooler(transport, threading.Lock(), said.append)
    spooler.append(transport.take_for_spool(force=True))
    assert transport.unacked_events == sum(SIZES) and transport.spooled_unacked == 0
    assert transport.spooling_bytes == 0
    assert len(said) == 1 and "cannot write the spool" in said[0]


def test_what_finish_cannot_spool_is_counted_lost_loudly(
    tmp_path: Path, transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    """finish()'s last spool write failing leaves the batches unacknowledged in memory (counted
    as lost in its report) and logs how many events were lost."""
    transport.spool = _unwritable(tmp_path)
    spooler = Spooler(transport, threading.Lock(), pytest.fail)
    batches: list[Batch] = transport.take_for_spool(force=True)
    with caplog.at_level(logging.WARNING, logger="traintape"):
        spooler.append_all(batches, "run")
    assert transport.unacked_events == sum(SIZES)
    assert any(f"LOST {sum(SIZES)} events of run run" in r.message for r in caplog.records)


def test_each_collector_has_its_own_spool_and_gc_sees_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An emitter's spool is the one of the collector $TRAINTAPE_COLLECTOR_ID names (the one
    its default address reaches), in the collector's home or under $TRAINTAPE_SPOOL_DIR, and
    `StoreLayout.spools()` lists every collector's (what `traintape gc` checks)."""
    from traintape.layout import StoreLayout
    from traintape.paths import spool_dir

    store = tmp_path / "store"
    monkeypatch.delenv("TRAINTAPE_SPOOL_DIR", raising=False)
    monkeypatch.delenv("TRAINTAPE_COLLECTOR_ID", raising=False)
    assert spool_dir(store) == store / "spool"  # the store's own collector: as before
    monkeypatch.setenv("TRAINTAPE_COLLECTOR_ID", "node-b")
    assert spool_dir(store) == store / "collectors" / "node-b" / "spool"
    assert spool_dir(store, "node-a") == store / "collectors" / "node-a" / "spool"
    for folder in (spool_dir(store), store / "spool"):
        folder.mkdir(parents=True)
    (store / "collectors" / "node-a").mkdir()  # a collector that never spooled
    assert StoreLayout(store).spools() == [store / "spool", spool_dir(store)]
    apart = tmp_path / "local-spool"
    monkeypatch.setenv("TRAINTAPE_SPOOL_DIR", str(apart))
    assert spool_dir(store) == apart / "collectors" / "node-b"
    spool_dir(store).mkdir(parents=True)
    # The store's own collector's spool is the folder itself, theirs are below it.
    assert StoreLayout(store).spools() == [apart, spool_dir(store)]
