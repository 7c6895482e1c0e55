"""What a SIGKILLed trainer loses: the last milliseconds of logs, traintape beside trackio.

    .venv/bin/python benchmarks/kill_window.py                 # 12 kills per tool, 1 kHz
    .venv/bin/python benchmarks/kill_window.py --kills 5 --tools traintape

For each kill a fresh child process starts a run, logs 10 floats per step at `--rate` steps per
second (one of them the wall time of the call), and after `--warmup` seconds plus a random part
of a second is SIGKILLed (the OOM killer, a node's watchdog). Once the store has settled, the
newest stored wall time is compared with the moment of the kill: the difference is the window
of logs lost. A store that misses a value logged before the newest stored one counts it as a
hole (there should be none).

traintape logs into a collector this script starts (its store in a temporary folder); it has
settled when a run started after the kill is visible in DuckDB (the materializer follows the
journal in order). trackio runs locally with HF_HUB_OFFLINE=1 and TRACKIO_DIR in the temporary
folder; it is read back with its own storage API after the kill. The only processes this script
ends are the children and the collector it started itself.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from collector_process import Collector
from result_table import print_table

N_FLOATS = 10
PROJECT = "killwindow"
TOOLS = ("traintape", "trackio")


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the child: log at a steady rate until killed ---------------------------------------------


def child(tool: str, root: Path, name: str, rate: float) -> int:
    if tool == "traintape":
        from traintape import emitter

        emitter.init(project=PROJECT, name=name, run_id=name, store=root / "store")
        log = emitter.log
    else:
        import trackio

        trackio.init(project=PROJECT, name=name, embed=False)
        log = trackio.log
    print("ready", flush=True)
    period = 1.0 / rate
    next_at = time.monotonic()
    step = 0
    while True:
        metrics = {f"m{j}": step * 1e-3 * j for j in range(1, N_FLOATS)}
        metrics["t"] = time.time()
        log(metrics, step=step)
        step += 1
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


# -- reading back what each tool kept ---------------------------------------------------------


def stored_traintape(root: Path, name: str, fence: int) -> tuple[float, int, int]:
    """(newest stored wall time, values stored, highest step) once the store has settled."""
    import traintape
    from traintape.emitter.emitter import Emitter

    store = root / "store"
    # A run begun after the kill: once it is visible, so is everything journaled before it.
    fence_id = f"fence-{fence}"
    Emitter("fence", run_id=fence_id, store=store).finish(timeout=60)
    deadline = time.monotonic() + 120
    while True:
        con = traintape.connect(store)
        try:
            seen = con.execute(
                "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'run_end'", [fence_id]
            ).fetchone()[0]
            if seen:
                newest, count, top = con.execute(
                    "SELECT max(value), count(*), max(step) FROM metrics "
                    "WHERE run_id = ? AND key = 't'",
                    [name],
                ).fetchone()
                return newest or math.nan, count, -1 if top is None else top
        finally:
            con.close()
        if time.monotonic() > deadline:
            msg = "the store did not settle within 120 s"
            raise RuntimeError(msg)
        time.sleep(0.1)


def stored_trackio(root: Path, name: str, fence: int) -> tuple[float, int, int]:
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs(PROJECT, name)
    times = [row["t"] for row in logs if isinstance(row.get("t"), float)]
    steps = [row["step"] for row in logs if isinstance(row.get("step"), int)]
    return (max(times) if times else math.nan), len(times), max(steps, default=-1)


STORED = {"traintape": stored_traintape, "trackio": stored_trackio}


# -- one kill ----------------------------------------------------------------------------------


@dataclass
class Result:
    tool: str
    lost_ms: list[float] = field(default_factory=list)
    lost_values: list[int] = field(default_factory=list)
    holes: int = 0
    nothing_stored: int = 0


def kill_once(tool: str, root: Path, index: int, args: argparse.Namespace, out: Result) -> None:
    name = f"{tool}-{index}"
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            tool,
            "--root",
            str(root),
            "--name",
            name,
            "--rate",
            str(args.rate),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # a tool may print a banner first
            if line.strip() == "ready":
                break
        else:
            msg = f"the {tool} child did not start (exit {proc.wait(30)})"
            raise RuntimeError(msg)
        time.sleep(args.warmup + random.random() * args.jitter)
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    newest, count, top = STORED[tool](root, name, index)
    if not math.isfinite(newest):
        out.nothing_stored += 1
        progress(f"{name}: nothing stored")
        return
    lost = (killed_at - newest) * 1e3
    out.lost_ms.append(lost)
    logged = int(round((killed_at - newest) * args.rate))
    out.lost_values.append(logged)
    out.holes += top + 1 - count
    progress(f"{name}: {count:,} values kept, the newest {lost:.1f} ms before the kill")


# -- the command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="The window of logs a SIGKILLed trainer loses: traintape beside trackio, "
        "each logging 10 floats per step at the same rate. Table to stdout, progress to stderr.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--kills", type=int, default=12, help="kills per tool")
    p.add_argument("--rate", type=float, default=1000.0, help="logging calls per second")
    p.add_argument(
        "--warmup", type=float, default=1.5, help="seconds of logging before the kill window"
    )
    p.add_argument(
        "--jitter", type=float, default=0.5, help="a random part of this many seconds is added"
    )
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {TOOLS}")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.tools = [t for t in args.tools.split(",") if t]
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        p.error(f"unknown tools: {', '.join(sorted(unknown))}; choose from {TOOLS}")
    if args.kills < 1 or args.rate <= 0:
        p.error("--kills must be >= 1 and --rate > 0")
    return args


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n### Logs lost to a SIGKILL: {N_FLOATS} floats per step at {args.rate:,.0f} steps/s, "
        f"killed {args.warmup:g}-{args.warmup + args.jitter:g} s into the run\n"
    )
    rows = []
    for r in results:
        if r.lost_ms:
            ms = sorted(r.lost_ms)
            cells = [
                f"{statistics.median(ms):.1f}",
                f"{ms[-1]:.1f}",
                f"{ms[0]:.1f}",
                f"{statistics.median(r.lost_values):,.0f}",
            ]
        else:
            cells = ["–"] * 4
        rows.append([r.tool, str(len(r.lost_ms)), *cells, str(r.holes), str(r.nothing_stored)])
    print_table(
        [
            "tool",
            "kills",
            "median lost ms",
            "max lost ms",
            "min lost ms",
            "median steps lost",
            "holes",
            "runs with nothing stored",
        ],
        rows,
    )
    print(
        "\n`lost ms`: the moment of the SIGKILL minus the wall time logged in the newest value "
        "the store kept (the steps logged in between are gone). `holes`: values missing below "
        "the newest kept one."
    )
    for r in results:
        if r.tool == "traintape" and r.lost_ms:
            worst = max(r.lost_ms)
            print(
                f"traintape target, at most 25 ms lost: max {worst:.1f} ms "
                f"({'met' if worst <= 25 else 'MISSED'})."
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args.child, Path(args.root), args.name, args.rate)
    random.seed(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="traintape-kill-") as tmp:
        root = Path(tmp)
        os.environ.update({"HF_HUB_OFFLINE": "1", "TRACKIO_DIR": str(root / "trackio")})
        (root / "trackio").mkdir()
        results = []
        print("## traintape kill-window benchmark\n")
        print(f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}.")
        collector = Collector(root / "store") if "traintape" in args.tools else None
        try:
            for tool in args.tools:
                result = Result(tool)
                for i in range(args.kills):
                    kill_once(tool, root, i, args, result)
                results.append(result)
        finally:
            if collector is not None:
                collector.stop()
        report(results, args)
    print(
        f"\nTotal {time.monotonic() - started:.0f} s; load average at the end "
        f"{os.getloadavg()[0]:.2f}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
