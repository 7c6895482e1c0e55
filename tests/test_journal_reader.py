"""The journal's one reader (`JournalReader.batches`) and its one policy for a record that is
intact but does not decode, as the collector's start, the sink runners and `traintape sync` meet
it; and the collector's messages going through `logging`."""

from __future__ import annotations

import logging
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from traintape.collector.deadletter import DeadLetters
from traintape.collector.diskfloor import DiskFloor
from traintape.collector.journal import Journal
from traintape.schemas.events import METRICS, RUN_START
from traintape.schemas.records import MAGIC, frame_record
from traintape.schemas.wire import encode_body, encode_header
from traintape.sinks import Event, RunInfo, Sink, SinkConfig
from traintape.sinks.runner import JournalTail, SinkRunner
from traintape.sinks.sync import sync_run

RUN = "reader-run"


def _good(seq0: int, steps: list[int], with_start: bool = False) -> bytes:
    kinds = [METRICS] * len(steps)
    bodies: list[Any] = [{"x": float(s)} for s in steps]
    step_col: list[int | None] = list(steps)
    if with_start:
        kinds = [RUN_START, *kinds]
        bodies = [{"project": "p", "name": "n", "world_size": 1, "config": {}}, *bodies]
        step_col = [None, *step_col]
    now = time.time_ns()
    header = encode_header(RUN, 0, "src", seq0, len(kinds))
    return frame_record(header, encode_body(kinds, [now] * len(kinds), step_col, bodies))


def _short_payload() -> bytes:
    """An intact record (its CRC matches) whose payload is too short to hold a header length."""
    payload = b"\x01\x02"
    length = struct.pack("<I", len(payload))
    return MAGIC + length + struct.pack("<I", zlib.crc32(payload, zlib.crc32(length))) + payload


def _bad_records() -> list[bytes]:
    """Intact records that do not decode: a garbage header, a payload too short for one, and a
    good header whose body is garbage."""
    return [
        frame_record(b"\xc1 not msgpack", b""),
        _short_payload(),
        frame_record(encode_header(RUN, 0, "src", 1000, 1), b"\xc1 not a body"),
    ]


def _journal(folder: Path) -> Journal:
    """A run of 30 steps with the records of `_bad_records` between its batches."""
    journal = Journal(folder)
    journal.append(_good(0, list(range(10)), with_start=True))
    for bad in _bad_records():
        journal.append(bad)
    journal.append(_good(11, list(range(10, 30))))
    journal.sync()
    return journal


def test_batches_hand_back_what_does_not_decode_with_why_and_read_on(tmp_path: Path) -> None:
    """Every record comes out as a Batch in order; one that does not decode carries its error
    (no header when the header is what failed) and reading goes on past it."""
    journal = _journal(tmp_path / "journal")
    batches = list(journal.read(0).batches())
    assert [b.error is None for b in batches] == [True, False, False, False, True]
    assert [b.header is None for b in batches] == [False, True, True, False, False]
    assert batches[0].body is not None and batches[0].body.steps[1:] == list(range(10))
    assert batches[-1].events == 20 and batches[1].events == 0
    assert [b.position for b in batches[1:]] == [b.next_position for b in batches[:-1]]
    headers_only = list(journal.read(0).batches(want_body=False))
    assert all(b.body is None for b in headers_only)
    assert [b.error is None for b in headers_only] == [True, False, False, True, True]


def test_a_collector_starts_on_a_journal_holding_records_that_do_not_decode(
    tmp_path: Path,
) -> None:
    """The collector rebuilds its duplicate filter from the journal at start: a record that
    does not decode is passed over (it has no sequence numbers to keep) instead of stopping
    the collector from starting."""
    from traintape.collector.server import Collector

    store = tmp_path / "store"
    _journal(store / "journal").close()
    collector = Collector(store, system_interval=0, quiet=True)
    try:
        assert collector.dedup.admit((RUN, 0, "src"), 0, 31) == []  # all seen: 0-10, 11-30
    finally:
        collector._shutdown()


class Recorder(Sink):
    """Keeps the metric steps it is given."""

    type = "recorder"
    steps: list[int] = []

    def open_run(self, run: RunInfo) -> None:
        pass

    def write(self, run: RunInfo, events: list[Event]) -> None:
        Recorder.steps.extend(e.step for e in events if e.kind == METRICS and e.step is not None)


def test_sinks_and_sync_pass_over_records_that_do_not_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink runner counts each record that does not decode as skipped, says so, and delivers
    every value around them; `traintape sync` replays the same values."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    journal = _journal(tmp_path / "journal")
    config = SinkConfig("rec", f"{__name__}:Recorder", {}, {"interval": 0.01, "ranks": "all"})
    Recorder.steps = []
    logs: list[str] = []
    runner = SinkRunner(config, tmp_path, journal, JournalTail(journal), logs.append)
    runner.start()
    deadline = time.monotonic() + 30
    while runner.position < journal.durable_end:
        assert time.monotonic() < deadline, runner.status()
        time.sleep(0.01)
    runner.stop(1.0)
    assert sorted(Recorder.steps) == list(range(30))
    assert runner.skipped_records == 3
    assert sum("skipping journal record" in line for line in logs) == 3

    Recorder.steps = []
    result = sync_run(tmp_path, RUN, config)
    assert sorted(Recorder.steps) == list(range(30)) and result.events == 31


def test_collector_messages_go_through_logging_so_a_program_can_route_or_silence_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the collector's parts have to say in-process is a `logging` record under
    `traintape.collector.*` (none printed on stderr), so a program can route it or silence it."""
    with caplog.at_level(logging.INFO, logger="traintape.collector"):
        floor = DiskFloor(tmp_path, min_free_bytes=1 << 62)  # more than any disk has
        assert not floor.allows(1)
        dead = DeadLetters(tmp_path)
        dead.add([b"garbage"], "not a batch")
        dead.close()
    names = {r.name for r in caplog.records}
    assert names == {"traintape.collector.diskfloor", "traintape.collector.deadletter"}
    assert any("under the floor" in r.getMessage() for r in caplog.records)
    assert capsys.readouterr().err == ""

    caplog.clear()
    logging.getLogger("traintape.collector").setLevel(logging.CRITICAL)
    try:
        assert not DiskFloor(tmp_path, min_free_bytes=1 << 62).allows(1)
    finally:
        logging.getLogger("traintape.collector").setLevel(logging.NOTSET)
    assert caplog.records == [] and capsys.readouterr().err == ""


@pytest.mark.slow
def test_serve_shows_its_messages_on_stderr_as_before(collector: Any) -> None:
    """`traintape serve` configures the stderr handler: its lines read `traintape collector:
    ...` as they always have."""
    assert collector.stop() == 0
    log = collector.log.read_text()
    assert "traintape collector: serving " in log
    assert "traintape collector: stopped: " in log
