"""What a checkpoint costs the training thread: traintape next to torch.save and DCP async_save.

    .venv/bin/python benchmarks/checkpoint.py                       # 100 MB and 1 GB states
    .venv/bin/python benchmarks/checkpoint.py --sizes 20M --repeats 3   # a quick look

For each state size, in one run, with a warm-up round first and the methods interleaved in
every repeat (so drift of a shared machine hits them alike), the medians and the worst of
`--repeats` rounds of:

copy         `copy_` of every tensor into CPU buffers allocated beforehand: the floor for any
             snapshot that lets the caller change the model at once.
traintape    `emitter.save_checkpoint`: blocked = until it returns (the snapshot); total = until
             the handle resolves (torch.save, sha256, fsync, rename, fsync of the folder, event).
torch.save   plain `torch.save(state, path)`: the training thread is blocked throughout. Also
             with an fsync, which a durable checkpoint needs.
dcp          `torch.distributed.checkpoint.async_save` (single process, default stager):
             blocked = until it returns; total = until its future is done.

Then, for the largest size, what the background write costs a training loop that goes on
beside it: a small MLP's steps/s alone and while traintape's writer thread runs (from the return
of `save_checkpoint` until its handle resolves), on `--loop-threads` torch threads (default: all
cores but one, leaving the writer a core, as a GPU job leaves its CPU cores mostly idle).

Each save waits for the previous one to finish, so "blocked" is the cost of a save on its own,
not of a save queued behind another (traintape then waits for a free snapshot slot). The state
is a model's and an Adam optimizer's state_dicts of float32 tensors (see make_state).
A real `traintape serve` collector on a temporary store receives the checkpoint events; every
file goes to a temporary folder (`--dir` to choose where) that is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from collector_process import Collector

from traintape import CheckpointPolicy, emitter

MB = 1 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": MB, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_state(nbytes: int) -> dict[str, Any]:
    """A model's and an Adam optimizer's state_dicts, `nbytes` in all: per layer a 4 MB weight,
    a bias and a norm's weight and bias; per parameter two moments and a step (1 GB: ~1,400
    tensors, as many as a mid-sized transformer has)."""
    layers = max(1, round(nbytes / (3 * 4 * (1024 * 1024 + 3 * 1024))))
    model: dict[str, torch.Tensor] = {}
    for i in range(layers):
        model[f"layers.{i}.linear.weight"] = torch.randn(1024, 1024)
        model[f"layers.{i}.linear.bias"] = torch.randn(1024)
        model[f"layers.{i}.norm.weight"] = torch.ones(1024)
        model[f"layers.{i}.norm.bias"] = torch.zeros(1024)
    optim_state = {
        i: {
            "step": torch.tensor(10.0),
            "exp_avg": torch.randn_like(p),
            "exp_avg_sq": torch.rand_like(p),
        }
        for i, p in enumerate(model.values())
    }
    groups = [{"lr": 1e-3, "betas": (0.9, 0.999), "params": list(range(len(model)))}]
    return {"model": model, "optim": {"state": optim_state, "param_groups": groups}, "step": 0}


def tensors(state: dict[str, Any]) -> list[torch.Tensor]:
    moments = [t for s in state["optim"]["state"].values() for t in s.values()]
    return [*state["model"].values(), *moments]


# -- one measurement per method: returns (blocked s, total s) ----------------------------------


def bare_copy(sources: list[torch.Tensor], buffers: list[torch.Tensor]) -> tuple[float, float]:
    t0 = time.perf_counter_ns()
    torch._foreach_copy_(buffers, sources)  # one call, no Python loop: the fastest copy we know
    seconds = (time.perf_counter_ns() - t0) / 1e9
    return seconds, seconds


def traintape_save(state: dict[str, Any], step: int) -> tuple[float, float]:
    t0 = time.perf_counter_ns()
    handle = emitter.save_checkpoint(state, step=step)
    t1 = time.perf_counter_ns()
    handle.result()
    t2 = time.perf_counter_ns()
    return (t1 - t0) / 1e9, (t2 - t0) / 1e9


def plain_torch_save(state: dict[str, Any], path: Path, fsync: bool) -> tuple[float, float]:
    t0 = time.perf_counter_ns()
    if fsync:
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    else:
        torch.save(state, path)
    seconds = (time.perf_counter_ns() - t0) / 1e9
    path.unlink()
    return seconds, seconds


def dcp_async_save(state: dict[str, Any], folder: Path) -> tuple[float, float]:
    import torch.distributed.checkpoint as dcp

    t0 = time.perf_counter_ns()
    future = dcp.async_save(state, checkpoint_id=str(folder), no_dist=True)
    t1 = time.perf_counter_ns()
    future.result()
    t2 = time.perf_counter_ns()
    shutil.rmtree(folder)
    return (t1 - t0) / 1e9, (t2 - t0) / 1e9


# -- the run -----------------------------------------------------------------------------------


def measure(
    size: int, repeats: int, root: Path, with_dcp: bool
) -> dict[str, list[tuple[float, float]]]:
    state = make_state(size)
    sources = tensors(state)
    buffers = [torch.empty_like(t) for t in sources]
    counter = iter(range(1 << 30))
    methods: dict[str, Callable[[], tuple[float, float]]] = {
        "copy_ into buffers": lambda: bare_copy(sources, buffers),
        "traintape save_checkpoint": lambda: traintape_save(state, next(counter)),
        "torch.save": lambda: plain_torch_save(state, root / "plain.pt", fsync=False),
        "torch.save + fsync": lambda: plain_torch_save(state, root / "plain.pt", fsync=True),
    }
    if with_dcp:
        methods["dcp.async_save"] = lambda: dcp_async_save(state, root / "dcp")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    names = list(methods)
    for _ in range(2):  # warm-up: both snapshot slots allocated and faulted in, threads started
        for name in names:
            methods[name]()
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            # Every method starts with no write-back of an earlier method's gigabyte under way:
            # otherwise whichever runs after a save pays for the kernel flushing that save.
            os.sync()
            results[name].append(methods[name]())
    return results, len(sources)


def measure_beside(size: int, repeats: int, threads: int) -> None:
    """Steps/s of an MLP loop alone vs while a checkpoint of `size` bytes is being written."""
    state = make_state(size)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.GELU(), torch.nn.Linear(512, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(80, 512), torch.randn(80, 1)

    def step() -> None:
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def steps_while(busy: Callable[[], bool]) -> tuple[float, float]:
        n, t0 = 0, time.perf_counter()
        while busy():
            step()
            n += 1
        seconds = time.perf_counter() - t0
        return n / seconds, seconds

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(200):
            step()
        for i in range(2):  # warm-up: both snapshot slots allocated and faulted in
            emitter.save_checkpoint(state, step=10_000 + i).result()
        alone, during, writes, blocked = [], [], [], []
        for r in range(repeats):
            os.sync()
            t0 = time.perf_counter()
            handle = emitter.save_checkpoint(state, step=20_000 + r)
            blocked.append(time.perf_counter() - t0)
            rate, seconds = steps_while(lambda handle=handle: not handle.done())
            during.append(rate)
            writes.append(seconds)
            handle.result()
            os.sync()
            end = time.perf_counter() + seconds  # the same length of time with no write
            alone.append(steps_while(lambda end=end: time.perf_counter() < end)[0])
    finally:
        torch.set_num_threads(before)
    med = statistics.median
    print(
        f"\n### A training loop beside the background write ({size / MB:,.0f} MiB state, "
        f"{threads} torch thread(s), {repeats} rounds)\n"
    )
    print("| loop | median steps/s | worst | vs alone |")
    print("|---|---:|---:|---:|")
    print(f"| alone | {med(alone):,.0f} | {min(alone):,.0f} | |")
    print(
        f"| while traintape writes ({med(writes):.2f} s each) | {med(during):,.0f} | "
        f"{min(during):,.0f} | {100 * (med(during) / med(alone) - 1):+.1f} % |"
    )
    print(
        f"the loop was blocked {med(blocked) * 1e3:.1f} ms per save (the snapshot); a "
        f"torch.save on the training thread would block it for the whole write"
    )


def report(size: int, count: int, results: dict[str, list[tuple[float, float]]]) -> None:
    blocked = {n: sorted(b for b, _ in v) for n, v in results.items()}
    med = {n: statistics.median(v) for n, v in blocked.items()}
    total = {n: statistics.median(t for _, t in v) for n, v in results.items()}
    copy_s, save_s = med["copy_ into buffers"], med["torch.save"]
    rounds = len(results["copy_ into buffers"])
    print(f"\nstate {size / MB:,.0f} MiB ({count} tensors), {rounds} rounds; times in ms")
    head = (
        f"{'method':27s} {'blocked':>8s} {'min':>7s} {'max':>7s} {'total':>8s}"
        f" {'blocked/copy':>13s} {'blocked/torch.save':>19s}"
    )
    print(head)
    print("-" * len(head))
    for name, values in blocked.items():
        print(
            f"{name:27s} {med[name] * 1e3:8.1f} {values[0] * 1e3:7.1f} {values[-1] * 1e3:7.1f}"
            f" {total[name] * 1e3:8.1f} {med[name] / copy_s:13.2f} {med[name] / save_s:19.3f}"
        )
    ours = med["traintape save_checkpoint"]
    dcp = med.get("dcp.async_save")
    print(
        f"traintape blocked (medians): {ours / copy_s:.2f}x the bare copy (target <= 1.2), "
        f"{ours / save_s:.1%} of torch.save (target <= 10 % at 1 GB); "
        + (f"dcp.async_save blocks {dcp / ours:.2f}x as long" if dcp else "dcp.async_save not run")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100M,1G", help="state sizes, e.g. 100M,1G (default)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per size (default 5)")
    parser.add_argument("--dir", help="where files are written (default: a temporary folder)")
    parser.add_argument("--no-dcp", action="store_true", help="leave out DCP async_save")
    parser.add_argument(
        "--loop-threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="torch threads of the loop beside a write (default: all cores but one)",
    )
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    warnings.filterwarnings("ignore")  # DCP warns that no process group is initialised
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"medians of {args.repeats} rounds after a warm-up"
    )
    with tempfile.TemporaryDirectory(prefix="traintape-ckpt-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        with Collector(root / "store"):
            policy = CheckpointPolicy(dir=root / "traintape", keep_last=1)
            emitter.init("checkpoint-bench", store=root / "store", checkpoint=policy)
            try:
                for size in sizes:
                    results, count = measure(size, args.repeats, root, not args.no_dcp)
                    report(size, count, results)
                measure_beside(max(sizes), args.repeats, args.loop_threads)
            finally:
                emitter.finish()


if __name__ == "__main__":
    main()
