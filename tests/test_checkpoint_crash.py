"""Checkpoints across process deaths: SIGKILL during writes, resume, a disk that fills up.

The training processes are forked from a multiprocessing forkserver that imported torch once,
so each of the many short-lived processes starts in milliseconds; each is a real process with
its own emitter, writer thread and ZeroMQ link to the real collector of the `collector` fixture.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from tests.conftest import query, wait_for
from traintape import CheckpointPolicy, emitter, load_checkpoint
from traintape.checkpoint import CheckpointNotFoundError, list_checkpoints, verify
from traintape.emitter.checkpointing.writer import TMP_NAME
from traintape.layout import StoreLayout

TRIALS = 20
CRASH_POLICY = CheckpointPolicy(keep_last=2, keep_best=1, monitor="loss")


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "traintape.emitter.checkpointing.writer", __name__])
    return ctx


def _final_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _temporary_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TMP_NAME.match(p.name))


def _check_consistent(state: dict[str, Any]) -> None:
    """Every value in a crash-test checkpoint was derived from its step at the moment of saving."""
    step = state["step"]
    assert bool((state["w"] == step).all()), f"step {step}: w is mixed"
    assert bool((state["nested"]["b"] == -step).all()), f"step {step}: b is mixed"
    assert state["nested"]["steps"] == [step]


# -- worker processes (run in forkserver children) --------------------------------------------


def _save_until_killed(store: str, run_id: str, ready: Any, seed: int, stop_after: int) -> None:
    """Resumes `run_id` from its latest checkpoint, then saves as fast as the writer takes them
    (2 MB each, a random loss monitored) until killed, or `stop_after` saves then finishes."""
    torch.set_num_threads(1)
    emitter.init("crash", run_id=run_id, store=store, checkpoint=CRASH_POLICY)
    step = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the store may lag behind the previous kill
            state = load_checkpoint("latest", store=store, run=run_id, fallback=True)
        _check_consistent(state)
        step = state["step"] + 1
    except CheckpointNotFoundError:
        pass
    rng = random.Random(seed)
    w = torch.empty(512, 1024)
    b = torch.empty(1024)
    ready.set()
    for _ in range(stop_after or 1 << 30):
        w.fill_(step)
        b.fill_(-step)
        state = {"w": w, "nested": {"b": b, "steps": [step]}, "step": step}
        emitter.save_checkpoint(state, step=step, metrics={"loss": rng.random()})
        step += 1
    emitter.finish()


def _train(store: str, run_id: str, kill_after: int | None, resume: bool) -> None:
    """100 steps of a small deterministic model (dropout, Adam, a schedule, four RNGs) with a
    checkpoint every 10 steps; SIGKILLs itself after step `kill_after`."""
    import numpy as np

    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    data = torch.Generator().manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.5)
    run = emitter.init(
        "resume", run_id=run_id, store=store, checkpoint=CheckpointPolicy(keep_last=3)
    )
    start = 0
    if resume:
        state = load_checkpoint("latest", store=store, run=run_id)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"]["torch"])
        data.set_state(state["rng"]["data"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        start = state["step"] + 1
    handle = None
    for step in range(start, 100):
        x = torch.randn(32, 8, generator=data)
        y = x.sum(1, keepdim=True) * random.uniform(0.9, 1.1) + float(np.random.normal(0, 0.1))
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        emitter.log({"loss": loss.item()}, step=step)
        if step % 10 == 9:
            state = {
                "model": model.state_dict(),
                "optim": opt.state_dict(),
                "sched": sched.state_dict(),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "data": data.get_state(),
                    "python": random.getstate(),
                    "numpy": np.random.get_state(),
                },
                "step": step,
            }
            handle = emitter.save_checkpoint(state, step=step)
        if step == kill_after:
            assert handle is not None
            handle.result()
            run._flush(True)
            # the kill lands once the store holds every loss so far and the last checkpoint
            mine = f"run_id = '{run_id}'"
            wait_for(Path(store), f"SELECT count(*) FROM metrics WHERE {mine}", step + 1)
            wait_for(
                Path(store),
                f"SELECT max(step) FROM checkpoints WHERE {mine} AND action = 'saved'",
                handle.step,
            )
            os.kill(os.getpid(), signal.SIGKILL)
    emitter.finish()


def _save_past_a_file_size_limit(store: str, folder: str, out: Any) -> None:
    """With RLIMIT_FSIZE at 1 MiB, a 4 MB checkpoint fails mid-write (EFBIG, as a full disk
    fails); training and a later small checkpoint go on."""
    import resource

    torch.set_num_threads(1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the write fails instead of the process
    emitter.init("full", store=store, checkpoint=CheckpointPolicy(dir=folder))
    resource.setrlimit(
        resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
    )
    big = emitter.save_checkpoint({"w": torch.randn(1 << 20)}, step=1)
    error = big.exception(timeout=60)
    model = torch.nn.Linear(4, 1)
    for step in range(2, 12):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        emitter.log({"loss": loss.item()}, step=step)
    small = emitter.save_checkpoint({"w": torch.ones(10)}, step=12).result(timeout=60)
    out.put((type(error).__name__, getattr(error, "errno", None), str(error), small.path.name))
    emitter.finish()


def _run_to_end(ctx: Any, target: Any, *args: Any) -> int:
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    try:
        proc.join(120)
        assert proc.exitcode is not None, f"{target.__name__} did not end"
    finally:
        proc.kill()
    return proc.exitcode


def _materialized_since(store: Path, since: float, timeout: float = 60.0) -> None:
    """Waits for a status the collector wrote after `since` saying the materializer holds the
    whole journal (what was journaled until then is in the tables)."""
    path = StoreLayout(store).collector_status
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("updated", 0) > since and status.get("materializer_lag_bytes") == 0:
            return
        assert time.monotonic() < deadline, f"the materializer did not catch up: {status}"
        time.sleep(0.05)


# -- tests -----------------------------------------------------------------------------------


def test_sigkill_during_writes_never_leaves_a_partial_checkpoint(
    store: Path, collector: Any
) -> None:
    """A training process killed with SIGKILL at random moments, mostly mid-write, 20 times over:
    no final path ever holds a partial file, every next attempt resumes from a checkpoint that
    verifies, leftovers are cleaned up, and every checkpoint the store names loads and verifies."""
    ctx = _context()
    run_id = "crash-run"
    folder = store.resolve() / "checkpoints" / run_id
    rng = random.Random(20)
    killed_mid_write = 0
    for trial in range(TRIALS):
        ready = ctx.Event()
        proc = ctx.Process(
            target=_save_until_killed, args=(str(store), run_id, ready, trial, 0), daemon=True
        )
        proc.start()
        try:
            assert ready.wait(60), f"trial {trial}: no start (exit code {proc.exitcode})"
            if trial % 2 == 0:  # once a temporary file is there (a write under way), + 0-5 ms
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline and not (
                    folder.exists() and _temporary_files(folder)
                ):
                    time.sleep(0.0005)
                time.sleep(rng.uniform(0.0, 0.005))
            else:
                time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.kill()
            proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        killed_mid_write += bool(_temporary_files(folder))
        for path in _final_files(folder):
            _check_consistent(torch.load(path))  # complete, and from one moment
        _materialized_since(store, time.time())  # before the next attempt reads the store

    ready = ctx.Event()
    assert _run_to_end(ctx, _save_until_killed, str(store), run_id, ready, TRIALS, 3) == 0
    wait_for(
        store,
        f"SELECT count(*) FROM events WHERE run_id = '{run_id}' AND kind = 'run_end'",
        1,
    )
    print(f"killed mid-write: {killed_mid_write} of {TRIALS}")
    assert killed_mid_write >= 1
    assert _temporary_files(folder) == []
    records = list_checkpoints(store, run_id)
    assert records and records[-1].latest
    for record in records:
        assert verify(record) is None
        _check_consistent(load_checkpoint(record.path, store=store))
    files = _final_files(folder)
    assert {r.path for r in records} <= set(files)
    assert len(files) <= 3  # keep_last=2 plus the best one
    leftovers = query(store, "SELECT count(*) FROM checkpoints WHERE reason = 'leftover'")[0][0]
    assert leftovers >= 1


def test_resume_after_sigkill_matches_an_uninterrupted_run(store: Path, collector: Any) -> None:
    """Train 100 steps with checkpoints, SIGKILL at step 57, resume from "latest": the losses of
    the resumed run are exactly those of an uninterrupted run, step for step."""
    ctx = _context()
    assert _run_to_end(ctx, _train, str(store), "reference", None, False) == 0
    assert _run_to_end(ctx, _train, str(store), "resumed", 57, False) == -signal.SIGKILL
    wait_for(
        store,
        "SELECT max(step) FROM checkpoints WHERE run_id = 'resumed' AND action = 'saved'",
        49,
    )
    assert _run_to_end(ctx, _train, str(store), "resumed", None, True) == 0
    wait_for(store, "SELECT count(*) FROM runs WHERE status = 'completed'", 2)

    def losses(run_id: str, attempt: int | None = None) -> dict[int, float]:
        sql = "SELECT step, value FROM metrics WHERE run_id = ? AND key = 'loss'"
        if attempt is None:
            return dict(query(store, sql, run_id))
        return dict(query(store, sql + " AND attempt = ?", run_id, attempt))

    reference = losses("reference")
    first, second = losses("resumed", 1), losses("resumed", 2)
    assert sorted(reference) == list(range(100))
    assert sorted(first) == list(range(58))
    assert sorted(second) == list(range(50, 100))  # resumed after the step-49 checkpoint
    assert {**{s: v for s, v in first.items() if s < 50}, **second} == reference
    assert {s: first[s] for s in range(50, 58)} == {s: reference[s] for s in range(50, 58)}


def test_a_write_that_fails_midway_leaves_no_file(
    store: Path, collector: Any, tmp_path: Path
) -> None:
    """A write that fails part way (EFBIG from a file size limit, as a full disk fails) leaves
    neither a temporary nor a final file, reports the error on the handle and as an event, and
    training and later checkpoints go on."""
    ctx = _context()
    folder = tmp_path / "ckpts"
    out = ctx.Queue()
    assert _run_to_end(ctx, _save_past_a_file_size_limit, str(store), str(folder), out) == 0
    name, errno, message, small = out.get(timeout=10)
    assert errno == 27 or "too large" in message.lower(), (name, errno, message)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".traintape")) == [
        small
    ]
    wait_for(store, "SELECT count(*) FROM checkpoints WHERE action = 'failed'", 1)
    row = query(store, "SELECT step, error, path FROM checkpoints WHERE action = 'failed'")[0]
    assert row[0] == 1 and "large" in row[1].lower() and row[2].endswith("step-00000001.pt")
    assert query(store, "SELECT count(*) FROM metrics WHERE key = 'loss'")[0][0] == 10
