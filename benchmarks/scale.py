"""A collector per node: 1, 2 and 4 collectors on one store root, 2 emitters each.

    .venv/bin/python benchmarks/scale.py            # 1, 2, 4 collectors and the 1-collector
                                                    #   baselines, 100,000 events per emitter
    .venv/bin/python benchmarks/scale.py --quick    # 1, 2, 4 collectors, smaller, < 1 minute
    .venv/bin/python benchmarks/scale.py --collectors 1,2 --steps 50000

Each configuration is one run whose ranks span the collectors, as a multi-node job's do: rank r
logs to collector `node-<r // 2>` over its own ipc:// socket ($TRAINTAPE_COLLECTOR_ID picks it),
every rank `--steps` events of `--metrics` floats as fast as it can. Measured:

values/s acked     all ranks' metric values / seconds from the first timed `log` to the last
                   `finish()` (every event fsync'd in its collector's journal), and per collector
values/s visible   the same until `select count(*) from metrics` counts every row (exact: zero
                   lost, zero twice, checked)
query ms           a fresh `traintape.connect()` then the question, over every collector's files:
                   `count` (count(*) of metrics), `best` (best mean of a metric per run, the
                   README's question over metrics_by_step), `runs` (the runs view); median of 5
                   after a warm-up
files, bytes       Parquet files and bytes the collectors wrote (before any compaction) and
                   journal bytes, per million values (random doubles: no repeats for zstd to
                   fold), and the Parquet bytes again after compaction: what the paper
                   figures in docs/scale.md scale up
compaction         then each collector's compaction of its own run folders, timed in this
                   process: part bytes merged per second

The baseline rows (not with --quick) are today's shape on this machine: the same number of ranks
all logging to one collector (the store's own, no id); `x 1 collector` is each row's values/s
over that baseline's, measured in the same run (with --quick, over the 1-collector row).
This machine has 2 cores: 4 collectors and 8 emitters share them, so the figures per collector
are the floor of what one node's collector does on its own cores. Everything is written under a
temporary folder removed at the end; the only processes this script ends are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector_process import Collector, start_together, wait_visible
from result_table import print_table

REPO = Path(__file__).resolve().parents[1]
EMITTERS_PER_COLLECTOR = 2
WARM_UP_STEPS = 200
RING = 1 << 16
QUESTIONS = {
    "count": "SELECT count(*) FROM metrics",
    "best": "SELECT run_id, min(mean) AS best FROM metrics_by_step WHERE key = 'metric_0' "
    "AND isfinite(mean) GROUP BY run_id ORDER BY best LIMIT 1",
    "runs": "SELECT * FROM runs",
}


# -- worker processes -------------------------------------------------------------------------


def worker(folder: Path, steps: int, metrics: int, seed: int) -> int:
    """One rank: set up, say "ready", wait for "go", log, finish (acknowledged), report."""
    from traintape import emitter

    rng = random.Random(seed)
    keys = [f"metric_{i}" for i in range(metrics)]
    # Values never repeat within a run of up to RING steps: Parquet's bytes are those of real
    # (incompressible) doubles, not of a few rows zstd folds away.
    ring = [{k: rng.random() for k in keys} for _ in range(min(steps + WARM_UP_STEPS, RING))]
    emitter.init(project="scale", store=folder)  # run id, rank, collector: from the environment
    for step in range(WARM_UP_STEPS):  # imports, first connection, first batch
        emitter.log(ring[step % len(ring)], step)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter_ns()
    for step in range(steps):
        emitter.log(ring[(step + WARM_UP_STEPS) % len(ring)], step + WARM_UP_STEPS)
    t_logged = time.perf_counter_ns()
    report = emitter.finish(timeout=600, wait_visible=False)
    t_done = time.perf_counter_ns()
    out = {"t0": t0, "t_logged": t_logged, "t_done": t_done, "acked": report.acked}
    print(json.dumps(out), flush=True)
    return 0


def run_ranks(store: Path, run_id: str, collectors: list[str | None], args: Any) -> list[dict]:
    """The run's ranks, EMITTERS_PER_COLLECTOR per collector, started together by a "go"."""
    world = len(collectors) * EMITTERS_PER_COLLECTOR
    children = []
    for rank in range(world):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINTAPE_")}
        env |= {"TRAINTAPE_RUN_ID": run_id, "RANK": str(rank), "WORLD_SIZE": str(world)}
        collector = collectors[rank // EMITTERS_PER_COLLECTOR]
        if collector is not None:
            env["TRAINTAPE_COLLECTOR_ID"] = collector
        argv = [sys.executable, __file__, "--worker", "--folder", str(store)]
        argv += ["--steps", str(args.steps), "--metrics", str(args.metrics), "--seed", str(rank)]
        children.append(
            subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
            )
        )
    return start_together(children)


# -- one configuration ------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    collectors: int
    emitters: int
    values: int
    acked_s: float
    visible_s: float | None = None
    extra_rows: int | None = None
    query_ms: dict[str, float] = field(default_factory=dict)
    parquet_files: int = 0
    parquet_bytes: int = 0
    journal_bytes: int = 0
    compacted_bytes: int = 0
    compaction_mb_s: float | None = None


def measure(root: Path, label: str, collectors: list[str | None], args: Any) -> Result:
    import traintape

    name = "".join(c if c.isalnum() else "-" for c in label)
    store = root / f"store-{name}"
    ids = list(dict.fromkeys(collectors))  # each collector once
    procs = [Collector(store, "--system-interval", "0", cwd=REPO, collector_id=c) for c in ids]
    try:
        reports = run_ranks(store, f"scale-{name}", collectors, args)
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    emitters = len(collectors) * EMITTERS_PER_COLLECTOR
    t0 = min(r["t0"] for r in reports)
    t_done = max(r["t_done"] for r in reports)
    values = emitters * args.steps * args.metrics
    result = Result(label, len(ids), emitters, values, (t_done - t0) / 1e9)
    expected = emitters * (args.steps + WARM_UP_STEPS) * args.metrics
    rows, result.visible_s = wait_visible(traintape, store, expected, t0)
    result.extra_rows = rows - expected  # 0: nothing lost, nothing twice
    result.query_ms = _time_questions(traintape, store)
    data = _data_files(store)
    result.parquet_files = len(data)
    result.parquet_bytes = sum(f.stat().st_size for f in data)
    result.journal_bytes = sum(f.stat().st_size for f in store.glob("**/journal/*.log"))
    for proc in procs:  # all stop at once
        proc.proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.stop()
    result.compaction_mb_s = _compaction_rate(store, ids)
    result.compacted_bytes = sum(f.stat().st_size for f in _data_files(store))
    return result


def _data_files(store: Path) -> list[Path]:
    files = (store / "tables").glob("*/*/*.parquet")
    return [f for f in files if f.parent.name != "_empty"]


def _time_questions(traintape: Any, store: Path, repeat: int = 5) -> dict[str, float]:
    """Median ms of each question, a fresh connection each time (as one CLI call), after a
    warm-up (the OS's file cache, DuckDB's first plan)."""
    out = {}
    for name, sql in QUESTIONS.items():
        times = []
        for i in range(repeat + 1):
            t = time.perf_counter_ns()
            con = traintape.connect(store)
            con.execute(sql).fetchall()
            con.close()
            if i:
                times.append((time.perf_counter_ns() - t) / 1e6)
        out[name] = statistics.median(times)
    return out


def _compaction_rate(store: Path, collectors: list[str | None]) -> float | None:
    """Each collector's compaction of its own folders (as its compaction thread does, one after
    the other here): part bytes merged per second of merging, in MB/s."""
    from traintape.collector.compaction import Compactor, committed_position
    from traintape.layout import StoreLayout

    merged = 0
    seconds = 0.0
    for c in collectors:
        layout = StoreLayout(store, c)
        parts = {f: f.stat().st_size for f in layout.run_files("part-*.parquet")}
        compactor = Compactor(store, collector=c, log=lambda text: None)
        t = time.perf_counter()
        compactor.compact_all(committed_position(layout.home))
        seconds += time.perf_counter() - t
        merged += sum(size for f, size in parts.items() if not f.exists())
    return merged / seconds / 1e6 if merged else None  # None: nothing to merge


# -- report -----------------------------------------------------------------------------------


def _baseline(results: list[Result], r: Result) -> Result:
    """One collector with as many emitters as `r` if measured, else the first 1-collector row."""
    ones = [b for b in results if b.collectors == 1]
    return next((b for b in ones if b.emitters == r.emitters), ones[0] if ones else results[0])


def report(results: list[Result], metrics: int) -> None:
    rows = []
    for r in results:
        base = _baseline(results, r)
        rate = r.values / r.acked_s
        visible = r.values / r.visible_s if r.visible_s else None
        per_million = 1e6 / r.values
        rows.append(
            [
                r.label,
                str(r.collectors),
                str(r.emitters),
                f"{r.values:,}",
                f"{rate:,.0f}",
                f"{rate / r.collectors:,.0f}",
                f"{rate / (base.values / base.acked_s):.2f}",
                f"{visible:,.0f}" if visible else "no",
                f"{visible / r.collectors:,.0f}" if visible else "–",
                "0" if r.extra_rows == 0 else f"{r.extra_rows:+,}",
                " / ".join(f"{r.query_ms[q]:.0f}" for q in QUESTIONS),
                f"{r.parquet_files * per_million:,.0f}",
                f"{r.parquet_bytes * per_million / 2**20:.2f}",
                f"{r.compacted_bytes * per_million / 2**20:.2f}",
                f"{r.journal_bytes * per_million / 2**20:.2f}",
                f"{r.compaction_mb_s:.0f}" if r.compaction_mb_s else "–",
            ]
        )
    print(f"\n### A collector per node: one store root, {metrics} floats per event\n")
    print_table(
        [
            "configuration",
            "collectors",
            "emitters",
            "metric values",
            "values/s acked",
            "per collector",
            "× 1 collector",
            "values/s visible",
            "per collector",
            "lost/extra rows",
            f"query ms ({' / '.join(QUESTIONS)})",
            "Parquet files / M values",
            "Parquet MiB / M values",
            "compacted",
            "journal MiB / M values",
            "compaction MB/s",
        ],
        rows,
    )
    print(
        "\n`× 1 collector`: values/s acked over one collector's with as many emitters (without "
        "that baseline, --quick: the 1-collector row's), measured in the same run. Acked: from the "
        "first timed `log` until the last `finish()` returned (every event fsync'd in its "
        "collector's journal); visible: until DuckDB counted every row of every collector. "
        "Query: a fresh `traintape.connect()` and the question (median of 5): "
        + "; ".join(f"`{k}`: {v}" for k, v in QUESTIONS.items())
        + ". Files and bytes: what the collectors' materializers wrote before compaction (0.5 s "
        "chunks), per million values; compaction: part bytes merged per second of merging."
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--collectors", default="1,2,4", help="collector counts (default 1,2,4)")
    p.add_argument("--steps", type=int, default=100_000, help="events per emitter")
    p.add_argument("--metrics", type=int, default=10, help="floats per event")
    p.add_argument("--quick", action="store_true", help="fewer steps, no baseline rows")
    p.add_argument("--no-baseline", action="store_true", help="no 1-collector baseline rows")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(Path(args.folder), args.steps, args.metrics, args.seed)
    if args.quick:
        args.steps = 10_000
    counts = [int(n) for n in args.collectors.split(",")]
    root = Path(tempfile.mkdtemp(prefix="traintape-scale-"))
    results: list[Result] = []
    baseline = not (args.quick or args.no_baseline)
    try:
        for n in counts:
            ids: list[str | None] = [f"node-{i}" for i in range(n)]
            print(f"{n} collector(s), {n * EMITTERS_PER_COLLECTOR} emitters", file=sys.stderr)
            results.append(measure(root, f"{n} collector(s)", ids, args))
            if baseline and n > 1:  # today's shape: every rank to one collector
                print(f"1 collector, {n * EMITTERS_PER_COLLECTOR} emitters", file=sys.stderr)
                label = f"1 collector, {n * EMITTERS_PER_COLLECTOR} emitters"
                results.append(measure(root, label, [None] * n, args))
        report(results, args.metrics)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
