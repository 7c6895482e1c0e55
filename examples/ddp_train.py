"""A small DDP training script logging to traintape: run it under torchrun.

    traintape serve &                                   # the collector
    torchrun --standalone --nproc-per-node 2 examples/ddp_train.py --steps 300

Every rank logs its own loss; rank 0 logs the learning rate and validation loss. The model is a
tiny MLP on synthetic regression data, on CPU with the gloo backend (CUDA + nccl when available).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

from traintape import emitter


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--project", default="demo")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu")
    torch.manual_seed(0)
    torch.set_num_threads(1)

    model = nn.Sequential(nn.Linear(16, args.hidden), nn.GELU(), nn.Linear(args.hidden, 1)).to(
        device
    )
    model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    target_w = torch.randn(16, 1, generator=torch.Generator().manual_seed(1)).to(device)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank sees its own shard of data

    config = {"lr": args.lr, "steps": args.steps, "model": {"hidden": args.hidden, "act": "gelu"}}
    with emitter.init(project=args.project, name=args.name, config=config, tags=["demo", "ddp"]):
        # Gradient norm and NaN/Inf counts every 10th backward pass, on the device, no sync.
        emitter.watch(model, every=10)
        for step in range(args.steps):
            x = torch.randn(128, 16, generator=gen).to(device)
            y = x @ target_w + 0.1 * torch.randn(128, 1, generator=gen).to(device)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            # The tensor itself, not loss.item(): on a GPU that would wait for every queued kernel.
            emitter.log({"loss": loss.detach(), "lr": sched.get_last_lr()[0]}, step=step)
            if rank == 0 and step % 50 == 49:
                with torch.no_grad():
                    xv = torch.randn(512, 16, generator=torch.Generator().manual_seed(7)).to(device)
                    val = nn.functional.mse_loss(model(xv), xv @ target_w).item()
                emitter.log({"val_loss": val}, step=step)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
