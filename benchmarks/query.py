"""How fast the history answers: DuckDB over a traintape store next to MLflow on sqlite.

    .venv/bin/python benchmarks/query.py            # quick: 100 runs, 10 million metric rows
    .venv/bin/python benchmarks/query.py --full     # 1,000 runs, 100 million rows (~10 min)
    .venv/bin/python benchmarks/query.py --runs 300 --rows 30000000 --mlflow-budget 60

The store is written directly with pyarrow in the layout the collector leaves after compaction
(`tables/<table>/<run>/compact-<start>-<end>.parquet`, metrics sorted by key, rank, step, with
compaction's own writer and row groups), not through the emitter. Each run has `--ranks` ranks
logging 8 training metrics every step and 2 eval metrics (val_loss, val_acc) every
`--eval-every` steps; run_start/run_end events and params (lr, batch, seed) make the `runs`,
`params` and `attempts` views real.

Questions, each timed as the `traintape` command asks it (the `traintape.read.history` function
behind it) and, where it differs, as plain SQL over the views; every timing opens a fresh
`traintape.connect()`, as one CLI call does; a warm-up first, then median and p99:

  best        best val_loss of every run, per step mean across ranks  (`traintape best`)
  best-dense  the same for `loss`, logged every step: the worst case, 12x the rows
  curve       loss of one run by step, rank 0                         (`traintape plot --per-rank`)
  by-step     loss of one run, mean across ranks per step             (`traintape plot`)

MLflow gets the same runs (rank r's metric k logged as `rank{r}/k`: MLflow has no ranks) in a
local sqlite store through `MlflowClient.log_batch` (1,000 metrics per call, its limit), as many
runs as fit in `--mlflow-budget` seconds of ingest. It answers with `get_metric_history` of each
rank's key of every run (best per run: the same answer) or of one run (curve, by-step), and with
`search_runs(order_by=metrics.rank0/val_loss)`, which is fast but ranks by the *last* value, not
the best. Per-run questions are compared directly; for "best", DuckDB is also timed on a store
holding only the runs MLflow holds, and MLflow's time, one query per run and rank, is scaled
linearly to all runs (marked as extrapolated).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from traintape import connect  # noqa: E402
from traintape.collector import compaction  # noqa: E402
from traintape.collector.materializer import ensure_empty_tables  # noqa: E402
from traintape.read import history  # noqa: E402
from traintape.schemas import tables  # noqa: E402

TRAIN_KEYS = ["loss", "acc", "lr", "grad_norm", "tokens_per_s", "loss_scale", "ppl", "mfu"]
EVAL_KEYS = ["val_loss", "val_acc"]


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the data --------------------------------------------------------------------------------


class Fleet:
    """Deterministic synthetic runs: every run's metric values come from its own seed.

    Training metrics are logged every step by every rank, eval metrics (val_loss, val_acc)
    every `eval_every` steps, as training scripts usually do.
    """

    def __init__(self, runs: int, rows: int, ranks: int, keys: int, eval_every: int) -> None:
        self.runs, self.ranks, self.eval_every = runs, ranks, eval_every
        n_eval = min(len(EVAL_KEYS), keys)
        train = TRAIN_KEYS + [f"m{i}" for i in range(len(TRAIN_KEYS), keys)]
        self.train_keys, self.eval_keys = train[: keys - n_eval], EVAL_KEYS[:n_eval]
        per_step = ranks * (len(self.train_keys) + len(self.eval_keys) / eval_every)
        self.steps = max(eval_every, int(rows / runs / per_step))
        self.rows_per_run = ranks * (
            self.steps * len(self.train_keys) + (self.steps // eval_every) * len(self.eval_keys)
        )

    def run_id(self, i: int) -> str:
        return f"{i:06d}{(i * 2654435761) % 16**6:06x}"

    def params(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng(i)
        return {
            "lr": float(10 ** rng.uniform(-4, -1)),
            "batch": int(2 ** rng.integers(4, 9)),
            "seed": i,
        }

    def metrics(self, i: int) -> pa.Table:
        """The run's rows, sorted by key, rank, step as compaction leaves them."""
        rng = np.random.default_rng(1_000_000 + i)
        floor = 0.1 + abs(np.log10(self.params(i)["lr"]) + 2.5) * 0.2  # lr ~3e-3 trains best
        n_s = self.steps
        all_steps = np.arange(n_s, dtype=np.int64)
        eval_steps = all_steps[self.eval_every - 1 :: self.eval_every]
        parts: dict[str, list[np.ndarray]] = {"step": [], "rank": [], "key": [], "value": []}
        for k, key in enumerate(self.train_keys + self.eval_keys):
            steps = all_steps if key in self.train_keys else eval_steps
            for r in range(self.ranks):
                decay = np.exp(-steps / max(1, n_s / 5))
                noise = rng.normal(0, 0.02, steps.size)
                parts["step"].append(steps)
                parts["rank"].append(np.full(steps.size, r, np.int32))
                parts["key"].append(np.full(steps.size, k, np.int32))
                parts["value"].append(floor + decay * (2.0 + k * 0.1) + noise)
        step, rank, key_idx, value = (np.concatenate(parts[c]) for c in parts)
        names = self.train_keys + self.eval_keys
        seq = step * len(names) + key_idx  # one event per step per rank carries every key
        ts = 1_700_000_000_000_000_000 + i * 10**12 + step * 10**8
        cols = {
            "run_id": pa.repeat(pa.scalar(self.run_id(i)), step.size),
            "rank": pa.array(rank),
            "source": pa.array([f"src{r}-{i}" for r in range(self.ranks)]).take(pa.array(rank)),
            "seq": pa.array(seq),
            "ts": tables.ts_from_ns(pa.array(ts, pa.int64())),
            "step": pa.array(step),
            "key": pa.array(names).take(pa.array(key_idx)),
            "value": pa.array(value),
        }
        data = pa.table([cols[f.name] for f in tables.METRICS], schema=tables.METRICS)
        return compaction.sort_for_storage("metrics", data)

    def events(self, i: int) -> pa.Table:
        run_id, p = self.run_id(i), self.params(i)
        rows: dict[str, list[Any]] = {f.name: [] for f in tables.EVENTS}
        t0 = 1_700_000_000_000_000_000 + i * 10**12
        for rank in range(self.ranks):
            start = {
                "project": f"bench{i % 3}",
                "name": f"run-{i}",
                "config": p,
                "tags": ["bench", f"shard{i % 10}"],
                "world_size": self.ranks,
                "environment": {"host": "bench", "rank": rank, "world_size": self.ranks},
            }
            end = {"status": "completed", "summary": {}}
            for kind, seq, ts, step, body in (
                ("run_start", 0, t0, None, start),
                (
                    "run_end",
                    self.steps * len(self.train_keys + self.eval_keys),
                    t0 + self.steps * 10**8,
                    None,
                    end,
                ),
            ):
                for name, v in zip(
                    ("run_id", "rank", "source", "seq", "ts", "step", "kind", "body"),
                    # Python ints in a TS column are microseconds (schemas/tables.py).
                    (run_id, rank, f"src{rank}-{i}", seq, ts // 1000, step, kind, json.dumps(body)),
                ):
                    rows[name].append(v)
        return pa.table(rows, schema=tables.EVENTS)

    def param_rows(self, i: int) -> pa.Table:
        p = self.params(i)
        n = len(p)
        return pa.table(
            {
                "run_id": [self.run_id(i)] * n,
                "rank": [0] * n,
                "source": [f"src0-{i}"] * n,
                "seq": [1] * n,
                "ts": tables.ts_from_ns(pa.array([1_700_000_000_000_000_000 + i * 10**12] * n)),
                "step": pa.array([None] * n, pa.int64()),
                "key": list(p),
                "value": [json.dumps(v) for v in p.values()],
                "value_num": [float(v) for v in p.values()],
            },
            schema=tables.PARAMS,
        )


def build_store(store: Path, fleet: Fleet) -> None:
    """Writes the fleet as compacted files, with the materializer cursor past all of them."""
    ensure_empty_tables(store)
    t0 = time.perf_counter()
    for i in range(fleet.runs):
        start, end = i * 1000, (i + 1) * 1000
        for table, data in (
            ("metrics", fleet.metrics(i)),
            ("events", fleet.events(i)),
            ("params", fleet.param_rows(i)),
        ):
            folder = store / "tables" / table / fleet.run_id(i)
            folder.mkdir(parents=True, exist_ok=True)
            compaction.write_parquet(
                data, folder / f"compact-{start:020d}-{end:020d}.parquet", table
            )
        if (i + 1) % max(1, fleet.runs // 10) == 0:
            progress(f"store: {i + 1}/{fleet.runs} runs, {time.perf_counter() - t0:.0f}s")
    (store / "state").mkdir(exist_ok=True)
    (store / "state" / "materializer.json").write_text(json.dumps({"position": fleet.runs * 1000}))


def subset_store(store: Path, out: Path, run_ids: list[str]) -> None:
    """A store with only `run_ids`: hard links to the same files."""
    ensure_empty_tables(out)
    for table in ("metrics", "events", "params"):
        for run_id in run_ids:
            src = store / "tables" / table / run_id
            dst = out / "tables" / table / run_id
            dst.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                os.link(f, dst / f.name)


def store_bytes(store: Path) -> int:
    return sum(f.stat().st_size for f in store.rglob("*.parquet"))


# -- timing ----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, float, Any]:
    """(median s, p99 s, median CPU s of this process, last result) after one warm-up call.

    CPU time is printed beside wall time because this machine is shared: under load, wall time
    grows while the work (CPU seconds, over DuckDB's threads) stays what it is.
    """
    result = fn()
    times, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter_ns(), time.process_time_ns()
        result = fn()
        times.append((time.perf_counter_ns() - t) / 1e9)
        cpu.append((time.process_time_ns() - c) / 1e9)
    times.sort()
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    return statistics.median(times), p99, statistics.median(cpu), result


QUESTIONS = [
    ("best val_loss per run", "best"),
    ("best loss per run (logged every step)", "best-dense"),
    ("curve: loss of one run, rank 0", "curve"),
    ("mean across ranks per step: loss of one run", "by-step"),
]


def duckdb_questions(store: Path, run_id: str) -> list[tuple[str, str, Callable[[], Any]]]:
    """(question, how, fn): each fn opens a fresh `traintape.connect()`, as one CLI call does."""

    def fresh(fn: Callable[[Any], Any]) -> Callable[[], Any]:
        def call() -> Any:
            con = connect(store)
            try:
                return fn(con)
            finally:
                con.close()

        return call

    q = history.rows
    return [
        ("connect", "traintape.connect() alone", fresh(lambda c: [1])),
        (
            "best",
            "traintape best (history.best_runs)",
            fresh(lambda c: history.best_runs(c, "val_loss")),
        ),
        (
            "best",
            "SQL on the metrics_by_step view",
            fresh(
                lambda c: q(
                    c,
                    "SELECT run_id, min(mean) FROM metrics_by_step WHERE key = 'val_loss' "
                    "AND isfinite(mean) GROUP BY run_id",
                )
            ),
        ),
        (
            "best-dense",
            "traintape best (history.best_runs)",
            fresh(lambda c: history.best_runs(c, "loss")),
        ),
        (
            "curve",
            "traintape plot --per-rank (history.curves)",
            fresh(lambda c: history.curves(c, [run_id], ["loss"], per_rank=True)),
        ),
        (
            "curve",
            "SQL on the metrics view, rank = 0",
            fresh(
                lambda c: q(
                    c,
                    "SELECT step, value FROM metrics WHERE run_id = ? AND key = 'loss' "
                    "AND rank = 0 ORDER BY step",
                    [run_id],
                )
            ),
        ),
        (
            "by-step",
            "traintape plot (history.curves)",
            fresh(lambda c: history.curves(c, [run_id], ["loss"])),
        ),
        (
            "by-step",
            "SQL on the metrics_by_step view",
            fresh(
                lambda c: q(
                    c,
                    "SELECT step, mean FROM metrics_by_step WHERE run_id = ? AND key = 'loss' "
                    "ORDER BY step",
                    [run_id],
                )
            ),
        ),
    ]


# -- MLflow ----------------------------------------------------------------------------------


def mlflow_ingest(root: Path, fleet: Fleet, budget_s: float) -> tuple[Any, list[str], float]:
    """Logs fleet runs into sqlite until `budget_s` is spent; returns (client, run ids, s/run).

    A store ingested by an earlier call with the same `root` (and fleet) is reused."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    done = root / "ingested.json"
    if done.exists():
        saved = json.loads(done.read_text())
        progress(f"mlflow: reusing {len(saved['ids'])} runs in {root}")
        return MlflowClient(), saved["ids"], saved["s_per_run"]
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    client = MlflowClient()
    exp = client.create_experiment("bench", artifact_location=str(root / "artifacts"))
    ids: list[str] = []
    t0 = time.perf_counter()
    per_run = []
    for i in range(fleet.runs):
        t = time.perf_counter()
        data = fleet.metrics(i)
        run = client.create_run(exp, run_name=f"run-{i}", tags={"traintape_id": fleet.run_id(i)})
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in fleet.params(i).items()])
        metrics = [
            Metric(f"rank{r}/{k}", v, ts, s)
            for r, k, v, ts, s in zip(
                data.column("rank").to_pylist(),
                data.column("key").to_pylist(),
                data.column("value").to_pylist(),
                (data.column("ts").cast(pa.int64()).to_numpy() // 10**6).tolist(),
                data.column("step").to_pylist(),
            )
        ]
        for j in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[j : j + 1000])
        client.set_terminated(run_id)
        ids.append(run_id)
        per_run.append(time.perf_counter() - t)
        spent = time.perf_counter() - t0
        progress(f"mlflow: {len(ids)} runs ingested, {spent:.0f}s")
        if spent + statistics.median(per_run) > budget_s:
            break
    done.write_text(json.dumps({"ids": ids, "s_per_run": statistics.median(per_run)}))
    return client, ids, statistics.median(per_run)


def mlflow_questions(
    client: Any, ids: list[str], run_id: str, ranks: int
) -> list[tuple[str, str, Callable[[], Any], bool]]:
    """(question, how, fn, scales with the number of runs)."""
    exp = client.get_run(ids[0]).info.experiment_id

    def rank_mean(run: str, key: str) -> dict[int, float]:
        per_step: dict[int, list[float]] = {}
        for r in range(ranks):
            for m in client.get_metric_history(run, f"rank{r}/{key}"):
                per_step.setdefault(m.step, []).append(m.value)
        return {s: sum(v) / len(v) for s, v in per_step.items()}

    def best(key: str) -> Callable[[], Any]:
        return lambda: [(r, min(rank_mean(r, key).values())) for r in ids]

    return [
        ("best", "get_metric_history x ranks per run", best("val_loss"), True),
        (
            "best",
            "search_runs order_by (LAST value, rank 0)",
            lambda: client.search_runs(
                [exp], order_by=["metrics.`rank0/val_loss` ASC"], max_results=len(ids)
            ),
            False,
        ),
        ("best-dense", "get_metric_history x ranks per run", best("loss"), True),
        (
            "curve",
            "get_metric_history",
            lambda: client.get_metric_history(run_id, "rank0/loss"),
            False,
        ),
        (
            "by-step",
            "get_metric_history x ranks, mean in Python",
            lambda: sorted(rank_mean(run_id, "loss").items()),
            False,
        ),
    ]


# -- main ------------------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms" if seconds < 10 else f"{seconds:9.1f} s "


@dataclass
class Row:
    question: str
    engine: str
    how: str
    median: float
    p99: float
    cpu: float | None
    rows: str


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--rows", type=int, default=10_000_000, help="metric rows in all")
    p.add_argument("--full", action="store_true", help="1,000 runs, 100 million rows")
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--keys", type=int, default=10, help="metrics per rank (2 of them eval)")
    p.add_argument("--eval-every", type=int, default=10, metavar="N", help="steps between evals")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--mlflow-budget", type=float, default=120.0, metavar="S")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--dir", help="work folder, reused by later runs (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = p.parse_args()
    if args.full:
        args.runs, args.rows = 1000, 100_000_000
    fleet = Fleet(args.runs, args.rows, args.ranks, args.keys, args.eval_every)
    root = Path(args.dir or tempfile.mkdtemp(prefix="traintape-query-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    store = root / "store"
    try:
        shape = (
            f"{fleet.ranks} ranks x {fleet.steps} steps x {len(fleet.train_keys)} metrics, "
            f"+ {len(fleet.eval_keys)} eval metrics every {fleet.eval_every} steps"
        )
        marker = root / "fleet.json"
        shaping = {k: vars(args)[k] for k in ("runs", "rows", "ranks", "keys", "eval_every")}
        if marker.exists() and json.loads(marker.read_text()) == shaping:
            progress(f"reusing {store}")
        else:
            for old in (store, root / "mlflow"):
                shutil.rmtree(old, ignore_errors=True)
            progress(f"building {fleet.runs} runs x {fleet.rows_per_run:,} rows ({shape})")
            build_store(store, fleet)
            marker.write_text(json.dumps(shaping))
        con = connect(store)
        total = con.execute("SELECT count(*) FROM metrics").fetchone()[0]
        con.close()
        size = store_bytes(store)
        results: list[Row] = []
        full = f"DuckDB, {fleet.runs} runs"

        progress(f"DuckDB: {fleet.runs} runs")
        for question, how, fn in duckdb_questions(store, fleet.run_id(fleet.runs // 2)):
            med, p99, cpu, res = timed(fn, args.repeat)
            results.append(Row(question, full, how, med, p99, cpu, f"{len(res)}"))

        mlflow_runs = 0
        if not args.no_mlflow:
            progress(f"MLflow: ingest for up to {args.mlflow_budget:.0f}s")
            client, ids, s_per_run = mlflow_ingest(root / "mlflow", fleet, args.mlflow_budget)
            mlflow_runs = len(ids)
            same = f"DuckDB, {mlflow_runs} runs"
            sub = root / "store-subset"
            shutil.rmtree(sub, ignore_errors=True)
            subset_store(store, sub, [fleet.run_id(i) for i in range(mlflow_runs)])
            progress(f"DuckDB on the {mlflow_runs} runs MLflow holds")
            for question, how, fn in duckdb_questions(sub, fleet.run_id(mlflow_runs // 2)):
                if how.startswith("traintape"):
                    med, p99, cpu, res = timed(fn, args.repeat)
                    results.append(Row(question, same, how, med, p99, cpu, f"{len(res)}"))
            progress("MLflow queries")
            scale = fleet.runs / mlflow_runs
            mq = mlflow_questions(client, ids, ids[mlflow_runs // 2], fleet.ranks)
            for question, how, fn, scales in mq:
                med, p99, cpu, res = timed(fn, 3 if scales else args.repeat)
                engine = f"MLflow, {mlflow_runs} runs"
                results.append(Row(question, engine, how, med, p99, cpu, f"{len(res)}"))
                if scales:
                    engine = f"MLflow, {fleet.runs} runs (x{scale:.0f})"
                    how = "  the same, extrapolated linearly"
                    results.append(Row(question, engine, how, med * scale, p99 * scale, None, ""))
            print(
                f"\nMLflow ingest (log_batch, sqlite): {mlflow_runs} runs of "
                f"{fleet.rows_per_run:,} rows at ~{s_per_run:.1f} s per run "
                f"({fleet.rows_per_run / s_per_run:,.0f} rows/s); all {fleet.runs} runs would take "
                f"~{s_per_run * fleet.runs / 60:.0f} min"
            )

        print(
            f"\nstore: {fleet.runs} runs ({shape}), {total:,} metric rows, "
            f"{size / 2**20:,.0f} MiB of Parquet; {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f} (other work on the machine stretches wall times, not CPU)\n"
            f"each DuckDB timing opens a fresh traintape.connect(), as one CLI call does; "
            f"median and p99 of {args.repeat} after a warm-up (MLflow's loops over runs: 3)\n"
        )
        print(
            f"{'question':44s} {'engine':24s} {'how':42s} {'median':>12s} {'p99':>12s} "
            f"{'CPU':>12s}  rows"
        )
        labels = {k: v for v, k in QUESTIONS} | {"connect": "(connect)"}
        for r in results:
            cpu = fmt_s(r.cpu) if r.cpu is not None else ""
            print(
                f"{labels[r.question]:44s} {r.engine:24s} {r.how:42s} {fmt_s(r.median)} "
                f"{fmt_s(r.p99)} {cpu:>12s}  {r.rows}"
            )

        def pick(question: str, engine: str, how_prefix: str = "") -> Row:
            return next(
                r
                for r in results
                if r.question == question and r.engine == engine and r.how.startswith(how_prefix)
            )

        ours = {q: pick(q, full, "traintape") for _, q in QUESTIONS}
        slowest = max(ours.values(), key=lambda r: r.median)
        print(
            f"\ntarget, each question under 1 s as the traintape command asks it: "
            f"{'met' if slowest.median < 1 else 'MISSED'} (slowest: "
            f"{labels[slowest.question]}, {slowest.median * 1000:.0f} ms)"
        )
        if mlflow_runs:
            print("\nMLflow time / traintape time, same question (> 1: traintape is faster):")
            for label, q in QUESTIONS:
                theirs = pick(q, f"MLflow, {mlflow_runs} runs").median
                line = (
                    f"  {label:44s} {theirs / pick(q, same).median:7.1f}x, {mlflow_runs} runs each"
                )
                if q.startswith("best"):
                    at_scale = theirs * scale / ours[q].median
                    line += f"; {at_scale:7.1f}x at {fleet.runs} runs (MLflow extrapolated)"
                print(line)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep:
            progress(f"kept {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
