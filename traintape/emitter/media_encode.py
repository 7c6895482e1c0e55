"""Encoding media off the training thread: PNG for images, Parquet for tables (media.py).

The artifact thread (artifacts.py) calls these, then stores the bytes as any artifact. PNGs are 8-bit
gray, RGB or RGBA, made by Pillow where it is installed (its encoder releases the GIL), else by
`png_numpy` (numpy + zlib, no Pillow needed for arrays: each row filtered with whichever of PNG's
five filters gives the smallest sum of absolute values, the heuristic libpng uses, deflated at
level 6). The same pixels always give the same bytes, so an image logged twice is stored once.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any

import numpy as np

from traintape.emitter.media_device import DeviceCopy
from traintape.emitter.media_sources import PNG_MAGIC

_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (gray, RGB, RGBA)
_CHANNELS_OF = {0: 1, 2: 3, 6: 4}


def image_array(
    pixels: Any, shape: tuple[int, ...], dtype: str, layout: str, caption: str | None
) -> tuple[bytes, dict[str, Any]]:
    """PNG bytes and the event's metadata of the pixels taken by `media.Image`: numpy pixels (a
    uint8 buffer holding the bytes of `dtype` and `shape`, or the array handed over), or a CPU
    tensor (dtype ""). Keeps no view of the buffer: it is reused once the Image is freed."""
    if dtype:
        array = np.frombuffer(pixels, dtype=np.dtype(dtype)).reshape(shape)
    else:  # a torch tensor, copied to the CPU by the caller (from CUDA: once it has landed)
        if isinstance(pixels, DeviceCopy):
            pixels = pixels.landed()
        if pixels.dtype.is_floating_point and pixels.dtype.itemsize < 4:
            pixels = pixels.float()  # numpy has no bfloat16
        array = pixels.numpy()
    if layout == "chw":
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:  # float in [0, 1], checked when the Image was made
        array = np.rint(array.astype(np.float32) * 255.0).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return png(array), _image_metadata(array.shape, caption)


def image_file(fd: int, caption: str | None) -> tuple[bytes, dict[str, Any]]:
    """A PNG file of 8-bit gray, RGB or RGBA as it is; any other image decoded by Pillow and
    encoded as such a PNG."""
    data = _read_all(fd)
    shape = _plain_png(data) if data.startswith(PNG_MAGIC) else None
    if shape is not None:
        return data, _image_metadata(shape, caption)
    from PIL import Image as PILImage

    from traintape.emitter.media_sources import pil_array

    with PILImage.open(io.BytesIO(data)) as image:
        pixels = pil_array(image)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return png(pixels), _image_metadata(pixels.shape, caption)


def _image_metadata(shape: tuple[int, ...], caption: str | None) -> dict[str, Any]:
    channels = 1 if len(shape) == 2 else int(shape[2])
    return {
        "media": "image",
        "format": "png",
        "width": int(shape[1]),
        "height": int(shape[0]),
        "channels": channels,
        "caption": caption,
    }


def _plain_png(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, channels) of a whole PNG of 8-bit gray, RGB or RGBA, not interlaced: one
    stored as it is. None for any other PNG (decoded by Pillow, then stored as such a PNG).
    ValueError for a damaged one (a chunk cut short or failing its CRC, no IHDR first or no IEND
    last, pixel data that does not inflate to the size its header gives): never stored."""
    kinds: list[bytes] = []
    offset, header, idat, inflated = len(PNG_MAGIC), b"", zlib.decompressobj(), 0
    while offset < len(data) and kinds[-1:] != [b"IEND"]:
        # A length cut short reads as huge (padded with 0xff): that chunk then fails below.
        (length,) = struct.unpack(">I", data[offset : offset + 4].rjust(4, b"\xff"))
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        end = offset + 12 + length
        crc = data[end - 4 : end] if end <= len(data) else b""
        if crc != struct.pack(">I", zlib.crc32(kind + body)):
            msg = (
                f"the PNG file is damaged: its chunk at byte {offset} is cut short or fails its CRC"
            )
            raise ValueError(msg)
        if (kind == b"IHDR") != (not kinds) or (kind == b"IHDR" and length != 13):
            msg = "the PNG file is damaged: it does not start with one IHDR header"
            raise ValueError(msg)
        kinds.append(kind)
        header = body if kind == b"IHDR" else header
        inflated += _inflated_size(idat, body) if kind == b"IDAT" else 0
        offset = end
    if kinds[-1:] != [b"IEND"]:
        msg = "the PNG file is cut short: it has no IEND chunk"
        raise ValueError(msg)
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or color not in _CHANNELS_OF or interlace:
        return None
    channels = _CHANNELS_OF[color]
    if not idat.eof or inflated != height * (1 + width * channels):
        msg = "the PNG file is damaged: its pixel data does not inflate to its header's size"
        raise ValueError(msg)
    return height, width, channels


def _inflated_size(stream: Any, data: bytes) -> int:
    """How many bytes `data` inflates to in the zlib `stream`, 8 MiB at a time (a header that
    claims a huge image is never inflated into memory at once)."""
    size = 0
    try:
        while data:
            size += len(stream.decompress(data, 8 << 20))
            data = stream.unconsumed_tail
    except zlib.error as exc:
        msg = f"the PNG file is damaged: its pixel data does not inflate ({exc})"
        raise ValueError(msg) from None
    return size


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 8 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


# -- PNG ----------------------------------------------------------------------------------------


def png(pixels: np.ndarray) -> bytes:
    """A PNG file of `pixels`: uint8, HW (gray) or HWC with 3 (RGB) or 4 (RGBA) channels.
    Pillow's encoder where Pillow is installed (C, about 6x faster), else `png_numpy`."""
    try:
        from PIL import Image as PILImage
    except ImportError:
        return png_numpy(pixels)
    out = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(pixels)).save(out, format="PNG", compress_level=6)
    return out.getvalue()


def png_numpy(pixels: np.ndarray, level: int = 6) -> bytes:
    """`png` without Pillow: numpy filters, zlib deflate."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    raw = np.ascontiguousarray(pixels).reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPE[channels], 0, 0, 0)
    idat = zlib.compress(_filtered(raw, channels).tobytes(), level)
    return PNG_MAGIC + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(tag))
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def _filtered(raw: np.ndarray, bpp: int) -> np.ndarray:
    """Each row prefixed by its filter type and filtered by it (PNG spec, section 9). Filters
    apply to the raw bytes of the row and the row above, so all rows are computed at once."""
    x = raw.astype(np.int16)
    a = np.zeros_like(x)  # the byte `bpp` to the left
    a[:, bpp:] = x[:, :-bpp]
    b = np.zeros_like(x)  # the byte above
    b[1:] = x[:-1]
    c = np.zeros_like(x)  # above and to the left
    c[1:, bpp:] = x[:-1, :-bpp]
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    candidates = np.stack([x, x - a, x - b, x - ((a + b) >> 1), x - paeth]) & 0xFF
    signed = candidates.astype(np.uint8).view(np.int8).astype(np.int32)
    choice = np.abs(signed).sum(axis=2).argmin(axis=0)  # per row: the smallest sum
    rows = np.arange(raw.shape[0])
    out = np.empty((raw.shape[0], raw.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = choice
    out[:, 1:] = candidates[choice, rows]
    return out


# -- tables -------------------------------------------------------------------------------------


def arrow_table(columns: Any, data: Any, dataframe: Any) -> Any:
    """An Arrow table of `columns` + `data` (rows), or of `dataframe`; TypeError/ValueError
    naming the problem (a column whose values Arrow cannot hold as one type)."""
    import pyarrow as pa

    if dataframe is not None:
        if data is not None:
            msg = "Table() takes data= (rows) or dataframe=, not both"
            raise ValueError(msg)
        table = _frame_to_arrow(pa, dataframe)
        if columns is not None:
            table = table.select(_names(columns))
        _names(table.column_names)  # an Arrow table may repeat a name or have ""
        return _writable(table)
    if data is None:
        data = []
    if isinstance(data, np.ndarray):
        if data.ndim != 2:
            msg = f"Table(data=) as an array must be 2-D (rows x columns), got {data.ndim}-D"
            raise ValueError(msg)
        data = data.tolist()
    names = _names(columns)
    rows = _rows(data)
    for i, row in enumerate(rows):
        if len(row) != len(names):
            msg = f"Table(): row {i} has {len(row)} values for {len(names)} columns {names}"
            raise ValueError(msg)
    arrays = []
    for j, name in enumerate(names):
        try:
            arrays.append(pa.array([row[j] for row in rows]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            msg = f"Table(): column {name!r} cannot be stored as one type: {exc}"
            raise TypeError(msg) from None
    return _writable(pa.Table.from_arrays(arrays, names=names))


def _writable(table: Any) -> Any:
    """`table`, after checking that Parquet can hold its types (not a union, an interval or a
    struct without fields): refused here, on the caller's thread, rather than lost when encoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.ParquetWriter(pa.BufferOutputStream(), table.schema).close()  # the schema only
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        msg = f"Table(): Parquet cannot store these columns: {exc}"
        raise TypeError(msg) from None
    return table


def _rows(data: Any) -> list[tuple[Any, ...]]:
    """The rows of `data` as tuples; TypeError for what is not rows (a dict or a str would be
    iterated as keys or characters, and stored as a wrong table)."""
    text = (str, bytes, dict)
    if isinstance(data, text) or not hasattr(data, "__iter__"):
        msg = f"Table(data=) takes rows (a list of lists or tuples), not a {type(data).__name__}"
        raise TypeError(msg)
    rows = []
    for i, row in enumerate(data):
        if isinstance(row, text) or not hasattr(row, "__iter__"):
            msg = f"Table(data=): row {i} is a {type(row).__name__}, not a list or tuple"
            raise TypeError(msg)
        rows.append(tuple(row))
    return rows


def _names(columns: Any) -> list[str]:
    if columns is None or isinstance(columns, str):
        msg = "Table() needs columns=[names] with data=, or a dataframe="
        raise ValueError(msg)
    names = list(columns)
    if not all(isinstance(n, str) and n for n in names):
        msg = f"Table(): column names must be non-empty str, got {names!r}"
        raise TypeError(msg)
    if len(set(names)) != len(names):
        msg = f"Table(): column names repeat: {names!r}"
        raise ValueError(msg)
    return names


def _frame_to_arrow(pa: Any, frame: Any) -> Any:
    if isinstance(frame, pa.Table):
        return frame  # immutable: no copy needed
    try:
        if type(frame).__module__.split(".")[0] == "pandas":
            return pa.Table.from_pandas(frame, preserve_index=False)  # a copy
        return pa.table(frame)  # polars and anything else with the Arrow C stream interface
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        msg = f"Table(dataframe=): a column cannot be stored as one type: {exc}"
        raise TypeError(msg) from None
    except (TypeError, ValueError) as exc:
        msg = f"Table(dataframe=) takes a pandas or Arrow frame, not {type(frame).__name__}"
        raise TypeError(msg) from exc


def parquet(table: Any) -> tuple[bytes, dict[str, Any]]:
    """One Parquet file of `table` and the event's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    meta = {
        "media": "table",
        "format": "parquet",
        "rows": int(table.num_rows),
        "columns": list(table.column_names),
    }
    return sink.getvalue().to_pybytes(), meta
