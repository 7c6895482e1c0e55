"""GPU training-loop throughput: logging the loss every step with traintape vs W&B vs nothing.

    python benchmarks/gpu_loop.py [--steps 2000] [--repeats 5] [--device cuda|cpu]

traintape logs the CUDA tensor itself (`emitter.log({"loss": loss})`: a non-blocking copy behind
a CUDA event); W&B needs a Python number (`wandb.log({"loss": loss.item()})`), and `.item()`
waits for the GPU to finish every queued kernel, every step. A fourth variant adds
`emitter.watch(model, every=10)` (gradient norms and NaN/Inf counts on the device).

Variants are interleaved and repeated; the table gives median steps/s, the slowdown against no
logging, and the device synchronisations per step each variant caused, counted by running it
under `torch.cuda.set_sync_debug_mode("warn")` (one warning per synchronising call). The noise
line is the spread of the no-logging repeats: a slowdown inside it is no measured slowdown.

Without a GPU the script says so and exits 0; `--device cpu` runs the same loop on the CPU (to
check the script; on a CPU `.item()` waits for nothing, so the comparison says little).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector_process import Collector

Log = Callable[[Any, int], None]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000, help="steps per timed loop (2000)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (5)")
    parser.add_argument("--width", type=int, default=2048, help="MLP width: GPU work per step")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--no-wandb", action="store_true", help="leave W&B out")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_loop: no CUDA GPU on this machine; this benchmark needs one (nothing measured).")
        print("gpu_loop: `--device cpu` runs the same loop on the CPU to check the script.")
        return 0

    from traintape import emitter

    tmp = Path(tempfile.mkdtemp(prefix="tt-gpu-bench-"))
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_SILENT="true")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        *(
            layer
            for _ in range(4)
            for layer in (torch.nn.Linear(args.width, args.width), torch.nn.GELU())
        ),
        torch.nn.Linear(args.width, 1),
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(256, args.width, device=device)
    y = torch.randn(256, 1, device=device)

    def wait() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train(log: Log | None, steps: int) -> None:
        for step in range(steps):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log is not None:
                log(loss.detach(), step)

    def loop(log: Log | None, steps: int) -> float:
        wait()
        t0 = time.perf_counter()
        train(log, steps)
        wait()  # the clock stops when the GPU has done the work, not when it was queued
        return steps / (time.perf_counter() - t0)

    with Collector(tmp / "store", "--system-interval", "0"):
        emitter.init(project="bench-gpu", store=tmp / "store")
        watcher: Any = None

        def watch_on() -> None:
            nonlocal watcher
            watcher = emitter.watch(model, every=10)

        def watch_off() -> None:
            nonlocal watcher
            if watcher is not None:
                watcher.remove()
                watcher = None

        def traintape_log(loss: Any, step: int) -> None:
            emitter.log({"loss": loss}, step=step)

        # name -> (log, before, after): before/after turn a variant's extra hooks on and off.
        variants: dict[str, tuple[Log | None, Callable[[], None], Callable[[], None]]] = {
            "no logging": (None, _nothing, _nothing),
            "traintape emitter.log(tensor)": (traintape_log, _nothing, _nothing),
            "traintape log + watch(every=10)": (traintape_log, watch_on, watch_off),
        }
        run = None
        if not args.no_wandb:
            import wandb

            run = wandb.init(project="bench-gpu", mode="offline")
            variants["wandb.log(loss.item())"] = (
                lambda loss, step: run.log({"loss": loss.item()}, step=step),
                _nothing,
                _nothing,
            )

        loop(None, min(args.steps, 200))  # warm-up: kernels, allocator, cuBLAS handles
        syncs = {}
        for name, (log, before, after) in variants.items():
            before()
            syncs[name] = count_syncs(torch, device, lambda log=log: train(log, 50), 50)
            after()
        results: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.repeats):
            for name, (log, before, after) in variants.items():
                before()
                results[name].append(loop(log, args.steps))
                after()
            print(f"[gpu_loop] repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        report = emitter.finish()
        if run is not None:
            run.finish()

    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({os.cpu_count()})"
    base = results["no logging"]
    noise = 100 * (max(base) - min(base)) / statistics.median(base)
    print(
        f"\n{name}; MLP width {args.width}, batch 256; {args.steps} steps x {args.repeats} "
        f"interleaved repeats; traintape lost {report.lost if report else '?'} events\n"
    )
    print("| variant | median steps/s | vs no logging | device syncs / step |")
    print("|---|---:|---:|---:|")
    for variant, values in results.items():
        med = statistics.median(values)
        change = 100 * (med / statistics.median(base) - 1)
        sync = "n/a (CPU)" if syncs[variant] is None else f"{syncs[variant]:.2f}"
        print(f"| {variant} | {med:,.1f} | {change:+.1f} % | {sync} |")
    print(f"\nnoise: the no-logging repeats spread over {noise:.1f} % of their median")
    return 0


def count_syncs(torch: Any, device: Any, body: Callable[[], object], steps: int) -> float | None:
    """Device synchronisations per step of `body`: the sync debug mode warns once per such call
    (from any thread: the emitter's background thread counts too)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            body()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def _nothing() -> None:
    pass


if __name__ == "__main__":
    sys.exit(main())
