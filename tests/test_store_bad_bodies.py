"""Views never fail on one bad body: a JSON field of the wrong type reads as NULL.

Ingest checks bodies, but a store may hold files written before that check, or by another tool.
Here a Parquet part with wrong-typed fields (world_size "abc", bytes "lots", a config that is no
map, ...) is written straight into the events table of a store a real collector filled, bypassing
ingest; every view, `traintape.read.history` and the CLI still answer, with NULL where the bad value
was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import CollectorProcess, wait_for
from traintape import connect, emitter
from traintape.cli import main as cli_main
from traintape.read import history

BAD = "badrun"


def _bad_part(store: Path) -> None:
    """Writes run BAD (start, checkpoint, end) with wrong-typed fields as one events file."""
    events = store / "tables" / "events"
    schema = pq.read_schema(next(events.glob("*/*.parquet")))  # as the collector writes them
    start = {
        "project": "paths",
        "name": "bad-name",
        "world_size": "abc",
        "tags": "not-a-list",
        "config": "not-a-map",
        "environment": {"host": "h", "git_commit": "0123456789", "git_dirty": "maybe"},
    }
    checkpoint = {
        "action": "saved",
        "path": "/nowhere/step-00000001.pt",
        "bytes": "lots",
        "sha256": "0" * 64,
        "metrics": {"val": 1.0},
        "blocked_s": "slow",
        "write_s": [1],
        "is_best": {"yes": True},
    }
    bodies = [("run_start", start), ("checkpoint", checkpoint), ("run_end", {"status": 7})]
    now = time.time_ns()
    rows = {
        "run_id": [BAD] * 3,
        "rank": [0] * 3,
        "source": ["bad-source"] * 3,
        "seq": [0, 1, 2],
        "ts": [now, now + 1, now + 2],
        "step": [None, 1, None],
        "kind": [kind for kind, _ in bodies],
        "body": [json.dumps(body) for _, body in bodies],
    }
    columns = {f.name: pa.array(rows[f.name]).cast(f.type) for f in schema}
    folder = events / BAD
    folder.mkdir()
    pq.write_table(pa.table(columns, schema=schema), folder / "external-0.parquet")


@pytest.mark.slow
def test_one_bad_body_yields_nulls_not_a_failed_query(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """runs, checkpoints, `traintape runs`, `traintape show` and `traintape checkpoints` all
    answer with a wrong-typed run_start and checkpoint body in the store; the good run is intact."""
    collector = CollectorProcess(store).start()
    try:
        run = emitter.init("paths", name="good", store=store, tags=["ok"])
        emitter.log({"loss": 1.0}, step=0)
        emitter.finish(timeout=30)
        wait_for(store, "SELECT count(*) FROM runs WHERE status = 'completed'", 1)
    finally:
        collector.stop()
    _bad_part(store)

    con = connect(store)
    try:
        rows = con.execute("SELECT run_id, world_size, tags FROM runs").fetchall()
        assert {r[0]: r[1:] for r in rows} == {BAD: (None, None), run.run_id: (1, ["ok"])}
        assert con.execute(
            "SELECT bytes, blocked_s, write_s, best_when_saved, sha256, is_best FROM checkpoints"
        ).fetchall() == [(None, None, None, None, "0" * 64, False)]  # is_best: no monitor
        assert history.show(con, BAD)["run"]["name"] == "bad-name"
    finally:
        con.close()

    capsys.readouterr()
    assert cli_main(["runs", "--store", str(store), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert BAD in out and run.run_id in out
    assert cli_main(["show", BAD, "--store", str(store)]) == 0
    assert "bad-name" in capsys.readouterr().out
    assert cli_main(["checkpoints", BAD, "--store", str(store), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["path"] for c in listed] == ["/nowhere/step-00000001.pt"]
