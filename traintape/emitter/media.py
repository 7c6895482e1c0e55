"""Media in `log()`: `traintape.Image`, `traintape.Table` and `traintape.Text`.

    emitter.log({"loss": 0.1, "samples/pred": traintape.Image(batch[0], caption="epoch 3")})
    emitter.log({"worst": traintape.Table(columns=["id", "loss"], data=rows)}, step=100)

Making a value checks it and takes a snapshot, on the caller's thread: an array is copied (numpy,
and CPU tensors through numpy: into a reused buffer, `SnapshotBuffers`; a CUDA tensor: a
non-blocking copy to pinned memory behind an event, media_device.py), a file is opened (its
descriptor keeps the bytes of the call), a table becomes an immutable Arrow table.
Everything else happens on the run's artifact thread (artifacts.py): PNG or Parquet encoding
(media_encode.py), then the store path `log_artifact` takes (content-addressed object, durable
before its event). The event is an `artifact` event with kind "image" or "table" and the
metadata of the media contract (docs/architecture.md, "Media"). `Text` is `log_text` under the
key.

In `log()` the numbers of the same call keep their path (hot.py): only a call holding a media
value comes here (`log_media`), and a bad value raises before anything of the call is queued.
This module imports nothing heavy: numpy and pyarrow are loaded by the first Image or Table.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from traintape.emitter.checks import check_media_text
from traintape.emitter.deferred import take_tensors
from traintape.emitter.media_pixels import (
    SNAPSHOTS,
    Pixels,
    Size,
    bad_dtype,
    check_float_range,
    handover,
    image_layout,
    image_size,
    snapshot,
)
from traintape.emitter.values import check_metric_name
from traintape.schemas.media import item_name

if TYPE_CHECKING:
    from traintape.emitter.deferred import DeferredQueue
    from traintape.emitter.helpers import RunHelpers

__all__ = ["MEDIA_TYPES", "Image", "Media", "Table", "Text", "log_media"]

MEDIA_TYPES: set[type] = set()
"""Every class of media value (subclasses too): `log()`'s slow path tests types against it."""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_SCALARS = frozenset((float, int, bool))
_PLAIN_PNG = (b"\x08\x00", b"\x08\x02", b"\x08\x06")  # 8-bit gray, RGB, RGBA: stored as is
_PIL_MODES = {"1": "L", "L": "L", "RGB": "RGB", "RGBA": "RGBA", "LA": "RGBA", "CMYK": "RGB"}
_PIL_MODES |= {"YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB", "RGBa": "RGBA"}


class Media:
    """A value `log()` stores as an artifact (kind `kind`), encoded off the caller's thread."""

    kind = ""
    nbytes = 0  # the memory its snapshot holds until it is encoded
    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MEDIA_TYPES.add(cls)

    def encode(self) -> tuple[bytes, dict[str, Any]]:
        """The object's bytes and the event's metadata; run on the artifact thread."""
        raise NotImplementedError

    def texts(self) -> tuple[str, ...]:
        """The texts its event holds beside the key (a caption, column names): checked when
        it is logged."""
        return ()


class Image(Media):
    """An image: a numpy array or torch tensor (HWC or CHW with 1, 3 or 4 channels, or HW
    grayscale; uint8, or float in [0, 1]), a PIL image, a matplotlib figure (drawn when the
    Image is made; `matplotlib.pyplot` itself for its current figure), or the path of a PNG or
    JPEG file.

    Stored as PNG. A 3-D array whose first dimension is 1, 3 or 4 and whose last is not is taken
    as CHW (torch's layout); when both are, numpy arrays are HWC and tensors CHW. A batch (4-D)
    is refused: log a list of Images (stored as key/0, key/1, ...). A PNG file of 8-bit gray,
    RGB or RGBA is stored as it is; other files are decoded (Pillow) and stored as PNG.

    The pixels are taken now: a numpy array is copied, so it may change once the call returns.
    `copy=False` hands a numpy array over instead (no copy: for a fresh array each step, as a
    loop makes them): the run reads it later, so it is made read-only, and a write into it
    raises; an array that does not own its memory in C order is copied all the same
    (media_pixels.py). Tensors, PIL images, figures and files are always taken as above.
    """

    kind = "image"
    __slots__ = ("_source", "caption", "channels", "height", "nbytes", "width")

    def __init__(self, data: Any, caption: str | None = None, *, copy: bool = True) -> None:
        if caption is not None and type(caption) is not str:
            msg = f"Image(caption=) takes a str, got {type(caption).__name__}"
            raise TypeError(msg)
        if copy is not True and copy is not False:
            msg = f"Image(copy=) takes True or False, got {copy!r}"
            raise TypeError(msg)
        self.caption = caption
        self._source: Any
        np = sys.modules.get("numpy")
        if np is not None and type(data) is np.ndarray:  # the usual case, checked first
            self._source, size = snapshot(np, data) if copy else handover(np, data)
        elif isinstance(data, (str, os.PathLike)):
            self._source = _open_image_file(os.fspath(data))
            self.width = self.height = self.channels = 0  # known once the file is read
            self.nbytes = 0  # read on the artifact thread
            return
        else:
            self._source, size = _other_snapshot(data)
        self.height, self.width, self.channels = size
        self.nbytes = self._source[0].nbytes  # a numpy buffer's or a tensor's

    def encode(self) -> tuple[bytes, dict[str, Any]]:
        """PNG bytes and the event's metadata (on the artifact thread: `self` keeps an Image
        of a file open until then)."""
        from traintape.emitter import media_encode

        source = self._source
        if isinstance(source, int):
            return media_encode.image_file(source, self.caption)
        pixels, shape, dtype, layout = source
        return media_encode.image_array(pixels, shape, dtype, layout, self.caption)

    def texts(self) -> tuple[str, ...]:
        return (self.caption,) if self.caption else ()

    def __del__(self) -> None:
        source = getattr(self, "_source", None)
        if isinstance(source, int):  # the descriptor of a file, open since the Image was made
            os.close(source)
        elif source is not None and source[2]:  # numpy pixels: encoded, or never logged
            SNAPSHOTS.give(source[0])  # kept for the next image unless handed over

    def __reduce_ex__(self, protocol: Any) -> Any:  # copy, deepcopy, pickle: media_copy.py
        from traintape.emitter.media_copy import reduced

        return reduced(self)

    def __repr__(self) -> str:
        return f"Image({self.width}x{self.height}x{self.channels}, caption={self.caption!r})"


class Table(Media):
    """A table: `columns` (names) with `data` (rows), or `dataframe` (pandas, or anything Arrow
    reads: a pyarrow Table, polars). Stored as one Parquet file.

    The rows are converted to Arrow when the Table is made (a column of mixed types raises
    then), so changing `data` afterwards changes nothing logged.
    """

    kind = "table"
    __slots__ = ("arrow", "nbytes")

    def __init__(
        self, columns: list[str] | None = None, data: Any = None, dataframe: Any = None
    ) -> None:
        from traintape.emitter.media_encode import arrow_table

        self.arrow = arrow_table(columns, data, dataframe)
        self.nbytes = int(self.arrow.nbytes)

    @property
    def columns(self) -> list[str]:
        return list(self.arrow.column_names)

    def texts(self) -> tuple[str, ...]:
        return tuple(self.arrow.column_names)

    @property
    def rows(self) -> int:
        return int(self.arrow.num_rows)

    def encode(self) -> tuple[bytes, dict[str, Any]]:
        """Parquet bytes and the event's metadata (on the artifact thread)."""
        from traintape.emitter.media_encode import parquet

        return parquet(self.arrow)

    def __repr__(self) -> str:
        return f"Table({self.rows} rows, columns={self.columns!r})"


class Text(Media):
    """Text under a key: `log({"k": Text("...")}, step=s)` is `log_text("k", "...", step=s)`."""

    kind = "text"
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            msg = f"Text() takes a str, got {type(text).__name__}"
            raise TypeError(msg)
        self.text = text

    def __repr__(self) -> str:
        return f"Text({self.text[:40]!r})"


# -- log()'s part -------------------------------------------------------------------------------


def log_media(
    metrics: dict[str, Any],
    step: int,
    ts: int,
    deferred: DeferredQueue,
    helpers: RunHelpers,
    log_text: Callable[[str, str, int], None],
) -> dict[str, Any]:
    """`log()` of a call holding media values: queues them (Text: `log_text`) and returns the
    other values, checked as `log()` checks them. A list of media values under a key (a batch of
    sample images, as W&B takes them) is one value per item, named `key/0`, `key/1`, ... A bad
    key or value, or a run that cannot store media now (finished, a forked child), raises before
    anything of the call is queued."""
    rest: dict[str, Any] = {}
    media: list[tuple[str, Any]] = []
    plain = True  # every other value a Python number under a non-empty str name
    for key, value in metrics.items():
        kind = type(value)
        if kind in MEDIA_TYPES:
            media.append(_checked_media(key, value))
        elif kind is list and value and type(value[0]) in MEDIA_TYPES:
            media.extend(_listed_media(key, value))
        else:
            rest[key] = value
            plain = plain and kind in _SCALARS and type(key) is str and key != ""
    if len(media) > 1:
        _check_names_once(media)
    files = any(type(value) is not Text for _, value in media)  # the artifact thread's
    writer = (helpers.artifacts or helpers.artifact_writer()) if files else None
    if writer is not None:
        writer.check_open("log() of a media value")
    if not plain:  # numpy scalars, tensors, or errors: log()'s own slow path
        rest = take_tensors(deferred, rest, step, ts)
    for key, value in media:
        if writer is not None and type(value) is not Text:
            writer.put_media(key, value.kind, value.encode, step, ts, value.nbytes)
        else:
            log_text(key, value.text, step)
    return rest


def _check_names_once(media: list[tuple[str, Media]]) -> None:
    seen: set[str] = set()
    for key, _ in media:
        if key in seen:
            msg = f"log(): media named {key!r} twice in one call (a list's item and a key?)"
            raise ValueError(msg)
        seen.add(key)


def _checked_media(key: Any, value: Media) -> tuple[str, Media]:
    if type(key) is not str or not key:
        check_metric_name(key)
    check_media_text(key, value.texts())  # what no event could hold: refused now
    return key, value


def _listed_media(key: Any, values: list[Any]) -> list[tuple[str, Media]]:
    """The items of a list of media values under `key`, named `key/<index>`."""
    if type(key) is not str or not key:
        check_metric_name(key)
    items = []
    for index, value in enumerate(values):
        if type(value) not in MEDIA_TYPES:
            msg = (
                f"log(): {key[:40]!r} is a list of media values with a {type(value).__name__} at "
                f"index {index}; such a list holds only traintape.Image, Table or Text values"
            )
            raise TypeError(msg)
        items.append(_checked_media(item_name(key, index), value))
    return items


def _other_snapshot(data: Any) -> tuple[Pixels, Size]:
    """(pixels, shape, dtype, layout) and size of a tensor or a PIL image (a new array)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(data, torch.Tensor):
        return _tensor_snapshot(torch, data)
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(data, pil.Image):
        array = _pil_array(data)
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
        return _pil_array(image)


def _pil_array(image: Any) -> Any:
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


def _open_image_file(path: str) -> int:
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
