"""What logging costs the training loop: traintape next to W&B, MLflow, TensorBoard and trackio.

    .venv/bin/python benchmarks/overhead.py            # the full run, several minutes
    .venv/bin/python benchmarks/overhead.py --quick    # about 1-2 minutes
    .venv/bin/python benchmarks/overhead.py --sections calls --tools traintape,wandb

Three sections, in one run, each tool measured beside the others on the same machine:

calls   the cost of one logging call of 10 floats on the calling thread (time.perf_counter_ns
        around each call, after a warm-up): median, p99 and mean (the mean includes the calls
        that pay for a batched send). Timed in rounds, each tool's ratio to emitter.log taken
        per round, beside a pure-Python probe of the machine's speed (benchmarks/call_rounds.py).
loop    steps/s of a small CPU MLP (2 torch threads) that logs 10 floats every step with each
        tool. Variants are interleaved and repeated (one block per variant per repeat, the order
        rotated each repeat), because single runs on a shared 2-core machine vary by ±20 %.
media   the cost of one call carrying a 256x256x3 image and a float: traintape.Image,
        traintape.wandb.Image, wandb.Image (offline), trackio.Image (benchmarks/media_calls.py).
ingest  N emitter processes log as fast as they can into a fresh store served by a running
        collector; metric values/s until `finish()` returned and until DuckDB sees every row.

Every tool writes into a temporary folder that is removed afterwards; W&B runs offline, trackio
with HF_HUB_OFFLINE=1 and its own TRACKIO_DIR, MLflow into a local sqlite file. The only
processes this script ends are the collectors and emitter children it started itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from call_rounds import fmt_ratio, measure_calls, python_floor_session, report_calls
from collector_process import Collector
from framework_loggers import csv_logger_session, traintape_logger_session, wandb_logger_session
from media_calls import MEDIA_TOOLS, measure_media, report_media
from result_table import print_table

N_FLOATS = 10
LogFn = Callable[..., Any]

# -- environment: every tool stays local and writes under one temporary root ------------------


def _local_only_env(root: Path) -> None:
    """Set before any tool is imported: some read their variables at import time."""
    os.environ.update(
        {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_DIR": str(root / "wandb"),
            "WANDB_CACHE_DIR": str(root / "wandb-cache"),
            "WANDB_CONFIG_DIR": str(root / "wandb-config"),
            "WANDB_DATA_DIR": str(root / "wandb-data"),
            "HF_HUB_OFFLINE": "1",
            "TRACKIO_DIR": str(root / "trackio"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        }
    )
    for sub in ("wandb", "wandb-cache", "wandb-config", "wandb-data", "trackio", "mlflow"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in ("mlflow", "alembic", "trackio", "httpx", "urllib3", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the collector and the tools, each as a session that yields its log function --------------


@dataclass
class Context:
    root: Path
    store: Path  # served by the collector of the calls and loop sections
    mlflow_experiment: str | None = None

    def mlflow_experiment_id(self) -> str:
        import mlflow

        if self.mlflow_experiment is None:
            self.mlflow_experiment = mlflow.create_experiment(
                "overhead", artifact_location=(self.root / "mlflow" / "artifacts").as_uri()
            )
        return self.mlflow_experiment


@contextmanager
def append_session(ctx: Context, name: str) -> Iterator[LogFn]:
    buffer: list[Any] = []
    yield buffer.append  # called with the metrics only: the floor of any Python logging call


@contextmanager
def traintape_session(ctx: Context, name: str) -> Iterator[LogFn]:
    from traintape import emitter

    emitter.init(project="overhead", name=name, store=ctx.store)
    try:
        yield emitter.log
    finally:
        report = emitter.finish(timeout=60)
        if report is not None and not report.complete:
            progress(
                f"traintape: finish() left {report.spooled} spooled, {report.rejected} rejected"
            )


@contextmanager
def wandb_session(ctx: Context, name: str) -> Iterator[LogFn]:
    import wandb

    wandb.init(
        project="overhead",
        name=name,
        dir=ctx.root / "wandb",
        mode="offline",
        settings=wandb.Settings(silent=True, console="off"),
    )
    try:
        yield wandb.log
    finally:
        wandb.finish()


@contextmanager
def traintape_wandb_session(ctx: Context, name: str) -> Iterator[LogFn]:
    """`import traintape.wandb as wandb`, called as wandb.log is above (with its step)."""
    import traintape.wandb as tt_wandb

    old = os.environ.get("TRAINTAPE_STORE")
    os.environ["TRAINTAPE_STORE"] = str(ctx.store)  # W&B's init takes no store: as a user sets it
    try:
        tt_wandb.init(project="overhead", name=name, dir=str(ctx.root / "tt-wandb"))
        yield tt_wandb.log
    finally:
        tt_wandb.finish()
        if old is None:
            os.environ.pop("TRAINTAPE_STORE", None)
        else:
            os.environ["TRAINTAPE_STORE"] = old


@contextmanager
def traintape_wandb_pair_session(ctx: Context, name: str) -> Iterator[LogFn]:
    """W&B's documented pattern: the metrics with commit=False, then a call that commits the
    row (one value more); the pair is timed, as one row built in two calls."""
    with traintape_wandb_session(ctx, name) as tt_log:
        last = {"lr": 1e-3}

        def log(metrics: dict[str, float]) -> None:
            tt_log(metrics, commit=False)
            tt_log(last)

        yield log


def _mlflow_session(ctx: Context, name: str, synchronous: bool) -> Iterator[LogFn]:
    import mlflow

    with mlflow.start_run(experiment_id=ctx.mlflow_experiment_id(), run_name=name):

        def log(metrics: dict[str, float], step: int) -> None:
            mlflow.log_metrics(metrics, step=step, synchronous=synchronous)

        yield log
        if not synchronous:
            mlflow.flush_async_logging()


@contextmanager
def mlflow_sync_session(ctx: Context, name: str) -> Iterator[LogFn]:
    yield from _mlflow_session(ctx, name, synchronous=True)


@contextmanager
def mlflow_async_session(ctx: Context, name: str) -> Iterator[LogFn]:
    yield from _mlflow_session(ctx, name, synchronous=False)


@contextmanager
def tensorboard_session(ctx: Context, name: str) -> Iterator[LogFn]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(ctx.root / "tensorboard" / name))
    add_scalar = writer.add_scalar

    def log(metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            add_scalar(key, value, step)

    try:
        yield log
    finally:
        writer.close()


@contextmanager
def trackio_session(ctx: Context, name: str) -> Iterator[LogFn]:
    import trackio

    trackio.init(project="overhead", name=name, embed=False)
    try:
        yield trackio.log
    finally:
        trackio.finish()


@dataclass(frozen=True)
class Tool:
    key: str
    label: str  # what the user calls
    session: Callable[[Context, str], Any]
    calls: str  # which call count applies: "fast", "tool" or "slow"
    takes_step: bool = True


TOOLS = {
    t.key: t
    for t in (
        Tool("append", "list.append (floor)", append_session, "fast", takes_step=False),
        Tool("traintape", "traintape emitter.log", traintape_session, "fast"),
        Tool(
            "traintape-nostep", "emitter.log (no step)", traintape_session, "fast", takes_step=False
        ),
        Tool("trackio", "trackio.log", trackio_session, "tool"),
        Tool("wandb", "wandb.log (offline)", wandb_session, "tool"),
        Tool("traintape-wandb", "traintape.wandb.log", traintape_wandb_session, "fast"),
        Tool(
            "tt-wandb-nostep",
            "traintape.wandb.log (no step)",
            traintape_wandb_session,
            "fast",
            takes_step=False,
        ),
        Tool(
            "tt-wandb-pair",
            "traintape.wandb.log commit=False + log (pair)",
            traintape_wandb_pair_session,
            "fast",
            takes_step=False,
        ),
        Tool("mlflow-async", "mlflow.log_metrics async", mlflow_async_session, "tool"),
        Tool("mlflow-sync", "mlflow.log_metrics sync", mlflow_sync_session, "slow"),
        Tool("tensorboard", "SummaryWriter.add_scalar ×10", tensorboard_session, "tool"),
        # Lightning's loggers, called as its logger connector calls them: log_metrics, save.
        Tool("lightning", "Lightning TraintapeLogger", traintape_logger_session, "fast"),
        Tool("lightning-csv", "Lightning CSVLogger", csv_logger_session, "tool"),
        Tool("lightning-wandb", "Lightning WandbLogger (offline)", wandb_logger_session, "tool"),
    )
}
# Always timed in the calls section, beside traintape: which of the machine's speeds each round had.
PYTHON_FLOOR = Tool(
    "python-floor",
    "pure Python: dict copy + time_ns + deque append (machine speed)",
    python_floor_session,
    "fast",
)
# The distribution each tool needs; a missing one is skipped with a line on stderr.
NEEDS = {
    "wandb": "wandb",
    "trackio": "trackio",
    "mlflow-async": "mlflow",
    "mlflow-sync": "mlflow",
    "tensorboard": "tensorboard",
    "lightning": "lightning",
    "lightning-csv": "lightning",
    "lightning-wandb": "lightning",
}


def _versions() -> str:
    names = ("traintape", "torch", "wandb", "mlflow", "tensorboard", "trackio", "pyzmq", "duckdb")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (missing)")
    return ", ".join(found)


# -- the metrics every call logs --------------------------------------------------------------


def metrics_ring(n: int = 1024) -> list[dict[str, float]]:
    """Distinct dicts of 10 floats, so no tool profits from seeing the same object twice."""
    return [{f"metric_{j}": (i * N_FLOATS + j) * 1e-3 for j in range(N_FLOATS)} for i in range(n)]


# -- section 2: the training loop -------------------------------------------------------------


class MLP:
    """A small CPU model whose step takes about 1.5 ms with 2 torch threads here."""

    def __init__(self, width: int, batch: int) -> None:
        import torch

        torch.manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(128, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, 10),
        )
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.x = torch.randn(batch, 128)
        self.y = torch.randint(0, 10, (batch,))

    def run(self, log: LogFn | None, takes_step: bool, first: int, steps: int) -> float:
        """Trains `steps` steps logging 10 floats each; returns the wall time in seconds."""
        model, opt, loss_fn, x, y = self.model, self.opt, self.loss_fn, self.x, self.y
        t0 = time.perf_counter_ns()
        for step in range(first, first + steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            value = loss.item()
            # Every variant builds the same dict, so only the logging call differs.
            metrics = {f"metric_{j}": value * (j + 1) for j in range(N_FLOATS)}
            if log is None:
                pass
            elif takes_step:
                log(metrics, step)
            else:
                log(metrics)
        return (time.perf_counter_ns() - t0) / 1e9


@dataclass
class LoopResult:
    key: str
    label: str
    steps_per_s: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)


@contextmanager
def _no_session(ctx: Context, name: str) -> Iterator[None]:
    yield None


def measure_loop(ctx: Context, tools: list[Tool], args: argparse.Namespace) -> list[LoopResult]:
    import torch

    torch.set_num_threads(2)
    mlp = MLP(args.width, args.batch)
    mlp.run(None, True, 0, 300)  # warm the allocator and the kernels once
    variants: list[tuple[str, str, Any, bool]] = [("none", "no logging", _no_session, True)]
    variants += [(t.key, t.label, t.session, t.takes_step) for t in tools]
    results = {key: LoopResult(key, label) for key, label, _, _ in variants}
    for rep in range(args.repeats):
        order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
        for key, label, session, takes_step in order:
            with session(ctx, f"loop-{key}-{rep}") as log:
                # The warm-up also sizes the block: about --block-seconds of steps, at least 50.
                warm = args.warmup_steps
                per_step = mlp.run(log, takes_step, 0, warm) / warm
                steps = int(min(args.max_steps, max(50, args.block_seconds / per_step)))
                gc.collect()
                elapsed = mlp.run(log, takes_step, warm, steps)
            time.sleep(args.settle)  # let the tool's leftover background work end off the clock
            results[key].steps_per_s.append(steps / elapsed)
            results[key].steps.append(steps)
            progress(
                f"loop: repeat {rep + 1}/{args.repeats} {label}: {steps} steps, "
                f"{steps / elapsed:,.0f} steps/s"
            )
    return list(results.values())


def _change(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.1f} %"


LOOP_COLUMNS = [
    "variant",
    "steps/block",
    "median steps/s",
    "vs no logging",
    "best steps/s",
    "best vs best",
    "min–max steps/s",
    "ms/step (median)",
    "traintape ÷ this (median)",
]


def report_loop(results: list[LoopResult], args: argparse.Namespace) -> None:
    print(
        f"\n### Training loop: MLP 128-{args.width}-{args.width}-10, batch {args.batch}, "
        f"2 torch threads, {N_FLOATS} floats logged every step, {args.repeats} interleaved "
        "repeats\n"
    )
    none = results[0]
    base, base_best = statistics.median(none.steps_per_s), max(none.steps_per_s)
    ref = next((r for r in results if r.key == "traintape"), None)
    ref_sps = statistics.median(ref.steps_per_s) if ref else math.nan
    print_table(LOOP_COLUMNS, [_loop_row(r, r is none, base, base_best, ref_sps) for r in results])
    noise = _noise_band(none.steps_per_s, base)
    print(
        f"\nNoise: no-logging blocks ran at {min(none.steps_per_s):,.0f}–{base_best:,.0f} "
        f"steps/s (median {base:,.0f}; half the interquartile range ±{noise * 100:.1f} %). "
        "`best` is the fastest block of a variant, the least disturbed by other work on the "
        f"machine. Each block: a fresh run of the tool, {args.warmup_steps} warm-up steps, then "
        f"about {args.block_seconds:g} s of timed steps (at least 50, at most "
        f"{args.max_steps:,}); init and finish are off the clock, and {args.settle:g} s of idle "
        "follow each block so a tool's leftover background work does not land on the next one."
    )
    if ref is not None:
        slowdown = ref_sps / base - 1
        best_slowdown = max(ref.steps_per_s) / base_best - 1
        print(
            f"traintape target, slowdown within the noise: {slowdown * 100:+.1f} % by medians, "
            f"{best_slowdown * 100:+.1f} % best vs best; noise ±{noise * 100:.1f} % "
            f"({'met' if slowdown >= -noise else 'MISSED'})."
        )


def _loop_row(
    r: LoopResult, is_base: bool, base: float, base_best: float, ref_sps: float
) -> list[str]:
    """One variant's row of LOOP_COLUMNS (the no-logging variant `is_base`)."""
    sps, best = statistics.median(r.steps_per_s), max(r.steps_per_s)
    return [
        r.label,
        f"{int(statistics.median(r.steps)):,}",
        f"{sps:,.0f}",
        "–" if is_base else _change(sps, base),
        f"{best:,.0f}",
        "–" if is_base else _change(best, base_best),
        f"{min(r.steps_per_s):,.0f}–{best:,.0f}",
        f"{1e3 / sps:.2f}",
        fmt_ratio(ref_sps / sps),
    ]


def _noise_band(steps_per_s: list[float], base: float) -> float:
    """Half the interquartile range of the no-logging blocks, relative to their median: a noise
    band that one block slowed by a neighbour's burst of work does not widen the way min-max
    does."""
    if len(steps_per_s) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(steps_per_s, n=4, method="inclusive")
    return (q3 - q1) / 2 / base


# -- section 3: collector ingest --------------------------------------------------------------


def ingest_child(store: Path, events: int) -> int:
    """One emitter process: init, wait for "go" on stdin, log `events` events, finish, report."""
    from traintape import emitter

    ring = metrics_ring(64)
    emitter.init(project="ingest", store=store)
    log = emitter.log
    print("ready", flush=True)
    sys.stdin.readline()
    t_first = time.monotonic_ns()
    for i in range(events):
        log(ring[i & 63], i)
    t_logged = time.monotonic_ns()
    report = emitter.finish(timeout=600, wait_visible=False)  # acks; DuckDB is polled apart
    t_done = time.monotonic_ns()
    assert report is not None
    out = {
        "t_first": t_first,
        "t_logged": t_logged,
        "t_done": t_done,
        "acked": report.acked,
        "spooled": report.spooled,
        "rejected": report.rejected,
    }
    print(json.dumps(out), flush=True)
    return 0


@dataclass
class IngestResult:
    procs: int
    events: int
    values: int
    log_s: float
    finish_s: float
    visible_s: float | None
    seen: int
    spooled: int
    duplicates: int
    polls: int
    poll_ms: float


def measure_ingest(root: Path, procs: int, events: int, poll_s: float) -> IngestResult:
    store = root / f"store-ingest-{procs}"
    expected = procs * events * N_FLOATS
    with Collector(store), ExitStack() as stack:
        reports = _run_ingest_children(store, procs, events, stack)
        # The monotonic clock is system-wide on Linux, so the children's stamps compare with ours.
        t_first = min(r["t_first"] for r in reports)
        t_done = max(r["t_done"] for r in reports)
        t_logged = max(r["t_logged"] for r in reports)
        seen, polls, poll_ns, t_visible = _poll_until_visible(store, expected, poll_s)
    # Written by the collector as it stops: batches the emitters resent because an ack was late.
    status = json.loads((store / "state" / "collector.json").read_text())
    return IngestResult(
        procs,
        events,
        expected,
        (t_logged - t_first) / 1e9,
        (t_done - t_first) / 1e9,
        None if t_visible is None else (t_visible - t_first) / 1e9,
        seen,
        sum(r["spooled"] for r in reports),
        status.get("duplicate_events", 0),
        polls,
        poll_ns / max(polls, 1) / 1e6,
    )


def _run_ingest_children(
    store: Path, procs: int, events: int, stack: ExitStack
) -> list[dict[str, Any]]:
    """Starts `procs` emitting children, lets them go at once, and returns their reports."""
    children: list[subprocess.Popen[str]] = []
    for _ in range(procs):
        child = subprocess.Popen(
            [sys.executable, __file__, "--ingest-child", str(store), "--events", str(events)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        stack.callback(_reap, child)
    for child in children:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            msg = "an ingest child failed to start"
            raise RuntimeError(msg)
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    reports = []
    for child in children:
        assert child.stdout is not None
        reports.append(json.loads(child.stdout.readline()))
    return reports


def _poll_until_visible(
    store: Path, expected: int, poll_s: float
) -> tuple[int, int, int, int | None]:
    """(rows seen, polls, ns spent polling, monotonic ns when all `expected` rows were visible)
    of counting the metrics view every `poll_s` (for at most 10 minutes)."""
    import duckdb

    import traintape

    con = traintape.connect(store)
    seen, polls, poll_ns = 0, 0, 0
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            q0 = time.monotonic_ns()
            try:
                seen = con.execute("select count(*) from metrics").fetchone()[0]
            except duckdb.Error as exc:
                # A compaction can rename a file between DuckDB's glob and its read; ask again.
                progress(f"ingest: query failed, retrying: {str(exc).splitlines()[0]}")
                seen = 0
            q1 = time.monotonic_ns()
            polls, poll_ns = polls + 1, poll_ns + (q1 - q0)
            if seen >= expected:
                return seen, polls, poll_ns, q1
            time.sleep(poll_s)
    finally:
        con.close()
    return seen, polls, poll_ns, None


def _reap(child: subprocess.Popen[str]) -> None:
    try:
        child.wait(60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(10)


def report_ingest(results: list[IngestResult], poll_s: float) -> None:
    print(f"\n### Collector ingest, {N_FLOATS} floats per event, fresh store each time\n")
    rows = []
    for r in results:
        visible = f"{r.visible_s:.2f}" if r.visible_s is not None else f"not all ({r.seen:,} rows)"
        rate_visible = f"{r.values / r.visible_s:,.0f}" if r.visible_s else "–"
        rows.append(
            [
                str(r.procs),
                f"{r.events:,}",
                f"{r.values:,}",
                f"{r.log_s:.2f}",
                f"{r.finish_s:.2f}",
                f"{r.values / r.finish_s:,.0f}",
                visible,
                rate_visible,
                str(r.spooled),
                f"{r.duplicates:,}",
            ]
        )
    print_table(
        [
            "emitters",
            "events each",
            "metric values",
            "log loop s",
            "until finish() s",
            "values/s",
            "until in DuckDB s",
            "values/s",
            "spooled",
            "resent dups",
        ],
        rows,
    )
    mean_poll = statistics.mean(r.poll_ms for r in results) if results else 0
    print(
        "\nTimes from the first `log` of any emitter. `log loop s`: the last emitter's loop "
        "ended; `until finish()`: the last `finish()` returned (every event acknowledged, i.e. "
        "fsync'd in the journal); `until in DuckDB`: `select count(*) from metrics` saw every "
        f"row (polled every {poll_s:g} s, one query ≈ {mean_poll:.0f} ms on this store). "
        "`spooled`: events `finish()` left in a spool file; `resent dups`: events the emitters "
        "resent after a late ack, which the collector dropped as duplicates."
    )
    for r in results:
        if r.visible_s is None:
            continue
        rate = r.values / r.visible_s
        print(
            f"target ≥ 1,000,000 values/s end to end with {r.procs} emitter(s): {rate:,.0f} "
            f"({'met' if rate >= 1e6 else 'MISSED'})."
        )


# -- the command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Per-call cost, training-loop slowdown and collector ingest rate of "
        "traintape next to W&B (offline), MLflow (sqlite), TensorBoard and trackio. "
        "Tables go to stdout, progress to stderr.",
    )
    p.add_argument(
        "--quick", action="store_true", help="a short run (about 1-2 minutes) with small sizes"
    )
    p.add_argument(
        "--sections",
        default="calls,loop,media,ingest",
        help="comma-separated subset of calls,loop,media,ingest (default: all)",
    )
    p.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"comma-separated subset of {','.join(TOOLS)} (default: all); the calls section "
        "also times traintape and python-floor, the references of its ratios",
    )
    g = p.add_argument_group("calls")
    g.add_argument("--calls", type=int, help="timed calls for traintape and the floor (100000)")
    g.add_argument(
        "--tool-calls",
        type=int,
        help="timed calls for wandb, trackio, tensorboard, mlflow async (2000)",
    )
    g.add_argument("--slow-calls", type=int, help="timed calls for MLflow sync, ≈25 ms each (200)")
    g.add_argument(
        "--rounds",
        type=int,
        help="rounds the calls are split over, each a fresh session of every tool; ratios to "
        "traintape are taken per round (5; 3 with --quick)",
    )
    g.add_argument("--media-calls", type=int, help="timed calls with an image, per tool (300)")
    g = p.add_argument_group("loop")
    g.add_argument("--repeats", type=int, help="interleaved repeats of every variant (7)")
    g.add_argument("--block-seconds", type=float, help="timed seconds per block, about (2)")
    g.add_argument("--warmup-steps", type=int, help="untimed steps at the start of a block (100)")
    g.add_argument("--max-steps", type=int, default=20_000, help="steps per block at most")
    g.add_argument("--settle", type=float, default=0.5, help="idle seconds after each block (0.5)")
    g.add_argument("--width", type=int, default=512, help="MLP hidden width (512)")
    g.add_argument("--batch", type=int, default=80, help="MLP batch size (80)")
    g = p.add_argument_group("ingest")
    g.add_argument("--events", type=int, help="events per emitter process (200000)")
    g.add_argument("--procs", default="1,2", help="emitter process counts to run (1,2)")
    g.add_argument("--poll", type=float, default=0.05, help="DuckDB poll interval in s (0.05)")
    p.add_argument("--ingest-child", metavar="STORE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    full = {"calls": 100_000, "tool_calls": 2000, "slow_calls": 200, "rounds": 5, "repeats": 7}
    full |= {"media_calls": 300}
    full |= {"block_seconds": 2.0, "warmup_steps": 100, "events": 200_000}
    quick = {"calls": 20_000, "tool_calls": 300, "slow_calls": 40, "rounds": 3, "repeats": 2}
    quick |= {"media_calls": 100}
    quick |= {"block_seconds": 1.0, "warmup_steps": 50, "events": 50_000}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.sections = [s for s in args.sections.split(",") if s]
    args.tools = [t for t in args.tools.split(",") if t]
    sections = ("calls", "loop", "media", "ingest")
    for name, allowed in (("sections", sections), ("tools", tuple(TOOLS))):
        unknown = set(getattr(args, name)) - set(allowed)
        if unknown:
            p.error(f"unknown {name}: {', '.join(sorted(unknown))}; choose from {allowed}")
    args.procs = [int(n) for n in args.procs.split(",") if n]
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, not {args.rounds}")
    return args


def _available(tools: list[Tool]) -> list[Tool]:
    found = []
    for tool in tools:
        module = NEEDS.get(tool.key)
        try:
            if module is not None:
                metadata.version(module)
        except metadata.PackageNotFoundError:
            progress(f"skipping {tool.key}: `{module}` is not installed")
            continue
        found.append(tool)
    return found


def _calls_tools(tools: list[Tool]) -> list[Tool]:
    """The chosen tools, with the machine-speed probe first and traintape, the reference of
    every ratio, added when not chosen."""
    return [PYTHON_FLOOR] + [t for t in TOOLS.values() if t in tools or t.key == "traintape"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ingest_child:
        return ingest_child(Path(args.ingest_child), args.events)
    tools = _available([TOOLS[k] for k in TOOLS if k in args.tools])
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="traintape-bench-") as tmp:
        root = Path(tmp)
        _local_only_env(root)
        ctx = Context(root, root / "store")
        print("## traintape overhead benchmark\n")
        print(
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}; {_versions()}."
        )
        print(
            "A shared 2-core machine: other work runs beside this benchmark, so every figure is "
            f"noisy (load average at start {load_before[0]:.2f})."
        )
        # Tools print banners and log lines on stdout; stdout is kept for the tables.
        quiet = redirect_stdout(sys.stderr)
        with ExitStack() as stack:
            if {"calls", "loop", "media"} & set(args.sections):
                progress("starting a collector for the calls, loop and media sections")
                stack.enter_context(Collector(ctx.store))
            if "calls" in args.sections:
                counts = {"fast": args.calls, "tool": args.tool_calls, "slow": args.slow_calls}
                timed = _calls_tools(tools)
                with quiet:
                    calls = measure_calls(ctx, timed, counts, args.rounds, metrics_ring(), progress)
                report_calls(calls, counts, args.rounds, N_FLOATS)
            if "loop" in args.sections:
                with quiet:
                    loop = measure_loop(ctx, tools, args)
                report_loop(loop, args)
            if "media" in args.sections:
                chosen = {t.key: t.session for t in tools if t.key in MEDIA_TOOLS}
                with quiet:
                    media = measure_media(ctx, chosen, args.media_calls, progress)
                report_media(media)
        if "wandb" in sys.modules:
            import wandb

            with quiet:
                wandb.teardown()  # ends the wandb-core service that wandb.init started
        if "ingest" in args.sections:
            ingest = []
            for procs in args.procs:
                progress(f"ingest: {procs} emitter(s) × {args.events:,} events")
                ingest.append(measure_ingest(root, procs, args.events, args.poll))
            report_ingest(ingest, args.poll)
    print(
        f"\nTotal {time.monotonic() - started:.0f} s; load average at the end "
        f"{os.getloadavg()[0]:.2f}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
