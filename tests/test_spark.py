"""Spark reads the store: pyspark (local mode, no traintape, no special settings) over the Parquet
files a real collector wrote gives the same rows as DuckDB, and the README's four example
questions (in Spark SQL as docs/scale.md writes them) the same answers as `traintape.connect()`.

Spark starts a JVM (seconds), so one SparkSession serves the module.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import traintape
from tests.conftest import REPO, CollectorProcess
from traintape.emitter import Emitter

pytestmark = [
    pytest.mark.slow,
    # pyspark's own import-time notice about pandas 3, which these tests do not use.
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

STEPS = 12
RUNS = {"sparkrun0001": 2, "sparkrun0002": 3}  # run_id -> ranks
CURVE_RUN = "sparkrun0002"

# The Spark side of docs/scale.md, verbatim (test_scale_doc_shows_these checks it does).
SPARK_VIEWS = [
    """CREATE OR REPLACE TEMP VIEW metrics_by_step AS
SELECT run_id, step, key, avg(value) AS mean, min(value) AS min, max(value) AS max,
       count(*) AS count
FROM metrics GROUP BY run_id, step, key""",
    """CREATE OR REPLACE TEMP VIEW params AS
SELECT run_id, key, max_by(value, struct(ts, seq)) AS value,
       max_by(value_num, struct(ts, seq)) AS value_num, max(ts) AS ts
FROM params_rows GROUP BY run_id, key""",
]

# The README's four questions: (DuckDB over traintape.connect(), Spark SQL), `{run}` a run id.
QUESTIONS = {
    "best run": (
        """SELECT run_id, min(mean) AS best_val_loss FROM metrics_by_step
WHERE key = 'val_loss' AND isfinite(mean) GROUP BY run_id ORDER BY best_val_loss LIMIT 1""",
        """SELECT run_id, min(mean) AS best_val_loss FROM metrics_by_step
WHERE key = 'val_loss' AND NOT isnan(mean) AND abs(mean) != double('inf')
GROUP BY run_id ORDER BY best_val_loss LIMIT 1""",
    ),
    "curve": (
        """SELECT step, value FROM metrics WHERE run_id = '{run}' AND key = 'loss' AND rank = 0
ORDER BY step""",
        """SELECT step, value FROM metrics WHERE run_id = '{run}' AND key = 'loss' AND rank = 0
ORDER BY step""",
    ),
    "params of the top 5": (
        """WITH top AS (SELECT run_id, min(mean) AS best FROM metrics_by_step WHERE key = 'val_loss'
             GROUP BY run_id ORDER BY best LIMIT 5)
SELECT t.run_id, t.best, p.key, p.value FROM top t JOIN params p USING (run_id)
ORDER BY t.best, p.key""",
        """WITH top AS (SELECT run_id, min(mean) AS best FROM metrics_by_step WHERE key = 'val_loss'
             GROUP BY run_id ORDER BY best LIMIT 5)
SELECT t.run_id, t.best, p.key, p.value FROM top t JOIN params p USING (run_id)
ORDER BY t.best, p.key""",
    ),
    "mean across ranks": (
        """SELECT step, mean, min, max, count FROM metrics_by_step
WHERE run_id = '{run}' AND key = 'loss' ORDER BY step""",
        """SELECT step, mean, min, max, count FROM metrics_by_step
WHERE run_id = '{run}' AND key = 'loss' ORDER BY step""",
    ),
}


def _val_loss(run: int, rank: int, step: int) -> float:
    if run == 0 and rank == 1 and step == 5:
        return math.nan  # a NaN on one rank: that step's mean is NaN, left out of "best"
    return 1.0 / (step + 1) + 0.1 * run + 0.01 * rank


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two finished runs (2 and 3 ranks) through real collectors: loss, val_loss with a NaN
    and an Inf, params logged twice (the later value wins), and a text event. Odd ranks log to
    a second collector on the same store (`--collector-id node-b`, a node of its own), so its
    run folders (`<run>@node-b`) are read as well."""
    store = tmp_path_factory.mktemp("spark") / "store"
    proc = CollectorProcess(store).start()
    node_b = CollectorProcess(store, collector_id="node-b").start()
    try:
        for run, (run_id, ranks) in enumerate(RUNS.items()):
            emitters = []
            for rank in range(ranks):
                os.environ.update(RANK=str(rank), WORLD_SIZE=str(ranks))
                try:
                    emitters.append(
                        Emitter(
                            "spark",
                            f"run{run}",
                            {"lr": 0.1 * (run + 1)},
                            run_id=run_id,
                            store=store,
                            address=node_b.address if rank % 2 else None,
                        )
                    )
                finally:
                    del os.environ["RANK"], os.environ["WORLD_SIZE"]
            emitters[0].log_params({"warmup": 10, "opt": "sgd"})
            for rank, em in enumerate(emitters):
                for step in range(STEPS):
                    em.log({"loss": 2.0 / (step + 1) + rank + run, "lr": 0.1}, step=step)
                    if step % 3 == 2:
                        em.log({"val_loss": _val_loss(run, rank, step)}, step=step)
                em.log({"val_loss": math.inf}, step=STEPS)
                em.log_text("note", f"rank {rank} done")
            emitters[0].log_params({"warmup": 20 + run})
            for em in emitters:
                report = em.finish()
                assert report.visible, report
    finally:
        proc.stop()
        node_b.stop()
    assert any((store / "tables" / "metrics").glob("*@node-b"))
    yield store


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local SparkSession for the module (its JVM takes seconds to start)."""
    if shutil.which("java") is None:
        pytest.skip("no Java runtime: `make test` installs Debian's default-jre-headless (apt)")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("traintape-tests")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


def _spark_tables(spark: Any, store: Path) -> None:
    """The temp views of docs/scale.md over the store's files, as its Spark example reads them."""
    for table, view in (("metrics", "metrics"), ("params", "params_rows"), ("events", "events")):
        spark.read.parquet(f"{store}/tables/{table}/*/*.parquet").createOrReplaceTempView(view)
    for sql in SPARK_VIEWS:
        spark.sql(sql)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12)
    return bool(a == b)


def _assert_rows_equal(spark_rows: list[tuple], duck_rows: list[tuple], what: str) -> None:
    assert len(spark_rows) == len(duck_rows), what
    for s, d in zip(spark_rows, duck_rows):
        assert len(s) == len(d) and all(map(_same, s, d)), f"{what}: {s} != {d}"


@pytest.mark.parametrize("table", ["metrics", "params", "events", "system"])
def test_spark_reads_every_column_of_every_table(spark: Any, store: Path, table: str) -> None:
    """Spark reads every stored table with a plain `spark.read.parquet(glob)`, and every column
    of every row equals DuckDB's reading of the same files (`ts` to the microsecond)."""
    files = f"{store}/tables/{table}/*/*.parquet"
    df = spark.read.parquet(files)
    cols = [c for c in df.columns if c != "ts"]
    # NULLS FIRST spelled out: DuckDB's default puts them last, Spark's first.
    first = ["run_id", "source", "seq"]
    keys = ", ".join(f"{c} NULLS FIRST" for c in first + [c for c in cols if c not in first])
    df.createOrReplaceTempView(f"all_{table}")
    got = [
        tuple(r)
        for r in spark.sql(
            f"SELECT {', '.join(cols)}, unix_micros(ts) FROM all_{table} ORDER BY {keys}"
        ).collect()
    ]
    con = traintape.connect(store)
    want = con.execute(
        f"SELECT {', '.join(cols)}, epoch_us(ts) FROM read_parquet('{files}') ORDER BY {keys}"
    ).fetchall()
    if table != "system":  # the collector samples system metrics on its own schedule
        assert want, f"no {table} rows written"
    _assert_rows_equal(got, want, table)


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_spark_answers_the_readme_questions_as_duckdb(
    spark: Any, store: Path, question: str
) -> None:
    """Each of the README's example questions, asked in Spark SQL over the files, has the same
    answer as in DuckDB over traintape.connect()'s views."""
    duck_sql, spark_sql = (q.format(run=CURVE_RUN) for q in QUESTIONS[question])
    _spark_tables(spark, store)
    want = traintape.connect(store).execute(duck_sql).fetchall()
    got = [tuple(r) for r in spark.sql(spark_sql).collect()]
    assert want, question
    _assert_rows_equal(got, want, question)


def test_spark_answers_are_the_logged_values(spark: Any, store: Path) -> None:
    """The answers are the logged values, not two engines agreeing on something else: the best
    run by val_loss, and the params view's latest `warmup` per run (logged twice)."""
    _spark_tables(spark, store)
    best = spark.sql(QUESTIONS["best run"][1]).collect()
    means = {
        run_id: min(
            sum(_val_loss(run, r, s) for r in range(ranks)) / ranks
            for s in range(2, STEPS, 3)
            if not any(math.isnan(_val_loss(run, r, s)) for r in range(ranks))
        )
        for run, (run_id, ranks) in enumerate(RUNS.items())
    }
    want_run = min(means, key=means.__getitem__)
    assert [tuple(r) for r in best] == [(want_run, pytest.approx(means[want_run]))]
    warmup = spark.sql("SELECT run_id, value FROM params WHERE key = 'warmup' ORDER BY run_id")
    assert [tuple(r) for r in warmup.collect()] == [(r, str(20 + i)) for i, r in enumerate(RUNS)]


def test_scale_doc_shows_these() -> None:
    """docs/scale.md shows the Spark SQL this module runs, verbatim, and the README links it."""
    doc = (REPO / "docs" / "scale.md").read_text()
    for sql in SPARK_VIEWS + [q[1].format(run="a1b2c3d4e5f6") for q in QUESTIONS.values()]:
        assert sql in doc, sql
    assert "docs/scale.md" in (REPO / "README.md").read_text()
