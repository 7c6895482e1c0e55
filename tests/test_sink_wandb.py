"""W&B sink in offline mode: the history written to `wandb/offline-run-*/run-*.wandb` (LevelDB log
format of protobuf records, read here with a reader of our own) matches the store."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CollectorProcess, query, start_ranks

STEPS = 300


def wandb_records(path: Path) -> list[Any]:
    """Every record of a .wandb file: 7-byte header, then 32 KiB blocks of CRC-checked chunks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0:
            break
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes((kind,)))) & 0xFFFFFFFF == crc
        pos += 7 + length
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def offline_run(folder: Path, run_id: str) -> dict[str, Any]:
    runs = sorted(folder.glob(f"wandb/offline-run-*-{run_id}"))
    assert len(runs) == 1, runs
    history: dict[int, dict[str, Any]] = {}
    out: dict[str, Any] = {"history": history, "config": {}, "summary": {}, "exit": None}
    for record in wandb_records(runs[0] / f"run-{run_id}.wandb"):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {
                (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                for i in record.history.item
            }
            assert row["_step"] not in history, "a step logged twice"
            history[row["_step"]] = row
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "summary":
            out["summary"].update(
                {u.key: json.loads(u.value_json) for u in record.summary.update if u.key}
            )
        elif kind == "exit":
            out["exit"] = record.exit.exit_code
    return out


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.slow
def test_offline_history_matches_the_store_for_rank0_and_mean(tmp_path: Path, monkeypatch):
    """A 2-rank run: the collector's W&B sink (rank0) holds rank 0's value of every key at every
    step, once; `traintape sync --ranks mean` writes the mean across ranks; config and exit
    code come along."""
    from traintape.cli import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    store = tmp_path / "store"
    collector = CollectorProcess(store, "--sink", "wandb=offline", "--system-interval", "0").start()
    try:
        procs = start_ranks(
            store, "wbrun", "--steps", STEPS, "--metrics", 5, "--pause-every", 50, "--pause", 0.05
        )
        for p in procs:
            assert p.wait(120) == 0
        assert collector.stop() == 0
    finally:
        collector.close()

    rank0 = offline_run(store, "wbrun")
    rows = query(store, "SELECT step, key, value FROM metrics WHERE run_id = 'wbrun' AND rank = 0")
    assert len(rows) == STEPS * 5
    assert sorted(rank0["history"]) == list(range(STEPS))
    for step, key, value in rows:
        assert _same(float(rank0["history"][step][key]), value), (step, key)
    assert rank0["config"]["steps"] == STEPS and rank0["exit"] == 0

    config = tmp_path / "tt.yaml"
    config.write_text(f"sinks:\n  wandb: {{dir: {tmp_path / 'mean'}, ranks: mean}}\n")
    args = [
        "sync",
        "wbrun",
        "--to",
        "wandb=offline",
        "--store",
        str(store),
        "--config",
        str(config),
    ]
    assert main(args) == 0
    mean = offline_run(tmp_path / "mean", "wbrun")
    rows = query(store, "SELECT step, key, mean FROM metrics_by_step WHERE run_id = 'wbrun'")
    assert len(rows) == STEPS * 5
    assert sorted(mean["history"]) == list(range(STEPS))
    for step, key, value in rows:
        got = float(mean["history"][step][key])
        assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, rel=1e-12)


@pytest.mark.slow
def test_a_restart_resumes_the_run_without_logging_a_step_twice(tmp_path: Path, monkeypatch):
    """A collector stopped mid-run finishes its W&B run as preempted; after the restart, rows
    sent again (the batch after the persisted cursor) are skipped, the rest continues the run
    in a new offline folder with the same id."""
    import time

    from traintape.schemas.events import METRICS, RUN_END
    from traintape.sinks import Event, RunInfo, SinkConfig

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = SinkConfig("wandb", "wandb", {"mode": "offline"})
    run = RunInfo("restart1", "p", "n", {"lr": 0.1}, started_ns=time.time_ns())

    def steps(a: int, b: int) -> list[Event]:
        return [Event(METRICS, 0, s, time.time_ns(), {"x": float(s)}) for s in range(a, b)]

    first = config.create(tmp_path)
    first.open_run(run)
    first.write(run, steps(0, 50))
    first.flush()
    first.close()  # the collector stops while the run goes on

    second = config.create(tmp_path)
    second.open_run(run)
    second.write(run, steps(40, 100))  # 40..49 again: they came after the persisted cursor
    second.write(run, [Event(RUN_END, 0, None, time.time_ns(), {"status": "completed"})])
    second.close()
    assert second.stats()["already_stored"] == 10

    folders = sorted((tmp_path / "wandb").glob("offline-run-*-restart1"))
    assert len(folders) == 2
    seen: list[int] = []
    for folder in folders:
        for record in wandb_records(folder / "run-restart1.wandb"):
            if record.WhichOneof("record_type") == "history":
                seen.append(record.history.step.num)
    assert seen == list(range(100))
