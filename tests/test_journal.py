"""The journal: durable appends, torn tails cut on reopen, reads across segments."""

from __future__ import annotations

from pathlib import Path

from traintape.collector.journal import Journal
from traintape.schemas.records import frame_record, split_payload


def _payloads(journal: Journal, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [split_payload(p) for _, _, p in journal.read(start)]


def test_records_read_back_in_order_across_segments(tmp_path: Path) -> None:
    """Records appended over several segment rolls read back in order, from any position."""
    j = Journal(tmp_path / "j", segment_bytes=200)
    for i in range(30):
        j.append(frame_record(f"h{i}".encode(), b"x" * i))
        j.sync()
    assert len(list((tmp_path / "j").glob("*.log"))) > 3
    got = _payloads(j)
    assert got == [(f"h{i}".encode(), b"x" * i) for i in range(30)]
    positions = [pos for pos, _, _ in j.read(0)]
    assert _payloads(j, positions[17])[0] == (b"h17", b"x" * 17)
    j.close()
    again = Journal(tmp_path / "j", segment_bytes=200)
    assert _payloads(again) == got and again.end == j.end


def test_torn_tail_is_cut_on_reopen(tmp_path: Path) -> None:
    """A record half-written by a crash is dropped; appends after it read back."""
    j = Journal(tmp_path / "j")
    j.append(frame_record(b"a", b"1"))
    j.sync()
    j.close()
    seg = next((tmp_path / "j").glob("*.log"))
    with open(seg, "ab") as f:
        f.write(frame_record(b"b", b"2")[:-1])  # torn
    j = Journal(tmp_path / "j")
    j.append(frame_record(b"c", b"3"))
    j.sync()
    assert _payloads(j) == [(b"a", b"1"), (b"c", b"3")]


def test_readers_see_only_synced_records(tmp_path: Path) -> None:
    """Until sync(), a record is not durable and readers do not see it."""
    j = Journal(tmp_path / "j")
    j.append(frame_record(b"a", b"1"))
    assert _payloads(j) == []
    j.sync()
    assert _payloads(j) == [(b"a", b"1")]


def test_rollback_drops_unsynced_appends(tmp_path: Path) -> None:
    """After a failed write, rollback cuts the journal back to its durable end."""
    j = Journal(tmp_path / "j")
    j.append(frame_record(b"a", b"1"))
    j.sync()
    j.append(frame_record(b"b", b"2"))
    j.rollback()
    j.append(frame_record(b"c", b"3"))
    j.sync()
    assert _payloads(j) == [(b"a", b"1"), (b"c", b"3")]
