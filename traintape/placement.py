"""Which rank this process is: from torchrun's variables, else an initialised torch.distributed.

A leaf of the package: the emitter settles its run with it and `load_checkpoint` picks the
caller's rank's file with it. Nothing here imports torch: a torch the training script already
imported is read from `sys.modules`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["Placement", "placement"]


@dataclass(frozen=True)
class Placement:
    rank: int
    world_size: int
    local_rank: int


def _initialized_dist() -> Any | None:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def placement() -> Placement:
    """Rank and world size from torchrun's variables, else an initialised torch.distributed."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank = int(env["RANK"])
        return Placement(rank, int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", rank)))
    dist = _initialized_dist()
    if dist is not None:
        rank = dist.get_rank()
        return Placement(rank, dist.get_world_size(), int(env.get("LOCAL_RANK", rank)))
    return Placement(0, 1, 0)
