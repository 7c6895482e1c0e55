"""A training-process stand-in for the dashboard's API tests (tests/test_ui_api.py).

Each rank logs `loss` for `--steps` steps (rank r: 1 + r + 0.001·step) with one spike of
`SPIKE_VALUE` at `--spike-step` on rank 0 only, `bad` with NaN, +Inf and -Inf at steps 5, 7, 9
(2.0 elsewhere, 20 steps), `tokens` at even steps only (32·step + rank: the x of a chart against
another metric, whose odd steps have none), one text event, images `samples` at steps 0, 10
and 20 (`png(step, rank)`), a table `preds` at step 20 (`table_rows(rank)`) and a plain file
artifact `notes.txt`, all as the media contract has them; then `live` once per `--pause`
seconds (value = step) until the file `--stop` exists, and finishes.
"""

from __future__ import annotations

import argparse
import io
import math
import struct
import time
import zlib
from pathlib import Path

SPIKE_VALUE = 1000.0
BAD = {5: math.nan, 7: math.inf, 9: -math.inf}


def loss(rank: int, step: int, spike_step: int) -> float:
    """What rank `rank` logs as `loss` at `step`."""
    if rank == 0 and step == spike_step:
        return SPIKE_VALUE
    return 1.0 + rank + 0.001 * step


IMAGE_STEPS = (0, 10, 20)
TABLE_STEP = 20


def png(step: int, rank: int, size: int = 8) -> bytes:
    """A small RGB PNG, one colour per (step, rank), written with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    pixel = bytes([(step * 10) % 256, 40 + 100 * rank, 200])
    raw = b"".join(b"\x00" + pixel * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def table_rows(rank: int) -> dict[str, list[object]]:
    """The columns of the `preds` table rank `rank` logs."""
    return {"id": [0, 1, 2], "label": ["cat", "dog", f"rank{rank}"], "score": [0.5, 0.25, 1.0]}


def _log_media(rank: int, step: int) -> None:
    from traintape import emitter

    if step in IMAGE_STEPS:
        meta = {"media": "image", "format": "png", "width": 8, "height": 8, "channels": 3}
        emitter.log_artifact(
            png(step, rank),
            name="samples",
            kind="image",
            metadata={**meta, "caption": f"step {step}"},
            step=step,
        )
    if step == TABLE_STEP:
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = io.BytesIO()
        pq.write_table(pa.table(table_rows(rank)), out)
        meta = {
            "media": "table",
            "format": "parquet",
            "rows": 3,
            "columns": ["id", "label", "score"],
        }
        emitter.log_artifact(out.getvalue(), name="preds", kind="table", metadata=meta, step=step)
        emitter.log_artifact(b"plain notes", name="notes.txt", kind="file", step=step)


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
        if step % 2 == 0:
            metrics["tokens"] = 32.0 * step + run.rank
        emitter.log(metrics, step=step)
        _log_media(run.rank, step)
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
