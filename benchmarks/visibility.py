"""Read your writes: how long a logged value takes to show up in a new `traintape.connect()`.

    .venv/bin/python benchmarks/visibility.py                    # about two minutes
    .venv/bin/python benchmarks/visibility.py --samples 500 --intervals 0.1,0.25,0.5

For each materializer interval in `--intervals` (`traintape serve --materialize-interval`;
"default": the collector's own), a fresh collector on a temporary store, and beside the measuring
process a load process logging `--load-metrics` floats at `--load-hz` steps per second (a run in
progress, so the materializer has work at every turn):

log->visible   the measuring process logs one value, then opens a new `traintape.connect()` and
               counts that value, again and again until it is there; the latency is from just
               before `log()` to the end of the first query that saw it (so it includes one
               connect+query, whose median is printed as `probe`). Samples are spaced by a
               random pause in [0, `--max-gap`] s, so they fall at every phase of the
               materializer's timer; the first `--warmup` are not counted. Compaction runs on
               the materializer's thread (first sweep 30 s after the collector starts): its
               merges show up in `max`.
finish->read   `--finishes` runs of `--finish-values` values each: `finish()`, then at once a new
               connect() counting the run's values; how many runs showed every value, and the
               median `finish()` time (it waits until the run is readable).

Everything is written under a temporary folder that is removed at the end; the only processes this
script ends are the collectors and load processes it started itself.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from collector_process import Collector
from result_table import print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402

import traintape  # noqa: E402
from traintape.emitter.emitter import Emitter  # noqa: E402


def load_child(store: Path, hz: float, metrics: int) -> int:
    """Logs `metrics` floats `hz` times a second until stdin closes, then finishes."""
    em = Emitter("visibility-load", store=store)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    keys = [f"load_{i}" for i in range(metrics)]
    step = 0
    t0 = time.perf_counter()
    while not stop.is_set():
        em.log({k: float(step) for k in keys}, step=step)
        step += 1
        pause = t0 + step / hz - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    em.finish(timeout=60)
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def probe(store: Path, run_id: str, step: int, vanished: list[int]) -> bool:
    """Whether a new connect() sees the value; a file compaction removed while the query ran
    (documented in traintape.collector.compaction) counts as not yet, and in `vanished`."""
    con = traintape.connect(store)
    try:
        row = con.execute(
            "SELECT count(*) FROM metrics WHERE run_id = ? AND key = 'probe' AND step = ?",
            [run_id, step],
        ).fetchone()
    except duckdb.IOException as exc:
        if "No such file" not in str(exc):
            raise
        vanished[0] += 1
        return False
    finally:
        con.close()
    return bool(row and row[0])


def measure(folder: Path, interval: str, args: argparse.Namespace) -> dict[str, object]:
    store = folder / f"store-{interval}"
    extra = ["--system-interval", "0"]
    if interval != "default":
        extra += ["--materialize-interval", interval]
    rng = random.Random(7)
    with Collector(store, *extra):
        load = subprocess.Popen(
            [sys.executable, __file__, "--load-child", str(store)]
            + ["--load-hz", str(args.load_hz), "--load-metrics", str(args.load_metrics)],
            stdin=subprocess.PIPE,
        )
        try:
            em = Emitter("visibility", store=store)
            started = time.perf_counter()
            latencies: list[float] = []
            probes: list[float] = []
            vanished = [0]
            for i in range(args.warmup + args.samples):
                time.sleep(rng.uniform(0, args.max_gap))
                t0 = time.perf_counter()
                em.log({"probe": float(i)}, step=i)
                while True:
                    p0 = time.perf_counter()
                    seen = probe(store, em.run_id, i, vanished)
                    p1 = time.perf_counter()
                    probes.append(p1 - p0)
                    if seen:
                        break
                    if p1 - t0 > 30:
                        msg = f"value {i} not visible after 30 s"
                        raise RuntimeError(msg)
                if i >= args.warmup:
                    latencies.append(p1 - t0)
                print(
                    f"  interval {interval}: sample {i}: {p1 - t0:.3f}s at "
                    f"{time.perf_counter() - started:.1f}s",
                    file=sys.stderr,
                )
            em.finish(timeout=60)
            seen_all, finish_s = 0, []
            for r in range(args.finishes):
                run = Emitter("visibility-finish", store=store)
                for step in range(args.finish_values // 2):
                    run.log({"a": float(step), "b": float(r)}, step=step)
                f0 = time.perf_counter()
                report = run.finish(timeout=60)
                finish_s.append(time.perf_counter() - f0)
                con = traintape.connect(store)
                try:
                    row = con.execute(
                        "SELECT count(*) FROM metrics WHERE run_id = ?", [run.run_id]
                    ).fetchone()
                finally:
                    con.close()
                seen_all += int(bool(row) and row[0] == 2 * (args.finish_values // 2))
                print(
                    f"  interval {interval}: finish {r}: {finish_s[-1]:.3f}s, "
                    f"visible={report.visible}, {row[0] if row else 0} values read",
                    file=sys.stderr,
                )
        finally:
            if load.stdin is not None:
                load.stdin.close()
            load.wait(120)
    return {
        "interval": interval,
        "latencies": latencies,
        "probe": statistics.median(probes),
        "vanished": vanished[0],
        "seen_all": seen_all,
        "finish": statistics.median(finish_s) if finish_s else float("nan"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Log-to-visible latency of traintape (a logged value in a new connect()) and "
        "read-after-finish. Tables go to stdout, progress to stderr.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--intervals",
        default="default",
        help="comma-separated materializer intervals in s to compare ('default': the collector's)",
    )
    p.add_argument("--samples", type=int, default=200, help="timed samples per interval")
    p.add_argument("--warmup", type=int, default=10, help="untimed samples first")
    p.add_argument("--max-gap", type=float, default=0.3, help="random pause before a sample, s")
    p.add_argument("--load-hz", type=float, default=1000.0, help="steps/s of the load process")
    p.add_argument("--load-metrics", type=int, default=10, help="floats per load step")
    p.add_argument("--finishes", type=int, default=10, help="runs finished then read at once")
    p.add_argument("--finish-values", type=int, default=6000, help="values per finished run")
    p.add_argument("--load-child", metavar="STORE", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load_child:
        return load_child(Path(args.load_child), args.load_hz, args.load_metrics)
    folder = Path(tempfile.mkdtemp(prefix="traintape-visibility-"))
    try:
        results = [measure(folder, i.strip(), args) for i in args.intervals.split(",") if i]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"\nlog -> visible in a new connect(), {args.samples} samples each, load "
        f"{args.load_hz:g} steps/s x {args.load_metrics} floats\n"
    )
    print_table(
        [
            "materialize interval",
            "p50",
            "p90",
            "p99",
            "max",
            "probe",
            "file gone",
            "finish",
            "read at finish",
        ],
        [
            [
                str(r["interval"]),
                *(
                    f"{percentile(r['latencies'], q) * 1000:.0f} ms"  # type: ignore[arg-type]
                    for q in (50, 90, 99, 100)
                ),
                f"{r['probe'] * 1000:.0f} ms",
                str(r["vanished"]),
                f"{r['finish'] * 1000:.0f} ms",
                f"{r['seen_all']}/{args.finishes} runs whole",
            ]
            for r in results
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
