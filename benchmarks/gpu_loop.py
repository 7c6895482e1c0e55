"""GPU training-loop throughput: logging the loss every step with traintape vs W&B vs nothing.

    python benchmarks/gpu_loop.py [--steps 2000] [--repeats 5]

traintape logs the CUDA tensor itself (`emitter.log({"loss": loss})`: a non-blocking copy behind
a CUDA event); W&B needs a Python number (`wandb.log({"loss": loss.item()})`), and `.item()`
waits for the GPU to finish every queued kernel, every step. Variants are interleaved and
repeated; the table gives median steps/s and the slowdown against no logging. Without a GPU the
script says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=2048, help="MLP width (GPU work per step)")
    parser.add_argument("--no-wandb", action="store_true")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_loop: no CUDA GPU on this machine; this benchmark needs one (nothing measured).")
        return 0

    from traintape import emitter

    tmp = Path(tempfile.mkdtemp(prefix="tt-gpu-bench-"))
    store = tmp / "store"
    collector = subprocess.Popen(
        [sys.executable, "-m", "traintape.collector", "serve", "--store", str(store)],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2.0)
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_DIR"] = str(tmp)
    os.environ["WANDB_SILENT"] = "true"

    device = torch.device("cuda")
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

    def loop(log: object) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for step in range(args.steps):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log is not None:
                log(loss.detach(), step)  # type: ignore[operator]
        torch.cuda.synchronize()
        return args.steps / (time.perf_counter() - t0)

    emitter.init(project="bench-gpu", store=store)
    variants: dict[str, object] = {
        "no logging": None,
        "traintape emitter.log(tensor)": lambda loss, step: emitter.log({"loss": loss}, step=step),
    }
    wb = None
    if not args.no_wandb:
        import wandb

        wb = wandb.init(project="bench-gpu", mode="offline")
        variants["wandb.log(loss.item())"] = lambda loss, step: wb.log(
            {"loss": loss.item()}, step=step
        )

    loop(None)  # warm-up: kernels, allocator, cuBLAS handles
    results: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        for name, log in variants.items():
            results[name].append(loop(log))
        print(f"[gpu_loop] repeat {r + 1}/{args.repeats} done", file=sys.stderr)
    emitter.finish()
    if wb is not None:
        wb.finish()
    collector.send_signal(signal.SIGTERM)
    collector.wait(60)

    base = statistics.median(results["no logging"])
    print(
        f"\nGPU: {torch.cuda.get_device_name(0)}; {args.steps} steps x {args.repeats} repeats, width {args.width}\n"
    )
    print("| variant | median steps/s | vs no logging |")
    print("|---|---:|---:|")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"| {name} | {med:,.0f} | {100 * (med / base - 1):+.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
