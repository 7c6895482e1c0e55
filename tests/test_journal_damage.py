"""Journal damage: only a torn final record is ever cut; other damage is set aside loudly and
reading resumes at the next intact record; positions are never reused."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest

from traintape.collector.journal import DAMAGED_DIR, Journal, JournalFollower
from traintape.schemas.records import MAGIC, PREFIX_SIZE, frame_record, split_payload


def _journal(tmp_path: Path, n: int, log: list[str], size: int = 200) -> Journal:
    j = Journal(tmp_path / "j", log=log.append)
    for i in range(n):
        j.append(frame_record(f"h{i}".encode(), bytes([i % 251]) * size))
        j.sync()
    return j


def _headers(journal: Journal | JournalFollower, start: int = 0) -> list[bytes]:
    return [split_payload(p)[0] for _, _, p in journal.read(start)]


def _positions(journal: Journal) -> list[tuple[int, int]]:
    return [(pos, nxt) for pos, nxt, _ in journal.read(0)]


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _segment(tmp_path: Path) -> Path:
    return next((tmp_path / "j").glob("*.log"))


def test_a_flipped_byte_mid_segment_costs_only_its_record(tmp_path: Path) -> None:
    """One flipped byte in record 17 of 36: the other 35 read back, the damaged bytes are copied
    aside, the reopening says so loudly, and appends after the damage read back too."""
    log: list[str] = []
    j = _journal(tmp_path, 36, log)
    spans = _positions(j)
    j.close()
    _flip(_segment(tmp_path), spans[17][0] + PREFIX_SIZE + 50)

    reopened = Journal(tmp_path / "j", log=log.append)
    assert reopened.end == spans[-1][1]  # nothing cut
    reopened.append(frame_record(b"after", b"x"))
    reopened.sync()
    expected = [f"h{i}".encode() for i in range(36) if i != 17] + [b"after"]
    assert _headers(reopened) == expected
    kept = list((tmp_path / "j" / DAMAGED_DIR).iterdir())
    assert [p.name for p in kept] == [f"{spans[17][0]:020d}-{spans[17][1]:020d}.bin"]
    original = frame_record(b"h17", bytes([17]) * 200)
    assert kept[0].read_bytes() != original and len(kept[0].read_bytes()) == len(original)
    assert any("journal damage" in line and str(spans[17][0]) in line for line in log)


def test_a_damaged_final_record_is_set_aside_not_cut(tmp_path: Path) -> None:
    """The last 100 bytes corrupted while stopped: the final record is reported and copied aside,
    the journal keeps its end (a follower may have passed it), and new records read back."""
    log: list[str] = []
    j = _journal(tmp_path, 36, log)
    spans = _positions(j)
    j.close()
    seg = _segment(tmp_path)
    with open(seg, "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 100)

    reopened = Journal(tmp_path / "j", log=log.append)
    assert reopened.end == spans[-1][1]
    assert (tmp_path / "j" / DAMAGED_DIR / f"{spans[35][0]:020d}-{spans[35][1]:020d}.bin").exists()
    assert any("journal damage" in line for line in log)
    reopened.append(frame_record(b"new", b"x"))
    reopened.sync()
    assert _headers(reopened) == [f"h{i}".encode() for i in range(35)] + [b"new"]


def test_a_torn_final_record_is_cut_with_a_line_saying_so(tmp_path: Path) -> None:
    """A record a crash cut short (never fsync'd, never acknowledged) is cut off on reopen."""
    log: list[str] = []
    j = _journal(tmp_path, 3, log)
    end = j.end
    j.close()
    with open(_segment(tmp_path), "ab") as f:
        f.write(frame_record(b"torn", b"y" * 100)[:-30])
    reopened = Journal(tmp_path / "j", log=log.append)
    assert reopened.end == end
    assert not (tmp_path / "j" / DAMAGED_DIR).exists()
    assert any("torn" in line for line in log)


def test_a_corrupt_length_field_resynchronises_at_the_next_record(tmp_path: Path) -> None:
    """A length field flipped to a huge value is damage, not a torn tail: reading goes on."""
    log: list[str] = []
    j = _journal(tmp_path, 10, log)
    spans = _positions(j)
    j.close()
    _flip(_segment(tmp_path), spans[4][0] + len(MAGIC) + 3)  # the length's top byte
    reopened = Journal(tmp_path / "j", log=log.append)
    assert _headers(reopened) == [f"h{i}".encode() for i in range(10) if i != 4]


def test_a_marker_inside_a_payload_is_not_taken_for_a_record(tmp_path: Path) -> None:
    """After damage the reader resynchronises on a marker only where a checksum confirms it."""
    log: list[str] = []
    j = Journal(tmp_path / "j", log=log.append)
    fake = MAGIC + struct.pack("<II", 8, 12345) + b"12345678"
    j.append(frame_record(b"a", b"x" * 20 + fake + b"y" * 20))
    j.append(frame_record(b"b", b"z"))
    j.sync()
    j.close()
    _flip(_segment(tmp_path), 0)  # the first record's marker
    reopened = Journal(tmp_path / "j", log=log.append)
    assert _headers(reopened) == [b"b"]


def test_a_reader_moves_past_a_range_that_is_all_damage(tmp_path: Path) -> None:
    """A follower whose whole range is damage still moves on (no spin at one position)."""
    log: list[str] = []
    j = _journal(tmp_path, 3, log)
    end = j.end
    j.close()
    with open(_segment(tmp_path), "r+b") as f:
        f.write(b"\x00" * end)
    follower = JournalFollower(tmp_path / "j", end, log=log.append)
    reader = follower.read(0)
    assert list(reader) == []
    assert reader.position == end
    assert any("journal damage" in line for line in log)


def test_a_follower_cursor_past_the_end_is_never_reused(tmp_path: Path) -> None:
    """advance_to(cursor) starts a new segment at the cursor: a follower that passed those bytes
    never takes a later record for one it has seen, and reads cross the gap."""
    log: list[str] = []
    j = _journal(tmp_path, 3, log)
    old_end = j.end
    j.advance_to(old_end + 5000)
    j.append(frame_record(b"later", b"x"))
    j.sync()
    assert [pos for pos, _ in _positions(j)][-1] == old_end + 5000
    assert _headers(j) == [b"h0", b"h1", b"h2", b"later"]
    assert _headers(j, old_end + 5000) == [b"later"]
    j.close()
    assert _headers(Journal(tmp_path / "j")) == [b"h0", b"h1", b"h2", b"later"]
    assert any("past the journal's end" in line for line in log)


def test_a_journal_of_the_earlier_format_reads_and_appends_go_to_a_new_segment(
    tmp_path: Path,
) -> None:
    """Segments written before records carried a marker still read back; new records go to a
    segment of their own, so no file mixes the two framings."""
    folder = tmp_path / "j"
    folder.mkdir()
    legacy = b""
    for i in range(3):
        payload = struct.pack("<I", 2) + f"L{i}".encode() + b"body"
        legacy += struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    (folder / f"{0:020d}.log").write_bytes(legacy + b"\x01\x02")  # and a torn tail
    j = Journal(folder)
    assert j.end == len(legacy)
    j.append(frame_record(b"new", b"x"))
    j.sync()
    assert _headers(j) == [b"L0", b"L1", b"L2", b"new"]
    assert len(list(folder.glob("*.log"))) == 2


# -- end to end: a real collector on a damaged store ------------------------------------------


def _log_run(store: Path, run_id: str, steps: int) -> None:
    from traintape.emitter import Emitter

    run = Emitter("damage", run_id=run_id, store=store, batch_size=10)
    for step in range(steps):
        run.log({"a": float(step), "b": 1.0}, step=step)
    assert run.finish(timeout=30).complete


def _records_of(store: Path, run_id: str) -> list[tuple[int, int]]:
    from traintape.schemas.wire import decode_header

    follower = JournalFollower(store / "journal")
    return [
        (pos, nxt)
        for pos, nxt, payload in follower.read(0, follower.files_end())
        if decode_header(split_payload(payload)[0]).run_id == run_id
    ]


@pytest.mark.slow
def test_a_store_rebuilt_from_a_damaged_journal_keeps_every_intact_batch(store: Path) -> None:
    """A flipped byte mid-segment while the collector is stopped: rebuilt from the journal, the
    store holds every batch but the damaged one, says so loudly, and goes on storing new runs."""
    from tests.conftest import CollectorProcess, query, wait_for

    coll = CollectorProcess(store).start()
    try:
        _log_run(store, "before", 360)
        wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'before'", 720)
        assert coll.stop(timeout=30) == 0
        records = _records_of(store, "before")
        damaged = records[len(records) // 2]
        _flip(next((store / "journal").glob("*.log")), damaged[0] + PREFIX_SIZE + 20)
        # The tables are a projection of the journal: rebuild them from it.
        shutil.rmtree(store / "tables")
        (store / "state" / "materializer.json").unlink()

        coll.start()
        _log_run(store, "after", 50)
        wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'after'", 100)
        lost_steps = query(
            store,
            "SELECT 360 - count(DISTINCT step) FROM metrics WHERE run_id = 'before'",
        )[0][0]
        assert lost_steps == 10  # one batch of 10 events, no more
        assert wait_for(store, "SELECT count(*) FROM runs WHERE run_id = 'before'", 1)
        assert coll.stop(timeout=30) == 0
    finally:
        coll.close()
    log = coll.log.read_text()
    assert "journal damage" in log and str(damaged[0]) in log
    assert len(list((store / "journal" / DAMAGED_DIR).glob("*.bin"))) == 1


@pytest.mark.slow
def test_a_damaged_final_record_never_stalls_the_store(store: Path) -> None:
    """The last 100 bytes corrupted while stopped: the collector says so, new events are stored
    and materialized (no cursor past the end, no spinning child), and SIGTERM stops it."""
    from tests.conftest import CollectorProcess, wait_for

    coll = CollectorProcess(store).start()
    try:
        _log_run(store, "first", 100)
        wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'first'", 200)
        assert coll.stop(timeout=30) == 0
        with open(next((store / "journal").glob("*.log")), "r+b") as f:
            f.seek(-100, 2)
            f.write(b"\xee" * 100)
        coll.start()
        _log_run(store, "second", 100)
        wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'second'", 200)
        assert coll.stop(timeout=30) == 0
    finally:
        coll.close()
    assert "journal damage" in coll.log.read_text()


def test_a_segment_that_cannot_be_started_leaves_appends_in_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A roll that fails (no room for a new file) keeps appending to the current segment, and
    a later rollback still finds its file."""
    import traintape.collector.journal as journal_module

    log: list[str] = []
    j = Journal(tmp_path / "j", segment_bytes=100, log=log.append)

    def no_room(folder: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "fsync_dir", no_room)
    j.append(frame_record(b"a", b"x" * 200))
    j.sync()  # past segment_bytes: the roll fails
    assert any("cannot start segment" in line for line in log)
    j.append(frame_record(b"b", b"y"))
    j.rollback()
    monkeypatch.undo()
    j.append(frame_record(b"c", b"z"))
    j.sync()
    assert _headers(j) == [b"a", b"c"]
    assert len(list((tmp_path / "j").glob("*.log"))) == 2  # rolled once the disk allowed
