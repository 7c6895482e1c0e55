"""An Accelerate job on CPU logging through `TraintapeTracker`: run under torchrun with 2 ranks
(gloo). 4 steps of a tiny model; every rank logs its loss through the tracker at each step;
`accelerator.save_state` every 2 steps, recorded by the main process, which then removes the
previous state folder (so one deletion is recorded); at step 4, sample images and a table through
`log_images`/`log_table`. `--fail-at N` raises at step N everywhere.
"""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from traintape.integrations.accelerate import TraintapeTracker


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--fail-at", type=int, default=-1)
    args = p.parse_args()

    tracker = TraintapeTracker("accelerate-ddp", store=args.store)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(
        "accelerate-ddp", config={"lr": 0.05, "model": {"hidden": 8, "act": "tanh"}}
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = accelerator.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(100 + accelerator.process_index)
    previous = None
    for step in range(1, 5):
        if step == args.fail_at:
            raise RuntimeError("the training loop fails on purpose")
        x, y = torch.randn(8, 4, generator=gen), torch.randn(8, 1, generator=gen)
        loss = F.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        tracker.log({"train/loss": loss.detach(), "train/lr": 0.05}, step=step)
        if step == 4:  # W&B's tracker calls: a batch of sample images per rank, and a table
            rank = accelerator.process_index
            batch = np.stack([np.full((4, 6, 3), 10 * i + rank, np.uint8) for i in range(2)])
            tracker.log_images({"samples": batch}, step=step, caption=[f"rank {rank}", "b"])
            tracker.log_table("preds", columns=["rank"], data=[[rank]], step=step)
        if step % 2 == 0:
            folder = f"{args.root}/state-{step}"
            accelerator.save_state(folder)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                tracker.record_checkpoint(folder, step, {"train/loss": loss.item()})
                if previous is not None:
                    shutil.rmtree(previous)
            previous = folder
    accelerator.end_training()


if __name__ == "__main__":
    main()
