"""Checkpoints in one process: snapshot, round trip, retention, load, listing, ranks, failures.

Every test writes real files with torch.save, reads them back with torch.load, and checks the
records a real collector process stored.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import REPO, env_without_traintape, query, wait_for
from traintape import CheckpointPolicy, emitter, load_checkpoint
from traintape.checkpoint import (
    CheckpointError,
    CheckpointFallbackWarning,
    CheckpointNotFoundError,
    CheckpointVerifyError,
    list_checkpoints,
    select_for_deletion,
)
from traintape.cli import main as cli_main

Point = collections.namedtuple("Point", "x y")

pytestmark = pytest.mark.share_collector  # each test reads back only its own runs


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _saved_events(store: Path, run_id: str, expected: int) -> None:
    wait_for(
        store,
        f"SELECT count(*) FROM checkpoints WHERE run_id = '{run_id}' AND action = 'saved'",
        expected,
    )


@pytest.mark.slow
def test_import_traintape_imports_no_torch() -> None:
    """`import traintape` (with CheckpointPolicy and load_checkpoint) leaves torch unimported."""
    code = (
        "import sys, traintape; from traintape import CheckpointPolicy, load_checkpoint; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env_without_traintape())


def test_policy_rejects_nonsense() -> None:
    """A policy that cannot work raises at construction, naming the field."""
    for bad in (
        {"keep_last": 0},
        {"keep_best": -1, "monitor": "x"},
        {"keep_best": 2},
        {"mode": "lowest"},
        {"ranks": "some"},
        {"snapshots": 0},
        {"filename": "{step"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
            CheckpointPolicy(**bad)


def test_select_for_deletion_keeps_newest_and_best() -> None:
    """Retention keeps the N newest, the K best (earlier on ties), and always newest and best."""
    values = [5.0, 3.0, None, 1.0, 6.0, 1.0, 8.0]
    assert select_for_deletion(values, None, 1, "min") == []
    assert select_for_deletion(values, 2, 1, "min") == [0, 1, 2, 4]
    assert select_for_deletion(values, 2, 2, "min") == [0, 1, 2, 4]  # 1.0 twice: 3 and 5
    assert select_for_deletion(values, 1, 3, "min") == [0, 2, 4]
    assert select_for_deletion(values, 1, 0, "max") == [0, 1, 2, 3, 4, 5]  # 8.0 is newest, best
    assert select_for_deletion([None, None, None], 1, 1, "min") == [0, 1]


def test_round_trip_of_a_nested_state(store: Path, collector: Any) -> None:
    """Any nesting of dicts, lists, tuples, tensors and plain values comes back as it was, with
    size and sha256 in the handle matching the file and the store's record."""
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    model[1].weight = model[0].weight = torch.nn.Parameter(torch.randn(10, 4))  # tied
    sd = model.state_dict()
    opt = torch.optim.Adam(model.parameters())
    model(torch.tensor([1, 2])).sum().backward()
    opt.step()
    state = {
        "model": sd,
        "optim": opt.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "py": random.getstate(),
            "np": np.random.get_state(),
        },
        "point": Point(torch.ones(2), 3),
        "pair": (torch.zeros(3, dtype=torch.int64), "text", None),
        "history": [1, 2.5, [torch.arange(4).reshape(2, 2).t()]],
        "param": torch.nn.Parameter(torch.ones(2)),
        "array": np.arange(6).reshape(2, 3),
        "step": 7,
        "dtype": torch.bfloat16,
    }
    run = emitter.init("ckpt", store=store)
    handle = emitter.save_checkpoint(state, step=7, metrics={"val_loss": torch.tensor(0.5)})
    info = handle.result(timeout=30)
    assert handle.done() and handle.error is None
    assert info.path == store.resolve() / "checkpoints" / run.run_id / "step-00000007.pt"
    assert info.bytes == info.path.stat().st_size
    assert info.sha256 == _sha256(info.path)
    assert (info.step, info.metrics, info.rank) == (7, {"val_loss": 0.5}, 0)
    assert info.blocked_s >= 0 and info.write_s > 0 and info.is_best is False  # no monitor

    loaded = torch.load(info.path, weights_only=False)
    assert type(loaded["model"]) is collections.OrderedDict
    assert loaded["model"]._metadata == sd._metadata
    for key, value in sd.items():
        assert torch.equal(loaded["model"][key], value)
    w0, w1 = loaded["model"]["0.weight"], loaded["model"]["1.weight"]
    assert w0.untyped_storage().data_ptr() == w1.untyped_storage().data_ptr()  # still tied
    for key, value in state["optim"]["state"][0].items():
        assert torch.equal(loaded["optim"]["state"][0][key], value)
    assert loaded["optim"]["param_groups"] == state["optim"]["param_groups"]
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert loaded["rng"]["py"] == state["rng"]["py"]
    assert np.array_equal(loaded["rng"]["np"][1], state["rng"]["np"][1])
    assert type(loaded["point"]) is Point and loaded["point"].y == 3
    assert loaded["pair"][1:] == ("text", None) and torch.equal(loaded["pair"][0], state["pair"][0])
    assert loaded["history"][:2] == [1, 2.5]
    assert torch.equal(loaded["history"][2][0], state["history"][2][0])
    assert isinstance(loaded["param"], torch.nn.Parameter)
    assert np.array_equal(loaded["array"], state["array"])
    assert (loaded["step"], loaded["dtype"]) == (7, torch.bfloat16)

    emitter.finish()
    _saved_events(store, run.run_id, 1)
    row = query(
        store,
        "SELECT step, path, bytes, sha256, metrics, is_best, blocked_s, write_s FROM checkpoints "
        "WHERE run_id = ?",
        run.run_id,
    )[0]
    assert row[:4] == (7, str(info.path), info.bytes, info.sha256)
    assert json.loads(row[4]) == {"val_loss": 0.5}
    assert row[5] is False and row[6] >= 0 and row[7] > 0


def test_the_file_holds_the_state_at_the_moment_of_the_call(store: Path, collector: Any) -> None:
    """Parameters, optimizer state and plain containers changed right after save_checkpoint
    returns do not reach the file: it holds the values from the moment of the call."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 512))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 512)).sum().backward()
    opt.step()
    emitter.init("ckpt", store=store)
    handles, expected = [], []
    for step in range(4):
        state = {"model": model.state_dict(), "optim": opt.state_dict(), "log": [step]}
        expected.append(
            (
                {k: v.clone() for k, v in model.state_dict().items()},
                opt.state_dict()["state"][0]["momentum_buffer"].clone(),
            )
        )
        handles.append(emitter.save_checkpoint(state, step=step))
        with torch.no_grad():  # at once, while the write is (most likely) still under way
            for p in model.parameters():
                p.mul_(-2.0).add_(1.0)
        model(torch.randn(8, 512)).sum().backward()
        opt.step()
        state["log"].append("changed later")
        state["model"]["extra"] = torch.ones(1)
    for handle, (params, momentum) in zip(handles, expected):
        loaded = torch.load(handle.result(timeout=30).path, weights_only=False)
        assert loaded["log"] == [handle.step]
        assert set(loaded["model"]) == set(params)
        for key, value in params.items():
            assert torch.equal(loaded["model"][key], value), key
        assert torch.equal(loaded["optim"]["state"][0]["momentum_buffer"], momentum)


def test_buffers_are_reused_and_snapshots_in_flight_are_bounded(
    store: Path, collector: Any
) -> None:
    """Saves in a tight loop all land, each with its own values, while the CPU buffers are
    reused from save to save and never more than `snapshots` copies of the state exist."""
    weights = {f"w{i}": torch.zeros(256, 1024) for i in range(4)}  # 4 MB
    run = emitter.init("ckpt", store=store, checkpoint=CheckpointPolicy(snapshots=2))
    handles = []
    for step in range(8):
        for w in weights.values():
            w.fill_(step)
        handles.append(emitter.save_checkpoint({"w": weights, "step": step}, step=step))
    writer = run._helpers.writer
    assert writer is not None
    emitter.finish()
    for h in handles:
        loaded = torch.load(h.result().path)
        assert loaded["step"] == h.step
        assert all(bool((w == h.step).all()) for w in loaded["w"].values())
    slots = []
    while not writer._free.empty():
        slots.append(writer._free.get())
    assert len(slots) == 2
    first = {id(entry[1]) for slot in slots for entry in slot.buffers.values()}
    assert len(first) == 8  # 4 tensors x 2 slots, allocated once


@pytest.mark.parametrize("mode", ["min", "max"])
def test_retention_keeps_exactly_the_last_n_and_the_best_k(
    store: Path, collector: Any, mode: str
) -> None:
    """With keep_last=2 and keep_best=2 the folder ends with the 2 newest and the 2 best files;
    each deletion is an event, and the store lists exactly the files left."""
    values = [5.0, 3.0, 4.0, 1.0, 6.0, 7.0, 2.0, 8.0, 9.0, 0.5 if mode == "max" else 10.0]
    policy = CheckpointPolicy(keep_last=2, keep_best=2, monitor="val", mode=mode)
    run = emitter.init("ckpt", store=store, checkpoint=policy)
    for step, value in enumerate(values):
        emitter.save_checkpoint({"step": step}, step=step, metrics={"val": value})
    emitter.finish()
    ranked = sorted(range(len(values)), key=lambda i: values[i], reverse=mode == "max")
    kept = sorted({8, 9, *ranked[:2]})
    folder = store.resolve() / "checkpoints" / run.run_id
    assert _files(folder) == [f"step-{s:08d}.pt" for s in kept]
    wait_for(
        store,
        "SELECT count(*) FROM checkpoints WHERE action = 'deleted' AND reason = 'retention' "
        f"AND run_id = '{run.run_id}'",
        len(values) - len(kept),
    )
    records = list_checkpoints(store, run.run_id)
    assert [r.step for r in records] == kept
    assert [r.step for r in records if r.best] == [ranked[0]]
    assert [r.step for r in records if r.latest] == [9]
    assert load_checkpoint("best", store=store)["step"] == ranked[0]
    assert load_checkpoint("latest", store=store, run=run.name)["step"] == 9


def test_retention_counts_the_files_of_an_earlier_attempt(store: Path, collector: Any) -> None:
    """A resumed run (same run id) keeps ranking the files its first attempt wrote, by their
    metrics: the best of attempt 1 survives attempt 2's saves, the rest go."""
    policy = CheckpointPolicy(keep_last=1, monitor="val")
    run = emitter.init("ckpt", store=store, checkpoint=policy)
    for step, value in enumerate([3.0, 1.0, 2.0]):
        emitter.save_checkpoint({"step": step}, step=step, metrics={"val": value})
    emitter.finish()
    emitter.init("ckpt", run_id=run.run_id, store=store, checkpoint=policy)
    for step, value in [(3, 4.0), (4, 5.0)]:
        emitter.save_checkpoint({"step": step}, step=step, metrics={"val": value})
    emitter.finish()
    folder = store.resolve() / "checkpoints" / run.run_id
    assert _files(folder) == ["step-00000001.pt", "step-00000004.pt"]


def test_the_same_name_twice_never_overwrites(store: Path, collector: Any) -> None:
    """A second save at the same step gets `-v1`: a path in the store always means one content."""
    run = emitter.init("ckpt", store=store)
    a = emitter.save_checkpoint({"v": 1}, step=5).result()
    b = emitter.save_checkpoint({"v": 2}, step=5).result()
    assert (a.path.name, b.path.name) == ("step-00000005.pt", "step-00000005-v1.pt")
    assert torch.load(a.path)["v"] == 1 and torch.load(b.path)["v"] == 2
    emitter.finish()
    _saved_events(store, run.run_id, 2)


def test_leftover_temporary_files_are_removed_but_live_writes_are_not(
    store: Path, collector: Any, tmp_path: Path
) -> None:
    """The first save removes temporary files of crashed writes (recorded as events) and leaves
    the one a live writer still holds locked."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    crashed = folder / ".step-00000003.pt.0123abcd.tmp"
    crashed.write_bytes(b"half a checkpoint")
    alive = folder / ".step-00000004.pt.89abcdef.tmp"
    alive.write_bytes(b"being written")
    other = folder / "notes.tmp"
    other.write_text("not ours")
    with open(alive, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        run = emitter.init("ckpt", store=store, checkpoint=CheckpointPolicy(dir=folder))
        emitter.save_checkpoint({"x": 1}, step=5).result(timeout=30)
        emitter.finish()
    assert not crashed.exists()
    assert alive.exists() and other.exists()
    wait_for(
        store,
        "SELECT string_agg(path, ',') FROM checkpoints WHERE reason = 'leftover' "
        f"AND run_id = '{run.run_id}'",
        str(crashed),
    )


@pytest.mark.share_collector(False)  # it stops and restarts its collector
def test_a_deletion_waits_until_the_collector_has_recorded_it(store: Path, collector: Any) -> None:
    """With the collector down, retention leaves the old file in place (the store could not
    learn it is gone); once the collector is back, the deletion is recorded, then done."""
    run = emitter.init("ckpt", store=store, checkpoint=CheckpointPolicy(keep_last=1))
    emitter.save_checkpoint({"step": 0}, step=0).result(timeout=30)
    _saved_events(store, run.run_id, 1)
    folder = store.resolve() / "checkpoints" / run.run_id
    collector.stop()
    emitter.save_checkpoint({"step": 1}, step=1).result(timeout=30)
    for _ in range(10):  # the writer keeps asking for the acknowledgement meanwhile
        assert (folder / "step-00000000.pt").exists()
        emitter.log({"loss": 1.0})
        time.sleep(0.1)
    collector.start()
    emitter.finish(timeout=30)
    assert _files(folder) == ["step-00000001.pt"]
    wait_for(store, "SELECT count(*) FROM checkpoints WHERE action = 'deleted'", 1)


def test_load_checkpoint_verifies_and_falls_back(store: Path, collector: Any) -> None:
    """A changed byte or a missing file raises a clear error; fallback=True loads the newest
    checkpoint that verifies and says which; runs are found by id, prefix or name."""
    run = emitter.init("ckpt", name="verify-me", store=store)
    paths = [
        emitter.save_checkpoint({"step": s, "w": torch.full((64,), float(s))}, step=s).result().path
        for s in range(3)
    ]
    emitter.finish()
    _saved_events(store, run.run_id, 3)
    for run_ref in (run.run_id, run.run_id[:5], "verify-me", None):
        assert load_checkpoint("latest", store=store, run=run_ref)["step"] == 2
    assert load_checkpoint(paths[1], store=store)["step"] == 1
    with pytest.raises(CheckpointNotFoundError, match="no run"):
        load_checkpoint("latest", store=store, run="nope")
    with pytest.raises(CheckpointNotFoundError, match="monitored metric"):
        load_checkpoint("best", store=store)

    data = bytearray(paths[2].read_bytes())
    data[len(data) // 2] ^= 0xFF
    paths[2].write_bytes(bytes(data))
    with pytest.raises(CheckpointVerifyError, match="sha256") as err:
        load_checkpoint("latest", store=store)
    assert str(paths[2]) in str(err.value) and "fallback=True" in str(err.value)
    with pytest.warns(CheckpointFallbackWarning, match=r"step-00000001\.pt \(step 1\)"):
        assert load_checkpoint("latest", store=store, fallback=True)["step"] == 1

    paths[1].unlink()
    with pytest.raises(CheckpointNotFoundError, match="missing"):
        load_checkpoint(paths[1], store=store)
    with pytest.warns(CheckpointFallbackWarning, match=r"\(step 0\)"):
        assert load_checkpoint("latest", store=store, fallback=True)["step"] == 0
    paths[0].unlink()
    with pytest.raises(CheckpointError, match="no checkpoint of run .* verifies"):
        load_checkpoint("latest", store=store, fallback=True)
    stray = paths[0].parent / "stray.pt"
    torch.save({}, stray)
    with pytest.raises(CheckpointNotFoundError, match="no record"):
        load_checkpoint(stray, store=store)


def test_cli_lists_checkpoints_with_best_and_latest(
    store: Path, collector: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`traintape checkpoints RUN` prints step, size, metrics and marks best and latest."""
    policy = CheckpointPolicy(keep_last=1, monitor="acc", mode="max")
    run = emitter.init("ckpt", name="listed", store=store, checkpoint=policy)
    for step, acc in [(10, 0.9), (20, 0.7), (30, 0.8)]:
        emitter.save_checkpoint({"s": step}, step=step, metrics={"acc": acc})
    emitter.finish()
    # 3 saved, step 20 deleted
    wait_for(store, f"SELECT count(*) FROM checkpoints WHERE run_id = '{run.run_id}'", 4)
    assert cli_main(["checkpoints", "listed", "--store", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run {run.run_id}: 2 checkpoints"
    assert out[1].split() == ["step", "rank", "size", "metrics", "mark", "saved", "path"]
    assert out[3].split()[:6] == ["10", "0", *out[3].split()[2:4], "acc=0.9", "best"]
    assert out[4].split()[0] == "30" and "acc=0.8  latest" in out[4]
    assert cli_main(["checkpoints", run.run_id[:6], "--store", str(store), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["step"], r["mark"]) for r in rows] == [(10, "best"), (30, "latest")]
    assert rows[0]["metrics"] == {"acc": 0.9} and rows[0]["bytes"] > 0
    assert cli_main(["checkpoints", "nope", "--store", str(store)]) == 1


def test_only_rank_zero_writes_unless_ranks_all(
    store: Path, collector: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Rank 1 of 2 gets a finished handle and no file by default; with ranks="all" it writes
    its own `.rank1` file, which load_checkpoint finds for rank 1."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    quiet = tmp_path / "quiet"
    emitter.init("ddp", run_id="ddp-zero", store=store, checkpoint=CheckpointPolicy(dir=quiet))
    handle = emitter.save_checkpoint({"w": torch.ones(3)}, step=1)
    assert handle.done()
    info = handle.result(timeout=0)
    assert (info.path, info.bytes, info.sha256, info.rank) == (None, 0, None, 1)
    emitter.finish()
    assert not quiet.exists()

    run = emitter.init(
        "ddp", run_id="ddp-all", store=store, checkpoint=CheckpointPolicy(ranks="all")
    )
    info = emitter.save_checkpoint({"rank": 1}, step=1).result(timeout=30)
    assert info.path is not None and info.path.name == "step-00000001.rank1.pt"
    emitter.finish()
    _saved_events(store, run.run_id, 1)
    assert load_checkpoint("latest", store=store, run="ddp-all", rank=1) == {"rank": 1}
    assert load_checkpoint("latest", store=store, run="ddp-all") == {"rank": 1}  # RANK=1 here


@pytest.mark.parametrize("how", ["file-in-the-way", "read-only"])
def test_an_unwritable_destination_fails_the_handle_not_the_training(
    store: Path, collector: Any, tmp_path: Path, how: str
) -> None:
    """When the folder cannot be written, save_checkpoint still returns, training goes on, the
    handle carries the OSError, a `failed` event is stored, and no file is left anywhere."""
    dest = tmp_path / "dest"
    dest.mkdir()
    if how == "file-in-the-way":
        (dest / "blocker").write_text("a file where the folder should be")
        folder = dest / "blocker" / "ckpts"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        dest.chmod(0o500)
        folder = dest / "ckpts"
    before = sorted(dest.rglob("*"))
    run = emitter.init("ckpt", store=store, checkpoint=CheckpointPolicy(dir=folder, keep_last=1))
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handles = []
    for step in range(20):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        emitter.log({"loss": loss.item()}, step=step)
        if step % 5 == 4:
            handles.append(emitter.save_checkpoint({"model": model.state_dict()}, step=step))
    for handle in handles:
        assert isinstance(handle.exception(timeout=30), OSError)
        assert isinstance(handle.error, OSError)
        with pytest.raises(OSError):
            handle.result()
    emitter.finish()
    assert sorted(dest.rglob("*")) == before
    mine = f"run_id = '{run.run_id}'"
    wait_for(store, f"SELECT count(*) FROM checkpoints WHERE action = 'failed' AND {mine}", 4)
    assert query(store, f"SELECT count(*) FROM metrics WHERE key = 'loss' AND {mine}")[0][0] == 20
    error = query(store, f"SELECT error FROM checkpoints WHERE {mine} LIMIT 1")[0][0]
    assert "Error" in error


def test_a_state_torch_save_cannot_pickle_fails_only_its_handle(
    store: Path, collector: Any, tmp_path: Path
) -> None:
    """A state that torch.save cannot pickle fails its handle and leaves no file; the next save
    in the same run writes normally."""
    folder = tmp_path / "ckpts"
    run = emitter.init("ckpt", store=store, checkpoint=CheckpointPolicy(dir=folder))
    bad = emitter.save_checkpoint({"w": torch.ones(4), "fn": lambda x: x}, step=1)
    assert bad.exception(timeout=30) is not None
    good = emitter.save_checkpoint({"w": torch.ones(4)}, step=2).result(timeout=30)
    emitter.finish()
    assert _files(folder) == [good.path.name]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    wait_for(
        store,
        f"SELECT count(*) FROM checkpoints WHERE action = 'failed' AND run_id = '{run.run_id}'",
        1,
    )
