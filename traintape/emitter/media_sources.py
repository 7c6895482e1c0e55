"""What `traintape.Image` takes besides a numpy array, as pixels taken on the caller's thread.

- a torch tensor: a CPU one through its numpy view, copied into a reused snapshot buffer
  (media_pixels.py); a CUDA one copied to pinned memory without a device sync
  (media_device.py); any other (bfloat16, sparse, MPS) copied by torch;
- a PIL image, or a matplotlib figure (drawn now): a new RGBA/RGB/gray array;
- the path of a PNG or JPEG file: an open descriptor (its bytes as of the call), read and
  checked on the artifact thread (media_encode.py).
"""

from __future__ import annotations

import io
import os
import stat
import sys
from typing import Any

from traintape.emitter.media_pixels import (
    Pixels,
    Size,
    bad_dtype,
    check_float_range,
    image_layout,
    image_size,
    snapshot,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_PLAIN_PNG = (b"\x08\x00", b"\x08\x02", b"\x08\x06")  # 8-bit gray, RGB, RGBA: stored as is
_PIL_MODES = {"1": "L", "L": "L", "RGB": "RGB", "RGBA": "RGBA", "LA": "RGBA", "CMYK": "RGB"}
_PIL_MODES |= {"YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB", "RGBa": "RGBA"}


def other_snapshot(data: Any) -> tuple[Pixels, Size]:
    """(pixels, shape, dtype, layout) and size of a tensor or a PIL image (a new array)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(data, torch.Tensor):
        return _tensor_snapshot(torch, data)
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(data, pil.Image):
        array = pil_array(data)
    elif (figure := _figure_of(data)) is not None:
        array = _rendered(figure)
    else:
        msg = (
            f"Image() takes a numpy array, a torch tensor, a PIL image, a matplotlib figure or "
            f"a file path, not {type(data).__name__}"
        )
        raise TypeError(msg)
    layout = image_layout(array.shape, prefer_chw=False)
    size = image_size(array.shape, layout)
    return (array.reshape(-1), array.shape, "|u1", layout), size  # a new array: no copy


def _tensor_snapshot(torch: Any, data: Any) -> tuple[Pixels, Size]:
    """A tensor's pixels: a CUDA tensor's copied to pinned host memory without a sync
    (media_device.py); a CPU tensor copied as a numpy array is (its memory seen through numpy,
    then one memcpy into a reused buffer: torch's allocator would give new memory, and page
    faults, to each copy); any other (bfloat16, sparse, MPS) copied by torch to the CPU, which
    waits for the device."""
    if data.dtype != torch.uint8 and not data.is_floating_point():
        bad_dtype(str(data.dtype).removeprefix("torch."))
    if data.device.type == "cuda":  # copied without a sync; its range is checked on the thread
        from traintape.emitter.media_device import DeviceCopy

        shape = tuple(data.shape)
        layout = image_layout(shape, prefer_chw=True)
        return (DeviceCopy.start(torch, data), shape, "", layout), image_size(shape, layout)
    if data.device.type == "cpu" and data.layout == torch.strided and data.dtype != torch.bfloat16:
        try:
            view = data.detach().numpy()
        except (RuntimeError, TypeError):  # a view numpy cannot show (a negated view): torch's
            pass
        else:
            return snapshot(_numpy(), view, prefer_chw=True)
    pixels = data.detach().to("cpu", copy=True)
    shape = tuple(pixels.shape)
    layout = image_layout(shape, prefer_chw=True)
    if pixels.is_floating_point():
        check_float_range(float(pixels.min()), float(pixels.max()))
    return (pixels, shape, "", layout), image_size(shape, layout)


def _figure_of(data: Any) -> Any | None:
    """A matplotlib Figure given as itself, or as `matplotlib.pyplot` (its current figure, as
    W&B takes `wandb.Image(plt)`); None for anything else."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and data is pyplot:
        return pyplot.gcf()
    figure = sys.modules.get("matplotlib.figure")
    if figure is not None and isinstance(data, figure.Figure):
        return data
    return None


def _rendered(figure: Any) -> Any:
    """A figure's pixels (RGBA, a new array), drawn now on the caller's thread: the caller may
    change, reuse or close the figure once the call returns (as W&B, this costs a draw)."""
    canvas = figure.canvas
    if 0 in canvas.get_width_height():
        width, height = figure.get_size_inches()
        msg = f"Image(): the figure is empty ({width:g} x {height:g} inches at {figure.dpi:g} dpi)"
        raise ValueError(msg)
    buffer_rgba = getattr(canvas, "buffer_rgba", None)
    if buffer_rgba is not None:  # Agg and the interactive backends drawn by Agg
        canvas.draw()
        return _numpy().array(buffer_rgba())  # a copy: the canvas draws into it again
    _need_pillow("a matplotlib figure whose canvas has no pixels (a vector backend)")
    from PIL import Image as PILImage

    png = io.BytesIO()
    figure.savefig(png, format="png")
    png.seek(0)
    with PILImage.open(png) as image:
        return pil_array(image)


def pil_array(image: Any) -> Any:
    """A PIL image's pixels as a new uint8 array (gray, RGB or RGBA)."""
    mode = image.mode
    if mode == "P":
        target = "RGBA" if "transparency" in image.info else "RGB"
    elif mode in _PIL_MODES:
        target = _PIL_MODES[mode]
    else:
        msg = f"Image(): PIL mode {mode!r} (16-bit or float); convert it to 'L' or 'RGB' first"
        raise ValueError(msg)
    return _numpy().array(image if mode == target else image.convert(target))


def open_image_file(path: str) -> int:
    """An open descriptor of a PNG or JPEG file (checked by its first bytes)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
    except FileNotFoundError:
        msg = f"Image(): {path} does not exist"
        raise FileNotFoundError(msg) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            msg = f"Image(): {path} is not a regular file"
            raise ValueError(msg)
        head = os.pread(fd, 26, 0)  # a PNG's signature and IHDR up to its colour type
        if not (head.startswith(PNG_MAGIC) or head.startswith(JPEG_MAGIC)):
            msg = f"Image(): {path} is neither a PNG nor a JPEG file"
            raise ValueError(msg)
        if head.startswith(PNG_MAGIC) and head[24:25] == b"\x10":
            msg = f"Image(): {path} is a 16-bit PNG; images are stored with 8 bits per channel"
            raise ValueError(msg)
        if not (head.startswith(PNG_MAGIC) and head[24:26] in _PLAIN_PNG):
            _need_pillow(path)  # decoded, then stored as an 8-bit PNG
    except BaseException:
        os.close(fd)
        raise
    return fd


def _need_pillow(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("PIL") is None:
        msg = f"Image(): decoding {what} needs Pillow: pip install 'traintape[media]'"
        raise ModuleNotFoundError(msg)


def _numpy() -> Any:
    import numpy

    return numpy
