"""A training-process stand-in for the dashboard's API tests (tests/test_ui_api.py).

Each rank logs `loss` for `--steps` steps (rank r: 1 + r + 0.001·step) with one spike of
`SPIKE_VALUE` at `--spike-step` on rank 0 only, `bad` with NaN, +Inf and -Inf at steps 5, 7, 9
(2.0 elsewhere, 20 steps), one text event; then `live` once per `--pause` seconds (value = step)
until the file `--stop` exists, and finishes.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

SPIKE_VALUE = 1000.0
BAD = {5: math.nan, 7: math.inf, 9: -math.inf}


def loss(rank: int, step: int, spike_step: int) -> float:
    """What rank `rank` logs as `loss` at `step`."""
    if rank == 0 and step == spike_step:
        return SPIKE_VALUE
    return 1.0 + rank + 0.001 * step


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--spike-step", type=int, default=12_345)
    p.add_argument("--pause", type=float, default=0.05)
    p.add_argument("--stop", required=True, help="stop logging `live` once this file exists")
    args = p.parse_args()

    from traintape import emitter

    run = emitter.init(
        project="uitest",
        name="dashboard",
        config={"lr": 0.1, "opt": {"name": "adam"}},
        tags=["ui"],
        store=args.store,
    )
    for step in range(args.steps):
        metrics = {"loss": loss(run.rank, step, args.spike_step)}
        if step < 20:
            metrics["bad"] = BAD.get(step, 2.0)
        emitter.log(metrics, step=step)
    emitter.log_text("note", f"rank {run.rank} done with loss", step=args.steps - 1)
    step = 0
    while not Path(args.stop).exists():
        emitter.log({"live": float(step)}, step=step)
        step += 1
        time.sleep(args.pause)
    emitter.finish(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
