"""How fast `traintape ui` answers, over real HTTP, beside trackio's dashboard server.

    .venv/bin/python benchmarks/ui.py                # quick: 100 runs, 10 million metric rows
    .venv/bin/python benchmarks/ui.py --full         # 1,000 runs, 100 million rows
    .venv/bin/python benchmarks/ui.py --full --dir /tmp/bench   # reuse the store across runs

The store is benchmarks/query.py's (the same Fleet, written as compacted Parquet, reused when
`--dir` already holds one of that shape), plus three runs of its own:

  big    one rank, `loss` for 1,000,000 steps with a one-step spike (compacted)
  tk     one rank, `loss` for 100,000 steps: the run trackio gets too
  live   two ranks, still running (no run_end), its rows in 200 small uncompacted part files as
         the materializer leaves them before compaction

`traintape ui --port 0` serves it in its own process; each request is a fresh HTTP connection
(urllib). Timed, a warm-up first, then median and p99 of `--repeat`:

  runs table       GET /api/runs (the first, cold one timed apart: it answers at once while
                   a background thread computes every run's last/best, timed until done;
                   later ones recompute only runs whose files changed)
  one series       GET /api/series of big's loss, width 800 (at most 1,600 points), spike kept
  20 runs          20 /api/series requests (20 runs' loss, mean across ranks), 6 at a time as a
                   browser does, wall time of all
  poll             GET /api/series?after=... of live: the incremental poll of a running run
  first paint      headless Chromium (Debian's `chromium`, through Playwright; `--no-browser`
                   skips it), each load in a fresh browser context (an empty cache): from the
                   navigation's start until the runs table is drawn (the page's
                   `traintape:runs-table` mark), and until a run page's first chart is
                   (`traintape:first-chart`); the first load right after the server started,
                   before any other request, is timed apart

trackio (`--no-trackio` skips it): the same 100,000-point run logged with trackio.log into its
SQLite store (TRACKIO_DIR in the work folder, HF_HUB_OFFLINE=1), its dashboard started with
trackio.show(), and its page's call for one run's metrics (POST /api/get_logs) timed the same
way: response time and bytes, beside traintape's /api/series of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from query import Fleet, build_store, progress  # noqa: E402

from traintape.collector import compaction  # noqa: E402
from traintape.schemas import tables  # noqa: E402

T0 = 1_800_000_000_000_000_000
BIG, TK, LIVE = "big-1m", "tk-100k", "live-run"
SPIKE_STEP, SPIKE = 654_321, 1e6


# -- the store's extra runs ----------------------------------------------------------------------


def _metrics(run_id: str, rank: int, steps: np.ndarray, values: np.ndarray) -> pa.Table:
    n = steps.size
    cols = {
        "run_id": pa.repeat(pa.scalar(run_id), n),
        "rank": pa.array(np.full(n, rank, np.int32)),
        "source": pa.repeat(pa.scalar(f"{run_id}-{rank}"), n),
        "seq": pa.array(steps),
        "ts": tables.ts_from_ns(pa.array(T0 + steps * 10**7)),
        "step": pa.array(steps),
        "key": pa.repeat(pa.scalar("loss"), n),
        "value": pa.array(values),
    }
    return pa.table([cols[f.name] for f in tables.METRICS], schema=tables.METRICS)


def _events(run_id: str, ranks: int, ended: bool) -> pa.Table:
    rows: dict[str, list[Any]] = {f.name: [] for f in tables.EVENTS}
    for rank in range(ranks):
        start = {
            "project": "ui-bench",
            "name": run_id,
            "config": {"lr": 0.001},
            "tags": ["ui"],
            "world_size": ranks,
            "environment": {"host": "bench", "pid": 1000 + rank},
        }
        kinds = [("run_start", 0, start)] + ([("run_end", 1, {"status": "completed"})] * ended)
        for kind, seq, body in kinds:
            ts_us = T0 // 1000 + seq  # Python ints in a TS column are microseconds
            for name, v in zip(
                ("run_id", "rank", "source", "seq", "ts", "step", "kind", "body"),
                (run_id, rank, f"{run_id}-{rank}", seq, ts_us, None, kind, json.dumps(body)),
            ):
                rows[name].append(v)
    return pa.table(rows, schema=tables.EVENTS)


def _write(store: Path, table: str, run_id: str, name: str, data: pa.Table) -> None:
    folder = store / "tables" / table / run_id
    folder.mkdir(parents=True, exist_ok=True)
    compaction.write_parquet(data, folder / name, table)


def add_runs(store: Path) -> None:
    """big (1 M steps, a spike), tk (100,000 steps) and live (2 ranks, 200 small parts)."""
    rng = np.random.default_rng(7)
    for run_id, n in ((BIG, 1_000_000), (TK, 100_000)):
        steps = np.arange(n, dtype=np.int64)
        values = 2.0 * np.exp(-steps / (n / 5)) + rng.normal(0, 0.01, n)
        if run_id == BIG:
            values[SPIKE_STEP] = SPIKE
        _write(store, "metrics", run_id, "compact-0-1.parquet", _metrics(run_id, 0, steps, values))
        _write(store, "events", run_id, "compact-0-1.parquet", _events(run_id, 1, True))
    for part in range(200):  # 200 materializer flushes of 250 steps, both ranks
        steps = np.arange(part * 250, (part + 1) * 250, dtype=np.int64)
        data = pa.concat_tables(_metrics(LIVE, r, steps, 1.0 + r + steps * 1e-5) for r in range(2))
        _write(store, "metrics", LIVE, f"part-{part:020d}-{part + 1:020d}.parquet", data)
    _write(store, "events", LIVE, "part-0-1.parquet", _events(LIVE, 2, False))


def make_store(root: Path, fleet: Fleet, shaping: dict[str, Any]) -> Path:
    """The fleet's store in `root` (benchmarks/query.py's marker and layout: a folder either
    script built is reused by both), with big, tk and live added once."""
    store, marker = root / "store", root / "fleet.json"
    if marker.exists() and json.loads(marker.read_text()) == shaping:
        progress(f"reusing {store}")
    else:
        shutil.rmtree(store, ignore_errors=True)
        (root / "ui-runs.json").unlink(missing_ok=True)
        progress(f"building {fleet.runs} runs x {fleet.rows_per_run:,} rows")
        build_store(store, fleet)
        marker.write_text(json.dumps(shaping))
    if not (root / "ui-runs.json").exists():
        progress("adding big (1 M steps), tk (100,000 steps) and live (200 parts)")
        add_runs(store)
        (root / "ui-runs.json").write_text(json.dumps([BIG, TK, LIVE]))
    return store


# -- timing ----------------------------------------------------------------------------------


def fetch(url: str, data: bytes | None = None) -> bytes:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=120) as r:
        return bytes(r.read())


Row = tuple[str, float, float, float | None, int]
"""label, median s, p99 s, the server's CPU s per request (mean; None: not measured), bytes"""


def timed(
    fn: Callable[[], Any], repeat: int, server: Any = None
) -> tuple[float, float, float | None, Any]:
    """(median s, p99 s, server CPU s per call, last result) after one warm-up call.

    The server's CPU time (psutil, user + system of its process) is printed beside the wall
    time: this machine is shared, and under load the wall time grows while the work does not.
    """
    result = fn()
    times = []
    cpu0 = sum(server.cpu_times()[:2]) if server is not None else 0.0
    for _ in range(repeat):
        t = time.perf_counter_ns()
        result = fn()
        times.append((time.perf_counter_ns() - t) / 1e9)
    cpu = (sum(server.cpu_times()[:2]) - cpu0) / repeat if server is not None else None
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return statistics.median(times), p99, cpu, result


def start_ui(store: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "traintape.cli", "ui", "--store", str(store), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"(http://\S+)/", line)
    if not found:
        proc.kill()
        raise SystemExit(f"traintape ui did not start: {line}")
    return proc, found.group(1)


_TRACKIO = r"""
import sys, time, trackio
project, n, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
trackio.init(project=project, name="tk-100k")
t = time.perf_counter()
for i in range(n):
    trackio.log({"loss": 2.0 / (1 + i / 20000)}, step=i)
trackio.finish()
print(f"logged {n} in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
trackio.show(project=project, open_browser=False, block_thread=False, server_port=port)
print("READY", flush=True)
sys.stdin.read()
"""


def trackio_rows(root: Path, repeat: int) -> list[Row]:
    """trackio's get_logs of the same 100,000-point run: (label, median, p99, bytes)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TRACKIO_DIR": str(root / "trackio"), "HF_HUB_OFFLINE": "1"}
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-c", _TRACKIO, "uibench", "100000", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    try:
        assert proc.stdout is not None
        while "READY" not in (line := proc.stdout.readline()):
            if not line:
                raise SystemExit("trackio's dashboard did not start")
        server = psutil.Process(proc.pid)
        body = json.dumps({"project": "uibench", "run": "tk-100k"}).encode()
        url = f"http://127.0.0.1:{port}/api/get_logs"
        t = time.perf_counter()
        first = fetch(url, body)
        cold = time.perf_counter() - t
        med, p99, cpu, out = timed(lambda: fetch(url, body), repeat, server)
        points = len(json.loads(out)["data"])
        return [
            (f"trackio get_logs, first call ({points:,} points)", cold, cold, None, len(first)),
            (f"trackio get_logs ({points:,} points)", med, p99, cpu, len(out)),
        ]
    finally:
        proc.kill()
        proc.wait()


CHROMIUM = Path(os.environ.get("TRAINTAPE_CHROMIUM", "/usr/bin/chromium"))


class Browser:
    """Headless Chromium timing page loads, each in a fresh context (nothing cached)."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        # The same flags as tests/test_ui_browser.py (WebGL, if asked for, through SwiftShader).
        args = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]
        self.browser = self._pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=args
        )
        # The browser's own start (its first renderer process) is not the page's first paint.
        context = self.browser.new_context()
        context.new_page().goto("about:blank")
        context.close()

    def paint(self, url: str, mark: str) -> float:
        """Seconds from the navigation's start to the page's `mark`."""
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.goto(url)
            page.wait_for_function(
                f"performance.getEntriesByName('{mark}', 'mark').length > 0", timeout=120_000
            )
            ms = page.evaluate(f"performance.getEntriesByName('{mark}', 'mark')[0].startTime")
            return float(ms) / 1000
        finally:
            context.close()

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


def paint_rows(browser: Browser, base: str, run_id: str, repeat: int, server: Any) -> list[Row]:
    """First paint of the runs table and of a run page's first chart, each load in a fresh
    context: the page's own clock (navigation start to its mark), median and p99."""
    out: list[Row] = []
    for label, url, mark in (
        ("first paint: runs table", base + "/", "traintape:runs-table"),
        ("first paint: run page, first chart", f"{base}/#/run/{run_id}", "traintape:first-chart"),
    ):
        browser.paint(url, mark)  # warm-up: the server's caches, not the browser's
        cpu0 = sum(server.cpu_times()[:2])
        times = sorted(browser.paint(url, mark) for _ in range(repeat))
        cpu = (sum(server.cpu_times()[:2]) - cpu0) / repeat
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        out.append((f"{label} (fresh context)", statistics.median(times), p99, cpu, 0))
    return out


def traintape_rows(store: Path, fleet: Fleet, repeat: int, browser: Browser | None) -> list[Row]:
    import psutil

    proc, base = start_ui(store)
    server = psutil.Process(proc.pid)
    out: list[Row] = []
    try:
        if browser is not None:  # before any other request: the server has just started
            cold = browser.paint(base + "/", "traintape:runs-table")
            out.append(("first paint: runs table, server just started", cold, cold, None, 0))
        t, cpu0 = time.perf_counter(), sum(server.cpu_times()[:2])
        first = fetch(base + "/api/runs")
        cold, cpu = time.perf_counter() - t, sum(server.cpu_times()[:2]) - cpu0
        pending = len(json.loads(first)["pending"])
        label = f"runs table, first call ({pending} runs' last/best pending)"
        out.append((label, cold, cold, cpu, len(first)))
        while json.loads(body := fetch(base + "/api/runs"))["pending"]:
            time.sleep(0.5)
        ready, cpu = time.perf_counter() - t, sum(server.cpu_times()[:2]) - cpu0
        label = "  every run's last/best ready (background, from start)"
        out.append((label, ready, ready, cpu, len(body)))
        med, p99, cpu, body = timed(lambda: fetch(base + "/api/runs"), repeat, server)
        out.append((f"runs table ({len(json.loads(body)['runs'])} runs)", med, p99, cpu, len(body)))
        url = f"{base}/api/series?run={BIG}&key=loss&ranks=all&width=800"
        med, p99, cpu, body = timed(lambda: fetch(url), repeat, server)
        s = json.loads(body)["series"][0]
        kept = SPIKE in s["y"] and s["x"][s["y"].index(SPIKE)] == SPIKE_STEP
        label = f"one series: 1 M points -> {len(s['x'])}, spike {'kept' if kept else 'LOST'}"
        out.append((label, med, p99, cpu, len(body)))
        urls = [f"{base}/api/series?run={fleet.run_id(i)}&key=loss&width=800" for i in range(20)]
        with ThreadPoolExecutor(6) as pool:
            med, p99, cpu, bodies = timed(lambda: list(pool.map(fetch, urls)), repeat, server)
        out.append(
            ("20 runs overlaid (20 requests, 6 at a time)", med, p99, cpu, sum(map(len, bodies)))
        )
        cursor = json.loads(fetch(f"{base}/api/series?run={LIVE}&key=loss&width=800"))["cursor"]
        url = f"{base}/api/series?run={LIVE}&key=loss&width=800&after={cursor - 10}"
        med, p99, cpu, body = timed(lambda: fetch(url), repeat, server)
        out.append(("poll of a live run (after=cursor-10)", med, p99, cpu, len(body)))
        url = f"{base}/api/series?run={TK}&key=loss&ranks=all&width=1600"
        med, p99, cpu, body = timed(lambda: fetch(url), repeat, server)
        n = len(json.loads(body)["series"][0]["x"])
        out.append(
            (f"traintape series, 100,000-point run ({n:,} points)", med, p99, cpu, len(body))
        )
        if browser is not None:
            out += paint_rows(browser, base, fleet.run_id(0), repeat, server)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    return out


TARGETS = {
    "runs table (": 0.300,
    "one series": 0.150,
    "20 runs": 0.500,
    "poll": 0.050,
    "first paint": 1.5,
}


def _browser() -> Browser | None:
    """Chromium through Playwright, or None (said on stderr) when either is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        progress("no first paint: Playwright is missing (`make install`)")
        return None
    if not CHROMIUM.exists():
        progress(f"no first paint: {CHROMIUM} is missing (`make install`)")
        return None
    return Browser()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--rows", type=int, default=10_000_000, help="metric rows of the fleet")
    p.add_argument("--full", action="store_true", help="1,000 runs, 100 million rows")
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--no-trackio", action="store_true")
    p.add_argument("--no-browser", action="store_true", help="skip the first paint in Chromium")
    p.add_argument("--dir", help="work folder, reused by later runs (default: a temporary one)")
    args = p.parse_args()
    if args.full:
        args.runs, args.rows = 1000, 100_000_000
    fleet = Fleet(args.runs, args.rows, 4, 10, 10)
    root = Path(args.dir or tempfile.mkdtemp(prefix="traintape-ui-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        shaping = {"runs": args.runs, "rows": args.rows, "ranks": 4, "keys": 10, "eval_every": 10}
        store = make_store(root, fleet, shaping)
        progress("traintape ui")
        browser = None if args.no_browser else _browser()
        try:
            rows = traintape_rows(store, fleet, args.repeat, browser)
        finally:
            if browser is not None:
                browser.close()
        if not args.no_trackio:
            progress("trackio: logging 100,000 points, then its dashboard")
            rows += trackio_rows(root, args.repeat)
        print(
            f"\nstore: {fleet.runs + 3} runs, {args.rows:,} fleet rows + 1.15 M; "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; real HTTP, median and p99 "
            f"of {args.repeat} after a warm-up\n"
        )
        print(
            f"{'request':58s} {'median':>10s} {'p99':>10s} {'server CPU':>10s} {'bytes':>12s}  target"
        )
        for label, med, p99, cpu, size in rows:
            target = next((t for k, t in TARGETS.items() if label.startswith(k)), None)
            verdict = (
                ""
                if target is None
                else (f"<= {target * 1000:.0f} ms {'met' if med <= target else 'MISSED'}")
            )
            used = "" if cpu is None else f"{cpu * 1000:8.1f}ms"
            shown = "" if label.startswith("first paint") else f"{size:,d}"  # a page, no one body
            print(
                f"{label:58s} {med * 1000:8.1f}ms {p99 * 1000:8.1f}ms {used:>10s} {shown:>12s}  {verdict}"
            )
        theirs = [r for r in rows if r[0].startswith("trackio get_logs (")]
        ours = [r for r in rows if r[0].startswith("traintape series, 100,000")]
        if theirs and ours:
            print(
                f"\ntrackio / traintape, one metric of the 100,000-point run: "
                f"{theirs[0][1] / ours[0][1]:.1f}x the time, {theirs[0][4] / ours[0][4]:.1f}x "
                f"the bytes"
            )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
