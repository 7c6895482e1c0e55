"""One rank of a run whose ranks log to different collectors (tests/test_scale_nodes.py).

Logs `--steps` steps of `loss`, saves one checkpoint at step `--steps` (rank 0 writes it, as in
DDP), then finishes, or with `--hang` writes `--ready` and waits to be killed. Its collector is the one
$TRAINTAPE_COLLECTOR_ID names (the emitter's default address).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--hang", action="store_true")
    p.add_argument("--ready", help="written once everything logged is acknowledged")
    args = p.parse_args()

    from traintape import CheckpointPolicy, emitter

    policy = CheckpointPolicy(monitor="val_loss", mode="min")
    run = emitter.init(project="nodes", store=args.store, checkpoint=policy)
    for step in range(args.steps):
        emitter.log({"loss": 1.0 / (step + 1) + run.rank}, step=step)
    step = args.steps
    handle = emitter.save_checkpoint({"rank": run.rank}, step=step, metrics={"val_loss": 0.5})
    handle.result(timeout=60)
    if not args.hang:
        emitter.finish(timeout=60)
        return 0
    current = emitter.current()
    assert current is not None
    below = current.send_now()
    while below is not None and (current.acked_below() or 0) < below:
        time.sleep(0.01)  # until the collector has it all: the kill then loses nothing
    with open(f"{args.ready}.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(f"{args.ready}.tmp", args.ready)
    while True:
        time.sleep(1)  # the test SIGKILLs this process


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.exit(main())
