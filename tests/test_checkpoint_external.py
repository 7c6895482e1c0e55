"""`Emitter.record_checkpoint`: checkpoint files and folders other code wrote, recorded as the
writer's checkpoint events (traintape/emitter/checkpointing/external.py), read back through the
views and `list_checkpoints` of a real collector's store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.conftest import CollectorProcess, query
from traintape import emitter
from traintape.checkpoint import list_checkpoints
from traintape.emitter.checkpointing import external
from traintape.errors import RunFinishedError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_the_recorded_bytes_are_hashed_even_when_the_file_is_replaced_at_once(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """The file is opened by record_checkpoint itself: removing it and writing another under its
    name right after (as ModelCheckpoint may) changes nothing in what is recorded."""
    path = tmp_path / "last.ckpt"
    first = os.urandom(3 << 20)
    path.write_bytes(first)
    run = emitter.init(project="t", store=store)
    handle = run.record_checkpoint(path, 5, {"val_loss": 0.5}, monitor="val_loss")
    path.unlink()
    path.write_bytes(b"another checkpoint")
    info = handle.result(timeout=30)
    assert (info.path, info.step, info.bytes, info.sha256) == (path, 5, len(first), _sha(first))
    emitter.finish()
    rows = query(store, "SELECT action, step, bytes, sha256, monitor FROM checkpoints")
    assert rows == [("saved", 5, len(first), _sha(first), "val_loss")]


@pytest.mark.slow
def test_removed_files_are_recorded_as_deleted(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """A recorded file that is gone by the next record, or by the end of the run, gets a
    `deleted` event (reason "removed"); list_checkpoints lists only the live ones, and is_best
    follows the monitored metric when the caller does not say."""
    a, b, c = (tmp_path / f"{n}.ckpt" for n in "abc")
    for i, p in enumerate((a, b, c)):
        p.write_bytes(bytes([i]) * 100)
    run = emitter.init(project="t", store=store)
    run.record_checkpoint(a, 1, {"acc": 0.5}, monitor="acc", mode="max").result(30)
    a.unlink()
    run.record_checkpoint(b, 2, {"acc": 0.7}, monitor="acc", mode="max").result(30)
    info = run.record_checkpoint(c, 3, {"acc": 0.6}, monitor="acc", mode="max").result(30)
    assert not info.is_best  # 0.7 (b) is the best live value
    c.unlink()
    emitter.finish()
    events = query(
        store,
        "SELECT action, step, path, reason, best_when_saved FROM checkpoints ORDER BY seq",
    )
    assert events == [
        ("saved", 1, str(a), None, True),
        ("deleted", 1, str(a), "removed", None),
        ("saved", 2, str(b), None, True),
        ("saved", 3, str(c), None, False),
        ("deleted", 3, str(c), "removed", None),
    ]
    (live,) = list_checkpoints(store, run.run_id)
    assert (live.path, live.step, live.metrics, live.best) == (b, 2, {"acc": 0.7}, True)


@pytest.mark.slow
def test_a_folder_is_one_checkpoint_of_all_its_files(
    store: Path, collector: CollectorProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder's bytes are its files' sum, its sha256 that of the sorted listing of
    `name\\0bytes\\0sha256` lines, and its event lists every file, nested ones too (also
    those past the files opened on the caller's thread)."""
    monkeypatch.setattr(external, "OPEN_AT_MOST", 2)
    folder = tmp_path / "checkpoint-7"
    (folder / "sub").mkdir(parents=True)
    files = {"model.bin": b"weights" * 100, "state.json": b"{}", "sub/rng.pth": b"rng"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    run = emitter.init(project="t", store=store)
    info = run.record_checkpoint(folder, 7, origin="test").result(30)
    listing = "".join(f"{n}\0{len(d)}\0{_sha(d)}\n" for n, d in sorted(files.items()))
    assert (info.bytes, info.sha256) == (sum(map(len, files.values())), _sha(listing.encode()))
    emitter.finish()
    body = json.loads(query(store, "SELECT body FROM events WHERE kind = 'checkpoint'")[0][0])
    assert body["files"] == [
        {"name": n, "bytes": len(d), "sha256": _sha(d)} for n, d in sorted(files.items())
    ]
    assert body["origin"] == "test"


@pytest.mark.slow
def test_finish_waits_for_the_hash_and_refuses_records_after(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """finish() right after a record delivers its event before the run's end; a record after
    finish, of a missing path, or with an unknown mode raises and records nothing."""
    path = tmp_path / "big.ckpt"
    path.write_bytes(os.urandom(32 << 20))
    run = emitter.init(project="t", store=store)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run.record_checkpoint(tmp_path / "missing.ckpt", 1)
    with pytest.raises(ValueError, match="mode"):
        run.record_checkpoint(path, 1, mode="best")
    run.record_checkpoint(path, 1)
    emitter.finish()
    with pytest.raises(RunFinishedError):
        run.record_checkpoint(path, 2)
    kinds = query(
        store,
        "SELECT kind, step FROM events WHERE kind IN ('run_start', 'checkpoint', 'run_end') "
        "ORDER BY seq",
    )
    assert kinds == [("run_start", None), ("checkpoint", 1), ("run_end", None)]
