"""Media in `log()`: `traintape.Image`, `traintape.Table` and `traintape.Text`.

    emitter.log({"loss": 0.1, "samples/pred": traintape.Image(batch[0], caption="epoch 3")})
    emitter.log({"worst": traintape.Table(columns=["id", "loss"], data=rows)}, step=100)

Making a value checks it and takes a snapshot, on the caller's thread: an array is copied (numpy,
and CPU tensors through numpy: into a reused buffer, `SnapshotBuffers`; a CUDA tensor: a
non-blocking copy to pinned memory behind an event, media_device.py), a file is opened (its
descriptor keeps the bytes of the call), a table becomes an immutable Arrow table. What an Image
takes besides a numpy array is taken by media_sources.py.
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

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from traintape.emitter.checks import check_media_text
from traintape.emitter.deferred import take_tensors
from traintape.emitter.media_pixels import SNAPSHOTS, handover, snapshot
from traintape.emitter.media_sources import open_image_file, other_snapshot
from traintape.emitter.values import check_metric_name
from traintape.schemas.media import item_name

if TYPE_CHECKING:
    from traintape.emitter.deferred import DeferredQueue
    from traintape.emitter.helpers import RunHelpers

__all__ = ["MEDIA_TYPES", "Image", "Media", "Table", "Text", "log_media"]

MEDIA_TYPES: set[type] = set()
"""Every class of media value (subclasses too): `log()`'s slow path tests types against it."""

_SCALARS = frozenset((float, int, bool))


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
            self._source = open_image_file(os.fspath(data))
            self.width = self.height = self.channels = 0  # known once the file is read
            self.nbytes = 0  # read on the artifact thread
            return
        else:
            self._source, size = other_snapshot(data)
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
