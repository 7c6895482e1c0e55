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
    single list operation, atomic under the GIL, so no lock can make a caller wait.

    Not huge pages: buffers carved from MADV_HUGEPAGE arenas fault once per 2 MiB instead of
    per 4 KiB (back to back, 256x256x3 images, a median of 20 µs per call instead of 80), but
    the kernel then compacts memory on the caller's thread to find a huge page: stalls of 5-10
    ms were measured here, on a machine with free memory."""

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

    def clear(self) -> None:
        """Drops every free buffer: as in a new process (the benchmark's variants)."""
        self.size, self.free = 0, []


SNAPSHOTS = SnapshotBuffers()

Pixels = tuple[Any, tuple[int, ...], str, str]
"""(pixels, shape, dtype (numpy's str), layout). pixels: a flat uint8 buffer of SNAPSHOTS holding
the image's bytes, or the array handed over itself."""

Size = tuple[int, int, int]
"""(height, width, channels) of an image."""

_UINT8 = 2  # numpy's type number of uint8 (NPY_UBYTE)
_UINT8_SHAPES: tuple[dict[tuple[int, ...], tuple[str, Size]], ...] = ({}, {})
"""Shape -> (layout, size) of the uint8 images seen (of numpy arrays, then of tensors: an
ambiguous shape is HWC for one, CHW for the other): a uint8 image is checked by its shape alone,
so a loop logging one shape checks it once (a dict lookup after that, not a dozen tests)."""
_SHAPES_KEPT = 64


def snapshot(np: Any, data: Any, prefer_chw: bool = False) -> tuple[Pixels, Size]:
    """The pixels of a numpy image, copied into a buffer of SNAPSHOTS, and its size. The copy
    is one memcpy that keeps the GIL (a copy that releases it would make the caller wait for the
    artifact thread to give it back). `prefer_chw`: a shape that could be either is CHW (the
    numpy view of a tensor)."""
    dtype, shape, layout, size = _checked(data, prefer_chw)
    pixels = SNAPSHOTS.take(np, data.nbytes)
    try:
        memoryview(pixels)[:] = memoryview(data).cast("B")
    except TypeError:  # not C-contiguous (a view with strides): numpy copies it in order
        np.copyto(pixels.view(data.dtype).reshape(shape), data)
    return (pixels, shape, dtype, layout), size


def handover(np: Any, data: Any) -> tuple[Pixels, Size]:
    """The pixels of a numpy image without a copy: `data` itself, made read-only; copied
    (`snapshot`) unless `data` owns its memory in C order."""
    flags = data.flags
    if data.base is not None or not flags.owndata or not flags.c_contiguous:
        return snapshot(np, data)
    dtype, shape, layout, size = _checked(data, False)
    if flags.writeable:
        flags.writeable = False  # a write after this call raises
    return (data, shape, dtype, layout), size


def _checked(data: Any, prefer_chw: bool) -> tuple[str, tuple[int, ...], str, Size]:
    """(dtype (numpy's str), shape, layout, size) of a numpy image, or the error that refuses
    it."""
    shape = data.shape
    dtype = data.dtype
    if dtype.num == _UINT8:
        seen = _UINT8_SHAPES[prefer_chw]
        known = seen.get(shape)
        if known is None:
            known = _layout_and_size(shape, prefer_chw)
            if len(seen) >= _SHAPES_KEPT:  # a loop of ever new shapes: bounded
                seen.clear()
            seen[shape] = known
        return "|u1", shape, known[0], known[1]
    if dtype.kind != "f":
        bad_dtype(str(dtype))
    layout, size = _layout_and_size(shape, prefer_chw)
    check_float_range(float(data.min()), float(data.max()))
    return dtype.str, shape, layout, size


def _layout_and_size(shape: tuple[int, ...], prefer_chw: bool) -> tuple[str, Size]:
    layout = image_layout(shape, prefer_chw)
    return layout, image_size(shape, layout)


def image_size(shape: tuple[int, ...], layout: str) -> Size:
    """(height, width, channels) of an image of `shape` laid out as `layout`."""
    if layout == "chw":
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], 1 if len(shape) == 2 else shape[2]


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
        "batch of images: log a list of Images, stored as key/0, key/1, ...)"
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
