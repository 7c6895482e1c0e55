"""A training-process stand-in that logs step after step until a signal (or an error) ends it.

After each `--report-every` steps it writes the last step whose `log()` returned to
`<progress>.<rank>` (write, then rename), so a test knows a lower bound of what was logged
before it sent a signal. The value of step s is float(s) under the key "v".

`--handler` sets what the script does about SIGTERM before `init()`:
  none    nothing (the default disposition)
  exit    a handler that raises SystemExit(3)
  flag    a handler that sets a flag; the loop then stops and the script calls finish()
`--fail-rank R --fail-after S`: rank R raises RuntimeError once it has logged step S.
`--rate HZ`: steps per second (0: as fast as it can).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--progress", required=True)
    p.add_argument("--report-every", type=int, default=20)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--handler", choices=("none", "exit", "flag"), default="none")
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-after", type=int, default=-1)
    p.add_argument("--run-id")
    args = p.parse_args()

    stop = []
    if args.handler == "exit":

        def on_term(signum: int, frame: object) -> None:
            raise SystemExit(3)

        signal.signal(signal.SIGTERM, on_term)
    elif args.handler == "flag":
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))

    from traintape import emitter

    run = emitter.init(project="signals", store=args.store, run_id=args.run_id)
    progress = f"{args.progress}.{run.rank}"
    period = 1.0 / args.rate if args.rate else 0.0
    next_at = time.monotonic()
    step = 0
    while not stop:
        emitter.log({"v": float(step)}, step=step)
        if step % args.report_every == 0:
            with open(progress + ".tmp", "w") as f:
                f.write(str(step))
            os.replace(progress + ".tmp", progress)
        if run.rank == args.fail_rank and step == args.fail_after:
            msg = f"rank {run.rank} fails on purpose at step {step}"
            raise RuntimeError(msg)
        step += 1
        if period:
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    with open(progress + ".tmp", "w") as f:
        f.write(str(step - 1))
    os.replace(progress + ".tmp", progress)
    emitter.finish()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.exit(main())
