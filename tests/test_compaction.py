"""Compaction: small Parquet files merged without losing or duplicating a row, even under SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, CollectorProcess, query, wait_for
from traintape.collector import compaction
from traintape.collector.compaction import Compactor, DataFile, plan
from traintape.layout import data_file_range
from traintape.schemas import tables

SETTLE_NOW = ("--compact-settle", "0")

# The collector's own system samples (pseudo-run "system:<host>") come and go; runs stay.
ALL_ROWS = {
    "metrics": "SELECT run_id, rank, source, seq, step, key, value FROM metrics",
    "events": "SELECT run_id, rank, source, seq, kind, body FROM events "
    "WHERE run_id NOT LIKE 'system:%'",
}


def snapshot(store: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the metrics and events views, sorted: equal snapshots mean equal stores."""
    return {t: sorted(query(store, sql), key=repr) for t, sql in ALL_ROWS.items()}


def files(store: Path, table: str, run: str) -> list[str]:
    return sorted(p.name for p in (store / "tables" / table / run).iterdir())


def make_parts(store: Path, runs: int = 2, parts: int = 5, rows: int = 40, first: int = 0) -> int:
    """Writes `parts` part files per run for metrics and events, as the materializer would from
    journal position `first` on, and its cursor past them; returns the cursor."""
    from traintape.collector.materializer import ensure_empty_tables

    ensure_empty_tables(store)
    position = first
    for i in range(first // 1000, first // 1000 + parts):
        start, end = position, position + 1000
        for r in range(runs):
            run_id = f"run{r}"
            seq = list(range(i * rows, (i + 1) * rows))
            ident = {
                "run_id": [run_id] * rows,
                "rank": [r % 2] * rows,
                "source": ["s0"] * rows,
                "seq": seq,
                "ts": [10**18 + s for s in seq],
                "step": seq,
            }
            data = {
                "metrics": {
                    **ident,
                    "key": [f"m{s % 3}" for s in seq],
                    "value": [s / 7 for s in seq],
                },
                "events": {
                    **ident,
                    "kind": ["run_start" if s == 0 else "text" for s in seq],
                    "body": [json.dumps({"project": "p", "name": run_id, "n": s}) for s in seq],
                },
            }
            for table, cols in data.items():
                folder = store / "tables" / table / run_id
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(
                    pa.table(cols, schema=tables.TABLES[table]),
                    folder / f"part-{start:020d}-{end:020d}.parquet",
                )
        position = end
    (store / "state").mkdir(exist_ok=True)
    (store / "state" / "materializer.json").write_text(json.dumps({"position": position}))
    return position


def df(name: str, size: int = 100) -> DataFile:
    start, end = data_file_range(name) or (None, None)
    return DataFile(Path(name), start, end, size)


# -- what gets merged ----------------------------------------------------------------------


def test_plan_merges_the_small_tail_below_the_cursor() -> None:
    """Only committed files after the last big one are merged, in groups under the target size."""
    big = compaction.TARGET_BYTES
    fs = [
        df("compact-0-10.parquet", big),
        df("part-10-20.parquet"),
        df("part-20-30.parquet"),
        df("part-30-40.parquet"),
        df("part-40-50.parquet"),  # not committed yet
    ]
    assert [[f.start for f in g] for g in plan(fs, 40, 2)] == [[10, 20, 30]]
    assert plan(fs, 40, 4) == []  # too few for a periodic sweep
    assert plan(fs[:2], 40, 2) == []  # a single small file: nothing to merge
    halves = [df(f"part-{i}-{i + 1}.parquet", big // 2 - 1) for i in range(4)]
    assert [[f.start for f in g] for g in plan(halves, 10, 2)] == [[0, 1], [2, 3]]


def test_journal_range_reads_both_names() -> None:
    """File names carry their journal range, hidden or not; other names have none."""
    assert data_file_range("part-00000000000000000012-00000000000000000034.parquet") == (
        12,
        34,
    )
    assert data_file_range("compact-5-9.parquet.compacted") == (5, 9)
    assert data_file_range("empty.parquet") is None


def test_offline_compaction_keeps_every_row_once(tmp_path: Path) -> None:
    """Merging leaves one compact file per run folder, with exactly the rows there were."""
    store = tmp_path / "store"
    committed = make_parts(store)
    before = snapshot(store)
    merges = Compactor(store).compact_all(committed)
    assert merges == 4  # 2 runs x 2 tables
    assert snapshot(store) == before
    assert files(store, "metrics", "run0") == [f"compact-{0:020d}-{committed:020d}.parquet"]
    assert not (store / compaction.INTENT).exists()
    # Metrics are stored sorted by key, rank, step: one metric is one contiguous range.
    keys = pq.read_table(store / "tables" / "metrics" / "run0" / files(store, "metrics", "run0")[0])
    assert keys.column("key").to_pylist() == sorted(keys.column("key").to_pylist())
    # Again: a compact file plus new parts merge into one.
    assert Compactor(store).compact_all(committed) == 0


def test_materializer_and_compaction_keep_each_others_files(tmp_path: Path) -> None:
    """A restart keeps committed compact files (the materializer only removes uncommitted
    `part-*`); after a cursor reset (a rebuild) compact files go too, so nothing is doubled."""
    from traintape.collector.journal import Journal
    from traintape.collector.materializer import Materializer

    store = tmp_path / "store"
    committed = make_parts(store)
    before = snapshot(store)
    Compactor(store).compact_all(committed)
    (store / "tables" / "metrics" / "run0" / "compact-x.parquet.tmp").write_bytes(b"torn")
    journal = Journal(store / "journal")
    Materializer(store, journal)
    assert snapshot(store) == before  # committed merged files survive a restart
    assert not (store / "tables" / "metrics" / "run0" / "compact-x.parquet.tmp").exists()
    (store / "state" / "materializer.json").write_text(json.dumps({"position": 0}))
    Materializer(store, journal)
    assert list(store.glob("tables/*/run*/*")) == []
    journal.close()


def test_periodic_sweep_merges_folders_with_many_small_files(tmp_path: Path) -> None:
    """The first sweep (at startup) merges any folder with 2 files or more; later sweeps only
    folders written to since, once they hold MIN_FILES_PERIODIC small files."""
    store = tmp_path / "store"
    committed = make_parts(store, runs=1, parts=3)
    compactor = Compactor(store, sweep_interval=0.0, settle=0.0)
    compactor.run_due(committed)
    assert [n.split("-")[0] for n in files(store, "metrics", "run0")] == ["compact"]
    rows_before = len(snapshot(store)["metrics"])
    # The merged file counts while it is small: with 14 new parts, 15 files stay as they are.
    new = compaction.MIN_FILES_PERIODIC - 2
    grew = {
        ("metrics", "run0"): pa.table({"key": ["m"]}),
        ("events", "run0"): pa.table({"kind": ["text"]}),
    }
    position = make_parts(store, runs=1, parts=new, first=committed)
    compactor.note_chunk(grew)
    compactor.run_due(position)
    assert len(files(store, "metrics", "run0")) == compaction.MIN_FILES_PERIODIC - 1
    position = make_parts(store, runs=1, parts=1, first=position)
    compactor.run_due(position)  # run0 did not grow since the last sweep, as far as it knows
    assert len(files(store, "metrics", "run0")) == compaction.MIN_FILES_PERIODIC
    compactor.note_chunk(grew)
    compactor.run_due(position)
    assert [n.split("-")[0] for n in files(store, "metrics", "run0")] == ["compact"]
    assert len(snapshot(store)["metrics"]) == rows_before + (new + 1) * 40
    assert compactor.last_error is None


def test_what_reaches_an_ended_run_after_its_compaction_is_merged_in_too(tmp_path: Path) -> None:
    """A run compacted at its end, then written to again (batches a restarted collector gets
    again after the run_end, as in a two-node job whose collector was killed): that folder is
    due again and merged into one file; a live run's new file waits for the periodic rule, and
    so does a resumed run's (a new attempt's run_start) until it ends again."""
    store = tmp_path / "store"
    committed = make_parts(store, runs=2, parts=3)
    compactor = Compactor(store, sweep_interval=3600.0, settle=0.0)
    compactor.run_due(committed)  # the first sweep: both folders merged
    ended = {("events", "run0"): pa.table({"kind": ["run_end"]})}
    compactor.note_chunk(ended)
    compactor.run_due(committed)
    position = make_parts(store, runs=2, parts=1, first=committed)  # late rows, both runs
    compactor.note_chunk({("metrics", run): pa.table({"key": ["m"]}) for run in ("run0", "run1")})
    compactor.run_due(position)
    assert [n.split("-")[0] for n in files(store, "metrics", "run0")] == ["compact"]
    assert len(files(store, "metrics", "run1")) == 2  # live: left to the periodic sweep
    compactor.note_chunk({("events", "run0"): pa.table({"kind": ["run_start"]})})  # resumed
    position = make_parts(store, runs=1, parts=1, first=position)
    compactor.note_chunk({("metrics", "run0"): pa.table({"key": ["m"]})})
    compactor.run_due(position)
    assert len(files(store, "metrics", "run0")) == 2  # a live attempt: the periodic rule again
    assert compactor.last_error is None


@pytest.mark.parametrize("method", ["swap", "hide"])
def test_a_merge_that_fails_midway_is_undone_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """A merge whose last rename (the folder exchange, or the merged file's rename) is refused
    rolls back in place: rows, files and no intent, as before; the error is reported, not
    raised into the materializer."""
    store = tmp_path / "store"
    committed = make_parts(store, runs=1)
    before = snapshot(store)
    names = {t: files(store, t, "run0") for t in ("metrics", "events")}
    real_replace = os.replace

    def refuse_merged(src: Any, dst: Any) -> None:
        if Path(dst).name.startswith("compact-") and Path(dst).suffix == ".parquet":
            raise OSError("refused by the test")
        real_replace(src, dst)

    def refuse_exchange(a: Any, b: Any) -> None:
        raise OSError("refused by the test")

    monkeypatch.setattr(os, "replace", refuse_merged)
    monkeypatch.setattr(compaction.swap, "exchange", refuse_exchange)
    compactor = Compactor(store, settle=0.0, log=lambda text: None, method=method)
    compactor.run_due(committed)
    monkeypatch.undo()
    assert compactor.last_error is not None and "refused by the test" in compactor.last_error
    assert snapshot(store) == before
    assert {t: files(store, t, "run0") for t in names} == names
    assert not (store / compaction.INTENT).exists()
    assert not list((store / "tables" / compaction.STAGING).glob("*/*"))


# -- SIGKILL at every step -----------------------------------------------------------------

STEPS = [
    ("hide", "merged file written"),
    ("hide", "intent written"),
    ("hide", "hid part-00000000000000000000"),  # the first input hidden
    ("hide", "hid part-00000000000000004000"),  # the last input hidden
    ("hide", "merged file in place"),
    ("hide", "inputs deleted"),
    ("swap", "staged"),
    ("swap", "intent written"),
    ("swap", "folders exchanged"),
    ("swap", "old files deleted"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "step"), STEPS)
def test_sigkill_at_any_step_then_restart_keeps_every_row_once(
    tmp_path: Path, method: str, step: str
) -> None:
    """Compaction killed at `step`: readers meanwhile see no duplicate (with swap: exactly every
    row); after a collector restart the store holds exactly the original rows, and the merge is
    completed."""
    store = tmp_path / "store"
    make_parts(store)
    before = snapshot(store)
    counts = {t: len(v) for t, v in before.items()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "traintape.collector.compaction",
            "--store",
            str(store),
            "--method",
            method,
        ],
        cwd=REPO,
        env={**os.environ, compaction.PAUSE_ENV: f"60:{step}"},
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("traintape compaction step:") and step in line:
                # Paused inside the first merge (events of run0): a reader sees no duplicate.
                got = query(store, "SELECT count(*) FROM events")[0][0]
                assert got <= counts["events"], line
                if method == "swap" or "in place" in line or "deleted" in line:
                    assert got == counts["events"], line
                break
        else:
            pytest.fail(f"never reached {step!r}: {''.join(seen)}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert (store / compaction.INTENT).exists() == (step not in ("merged file written", "staged"))
    collector = CollectorProcess(store, *SETTLE_NOW).start()
    try:
        assert collector.stop() == 0
    finally:
        collector.close()
    assert snapshot(store) == before
    assert not (store / compaction.INTENT).exists()
    leftovers = [p.name for p in store.glob("tables/*/*/*") if not p.name.endswith(".parquet")]
    assert leftovers == []
    assert not list((store / "tables" / compaction.STAGING).glob("*/*"))
    # The interrupted merge is done again at restart (others wait for their run's end).
    assert [n.split("-")[0] for n in files(store, "events", "run0")] == ["compact"]


# -- inside the collector ------------------------------------------------------------------


@pytest.fixture
def collector(store: Path) -> Iterator[CollectorProcess]:
    """A collector that merges a run's files as soon as it ends (the default waits 30 s)."""
    proc = CollectorProcess(store, *SETTLE_NOW).start()
    yield proc
    proc.close()


def _log_in_chunks(store: Path, run: Any, chunks: int, per_chunk: int) -> int:
    n = 0
    for _ in range(chunks):
        for _ in range(per_chunk):
            run.log({"loss": 1.0 / (n + 1), "acc": n / 100}, step=n)
            n += 1
        run._flush(True)
        wait_for(store, "SELECT count(*) FROM metrics", 2 * n)  # each chunk its own part file
    return n


def test_collector_compacts_a_run_when_it_ends(store: Path, collector: CollectorProcess) -> None:
    """The collector merges a run's part files once its run_end is materialized, rows unchanged."""
    from traintape import emitter

    run = emitter.init(project="c", store=store)
    _log_in_chunks(store, run, chunks=4, per_chunk=5)
    folder = store / "tables" / "metrics" / run.run_id
    assert len(list(folder.glob("part-*.parquet"))) == 4
    before = snapshot(store)["metrics"]
    emitter.finish()
    deadline = time.monotonic() + 30
    while [n.split("-")[0] for n in files(store, "metrics", run.run_id)] != ["compact"]:
        assert time.monotonic() < deadline, files(store, "metrics", run.run_id)
        time.sleep(0.1)
    assert snapshot(store)["metrics"] == before
    assert [n.split("-")[0] for n in files(store, "events", run.run_id)] == ["compact"]


@pytest.mark.slow
def test_collector_killed_mid_compaction_loses_and_doubles_nothing(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of the collector and its processes while the materializer process compacts a
    finished run: after a restart the run has every row exactly once, and its files end up
    merged."""
    from traintape import emitter

    monkeypatch.setenv(compaction.PAUSE_ENV, "30:intent written")  # before the last step
    first = CollectorProcess(store, *SETTLE_NOW).start()
    try:
        run = emitter.init(project="c", store=store)
        n = _log_in_chunks(store, run, chunks=3, per_chunk=4)
        expected = sorted((s, k) for s in range(n) for k in ("acc", "loss"))
        emitter.finish()
        deadline = time.monotonic() + 30
        while "step: intent written" not in first.log.read_text():
            assert time.monotonic() < deadline, first.log.read_text()
            time.sleep(0.05)
        first.kill_all()
    finally:
        first.close()
    monkeypatch.delenv(compaction.PAUSE_ENV)
    second = CollectorProcess(store, *SETTLE_NOW).start()
    try:
        deadline = time.monotonic() + 30
        while [n.split("-")[0] for n in files(store, "metrics", run.run_id)] != ["compact"]:
            assert time.monotonic() < deadline, files(store, "metrics", run.run_id)
            time.sleep(0.1)
        got = query(
            store,
            "SELECT step, key FROM metrics WHERE run_id = ? ORDER BY step, key",
            run.run_id,
        )
        assert got == expected
        assert query(store, "SELECT status FROM runs") == [("completed",)]
    finally:
        second.close()
    assert "rolled back an interrupted compaction" in second.log.read_text()


def test_auto_falls_back_to_renames_where_folders_cannot_be_exchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a filesystem without atomic exchange (or hard links) compaction still merges, by
    renaming file by file, and says so once."""
    store = tmp_path / "store"
    committed = make_parts(store, runs=1)
    before = snapshot(store)
    monkeypatch.setattr(compaction.swap, "supported", lambda scratch: False)
    logs: list[str] = []
    compactor = Compactor(store, log=logs.append)
    assert compactor.compact_all(committed) > 0
    assert compactor.method == "hide"
    assert snapshot(store) == before
    assert len([line for line in logs if "cannot exchange folders" in line]) == 1


@pytest.mark.slow
def test_a_long_merge_never_holds_values_back(store: Path) -> None:
    """While a run's merge is under way (held for a minute after merging), another run's values
    still become visible: compaction runs beside materializing, not in its way."""
    from traintape.emitter import Emitter

    env = {**os.environ, compaction.PAUSE_ENV: "60:merged"}
    coll = CollectorProcess(store, *SETTLE_NOW, env=env).start()
    try:
        first = Emitter("c", store=store)
        _log_in_chunks(store, first, chunks=3, per_chunk=5)
        first.finish()
        deadline = time.monotonic() + 30
        while "traintape compaction step: merged" not in coll.log.read_text():
            assert time.monotonic() < deadline, coll.log.read_text()
            time.sleep(0.05)
        second = Emitter("c", store=store)
        for step in range(100):
            second.log({"x": float(step)}, step=step)
        report = second.finish(timeout=30)
        assert report.complete and report.visible
        n = query(store, "SELECT count(*) FROM metrics WHERE run_id = ?", second.run_id)[0][0]
        assert n == 100
    finally:
        coll.kill_all()
