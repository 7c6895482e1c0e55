"""A training-process stand-in for the end-to-end tests: logs deterministic values per step.

Run directly (one process) or under torchrun (then it joins a gloo process group, as DDP code
does). `expected_value(rank, step, i)` is what the test compares the store against, bit for bit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

SPECIAL = (math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308)


def expected_value(rank: int, step: int, i: int) -> float:
    """Deterministic values with NaN, ±Inf, -0.0, a subnormal and the largest double mixed in."""
    if (step + i) % 97 == 0:
        return SPECIAL[(step // 97 + i) % len(SPECIAL)]
    x = (rank * 1_000_003 + step * 101 + i * 7919) % 1_000_003
    return (x / 7.0) * (10.0 ** ((i % 7) - 3)) * (-1 if (x % 3 == 0) else 1)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--metrics", type=int, default=10)
    p.add_argument("--pause-every", type=int, default=0, help="sleep every N steps")
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--finish-timeout", type=float, default=60.0)
    p.add_argument("--dist", action="store_true", help="init a gloo process group first")
    p.add_argument("--report", help="write the FinishReport as JSON here")
    p.add_argument("--progress", help="write the last step logged here at each pause")
    p.add_argument("--finish-after", help="call finish() only once this file exists")
    args = p.parse_args()

    if args.dist:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    from traintape import emitter

    run = emitter.init(project="e2e", config={"steps": args.steps}, store=args.store)
    keys = [f"m{i}" for i in range(args.metrics)]
    for step in range(args.steps):
        emitter.log({k: expected_value(run.rank, step, i) for i, k in enumerate(keys)}, step=step)
        if args.pause_every and step % args.pause_every == 0:
            if args.progress:  # whole or not at all: a test waits on it
                with open(f"{args.progress}.tmp", "w") as f:
                    f.write(str(step))
                os.replace(f"{args.progress}.tmp", args.progress)
            time.sleep(args.pause)
    while args.finish_after and not os.path.exists(args.finish_after):
        time.sleep(0.01)  # the test says when (say, once a collector it killed is back)
    report = emitter.finish(timeout=args.finish_timeout)
    if args.report:
        with open(f"{args.report}.{run.rank}", "w") as f:
            json.dump(
                {
                    "acked": report.acked,
                    "spooled": report.spooled,
                    "run_id": run.run_id,
                    "spool_path": str(report.spool_path) if report.spool_path else None,
                },
                f,
            )
    print(
        f"rank {run.rank} run {run.run_id}: acked {report.acked} spooled {report.spooled}",
        file=sys.stderr,
    )
    if args.dist:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.exit(main())
