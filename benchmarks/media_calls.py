"""The `media` section of overhead.py: the cost, on the calling thread, of one logging call that
carries a 256x256x3 uint8 image beside a number, for each tool in the same run:

    traintape        emitter.log({"loss": x, "img": traintape.Image(a)}, step=i)
    traintape-wandb  traintape.wandb.log({"loss": x, "img": wandb.Image(a)}, step=i)
    wandb            wandb.log({"loss": x, "img": wandb.Image(a)}, step=i)   (offline)
    trackio          trackio.log({"loss": x, "img": trackio.Image(a)}, step=i)

Making the image object is part of the call, as a user writes it. Images come from a ring of 8
distinct arrays. Three paces: back to back (far faster than any tool encodes: traintape's queue of
copies grows, and each new copy lands in fresh memory, whose page faults are then much of the
call); one call per 10 ms step; and bursts of 8 calls 0.5 s apart (sample images now and then:
the background thread is idle when they come and memory is reused). `finish
s` is the time the session's end took: for traintape the encoding and storing still queued. The
floor row is a bare copy of the array (`ndarray.tobytes`), what any tool that lets the caller
reuse its buffer must pay.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from result_table import print_table

SIDE = 256
PACES = (("back to back", 1, 0.0), ("every 10 ms", 1, 0.01), ("8 at once, 0.5 s apart", 8, 0.5))
"""(label, calls in a burst, seconds after each burst): back to back; one image per 10 ms
training step; a few sample images now and then (the thread is idle when they come)."""
MEDIA_TOOLS = {
    "traintape": "emitter.log + traintape.Image",
    "traintape-wandb": "traintape.wandb.log + wandb.Image",
    "wandb": "wandb.log + wandb.Image (offline)",
    "trackio": "trackio.log + trackio.Image",
}
"""Tool key (overhead.py's TOOLS) -> what the timed call is."""


@dataclass
class MediaResult:
    label: str
    pace: str
    calls: int
    median_us: float
    p99_us: float
    mean_us: float
    finish_s: float


def _image_class(key: str) -> Callable[[Any], Any]:
    if key == "traintape":
        import traintape

        return traintape.Image
    if key == "traintape-wandb":
        import traintape.wandb

        return traintape.wandb.Image
    if key == "wandb":
        import wandb

        return wandb.Image
    import trackio

    return trackio.Image


def _ring() -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    ring = []
    for i in range(8):  # smooth pictures with some noise: neither trivial nor incompressible
        image = np.stack([(x + 9 * i) % 256, (y * 2) % 256, (x ^ y) % 256], axis=-1)
        noise = rng.integers(0, 16, size=image.shape)
        ring.append(((image + noise) % 256).astype(np.uint8))
    return ring


def _time(
    log: Callable[..., Any], image_class: Any, ring: list[Any], steps: range, pace: tuple[Any, ...]
) -> list[int]:
    now = time.perf_counter_ns
    _, burst, pause = pace
    out = []
    for i in steps:
        array = ring[i % len(ring)]
        t0 = now()
        log({"loss": 1.0 / (i + 1), "img": image_class(array)}, i)
        out.append(now() - t0)
        if pause and (i + 1) % burst == 0:
            time.sleep(pause)  # training steps, in which background work can run
    return out


@contextmanager
def _floor_session(ctx: Any, name: str) -> Iterator[Callable[..., Any]]:
    yield lambda metrics, step: None


def measure_media(
    ctx: Any, sessions: dict[str, Any], calls: int, progress: Callable[[str], None]
) -> list[MediaResult]:
    """`sessions`: tool key (of MEDIA_TOOLS) -> its session factory, from overhead.py's TOOLS."""
    ring = _ring()
    chosen = [("tobytes (floor: the copy)", _floor_session, lambda a: a.tobytes())]
    chosen += [(MEDIA_TOOLS[key], s, _image_class(key)) for key, s in sessions.items()]
    results = []
    for (label, session, image_class), pace in itertools.product(chosen, PACES):
        warmup = max(10, calls // 10)
        progress(f"media: {label}, {pace[0]}: {warmup} warm-up + {calls} timed calls")
        with ExitStack() as stack:
            log = stack.enter_context(session(ctx, f"media-{len(results)}"))
            _time(log, image_class, ring, range(warmup), pace)
            gc.collect()
            ns = sorted(_time(log, image_class, ring, range(warmup, warmup + calls), pace))
            t_end = time.perf_counter()
        results.append(
            MediaResult(
                label,
                pace[0],
                calls,
                ns[len(ns) // 2] / 1e3,
                ns[min(len(ns) - 1, int(len(ns) * 0.99))] / 1e3,
                sum(ns) / len(ns) / 1e3,
                time.perf_counter() - t_end,
            )
        )
    return results


def report_media(results: list[MediaResult]) -> None:
    print(
        f"\n### Per call with one {SIDE}x{SIDE}x3 uint8 image and one float, on the calling thread\n"
    )
    refs = {r.pace: r for r in results if r.label == MEDIA_TOOLS["traintape"]}
    rows = []
    order = [p[0] for p in PACES]
    for r in sorted(results, key=lambda r: order.index(r.pace)):
        ref = refs.get(r.pace)
        ratio = f"{r.median_us / ref.median_us:.2f}×" if ref else "–"
        rows.append(
            [
                r.label,
                r.pace,
                f"{r.calls:,}",
                f"{r.median_us:,.1f}",
                f"{r.p99_us:,.1f}",
                f"{r.mean_us:,.1f}",
                ratio,
                f"{r.finish_s:.2f}",
            ]
        )
    print_table(
        ["tool", "calls", "timed", "median µs", "p99 µs", "mean µs", "÷ traintape", "finish s"],
        rows,
    )
    for pace, ref in refs.items():
        met = "met" if ref.median_us <= 5.0 else "MISSED"
        print(
            f"\ntarget ≤ 5 µs median for traintape's call, {pace}: {ref.median_us:.1f} µs ({met})."
        )
    print(
        "The image object is made inside the timed call. traintape copies the pixels and queues "
        "them; PNG encoding and the durable store happen on its artifact thread (`finish s`: "
        "what was still queued when the loop ended). Back to back, traintape's queue of copies "
        "grows (up to 64 MiB, then log() waits for the thread) and every copy faults in fresh "
        "pages (48 for this image); at a pace the thread keeps up with, the copy goes into a "
        "buffer an encoded image gave back (no faults). After a pause (10 ms, 0.5 s) a call "
        "runs with cold caches, as the floor's copy shows."
    )
