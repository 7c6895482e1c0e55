"""A collector per node (issue 17): several collectors on one store root, each with its own
journal, state, lock, run folders and compaction, and a run whose ranks log to different
collectors read as one run; stores from before microsecond timestamps conformed once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    REPO,
    WORKER,
    CollectorProcess,
    env_without_traintape,
    free_port,
    query,
    wait_for,
)
from tests.test_timestamps import T0, _old_schema, _rows
from tests.workers.log_steps import expected_value
from traintape.collector.compaction import Compactor
from traintape.collector.journal import Journal
from traintape.collector.materializer import Materializer
from traintape.errors import ConfigError
from traintape.layout import StoreLayout, check_collector_id, compacted_name, part_name
from traintape.paths import default_address
from traintape.schemas import tables

NODES = ("node-a", "node-b")
RUN = "two-nodes"
STEPS, METRICS = 1000, 4
ROWS = 4 * STEPS * METRICS
NODE_RANK = REPO / "tests" / "workers" / "node_rank.py"


# -- the layout ---------------------------------------------------------------------------------


def test_default_collector_keeps_the_layout_and_named_ones_get_their_own(tmp_path: Path) -> None:
    """No collector id is today's layout; collector ID keeps its journal, state, lock, socket
    and run folders apart, and sees (and may delete) only its own table files."""
    old, node = StoreLayout(tmp_path), StoreLayout(tmp_path, "node-a")
    assert (old.journal, old.lock, old.materializer_cursor) == (
        tmp_path / "journal",
        tmp_path / "collector.lock",
        tmp_path / "state" / "materializer.json",
    )
    assert old.run_folder("metrics", "r1") == tmp_path / "tables" / "metrics" / "r1"
    home = tmp_path / "collectors" / "node-a"
    assert (node.journal, node.lock, node.materializer_cursor, node.deadletter) == (
        home / "journal",
        home / "collector.lock",
        home / "state" / "materializer.json",
        home / "deadletter",
    )
    assert node.run_folder("metrics", "r1") == tmp_path / "tables" / "metrics" / "r1@node-a"
    assert default_address(tmp_path, "node-a") == f"ipc://{home / 'collector.sock'}"
    for layout in (old, node, StoreLayout(tmp_path, "node-b")):
        layout.run_folder("metrics", "r1").mkdir(parents=True, exist_ok=True)
        (layout.run_folder("metrics", "r1") / part_name(0, 10)).touch()
    assert [p.parent.name for p in old.run_files("part-*")] == ["r1"]
    assert [p.parent.name for p in node.run_files("part-*")] == ["r1@node-a"]
    assert [f.name for f in old.run_folders_of("metrics", "r1")] == ["r1", "r1@node-a", "r1@node-b"]
    for bad in ("", "../x", "a@b", "a/b", ".hidden", "x" * 65):
        with pytest.raises(ConfigError, match="not a collector id"):
            check_collector_id(bad)


# -- old files conformed --------------------------------------------------------------------------


def test_lone_nanosecond_files_are_conformed_once_at_start(tmp_path: Path) -> None:
    """A store from before microsecond `ts` whose run folders each hold one nanosecond file
    (which no merge ever takes) has every file rewritten in microseconds by the materializer's
    compaction thread at start, under a new name, with the same answers; later starts skip it."""
    store = tmp_path / "store"
    layout = StoreLayout(store)
    for table, name in (("metrics", part_name(0, 10)), ("events", compacted_name(0, 10))):
        folder = layout.run_folder(table, "mixedrun01")
        folder.mkdir(parents=True)
        pq.write_table(_rows(table, 1, T0, 1.0, old=True), folder / name)
    for table, schema in tables.TABLES.items():  # schema-only files as an old store has them
        layout.empty_table_file(table).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_old_schema(schema).empty_table(), layout.empty_table_file(table))
    layout.state.mkdir(parents=True)
    layout.materializer_cursor.write_text(json.dumps({"position": 10}))
    before = _answers(store)
    materializer = Materializer(store, Journal(layout.journal), compact_settle=3600)
    materializer.start()
    try:
        wait_until(lambda: (layout.state / "conformed.json").exists())
    finally:
        materializer.stop()
    for table, name in (("metrics", compacted_name(0, 10)), ("events", part_name(0, 10))):
        (path,) = layout.run_folder(table, "mixedrun01").glob("*.parquet")
        assert path.name == name
        assert pq.read_schema(path).field("ts").type == tables.TS
    assert _answers(store) == before == [[(1, T0 // 1000, 1.0)], [(1, T0 // 1000)]]
    assert json.loads((layout.state / "conformed.json").read_text())["rewritten"] == 2


def test_compaction_does_not_grow_a_runs_metrics(tmp_path: Path) -> None:
    """Merging a run's metric parts (10 random values per step, as materialized) into one file
    sorted by key keeps the bytes at most those of the parts: sorted by key, seq, ts and step
    never repeat, and dictionary-encoded they doubled the size (bytes per day, docs/scale.md)."""
    import random

    import pyarrow as pa

    rng = random.Random(7)
    layout = StoreLayout(tmp_path)
    folder = layout.run_folder("metrics", "sizes")
    folder.mkdir(parents=True)
    events, keys = 2500, 10
    for part in range(4):
        seq = [s for s in range(part * events, (part + 1) * events) for _ in range(keys)]
        n = len(seq)
        columns = {
            "run_id": ["sizes"] * n,
            "rank": pa.array([0] * n, pa.int32()),
            "source": ["0123456789abcdef"] * n,
            "seq": seq,
            "ts": pa.array([T0 // 1000 + 3 * s for s in seq], pa.int64()).cast(tables.TS),
            "step": seq,
            "key": [f"metric_{i}" for _ in range(events) for i in range(keys)],
            "value": [rng.random() for _ in range(n)],
        }
        data = pa.table(columns, schema=tables.TABLES["metrics"])
        start = part * 1000
        pq.write_table(data, folder / part_name(start, start + 1000), compression="zstd")
    parts = sum(f.stat().st_size for f in folder.iterdir())
    Compactor(tmp_path, log=lambda text: None).compact_all(4000)
    (merged,) = folder.iterdir()
    assert merged.name == compacted_name(0, 4000)
    assert pq.ParquetFile(merged).metadata.num_rows == 4 * events * keys
    assert merged.stat().st_size <= parts


def _answers(store: Path) -> list[list[tuple]]:
    return [
        query(store, "SELECT seq, epoch_us(ts), value FROM metrics ORDER BY seq"),
        query(store, "SELECT seq, epoch_us(ts) FROM events ORDER BY seq"),
    ]


def wait_until(condition: Callable[[], object], timeout: float = 60.0) -> None:
    """Polls `condition()` until it is true (a materializer, a compaction, a liveness check)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {condition}")
        time.sleep(0.05)


# -- two collectors, one store -----------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CollectorProcess]]:
    """Two collectors, `node-a` and `node-b`, serving one store root (merging at a run's end)."""
    store = tmp_path_factory.mktemp("nodes") / "store"
    procs = {
        node: CollectorProcess(
            store, "--compact-settle", "0", "--system-interval", "0", collector_id=node
        )
        for node in NODES
    }
    try:
        for proc in procs.values():
            proc.start(wait=False)
        for proc in procs.values():
            proc.wait_started()
        yield procs
        for proc in procs.values():
            assert proc.stop() == 0, proc.log.read_text()
    finally:
        for proc in procs.values():
            proc.close()


class Watcher(threading.Thread):
    """Queries the run over and over while everything happens; keeps every answer that counts
    a row twice (a query failing on a file a compaction just removed is retried, not kept)."""

    def __init__(self, store: Path) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.stop = threading.Event()
        self.answers = 0
        self.twice: list[tuple[int, ...]] = []

    def run(self) -> None:
        import duckdb

        while not self.stop.wait(0.05):
            try:
                dupes = query(
                    self.store,
                    "SELECT count(*) FROM (SELECT rank, source, seq, key FROM metrics "
                    "WHERE run_id = ? GROUP BY ALL HAVING count(*) > 1)",
                    RUN,
                )[0][0]
                (total, most) = query(
                    self.store,
                    "SELECT coalesce(sum(count), 0), coalesce(max(count), 0) "
                    "FROM metrics_by_step WHERE run_id = ?",
                    RUN,
                )[0]
            except duckdb.Error:  # a file a merge removed after the glob listed it: asked again
                continue
            self.answers += 1
            if dupes or total > ROWS or most > 4:
                self.twice.append((dupes, total, most))


def _torchrun_node(store: Path, node_rank: int, port: int, finish_after: Path) -> subprocess.Popen:
    """One node of a 2-node torchrun job (2 ranks each) logging to that node's collector."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
    argv += ["--node-rank", str(node_rank), "--nproc-per-node", "2"]
    argv += ["--master-addr", "127.0.0.1", "--master-port", str(port), str(WORKER)]
    argv += ["--store", str(store), "--steps", str(STEPS), "--metrics", str(METRICS), "--dist"]
    argv += ["--pause-every", "10", "--pause", "0.01", "--finish-after", str(finish_after)]
    env = {**env_without_traintape(), "OMP_NUM_THREADS": "1", "TRAINTAPE_RUN_ID": RUN}
    env["TRAINTAPE_COLLECTOR_ID"] = NODES[node_rank]  # the emitters' default address
    log = open(store.parent / f"torchrun-{node_rank}.log", "wb")  # noqa: SIM115 (closed by exit)
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_torchrun_job_across_two_collectors_is_one_run_exactly_once(
    nodes: dict[str, CollectorProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 4-rank torchrun job, ranks 0-1 on node-a's collector and 2-3 on node-b's: node-b is
    SIGKILLed mid-run and restarted, both compact the run at its end, and it is one completed
    run of 4 ranks with every value exactly once, while no query meanwhile counts a row twice."""
    store = nodes["node-a"].store
    finish_after = store.parent / "finish"
    port = free_port()
    jobs = [_torchrun_node(store, n, port, finish_after) for n in (0, 1)]
    watcher = Watcher(store)
    watcher.start()
    try:
        on_b = f"SELECT count(*) FROM metrics WHERE run_id = '{RUN}' AND rank >= 2"
        wait_until(lambda: (query(store, on_b)[0][0] if _tables(store) else 0) > 0, 120)
        nodes["node-b"].kill()
        assert all(job.poll() is None for job in jobs), "the kill must land mid-run"
        nodes["node-b"].start()
        finish_after.touch()
        for n, job in enumerate(jobs):
            assert job.wait(240) == 0, (store.parent / f"torchrun-{n}.log").read_text()[-3000:]
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{RUN}'", ROWS, 60)
        runs = f"SELECT status, ranks, world_size FROM runs WHERE run_id = '{RUN}'"
        wait_until(lambda: query(store, runs) == [("completed", 4, 4)])
        wait_until(lambda: _merged(store), 60)  # both collectors compacted their folders
    finally:
        watcher.stop.set()
        watcher.join()
        for job in jobs:
            if job.poll() is None:
                job.kill()
    assert watcher.answers > 0 and watcher.twice == []
    _assert_every_value_once(store)
    by_step = "SELECT count(*), min(count), max(count) FROM metrics_by_step WHERE run_id = ?"
    assert query(store, by_step, RUN) == [(STEPS * METRICS, 4, 4)]
    folders = {p.name for p in (store / "tables" / "metrics").iterdir() if p.name.startswith(RUN)}
    assert folders == {f"{RUN}@node-a", f"{RUN}@node-b"}
    _assert_run_readers_see_both(store)
    from traintape.cli.main import main

    capsys.readouterr()
    assert main(["runs", "--store", str(store), "--format", "json"]) == 0
    (listed,) = [r for r in json.loads(capsys.readouterr().out) if r["run_id"] == RUN]
    assert listed["status"] == "completed"
    assert main(["status", "--store", str(store), "--collector-id", "node-b"]) == 0
    assert re.search(r"^collector_id\s+node-b$", capsys.readouterr().out, re.M)


def _assert_run_readers_see_both(store: Path) -> None:
    """Readers that open one run's folders only (connect(runs=), the dashboard's index) open
    every collector's."""
    import traintape
    from traintape.ui.index import MetricIndex

    con = traintape.connect(store, runs=[RUN])
    assert con.execute("SELECT count(*) FROM metrics WHERE run_id = ?", [RUN]).fetchone() == (ROWS,)
    con = traintape.connect(store)
    found = MetricIndex().lookup(con, RUN, "m0", STEPS - 2)
    assert found.ranks == {0, 1, 2, 3} and found.source is not None
    last = f"SELECT rank FROM {found.source} WHERE key = 'm0' AND step > {STEPS - 2} ORDER BY 1"
    assert con.execute(last).fetchall() == [(0,), (1,), (2,), (3,)]


def _tables(store: Path) -> bool:
    return (store / "tables" / "metrics").is_dir()


def _merged(store: Path) -> bool:
    """Each collector's folder of the run holds one file per table (its merge of every part)."""
    for table in ("metrics", "events"):
        for node in NODES:
            folder = store / "tables" / table / f"{RUN}@{node}"
            if len(list(folder.glob("*.parquet"))) != 1:
                return False
    return True


def _assert_every_value_once(store: Path) -> None:
    rows = query(
        store,
        "SELECT rank, step, key, value FROM metrics WHERE run_id = ? ORDER BY rank, step, key",
        RUN,
    )
    expected = sorted(
        (r, s, f"m{i}", expected_value(r, s, i))
        for r in range(4)
        for s in range(STEPS)
        for i in range(METRICS)
    )
    assert len(rows) == ROWS
    bad = [(a, b) for a, b in zip(rows, expected) if a[:3] != b[:3] or repr(a[3]) != repr(b[3])]
    assert bad[:3] == []


@pytest.mark.slow
def test_a_rank_killed_on_one_node_makes_the_run_crashed_with_its_checkpoint(
    nodes: dict[str, CollectorProcess],
) -> None:
    """Rank 1 on node-a finishes, rank 0 on node-b saves a checkpoint and is SIGKILLed: node-b's
    liveness says so, the run is `crashed` with 2 ranks, and its checkpoints view holds the save
    (rank 0's, as checkpoints are saved by rank 0) as the run's best."""
    store = nodes["node-a"].store
    run, ready = "split-crash", store.parent / "ready"
    procs = []
    for rank, node in enumerate(reversed(NODES)):
        env = {**env_without_traintape(), "RANK": str(rank), "WORLD_SIZE": "2"}
        env |= {"TRAINTAPE_RUN_ID": run, "TRAINTAPE_COLLECTOR_ID": node, "OMP_NUM_THREADS": "1"}
        extra = ["--hang", "--ready", str(ready)] if rank == 0 else []
        argv = [sys.executable, str(NODE_RANK), "--store", str(store), "--steps", "20", *extra]
        procs.append(subprocess.Popen(argv, cwd=REPO, env=env))
    try:
        wait_until(ready.exists, 120)
        procs[0].send_signal(signal.SIGKILL)
        assert procs[1].wait(120) == 0
        runs = f"SELECT status, ranks FROM runs WHERE run_id = '{run}'"
        wait_until(lambda: query(store, runs) == [("crashed", 2)], 60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    saved = query(
        store,
        "SELECT rank, step, is_best FROM checkpoints WHERE run_id = ? AND action = 'saved' "
        "ORDER BY rank",
        run,
    )
    assert saved == [(0, 20, True)]
    assert query(store, "SELECT count(*) FROM metrics WHERE run_id = ?", run) == [(40,)]
    events = store / "tables" / "events"
    assert {f.name for f in events.iterdir() if f.name.startswith(run)} == {
        f"{run}@{node}" for node in NODES
    }
    assert set(os.listdir(store / "collectors")) == set(NODES)


@pytest.mark.slow
def test_a_spool_is_replayed_only_to_the_collector_it_was_meant_for(
    nodes: dict[str, CollectorProcess],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An emitter of node-b that could not reach it spools into node-b's own spool: `traintape
    gc` waits for it, `replay --collector-id node-a` leaves it alone, and `replay --collector-id
    node-b` delivers it to node-b alone (its run folders only)."""
    from traintape.cli.main import main
    from traintape.emitter.emitter import Emitter

    store = nodes["node-a"].store
    monkeypatch.delenv("TRAINTAPE_SPOOL_DIR", raising=False)
    monkeypatch.setenv("TRAINTAPE_COLLECTOR_ID", "node-b")
    nobody = f"ipc://{store.parent}/nobody.sock"
    em = Emitter("spooled", store=store, address=nobody, run_id="spooled-b", spool_after=0.1)
    for step in range(50):
        em.log({"loss": float(step)}, step=step)
    assert em.finish(timeout=1).spooled > 0
    spool = StoreLayout(store, "node-b").spool
    spooled = list(spool.glob("*.spool"))
    assert spooled and not list((store / "spool").glob("*.spool"))
    assert main(["gc", "--store", str(store), "--dry-run"]) == 1
    assert str(spool) in capsys.readouterr().err
    assert main(["replay", "--store", str(store), "--collector-id", "node-a"]) == 0
    assert [p.exists() for p in spooled] == [True] * len(spooled)
    assert main(["replay", "--store", str(store), "--collector-id", "node-b"]) == 0
    assert not list(spool.glob("*.spool"))
    wait_for(store, "SELECT count(*) FROM metrics WHERE run_id = 'spooled-b'", 50, 60)
    folders = {p.name for p in (store / "tables" / "metrics").iterdir()}
    assert {f for f in folders if f.startswith("spooled-b")} == {"spooled-b@node-b"}


@pytest.mark.slow
def test_sync_replays_a_run_from_every_collectors_journal(
    nodes: dict[str, CollectorProcess], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`traintape sync` of a run whose rank 0 logged to node-a and rank 1 to node-b reads both
    journals: TensorBoard gets the mean of both ranks at every step, each step once."""
    from tests.test_sink_tensorboard import read_scalars
    from traintape.cli.main import main
    from traintape.emitter.emitter import Emitter

    store, run, steps = nodes["node-a"].store, "synced-ab", 40
    monkeypatch.setenv("WORLD_SIZE", "2")
    ems = []
    for rank, node in enumerate(NODES):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("TRAINTAPE_COLLECTOR_ID", node)
        ems.append(Emitter("nodes", name="ab", run_id=run, store=store))
    for step in range(steps):
        for rank, em in enumerate(ems):
            em.log({"x": float(step + 100 * rank)}, step=step)
    for em in ems:
        assert em.finish(timeout=30).lost == 0
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run}'", 2 * steps, 60)
    argv = ["sync", run, "--to", f"tensorboard={tmp_path}", "--ranks", "mean"]
    assert main([*argv, "--store", str(store)]) == 0
    scalars = read_scalars(tmp_path / "nodes" / "ab")
    assert [(s, v) for s, v, _ in scalars["x"]] == [(s, s + 50.0) for s in range(steps)]
