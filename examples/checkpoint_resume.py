"""Checkpoints that do not stall training, and a resume that picks up exactly where it stopped.

    traintape serve &                                              # the collector
    python examples/checkpoint_resume.py --run-id demo-ckpt --steps 300
    # stop it (Ctrl-C, kill -9, a lost node) and run the same line again: it resumes
    traintape checkpoints demo-ckpt                                # what is kept, best, latest

Every `--every` steps the model, optimizer, scheduler and RNG states are saved. The call returns
after a copy to CPU memory; the file is written, fsync'd and renamed on a background thread.
The policy keeps the 3 newest checkpoints and the best by validation loss.
"""

from __future__ import annotations

import argparse
import random

import torch
from torch import nn

from traintape import CheckpointPolicy, emitter, load_checkpoint
from traintape.checkpoint import CheckpointNotFoundError


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-id", default="demo-ckpt", help="the same id resumes the run")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    parser.add_argument("--store", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    random.seed(0)
    data = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)

    policy = CheckpointPolicy(keep_last=3, keep_best=1, monitor="val_loss", mode="min")
    emitter.init("demo", run_id=args.run_id, store=args.store, checkpoint=policy)
    start = 0
    try:
        state = load_checkpoint("latest", store=args.store, run=args.run_id, fallback=True)
    except CheckpointNotFoundError:
        print("no checkpoint yet: starting from scratch")
    else:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"]["torch"])
        data.set_state(state["rng"]["data"])
        random.setstate(state["rng"]["python"])
        start = state["step"] + 1
        print(f"resumed after step {state['step']}")

    for step in range(start, args.steps):
        x = torch.randn(64, 16, generator=data)
        y = x[:, :4].sum(1, keepdim=True)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        emitter.log({"loss": loss.item(), "lr": sched.get_last_lr()[0]}, step=step)
        if step % args.every == args.every - 1:
            with torch.no_grad():
                model.eval()
                xv = torch.randn(256, 16, generator=data)
                val_loss = nn.functional.mse_loss(model(xv), xv[:, :4].sum(1, keepdim=True))
                model.train()
            state = {
                "model": model.state_dict(),
                "optim": opt.state_dict(),
                "sched": sched.state_dict(),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "data": data.get_state(),
                    "python": random.getstate(),
                },
                "step": step,
            }
            handle = emitter.save_checkpoint(state, step=step, metrics={"val_loss": val_loss})
            handle.add_done_callback(
                lambda h: print(f"step {h.step}: {h.error or h.result().path}", flush=True)
            )
    emitter.finish()  # waits for the last checkpoint to be written


if __name__ == "__main__":
    main()
