"""A store whose path holds glob characters (`[`, `]`, `*`, `?`) reads its own files only.

DuckDB expands those characters in read_parquet paths: unescaped, a store at `a[1]` reads its
sibling `a1`, and a store under `x*` reads `xa` too. Each store here is filled by a real collector
process and read back through `traintape.connect()`, `traintape.read.history` and the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CollectorProcess, wait_for
from traintape import connect, emitter
from traintape.cli import main as cli_main
from traintape.globs import UnreadablePathError, literal
from traintape.read import history


def _fill(stores: dict[str, Path]) -> None:
    """One run of three steps in each store (named by its run id), each through its own real
    collector (started together), visible in the views."""
    collectors = [CollectorProcess(store).start(wait=False) for store in stores.values()]
    try:
        for collector in collectors:
            collector.wait_started()
        for run_id, store in stores.items():
            emitter.init("paths", name=f"name-{run_id}", store=store, run_id=run_id)
            for step in range(3):
                emitter.log({"loss": float(step)}, step=step)
            emitter.finish(timeout=30)
        for store in stores.values():
            wait_for(store, "SELECT count(*) FROM metrics", 3)
            wait_for(store, "SELECT count(*) FROM runs WHERE status = 'completed'", 1)
    finally:
        for collector in collectors:
            if collector.proc is not None and collector.proc.poll() is None:
                collector.proc.terminate()  # both stop at once: SIGTERM, as stop() sends
        for collector in collectors:
            collector.stop()


def _runs_cli(store: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert cli_main(["runs", "--store", str(store), "--format", "csv"]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mine", "sibling"),
    [("a[1]", "a1"), ("x*/store", "xa/store"), ("q?[!]]", "qz!]")],
)
def test_a_store_with_glob_characters_reads_only_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mine: str, sibling: str
) -> None:
    """Two stores side by side whose paths a glob would confuse each see their own run only:
    the views, the history functions that read one run's folder, and `traintape runs`."""
    stores = {"mine": tmp_path / mine, "sibling": tmp_path / sibling}
    _fill(stores)
    for run_id, store in stores.items():
        con = connect(store)
        try:
            assert con.execute("SELECT run_id FROM runs").fetchall() == [(run_id,)]
            assert con.execute("SELECT DISTINCT run_id FROM metrics").fetchall() == [(run_id,)]
            assert history.run_names(con, [run_id]) == {run_id: f"name-{run_id}"}
            shown = history.show(con, run_id)
            assert shown["run"]["run_id"] == run_id
        finally:
            con.close()
        out = _runs_cli(store, capsys)
        assert run_id in out
        assert ({"mine", "sibling"} - {run_id}).pop() not in out


def test_literal_globs_match_only_the_path(tmp_path: Path) -> None:
    """`literal()` escapes every glob character DuckDB knows, so a pattern built on it finds the
    one folder, not its look-alikes."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["b[1]", "b1", "c*", "cc", "d?", "dd", "e[!]]", "e!]", "f[a-z]", "fq", "g{h,i}"]
    for name in names:
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"name": [name]}), tmp_path / name / "part.parquet")
    con = duckdb.connect()
    for name in names:
        pattern = literal(tmp_path / name) + "/*.parquet"
        assert con.execute("SELECT name FROM read_parquet(?)", [pattern]).fetchall() == [(name,)]


def test_a_store_path_with_a_backslash_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No DuckDB glob matches a backslash: connect() and the CLI say so instead of reading
    nothing (or failing with DuckDB's "no files found")."""
    store = tmp_path / "back\\slash"
    (store / "tables").mkdir(parents=True)
    with pytest.raises(UnreadablePathError, match="backslash"):
        connect(store)
    assert cli_main(["runs", "--store", str(store)]) == 1
    assert "backslash" in capsys.readouterr().err
