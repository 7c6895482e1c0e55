"""The `calls` section of overhead.py: the cost of one logging call on the calling thread, each
tool timed in rounds so that its ratio to traintape's `emitter.log` compares calls made at the
same machine speed.

This VM has two speeds that change over time, independent of what runs on it: a pure-Python loop
(dict copy + time.time_ns + deque append, 20,000 calls per block) run for 15 s in one process took
about 285 ns per call for 5 s, then about 200 ns for the next 10 s; processes started one after
another land in either phase. A tool timed in one long block after another tool's block can land
in the other phase, and the ratio of the two then says more about the machine than the tools. So
every tool is timed in R rounds (each a fresh session: sessions of one library cannot be open at
once), the ratio to traintape is taken within each round, and the `python-floor` row, a pure
Python function of emitter.log's fast-path shape, shows which speed each round ran at.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from result_table import print_table

LogFn = Callable[..., Any]
REFERENCE = "traintape"
"""The tool every ratio divides by: `emitter.log`."""
WITHIN_2X = {"traintape-wandb": 1, "tt-wandb-nostep": 1, "tt-wandb-pair": 2, "lightning": 1}
"""Issue 14's target: these entry points within 2x of emitter.log, per call: the value is how
many calls one timing holds (the pair is commit=False and then the committing call)."""


@contextmanager
def python_floor_session(ctx: Any, name: str) -> Iterator[LogFn]:
    """emitter.log's fast path in plain Python: copy the dict, stamp it with time.time_ns() and
    the step, append to a deque (cleared every 256, as a batch is sent): the machine's speed."""
    queue: deque[tuple[int, int, dict[str, float]]] = deque()
    append, clear, time_ns = queue.append, queue.clear, time.time_ns

    def log(metrics: dict[str, float], step: int) -> None:
        append((time_ns(), step, metrics.copy()))
        if len(queue) >= 256:
            clear()

    yield log


# -- statistics and formatting ----------------------------------------------------------------


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def fmt_us(us: float) -> str:
    if us < 10:
        return f"{us:.2f}"
    if us < 1000:
        return f"{us:.1f}"
    return f"{us:,.0f}"


def fmt_ratio(r: float) -> str:
    if not math.isfinite(r):
        return "–"
    return f"{r:.2f}×" if r < 10 else f"{r:,.0f}×"


# -- timing -----------------------------------------------------------------------------------


@dataclass
class Rounds:
    """One tool's timings, appended to round by round."""

    ns: list[list[int]] = field(default_factory=list)  # per round: each timed call, sorted
    init_s: list[float] = field(default_factory=list)
    finish_s: list[float] = field(default_factory=list)

    def medians_us(self) -> list[float]:
        return [r[len(r) // 2] / 1e3 for r in self.ns]


@dataclass
class CallResult:
    tool: Any  # overhead.Tool
    calls: int  # over all rounds
    median_us: float  # pooled over all rounds' calls, as p99 and mean
    p99_us: float
    mean_us: float
    init_s: float  # median over rounds: init / start_run / SummaryWriter()
    finish_s: float  # median over rounds: finish / end_run, which waits for what is queued
    round_median_us: list[float]
    round_ratio: list[float]  # this tool's median in round r ÷ traintape's median in round r


def _time_calls(
    log: LogFn, ring: list[dict[str, float]], n: int, takes_step: bool, first: int = 0
) -> list[int]:
    """Steps from `first`: the timed calls go on after the warm-up's steps (W&B-style logs drop
    a step below the last one, with a warning: not the call to time)."""
    now = time.perf_counter_ns
    size = len(ring)
    out = [0] * n
    if takes_step:
        for i in range(n):
            metrics = ring[i % size]
            t0 = now()
            log(metrics, first + i)
            out[i] = now() - t0
    else:
        for i in range(n):
            metrics = ring[i % size]
            t0 = now()
            log(metrics)
            out[i] = now() - t0
    return out


def _time_round(
    ctx: Any, tool: Any, ring: list[dict[str, float]], n: int, name: str, into: Rounds
) -> None:
    """One round of one tool: enter a fresh session, warm up, time `n` calls, leave."""
    warmup = max(20, n // 10)
    with ExitStack() as stack:
        t0 = time.perf_counter()
        log = stack.enter_context(tool.session(ctx, name))
        t1 = time.perf_counter()
        _time_calls(log, ring, warmup, tool.takes_step)
        gc.collect()
        ns = sorted(_time_calls(log, ring, n, tool.takes_step, first=warmup))
        t2 = time.perf_counter()
    into.ns.append(ns)
    into.init_s.append(t1 - t0)
    into.finish_s.append(time.perf_counter() - t2)


def per_round(n: int, rounds: int) -> int:
    return max(1, n // rounds)


def measure_calls(
    ctx: Any,
    tools: list[Any],
    counts: dict[str, int],
    rounds: int,
    ring: list[dict[str, float]],
    progress: Callable[[str], None],
) -> list[CallResult]:
    """Every tool in every round, the order rotated by one each round (as the loop section)."""
    timings = {t.key: Rounds() for t in tools}
    for r in range(rounds):
        order = tools[r % len(tools) :] + tools[: r % len(tools)]
        for tool in order:
            n = per_round(counts[tool.calls], rounds)
            progress(f"calls: round {r + 1}/{rounds} {tool.label}: {n} timed calls")
            _time_round(ctx, tool, ring, n, f"calls-{tool.key}-{r}", timings[tool.key])
    ref = timings.get(REFERENCE)
    ref_medians = ref.medians_us() if ref else [math.nan] * rounds
    results = []
    for tool in tools:
        t = timings[tool.key]
        ns = sorted(v for r in t.ns for v in r)
        medians = t.medians_us()
        results.append(
            CallResult(
                tool,
                len(ns),
                median_us=ns[len(ns) // 2] / 1e3,
                p99_us=percentile(ns, 99) / 1e3,
                mean_us=sum(ns) / len(ns) / 1e3,
                init_s=statistics.median(t.init_s),
                finish_s=statistics.median(t.finish_s),
                round_median_us=medians,
                round_ratio=[m / base for m, base in zip(medians, ref_medians)],
            )
        )
    return results


# -- the report -------------------------------------------------------------------------------


def _ratio_cells(r: CallResult) -> list[str]:
    if not all(math.isfinite(x) for x in r.round_ratio):
        return ["–", "–"]
    spread = f"{fmt_ratio(min(r.round_ratio))}–{fmt_ratio(max(r.round_ratio))}"
    return [fmt_ratio(statistics.median(r.round_ratio)), spread]


def _summary_table(results: list[CallResult]) -> None:
    ref = next((r for r in results if r.tool.key == REFERENCE), None)
    rows = []
    for r in results:
        rows.append(
            [
                r.tool.label,
                f"{r.calls:,}",
                fmt_us(r.median_us),
                fmt_us(r.p99_us),
                fmt_us(r.mean_us),
                *_ratio_cells(r),
                fmt_ratio(r.p99_us / ref.p99_us) if ref else "–",
                f"{r.init_s:.2f}",
                f"{r.finish_s:.2f}",
            ]
        )
    header = ["tool", "calls timed", "median µs", "p99 µs", "mean µs"]
    header += ["median ÷ traintape (per round)", "range over rounds", "p99 ÷ traintape (pooled)"]
    print_table(header + ["init s", "finish s"], rows)


def _rounds_table(results: list[CallResult]) -> None:
    """Each round's median per tool, and its ratio to traintape's in the same round."""
    rounds = len(results[0].round_median_us)
    rows = []
    for r in results:
        cells = [f"{fmt_us(m)} ({fmt_ratio(x)})" for m, x in zip(r.round_median_us, r.round_ratio)]
        rows.append([r.tool.label, *cells])
    print_table(["tool: median µs (÷ traintape)"] + [f"round {i + 1}" for i in range(rounds)], rows)


def _describe(counts: dict[str, int], kinds: set[str], rounds: int) -> None:
    described = {
        "fast": f"{counts['fast']:,} for the sub-microsecond calls",
        "tool": f"{counts['tool']:,} for the tools of about a millisecond",
        "slow": f"{counts['slow']:,} for MLflow sync (tens of ms each, so fewer)",
    }
    print(
        f"\nCalls timed: {'; '.join(v for k, v in described.items() if k in kinds)}; split over "
        f"{rounds} rounds, each round a fresh session of every tool (the order rotated by one "
        "each round) with a warm-up of 10 % of its calls (at least 20). Median, p99 and mean "
        "pool every round's calls; the mean includes the calls that pack and send a batch. "
        "`init s` and `finish s` are the median over rounds of the run's start and end around "
        "those calls (`finish` waits for what a tool still has queued; traintape's also until "
        "the run is visible to readers), off the per-call clock."
    )
    print(
        "This machine runs at two speeds that change over time, independent of traintape (a "
        "pure-Python loop ran at about 285 ns per call for 5 s, then about 200 ns for 10 s, in "
        "one process). The pure-Python row (python-floor: emitter.log's fast path in plain "
        "Python) shows which speed each round had; that is why every ratio to traintape is "
        "taken within a round, then summarised by its median and range over rounds."
    )


def _targets(results: list[CallResult]) -> None:
    by_key = {r.tool.key: r for r in results}
    ref = by_key.get(REFERENCE)
    if ref is None:
        return
    print(
        f"traintape target: median ≤ 1 µs: {fmt_us(ref.median_us)} µs "
        f"({'met' if ref.median_us <= 1.0 else 'MISSED'}); p99 ≤ 10 µs: {fmt_us(ref.p99_us)} "
        f"µs ({'met' if ref.p99_us <= 10.0 else 'MISSED'})."
    )
    for key, calls in WITHIN_2X.items():
        r = by_key.get(key)
        if r is None:
            continue
        ratios = [x / calls for x in r.round_ratio]
        median = statistics.median(ratios)
        under = sum(x <= 2.0 for x in ratios)
        per_call = " per call (the timing ÷ 2)" if calls > 1 else ""
        print(
            f"issue 14 target, {r.tool.label} within 2x of emitter.log{per_call}: per-round "
            f"ratios {', '.join(fmt_ratio(x) for x in ratios)}, median {fmt_ratio(median)} "
            f"({'met' if median <= 2.0 else 'MISSED'}); {under}/{len(r.round_ratio)} rounds "
            "≤ 2.00×."
        )


def report_calls(
    results: list[CallResult], counts: dict[str, int], rounds: int, n_floats: int
) -> None:
    print(f"\n### Per call, {n_floats} floats, on the calling thread, {rounds} rounds\n")
    _summary_table(results)
    print("\n#### Per round (the order rotated by one each round)\n")
    _rounds_table(results)
    _describe(counts, {r.tool.calls for r in results}, rounds)
    _targets(results)
