"""A 2-rank DDP (gloo) job with `emitter.watch`: each rank sees different data, so only gradients
read after DDP's all-reduce agree across ranks. Logs, beside watch()'s metrics, the global norm
of the gradients as training code sees them once backward() returned (`expected/global_norm`).
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from traintape import emitter


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    # Small buckets: several all-reduces per backward pass, as in a real model.
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.0001)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    emitter.init(project="ddp-watch", store=args.store)
    emitter.watch(ddp, every=1, per_layer=True)
    gen = torch.Generator().manual_seed(100 + rank)
    for step in range(args.steps):
        x = torch.randn(32, 8, generator=gen)
        loss = ddp(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        norm = torch.linalg.vector_norm(
            torch.stack([q.grad.double().norm() for q in model.parameters()])
        )
        emitter.log({"expected/global_norm": norm.item()}, step=step)
        opt.step()
    emitter.finish()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
