"""A training-process stand-in for tests/test_media_e2e.py: each rank logs `--images` distinct
256x256 RGB images (`sample(rank, step)`) with a number in the same `log()` call, those of odd
steps handed over (`copy=False`: a fresh array each, as a loop makes them); rank 0 also logs one
image under two keys and a table."""

from __future__ import annotations

import argparse
import sys

import numpy as np

TABLE = {"id": [1, 2, 3], "label": ["cat", "dog", None], "score": [0.5, 0.25, 1.0]}


def sample(rank: int, step: int) -> np.ndarray:
    """A distinct image per (rank, step): smooth enough to encode fast, marked in its corner."""
    y, x = np.mgrid[0:256, 0:256]
    image = np.empty((256, 256, 3), dtype=np.uint8)
    image[..., 0] = (x + step) % 256
    image[..., 1] = (y * (rank + 1) + step // 3) % 256
    image[..., 2] = ((x ^ y) + 7 * step) % 256
    image[0, 0] = (step & 255, step >> 8, rank)
    return image


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--images", type=int, default=500)
    args = p.parse_args()

    import traintape
    from traintape import emitter

    run = emitter.init(project="media", store=args.store)
    for step in range(args.images):
        pixels, handed = sample(run.rank, step), step % 2 == 1
        image = traintape.Image(pixels, caption=f"{run.rank}/{step}", copy=not handed)
        emitter.log({"loss": 1.0 / (step + 1), "samples/pred": image}, step=step)
    if run.rank == 0:
        same = sample(0, 0)
        table = traintape.Table(columns=list(TABLE), data=list(zip(*TABLE.values())))
        emitter.log({"dup/a": traintape.Image(same), "dup/b": traintape.Image(same)})
        emitter.log({"table": table, "note": traintape.Text("done")})
    report = emitter.finish(timeout=120)
    return 0 if report is not None and report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
