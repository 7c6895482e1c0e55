"""Sustained ingest with and without sinks, beside MLflow and W&B fed straight from training.

    .venv/bin/python benchmarks/throughput.py                 # the full run, a few minutes
    .venv/bin/python benchmarks/throughput.py --quick         # smaller, about a minute
    .venv/bin/python benchmarks/throughput.py --procs 1,2 --steps 50000

For 1, 2 and 4 emitter processes (each its own run, so each sink gets every value), each
logging `--steps` events of `--metrics` floats as fast as it can:

traintape         a collector with no sink: metric values/s until every `finish()` returned
                  (each event acknowledged, i.e. fsync'd in the journal) and until DuckDB counts
                  every row (zero loss is checked: the count must be exact).
traintape+sinks   the same with TensorBoard, MLflow (sqlite in the store) and W&B (offline) on:
                  the same two rates, each sink's lag (journal events not yet passed) when the
                  last `finish()` returned, and how long each then took to catch up (capped at
                  `--catch-up` s; what is left is printed).
mlflow direct     the processes call `mlflow.log_metrics(..., step=)` (synchronous, one sqlite file
                  each) and `wandb direct` `run.log(..., step=)` (offline) themselves, for
                  `--direct-steps` steps: values/s until their run is finished.

Every figure is printed with its ratio to traintape with no sink, measured in the same run.
Everything is written under a temporary folder that is removed at the end; the only processes
this script ends are the collectors and workers it started itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
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
SINKS = ("tensorboard", "mlflow", "wandb")


# -- worker processes -------------------------------------------------------------------------


def _ring(metrics: int, seed: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    keys = [f"metric_{i}" for i in range(metrics)]
    return [{k: rng.random() for k in keys} for _ in range(64)]


def worker(mode: str, folder: Path, steps: int, metrics: int, seed: int) -> int:
    """One training-process stand-in: set up, say "ready", wait for "go", log, finish, report."""
    ring = _ring(metrics, seed)
    if mode == "traintape":
        from traintape import emitter

        emitter.init(project="throughput", name=f"proc-{seed}", store=folder)
        log = emitter.log

        def finish() -> Any:
            # Until every event is acknowledged; visibility in DuckDB is timed apart.
            return emitter.finish(timeout=600, wait_visible=False)

    elif mode == "mlflow":
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{folder / f'mlflow-{seed}.db'}")
        mlflow.set_experiment("throughput")
        mlflow.start_run(run_name=f"proc-{seed}")

        def log(values: dict[str, float], step: int) -> None:
            mlflow.log_metrics(values, step=step)

        finish = mlflow.end_run
    else:
        import wandb

        run = wandb.init(
            project="throughput",
            name=f"proc-{seed}",
            dir=str(folder),
            settings=wandb.Settings(mode="offline", silent=True, console="off"),
        )
        log = run.log
        finish = run.finish
    for step in range(min(200, steps)):  # warm-up: imports, first connection, first batch
        log(ring[step & 63], step)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter_ns()
    for step in range(steps):
        log(ring[step & 63], step + 200)
    t_logged = time.perf_counter_ns()
    report = finish()
    t_done = time.perf_counter_ns()
    out = {"t0": t0, "t_logged": t_logged, "t_done": t_done}
    if mode == "traintape":
        out.update(acked=report.acked, spooled=report.spooled)
    print(json.dumps(out), flush=True)
    return 0


def run_workers(mode: str, folder: Path, procs: int, steps: int, metrics: int) -> list[dict]:
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                mode,
                "--folder",
                str(folder),
                "--steps",
                str(steps),
                "--metrics",
                str(metrics),
                "--seed",
                str(i),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "WANDB_SILENT": "true", "WANDB_MODE": "offline"},
        )
        for i in range(procs)
    ]
    return start_together(children)


@dataclass
class Result:
    mode: str
    procs: int
    values: int
    acked_s: float
    visible_s: float | None = None
    rows: int | None = None
    lag_at_end: dict[str, int | None] = field(default_factory=dict)
    catch_up_s: dict[str, float | None] = field(default_factory=dict)
    sink_rate: dict[str, float] = field(default_factory=dict)  # metric values/s while catching up


def measure_traintape(
    root: Path, procs: int, steps: int, metrics: int, sinks: tuple[str, ...], catch_up: float
) -> Result:
    import traintape

    store = root / f"store-{'sinks' if sinks else 'plain'}-{procs}"
    store.mkdir(parents=True)
    extra = ["--system-interval", "0"]
    for sink in sinks:
        extra += ["--sink", "wandb=offline" if sink == "wandb" else sink]
    collector = Collector(store, *extra, cwd=REPO)
    try:
        reports = run_workers("traintape", store, procs, steps, metrics)
        t0 = min(r["t0"] for r in reports)
        t_done = max(r["t_done"] for r in reports)
        now_wall = time.time()
        result = Result(
            "traintape+sinks" if sinks else "traintape",
            procs,
            procs * steps * metrics,
            (t_done - t0) / 1e9,
        )
        expected = procs * (steps + min(200, steps)) * metrics
        if sinks:
            status = collector.status(newer_than=now_wall)
            result.lag_at_end = {s: status["sinks"][s]["lag_events"] for s in sinks}
        rows, result.visible_s = wait_visible(traintape, store, expected, t0)
        result.rows = rows - expected  # 0: nothing lost, nothing twice
        if sinks:
            pending = set(sinks)
            deadline = time.monotonic() + catch_up
            while pending and time.monotonic() < deadline:
                status = collector.status(newer_than=time.time())
                for s in list(pending):
                    info = status["sinks"][s]
                    if info["lag_bytes"] == 0:
                        result.catch_up_s[s] = (time.perf_counter_ns() - t_done) / 1e9
                        pending.discard(s)
            elapsed = (time.perf_counter_ns() - t_done) / 1e9
            for s in sinks:
                left = status["sinks"][s]["lag_events"] if s in pending else 0
                seconds = result.catch_up_s.get(s) or elapsed
                passed = (result.lag_at_end[s] or 0) - left
                result.sink_rate[s] = passed * metrics / seconds if seconds > 0 else 0.0
            for s in pending:
                result.catch_up_s[s] = None
                result.lag_at_end[f"{s} left"] = status["sinks"][s]["lag_events"]
        return result
    finally:
        collector.stop()


def measure_direct(root: Path, mode: str, procs: int, steps: int, metrics: int) -> Result:
    folder = root / f"direct-{mode}-{procs}"
    folder.mkdir(parents=True)
    reports = run_workers(mode, folder, procs, steps, metrics)
    t0 = min(r["t0"] for r in reports)
    t_done = max(r["t_done"] for r in reports)
    return Result(f"{mode} direct", procs, procs * steps * metrics, (t_done - t0) / 1e9)


# -- report -----------------------------------------------------------------------------------


def report(results: list[Result], metrics: int) -> None:
    base = {r.procs: r.values / r.acked_s for r in results if r.mode == "traintape"}
    rows = []
    for r in results:
        rate = r.values / r.acked_s
        ratio = f"{rate / base[r.procs]:.3f}" if r.procs in base else "–"
        visible = (
            f"{r.values / r.visible_s:,.0f}" if r.visible_s else ("–" if r.rows is None else "no")
        )
        loss = "–" if r.rows is None else ("0" if r.rows == 0 else f"{r.rows:+,}")
        lag = ", ".join(
            f"{k} {v:,}" if isinstance(v, int) else f"{k} ?" for k, v in r.lag_at_end.items()
        )
        catch = ", ".join(
            f"{k} {v:.1f}s" if v is not None else f"{k} >cap" for k, v in r.catch_up_s.items()
        )
        speed = ", ".join(f"{k} {v:,.0f}" for k, v in r.sink_rate.items())
        rows.append(
            [
                r.mode,
                str(r.procs),
                f"{r.values:,}",
                f"{r.acked_s:.2f}",
                f"{rate:,.0f}",
                ratio,
                visible,
                loss,
                lag or "–",
                catch or "–",
                speed or "–",
            ]
        )
    print(f"\n### Sustained ingest, {metrics} floats per event\n")
    print_table(
        [
            "mode",
            "procs",
            "metric values",
            "seconds",
            "values/s (acked)",
            "× traintape",
            "values/s (in DuckDB)",
            "lost/extra rows",
            "sink lag at end (events)",
            "sink caught up after",
            "sink values/s after the run",
        ],
        rows,
    )
    print(
        "\n`seconds`: from the first timed `log` of any process until the last run finished "
        "(traintape: every event acknowledged, i.e. fsync'd in the journal). `values/s (in "
        "DuckDB)`: until `select count(*) from metrics` counted every row. Sink lag: journal "
        "events a sink had not passed when the last `finish()` returned; caught up: seconds from "
        "then until its cursor reached the journal's end."
    )
    for r in results:
        if r.mode == "traintape":
            rate = r.values / r.acked_s
            verdict = "met" if rate >= 1e6 and r.rows == 0 else "MISSED"
            visible = f"{r.visible_s - r.acked_s:.2f}" if r.visible_s else "?"
            print(
                f"target ≥ 1,000,000 values/s into the store, zero loss, {r.procs} emitter(s): "
                f"{rate:,.0f} values/s durable, lost/extra rows {r.rows}, every row queryable "
                f"{visible} s after the last ack ({verdict})"
            )
    print(
        "\nSink columns: each sink's lag when the runs ended, how long it took to reach the "
        "journal's end (>cap: not within --catch-up), and the metric values/s it passed "
        "meanwhile. MLflow and W&B are bounded by their own backends (compare the direct rows), "
        "TensorBoard by the collector's share of the CPU."
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", default="1,2,4", help="emitter process counts (default 1,2,4)")
    p.add_argument("--steps", type=int, default=100_000, help="events per process")
    p.add_argument("--metrics", type=int, default=10, help="floats per event")
    p.add_argument(
        "--direct-steps",
        type=int,
        default=None,
        help="events per process for the direct MLflow/W&B runs (default: per tool)",
    )
    p.add_argument("--catch-up", type=float, default=60.0, help="cap on waiting for sinks, s")
    p.add_argument("--modes", default="traintape,sinks,mlflow,wandb")
    p.add_argument("--quick", action="store_true", help="fewer steps and processes")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.folder), args.steps, args.metrics, args.seed)
    if args.quick:
        args.steps, args.procs, args.catch_up = 30_000, "1,2", 30.0
    procs = [int(n) for n in args.procs.split(",")]
    modes = args.modes.split(",")
    root = Path(tempfile.mkdtemp(prefix="traintape-throughput-"))
    results: list[Result] = []
    try:
        for n in procs:
            if "traintape" in modes:
                print(f"traintape, {n} emitter(s), {args.steps:,} events each", file=sys.stderr)
                results.append(measure_traintape(root, n, args.steps, args.metrics, (), 0))
            if "sinks" in modes:
                print(f"traintape + {', '.join(SINKS)}, {n} emitter(s)", file=sys.stderr)
                results.append(
                    measure_traintape(root, n, args.steps, args.metrics, SINKS, args.catch_up)
                )
            for mode, default in (("mlflow", 300), ("wandb", 3000)):
                if mode in modes:
                    steps = args.direct_steps or default
                    print(f"{mode} direct, {n} process(es), {steps:,} steps each", file=sys.stderr)
                    results.append(measure_direct(root, mode, n, steps, args.metrics))
        report(results, args.metrics)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
