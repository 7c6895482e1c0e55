"""The pixels of a numpy image, taken on the caller's thread when `traintape.Image` is made.

Two ways, both checked the same (dtype, shape, a float image's range):

- `snapshot` (the default): one memcpy into a buffer of `SNAPSHOTS`, so the caller may change
  or reuse its array as soon as the call returns. The copy is the cost of `log()` with an
  image: about 5 µs for 256x256x3 with warm caches, 10-40 µs cold on this kind of VM.
- `handover` (`Image(array, copy=False)`): no copy. The array itself is read on the artifact
  thread, so it must not change until it is stored; numpy's `writeable` flag is cleared, so a
  later write into it raises instead of changing what is stored. Only an array that owns its
  memory in C order can be handed over (a view's base, or another view of it, could still be
  written); any other is copied as `snapshot` copies it. The flag of an array handed over
  stays cleared: it was given to the run.
"""

from __future__ import annotations

from typing import Any

_CHANNELS = (1, 3, 4)


class SnapshotBuffers:
    """Buffers for the pixels of numpy images, reused once their image is encoded.

    A new buffer of an image's size is new memory from the kernel (glibc maps allocations this
    large anew, and a backlog of copies grows the heap), and the copy's first write then
    faults in each of its pages: 48 for a 256x256x3 image, a few µs each on a VM, most of
    `log()`'s time. A buffer given back is mapped already. One size is kept (the last image's:
    a training loop logs one shape), at most LIMIT bytes of free buffers. Callers take, the
    thread that frees an Image (the artifact thread, after encoding it) gives back: each a
    single list operation, atomic under the GIL, so no lock can make a caller wait."""

    LIMIT = 16 << 20

    def __init__(self) -> None:
        self.size = 0
        self.free: list[Any] = []

    def take(self, np: Any, size: int) -> Any:
        """A uint8 array of `size` bytes, not initialized: a free one, else a new one."""
        if size == self.size:
            try:
                return self.free.pop()
            except IndexError:
                pass
        else:
            self.size, self.free = size, []  # another size: the others are dropped
        return np.empty(size, np.uint8)

    def give(self, buffer: Any) -> None:
        """`buffer` is free: nothing reads it any more. Only the flat buffers `take` makes are
        kept: an image handed over is the caller's own array (2-D or 3-D), never reused."""
        free = self.free
        if (
            buffer.ndim == 1
            and buffer.nbytes == self.size
            and (len(free) + 1) * self.size <= self.LIMIT
        ):
            free.append(buffer)


SNAPSHOTS = SnapshotBuffers()

Pixels = tuple[Any, tuple[int, ...], str, str]
"""(pixels, shape, dtype (numpy's str), layout). pixels: a flat uint8 buffer of SNAPSHOTS holding
the image's bytes, or the array handed over itself."""


def snapshot(np: Any, data: Any) -> Pixels:
    """The pixels of a numpy image, copied into a buffer of SNAPSHOTS. The copy is one memcpy
    that keeps the GIL (a copy that releases it would make the caller wait for the artifact
    thread to give it back)."""
    dtype, shape, layout = _checked(data)
    pixels = SNAPSHOTS.take(np, data.nbytes)
    try:
        memoryview(pixels)[:] = memoryview(data).cast("B")
    except TypeError:  # not C-contiguous (a view with strides): numpy copies it in order
        np.copyto(pixels.view(dtype).reshape(shape), data)
    return pixels, shape, dtype.str, layout


def handover(np: Any, data: Any) -> Pixels:
    """The pixels of a numpy image without a copy: `data` itself, made read-only; copied
    (`snapshot`) unless `data` owns its memory in C order."""
    flags = data.flags
    if data.base is not None or not flags.owndata or not flags.c_contiguous:
        return snapshot(np, data)
    dtype, shape, layout = _checked(data)
    if flags.writeable:
        flags.writeable = False  # a write after this call raises
    return data, shape, dtype.str, layout


def _checked(data: Any) -> tuple[Any, tuple[int, ...], str]:
    """(dtype, shape, layout) of a numpy image, or the error that refuses it."""
    dtype = data.dtype
    kind = dtype.kind
    if kind != "f" and (kind != "u" or dtype.itemsize != 1):
        bad_dtype(str(dtype))
    shape = data.shape
    layout = image_layout(shape, prefer_chw=False)
    if kind == "f":
        check_float_range(float(data.min()), float(data.max()))
    return dtype, shape, layout


def image_layout(shape: tuple[int, ...], prefer_chw: bool) -> str:
    """The layout ("hw", "hwc" or "chw") of an image of `shape`; ValueError for any other."""
    if 0 in shape:
        msg = f"Image(): an empty image (shape {shape})"
        raise ValueError(msg)
    if len(shape) == 2:
        return "hw"
    if len(shape) == 3:
        first, last = shape[0] in _CHANNELS, shape[2] in _CHANNELS
        if first and (prefer_chw or not last):
            return "chw"
        if last:
            return "hwc"
    msg = (
        f"Image(): shape {shape} is not an image: HW, HWC or CHW with 1, 3 or 4 channels (a "
        "batch of images: log each under its own key)"
    )
    raise ValueError(msg)


def bad_dtype(dtype: str) -> None:
    msg = f"Image(): dtype {dtype}; images are uint8 (0-255) or float (0-1)"
    raise TypeError(msg)


def check_float_range(low: float, high: float) -> None:
    if low != low or high != high:  # NaN
        msg = "Image(): a float image holds NaN; images are uint8 (0-255) or float in [0, 1]"
        raise ValueError(msg)
    if low < 0.0 or high > 1.0:
        msg = (
            f"Image(): float values from {low:g} to {high:g}; a float image must lie in [0, 1] "
            "(scale it, or pass uint8)"
        )
        raise ValueError(msg)
