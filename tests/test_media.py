"""Media in `log()` (traintape/emitter/media.py, media_encode.py): what `traintape.Image`,
`Table` and `Text` take and refuse, the PNG and Parquet they become (read back by Pillow and
pyarrow), the events they make through the artifact writer, and traintape.wandb's Image/Table.
Fast tests: no process is started (tests/test_media_e2e.py runs them through a collector)."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

import traintape
from tests.test_artifacts import _objects, _port
from traintape.emitter.artifacts import ArtifactWriter
from traintape.emitter.deferred import DeferredValues
from traintape.emitter.media import log_media
from traintape.emitter.media_backlog import MediaBacklog
from traintape.emitter.media_encode import png_numpy
from traintape.schemas.events import ARTIFACT

RNG = np.random.default_rng(18)


def _decoded(png: bytes) -> np.ndarray:
    """An independent decode of PNG bytes (Pillow), as an array."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with PILImage.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.array(image)


def _pixels(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# -- images --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "hwc"),
    [
        ((5, 7), (5, 7)),  # grayscale HW
        ((5, 7, 1), (5, 7)),  # HWC, one channel: stored as gray
        ((5, 7, 3), (5, 7, 3)),
        ((5, 7, 4), (5, 7, 4)),
        ((3, 5, 7), (5, 7, 3)),  # CHW: the first dimension is 3, the last is not
        ((4, 6, 3), (4, 6, 3)),  # both could be channels: numpy arrays are HWC
    ],
)
def test_numpy_images_of_each_layout_round_trip_through_png(
    shape: tuple[int, ...], hwc: tuple[int, ...]
) -> None:
    """HW, HWC and CHW uint8 arrays become PNGs whose pixels, decoded by Pillow, are the array
    in HWC order, with the contract's metadata (width, height, channels, caption)."""
    array = _pixels(*shape)
    image = traintape.Image(array, caption="c")
    data, meta = image.encode()
    chw = len(shape) == 3 and shape[-1] not in (1, 3, 4)
    expected = np.moveaxis(array, 0, -1) if chw else array.reshape(hwc)
    assert np.array_equal(_decoded(data), expected)
    channels = 1 if len(hwc) == 2 else hwc[2]
    assert meta == {
        "media": "image",
        "format": "png",
        "width": hwc[1],
        "height": hwc[0],
        "channels": channels,
        "caption": "c",
    }
    assert (image.width, image.height, image.channels) == (hwc[1], hwc[0], channels)


def test_float_images_in_0_1_are_scaled_and_bad_values_refused_at_the_call() -> None:
    """A float image in [0, 1] is stored as round(x * 255); NaN, values outside [0, 1], other
    dtypes, batches, empty arrays and unknown types raise on the caller's thread."""
    floats = RNG.random((6, 5, 3)).astype(np.float32)
    data, _ = traintape.Image(floats).encode()
    assert np.array_equal(_decoded(data), np.rint(floats * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        traintape.Image(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        traintape.Image(np.full((4, 4, 3), 2.0))
    with pytest.raises(TypeError, match="int32"):
        traintape.Image(np.zeros((4, 4, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="batch"):
        traintape.Image(_pixels(2, 4, 4, 3))
    with pytest.raises(ValueError, match="not an image"):
        traintape.Image(_pixels(5, 5, 2))
    with pytest.raises(ValueError, match="empty"):
        traintape.Image(np.zeros((0, 4, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="list"):
        traintape.Image([[1, 2], [3, 4]])
    with pytest.raises(TypeError, match="caption"):
        traintape.Image(_pixels(4, 4), caption=3)  # type: ignore[arg-type]


def test_the_image_is_copied_when_made_so_later_changes_of_the_array_are_not_logged() -> None:
    """The caller may reuse its buffer as soon as Image() returns: the stored pixels are those
    of the call."""
    array = _pixels(8, 8, 3)
    before = array.copy()
    image = traintape.Image(array)
    array[:] = 0
    assert np.array_equal(_decoded(image.encode()[0]), before)


def test_torch_tensors_are_chw_and_copied() -> None:
    """A CHW tensor (uint8, or float in [0, 1], bfloat16 too) is stored in HWC order; changing
    it after the call changes nothing stored; an integer tensor other than uint8 is refused."""
    torch = pytest.importorskip("torch")
    chw = torch.from_numpy(_pixels(3, 6, 5))
    expected = chw.permute(1, 2, 0).numpy().copy()
    image = traintape.Image(chw)
    chw.zero_()
    assert np.array_equal(_decoded(image.encode()[0]), expected)
    ones = torch.ones(1, 4, 4, dtype=torch.bfloat16)
    assert np.array_equal(_decoded(traintape.Image(ones).encode()[0]), np.full((4, 4), 255))
    with pytest.raises(TypeError, match="int64"):
        traintape.Image(torch.zeros(3, 4, 4, dtype=torch.int64))


def test_a_cpu_tensor_is_copied_into_a_reused_buffer_as_numpy_arrays_are() -> None:
    """A CPU tensor's pixels go into a snapshot buffer (numpy's memcpy, not torch's allocator),
    given back when the Image is freed; a permuted (non-contiguous) tensor is copied in order, a
    float16 one is scaled, an ambiguous shape (3, H, 3) is CHW as for any tensor, and a tensor
    that needs the gradient is taken without it."""
    from traintape.emitter.media_pixels import SNAPSHOTS

    torch = pytest.importorskip("torch")
    chw = torch.from_numpy(_pixels(3, 64, 64))
    image = traintape.Image(chw)
    buffer = image._source[0]
    assert isinstance(buffer, np.ndarray) and not np.shares_memory(buffer, chw.numpy())
    assert (image.width, image.height, image.channels) == (64, 64, 3)
    expected = chw.permute(1, 2, 0).numpy().copy()
    chw.zero_()
    assert np.array_equal(_decoded(image.encode()[0]), expected)
    del image
    assert any(b is buffer for b in SNAPSHOTS.free)  # given back, for the next image
    hwc = torch.from_numpy(_pixels(5, 6, 3)).permute(2, 0, 1)  # CHW view of HWC memory
    assert np.array_equal(_decoded(traintape.Image(hwc).encode()[0]), hwc.permute(1, 2, 0).numpy())
    ambiguous = torch.from_numpy(_pixels(3, 4, 3))
    stored = _decoded(traintape.Image(ambiguous).encode()[0])
    assert np.array_equal(stored, ambiguous.permute(1, 2, 0).numpy())
    half = torch.full((1, 4, 4), 0.5, dtype=torch.float16, requires_grad=True)
    assert np.array_equal(_decoded(traintape.Image(half).encode()[0]), np.full((4, 4), 128))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        traintape.Image(torch.full((3, 4, 4), 2.0))
    negated = torch._neg_view(torch.full((1, 2, 2), -1.0))  # numpy cannot show it: torch copies
    assert np.array_equal(_decoded(traintape.Image(negated).encode()[0]), np.full((2, 2), 255))


class _Event:
    """Stands in for a CUDA event here (no GPU): counts the waits."""

    def __init__(self) -> None:
        self.waits = 0

    def synchronize(self) -> None:
        self.waits += 1


def test_a_device_copy_is_read_only_once_landed_and_its_range_checked_then() -> None:
    """The thread-side contract of a CUDA image (media_device.py), with CPU tensors standing in
    for pinned memory: its pixels are read after its event is waited for (once), a float one
    out of [0, 1] is refused when encoded (the caller never saw the values), and a copy or
    pickle of the Image waits and carries the landed pixels."""
    import copy
    import pickle

    from traintape.emitter.media_copy import rebuilt
    from traintape.emitter.media_device import DeviceCopy

    torch = pytest.importorskip("torch")
    chw = torch.from_numpy(_pixels(3, 5, 7))
    event = _Event()
    fields = (None, 3, 5, chw.nbytes, 7)  # caption, channels, height, nbytes, width
    image = rebuilt(traintape.Image, (DeviceCopy(chw, event), (3, 5, 7), "", "chw"), fields)
    assert image.nbytes == chw.nbytes
    png, meta = image.encode()
    assert event.waits == 1 and np.array_equal(_decoded(png), chw.permute(1, 2, 0).numpy())
    assert (meta["width"], meta["height"], meta["channels"]) == (7, 5, 3)
    image.encode()
    assert event.waits == 1  # landed: not waited for again
    bad = DeviceCopy(torch.full((3, 4, 4), 1.5), _Event())
    bad_image = rebuilt(traintape.Image, (bad, (3, 4, 4), "", "chw"), (None, 3, 4, 192, 4))
    with pytest.raises(ValueError, match=r"from 1\.5 to 1\.5"):
        bad_image.encode()
    pending = DeviceCopy(torch.full((1, 2, 2), 0.5), _Event())
    twin = rebuilt(traintape.Image, (pending, (1, 2, 2), "", "chw"), (None, 1, 2, 16, 2))
    for other in (copy.deepcopy(twin), pickle.loads(pickle.dumps(twin))):
        assert np.array_equal(_decoded(other.encode()[0]), np.full((2, 2), 128))
    assert pending.event is not None and pending.event.waits == 2  # each copy waited for it


@pytest.mark.parametrize("canvas", ["agg", "svg"])
def test_a_matplotlib_figure_is_drawn_when_the_image_is_made(canvas: str) -> None:
    """A Figure (or pyplot, for its current figure) is drawn at the call, as RGBA: changing the
    figure afterwards changes nothing stored. A canvas without pixels (SVG) is drawn as PNG by
    matplotlib and decoded."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 1), dpi=10)
    figure.patch.set_facecolor((1.0, 0.0, 0.0))
    if canvas == "svg":
        from matplotlib.backends.backend_svg import FigureCanvasSVG

        FigureCanvasSVG(figure)
    image = traintape.Image(figure, caption="red")
    figure.patch.set_facecolor((0.0, 0.0, 1.0))
    assert (image.width, image.height, image.channels) == (20, 10, 4)
    stored = _decoded(image.encode()[0])
    assert stored.shape == (10, 20, 4) and (stored == [255, 0, 0, 255]).all()
    from traintape.wandb import Image as WandbImage

    theirs = _decoded(WandbImage(figure).encode()[0])  # W&B's Image(fig) too
    assert (theirs == [0, 0, 255, 255]).all()
    with pytest.raises(ValueError, match="the figure is empty"):
        traintape.Image(Figure(figsize=(0.01, 0.01), dpi=10))
    import matplotlib.pyplot as plt

    plt.figure(figsize=(1, 1), dpi=8)
    try:
        assert traintape.Image(plt).width == 8  # pyplot itself: its current figure
    finally:
        plt.close("all")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1"])
def test_pil_images_are_stored_as_gray_rgb_or_rgba(mode: str) -> None:
    """A PIL image of any 8-bit mode is stored as its gray, RGB or RGBA pixels (palette and
    gray-with-alpha converted by Pillow); a 16-bit image is refused with what to do."""
    source = PILImage.fromarray(_pixels(6, 9, 3)).convert(mode)
    target = {"P": "RGB", "LA": "RGBA", "1": "L"}.get(mode, mode)
    data, meta = traintape.Image(source).encode()
    assert np.array_equal(_decoded(data), np.array(source.convert(target)))
    assert meta["channels"] == {"L": 1, "RGB": 3, "RGBA": 4}[target]
    with pytest.raises(ValueError, match="16-bit"):
        traintape.Image(PILImage.new("I;16", (4, 4)))


def test_files_a_plain_png_is_stored_as_it_is_other_images_are_converted(tmp_path: Path) -> None:
    """An 8-bit PNG file is stored byte for byte; a JPEG is decoded and stored as a PNG of the
    same pixels; a file that is no image, a 16-bit PNG, a folder or a missing path raise."""
    array = _pixels(10, 12, 3)
    PILImage.fromarray(array).save(tmp_path / "a.png")
    data, meta = traintape.Image(tmp_path / "a.png", caption="file").encode()
    assert data == (tmp_path / "a.png").read_bytes()
    assert (meta["width"], meta["height"], meta["channels"], meta["caption"]) == (12, 10, 3, "file")
    PILImage.fromarray(array).save(tmp_path / "b.jpg", quality=90)
    data, meta = traintape.Image(str(tmp_path / "b.jpg")).encode()
    with PILImage.open(tmp_path / "b.jpg") as jpeg:
        assert np.array_equal(_decoded(data), np.array(jpeg.convert("RGB")))
    (tmp_path / "c.txt").write_text("not an image")
    with pytest.raises(ValueError, match="neither a PNG nor a JPEG"):
        traintape.Image(tmp_path / "c.txt")
    PILImage.fromarray(np.zeros((4, 4), dtype=np.uint16)).save(tmp_path / "d.png")
    with pytest.raises(ValueError, match="16-bit"):
        traintape.Image(tmp_path / "d.png")
    with pytest.raises(ValueError, match="regular file"):
        traintape.Image(tmp_path)
    with pytest.raises(FileNotFoundError):
        traintape.Image(tmp_path / "missing.png")


def _png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of each chunk of a PNG file."""
    out, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        out.append((offset, data[offset + 4 : offset + 8]))
        offset += 12 + length
    return out


def test_a_damaged_png_file_is_refused_on_the_thread_never_stored(tmp_path: Path) -> None:
    """A PNG file stored as it is must be whole: cut short anywhere (in a chunk, before IEND),
    a flipped byte (its chunk's CRC fails), or pixel data that does not inflate to the header's
    size (valid CRCs) is refused with ValueError when encoded; the whole file is stored as it is."""
    import zlib

    PILImage.fromarray(_pixels(40, 30, 3)).save(tmp_path / "good.png")
    good = (tmp_path / "good.png").read_bytes()
    chunks = dict((kind, offset) for offset, kind in _png_chunks(good))
    idat, iend = chunks[b"IDAT"], chunks[b"IEND"]
    flipped = bytearray(good)
    flipped[idat + 20] ^= 0x01
    short_idat = zlib.compress(zlib.decompress(good[idat + 8 : iend - 4])[:-50])
    body = b"IDAT" + short_idat
    inflates_short = (
        good[:idat]
        + len(short_idat).to_bytes(4, "big")
        + body
        + zlib.crc32(body).to_bytes(4, "big")
        + good[iend:]
    )
    cases = {
        "cut in IDAT": (good[: idat + 30], "cut short or fails"),
        "no IEND": (good[:iend], "no IEND"),
        "cut in a length": (good[: iend + 2], "cut short or fails"),
        "flipped byte": (bytes(flipped), "cut short or fails"),
        "inflates short": (inflates_short, "does not inflate to"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / f"{name}.png").write_bytes(data)
        image = traintape.Image(tmp_path / f"{name}.png")  # its header is fine: taken
        with pytest.raises(ValueError, match=match):
            image.encode()
    assert traintape.Image(tmp_path / "good.png").encode()[0] == good  # whole: as it is


@pytest.mark.parametrize("shape", [(1, 1), (3, 1, 3), (17, 5, 4), (64, 33, 3), (9, 200)])
def test_the_numpy_png_encoder_round_trips(shape: tuple[int, ...]) -> None:
    """The encoder used without Pillow (per-row filters, zlib) writes PNGs Pillow decodes to
    the same pixels."""
    array = _pixels(*shape)
    array[: shape[0] // 2] //= 4  # smooth and noisy rows: different filters win
    assert np.array_equal(_decoded(png_numpy(array)), array)


# -- tables --------------------------------------------------------------------------------------


def _read_parquet(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def test_tables_of_rows_and_of_frames_round_trip_through_parquet() -> None:
    """Columns + rows, a pandas frame and an Arrow table become one Parquet file holding the
    same columns and values, with rows and column names in the metadata; rows changed after
    Table() are not logged."""
    pd = pytest.importorskip("pandas")
    rows = [[1, "a", 0.5, True], [2, "b", None, False]]
    table = traintape.Table(columns=["id", "s", "x", "ok"], data=rows)
    rows[0][1] = "changed"
    data, meta = table.encode()
    assert _read_parquet(data).to_pylist() == [
        {"id": 1, "s": "a", "x": 0.5, "ok": True},
        {"id": 2, "s": "b", "x": None, "ok": False},
    ]
    assert meta == {
        "media": "table",
        "format": "parquet",
        "rows": 2,
        "columns": ["id", "s", "x", "ok"],
    }
    frame = pd.DataFrame({"a": [1.5, 2.5], "b": ["x", "y"]})
    data, meta = traintape.Table(dataframe=frame).encode()
    assert _read_parquet(data).to_pandas().equals(frame)
    assert (meta["rows"], meta["columns"]) == (2, ["a", "b"])
    arrow = pa.table({"k": [1, 2, 3]})
    assert _read_parquet(traintape.Table(dataframe=arrow).encode()[0]).equals(arrow)
    array = np.arange(6).reshape(3, 2)
    assert traintape.Table(["p", "q"], array).rows == 3


def test_bad_tables_are_refused_when_made() -> None:
    """A column of values of different types, a row of the wrong length, missing, empty or
    repeated column names, and both data and a frame raise, naming the problem."""
    with pytest.raises(TypeError, match="'v'"):
        traintape.Table(columns=["v"], data=[[1], ["text"]])
    with pytest.raises(ValueError, match="row 1"):
        traintape.Table(columns=["a", "b"], data=[[1, 2], [3]])
    with pytest.raises(ValueError, match="columns"):
        traintape.Table(data=[[1]])
    with pytest.raises(ValueError, match="repeat"):
        traintape.Table(columns=["a", "a"], data=[])
    with pytest.raises(TypeError, match="non-empty str"):
        traintape.Table(columns=["a", ""], data=[])
    with pytest.raises(ValueError, match="not both"):
        traintape.Table(columns=["a"], data=[[1]], dataframe=pa.table({"a": [1]}))
    with pytest.raises(TypeError, match="pandas or Arrow"):
        traintape.Table(dataframe=object())


# -- log(): what the call queues -----------------------------------------------------------------


class _Run:
    """What `log_media` uses of an Emitter: its artifact writer (real, on a recording port), its
    deferred values and log_text."""

    def __init__(self, store: Path) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.writer = ArtifactWriter(_port(store, self.events))
        self.artifacts = self.writer
        self._helpers = self
        self._deferred = DeferredValues(lambda *a: None)
        self.texts: list[tuple[str, str, int | None]] = []

    def artifact_writer(self) -> ArtifactWriter:
        return self.writer

    def log_text(self, key: str, text: str, step: int | None = None) -> None:
        self.texts.append((key, text, step))


def _log_media(run: _Run, metrics: dict[str, Any], step: int, ts: int) -> dict[str, Any]:
    return log_media(metrics, step, ts, run._deferred, run, run.log_text)  # type: ignore[arg-type]


def test_a_caption_passes_through_the_runs_redaction(tmp_path: Path) -> None:
    """An image's caption is redacted as log_text's text is: hidden under a secret-looking key,
    a URL's password hidden under any key; the rest of the caption is kept."""
    from traintape.emitter.redact import REDACTED, Redaction

    run = _Run(tmp_path / "store")
    run.writer = run.artifacts = ArtifactWriter(run.writer.port, Redaction.resolve(None).text)
    pixels = _pixels(4, 4, 3)
    _log_media(
        run,
        {
            "samples": traintape.Image(pixels, caption="from https://u:pw@host/x"),
            "hf_token": traintape.Image(pixels, caption="hf_abc"),
            "plain": traintape.Image(pixels, caption="epoch 3"),
        },
        1,
        0,
    )
    run.writer.close()
    captions = {body["name"]: body["metadata"]["caption"] for _, _, body in run.events}
    assert captions == {
        "samples": f"from https://u:{REDACTED}@host/x",
        "hf_token": REDACTED,
        "plain": "epoch 3",
    }


def test_log_queues_media_and_returns_the_numbers(tmp_path: Path) -> None:
    """A call holding an image, a table and text returns its numbers, records the text as
    log_text does and stores the image and table as artifact events at the call's step, under
    the log key (a "/" in it too), with the contract's kind and metadata; the same image twice
    is one object."""
    run = _Run(tmp_path / "store")
    array = _pixels(16, 16, 3)
    table = traintape.Table(columns=["a"], data=[[1], [2]])
    numbers = _log_media(
        run,
        {
            "loss": 0.25,
            "samples/pred": traintape.Image(array, caption="p"),
            "again": traintape.Image(array, caption="p"),
            "worst": table,
            "note": traintape.Text("hello"),
        },
        7,
        123,
    )
    run.writer.close()
    assert numbers == {"loss": 0.25}
    assert run.texts == [("note", "hello", 7)]
    bodies = {body["name"]: (kind, step, body) for kind, step, body in run.events}
    assert set(bodies) == {"samples/pred", "again", "worst"}
    assert all(kind == ARTIFACT and step == 7 for kind, step, _ in bodies.values())
    image = bodies["samples/pred"][2]
    assert image["kind"] == "image" and image["metadata"] == {
        "media": "image",
        "format": "png",
        "width": 16,
        "height": 16,
        "channels": 3,
        "caption": "p",
    }
    stored = (tmp_path / "store" / image["path"]).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == image["sha256"] == bodies["again"][2]["sha256"]
    assert np.array_equal(_decoded(stored), array)
    worst = bodies["worst"][2]
    assert worst["kind"] == "table" and worst["metadata"]["columns"] == ["a"]
    stored = (tmp_path / "store" / worst["path"]).read_bytes()
    assert _read_parquet(stored).column("a").to_pylist() == [1, 2]
    assert len(_objects(tmp_path / "store")) == 2


def test_a_bad_key_or_number_in_the_call_queues_no_media(tmp_path: Path) -> None:
    """An empty or non-str key of a media value, or a bad number beside it, raises and queues
    nothing of the call; a finished writer refuses media with RunFinishedError."""
    run = _Run(tmp_path / "store")
    image = traintape.Image(_pixels(4, 4))
    with pytest.raises(ValueError, match="empty"):
        _log_media(run, {"": image}, 0, 0)
    with pytest.raises(TypeError, match="names must be str"):
        _log_media(run, {1: image}, 0, 0)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="'bad'"):
        _log_media(run, {"img": image, "bad": "text"}, 0, 0)
    run.writer.close()
    assert run.events == [] and run.texts == [] and _objects(tmp_path / "store") == []
    with pytest.raises(traintape.RunFinishedError):
        _log_media(run, {"img": image}, 1, 0)


def test_emitter_log_takes_media_beside_numbers_and_refuses_a_bad_call_whole(
    tmp_path: Path,
) -> None:
    """`Emitter.log` with an image and a bad number raises and stores nothing; with an image
    and numbers it stores the image and takes the step, as a call of numbers alone does."""
    from traintape.emitter import Emitter

    store = tmp_path / "store"
    em = Emitter("p", store=store, address=f"ipc://{tmp_path}/nobody.sock")
    try:
        with pytest.raises(TypeError, match="'bad'"):
            em.log({"img": traintape.Image(_pixels(4, 4)), "bad": "text"}, step=0)
        em.log({"loss": 0.5, "img": traintape.Image(_pixels(4, 4))}, step=3)
        em.log({"img": traintape.Image(_pixels(4, 4))})  # media alone takes the next step
        assert em._step == 5
        writer = em._helpers.artifacts
        assert writer is not None
        writer.close()
        assert len(_objects(store)) == 2
    finally:
        em.finish(timeout=0.1)


def test_a_list_of_media_under_a_key_is_stored_as_key_slash_index(tmp_path: Path) -> None:
    """`log({"samples": [Image, Image, Table]})` (W&B's way to log a batch of samples) stores
    one artifact per item, named samples/0, samples/1, ... at the call's step, beside the
    numbers; a list with anything else in it, or a name given twice (a list's item and a key),
    raises and queues nothing of the call; a list of numbers is refused as before."""
    from traintape.emitter import Emitter

    run = _Run(tmp_path / "store")
    arrays = [_pixels(4, 5, 3), _pixels(6, 2)]
    image = traintape.Image(arrays[0])
    with pytest.raises(TypeError, match=r"'samples' is a list of media values with a int"):
        _log_media(run, {"samples": [image, 3]}, 0, 0)
    with pytest.raises(ValueError, match="'samples/0' twice"):
        _log_media(run, {"samples": [image], "samples/0": image}, 0, 0)
    with pytest.raises(TypeError, match="'nums'"):
        _log_media(run, {"nums": [1.0, 2.0], "img": image}, 0, 0)
    table = traintape.Table(columns=["a"], data=[[1]])
    listed = [traintape.Image(a, caption=f"c{i}") for i, a in enumerate(arrays)] + [table]
    numbers = _log_media(run, {"loss": 0.5, "samples": listed, "note": [traintape.Text("t")]}, 4, 0)
    run.writer.close()
    assert numbers == {"loss": 0.5} and run.texts == [("note/0", "t", 4)]
    bodies = sorted((body["name"], step, body["kind"]) for _, step, body in run.events)
    assert bodies == [
        ("samples/0", 4, "image"),
        ("samples/1", 4, "image"),
        ("samples/2", 4, "table"),
    ]
    by_name = {body["name"]: body for _, _, body in run.events}
    for i, array in enumerate(arrays):
        body = by_name[f"samples/{i}"]
        assert body["metadata"]["caption"] == f"c{i}"
        assert np.array_equal(_decoded((tmp_path / "store" / body["path"]).read_bytes()), array)
    # Through Emitter.log: a list routes to the media path; a list of numbers is refused there.
    em = Emitter("p", store=tmp_path / "em", address=f"ipc://{tmp_path}/nobody.sock")
    try:
        with pytest.raises(TypeError, match="'nums'"):
            em.log({"nums": [1.0, 2.0]}, step=0)
        em.log({"samples": [traintape.Image(arrays[1])]}, step=2)
        assert em._helpers.artifacts is not None and em._step == 3
        em._helpers.artifacts.close()
        assert len(_objects(tmp_path / "em")) == 1
    finally:
        em.finish(timeout=0.1)


def test_the_backlog_of_unencoded_media_is_bounded() -> None:
    """Past the limit, adding waits until the artifact thread says some was encoded; a single
    value larger than the limit still goes when nothing else waits."""
    backlog = MediaBacklog()
    backlog.LIMIT = 100
    backlog.add(150)  # alone: over the limit, still taken
    entered, passed = threading.Event(), threading.Event()

    def add_more() -> None:
        entered.set()
        backlog.add(10)
        passed.set()

    thread = threading.Thread(target=add_more)
    thread.start()
    assert entered.wait(10)
    assert not passed.wait(0.2)  # waits while 150 bytes are not encoded
    backlog.done(150)
    assert passed.wait(10)
    thread.join(10)


# -- the public surface and traintape.wandb -------------------------------------------------------


def test_the_media_types_are_public_and_text_is_checked() -> None:
    """traintape exports Image, Table and Text; Text takes a str only."""
    assert {"Image", "Table", "Text"} <= set(traintape.__all__)
    assert traintape.Text("x").text == "x"
    with pytest.raises(TypeError):
        traintape.Text(3)  # type: ignore[arg-type]


def test_wandb_image_and_table_take_what_wandb_takes() -> None:
    """traintape.wandb.Image casts arrays of 0-255 values to uint8 (W&B 0.31) and takes CHW
    tensors; its Table has W&B's default columns, add_data, add_column and get_column, and is
    stored as the rows it holds when logged."""
    import traintape.wandb as wandb

    values = RNG.integers(0, 256, size=(5, 6, 3)).astype(np.float64)
    data, meta = wandb.Image(values, caption="w").encode()
    assert np.array_equal(_decoded(data), values.astype(np.uint8)) and meta["caption"] == "w"
    with pytest.raises(ValueError, match="0..255"):
        wandb.Image(np.full((4, 4), 300.0))
    assert isinstance(wandb.Image(_pixels(4, 4), mode="RGB"), traintape.Image)
    torch = pytest.importorskip("torch")
    chw = torch.from_numpy(_pixels(3, 4, 5))
    assert np.array_equal(_decoded(wandb.Image(chw).encode()[0]), chw.permute(1, 2, 0).numpy())
    table = wandb.Table(data=[[1, 2, 3]])
    assert table.columns == ["Input", "Output", "Expected"]
    table.add_data(4, 5, 6)
    table.add_column("More", [7, 8])
    assert table.get_column("More") == [7, 8]
    stored = _read_parquet(table.media().encode()[0]).to_pylist()
    assert stored[1] == {"Input": 4, "Output": 5, "Expected": 6, "More": 8}
    frame = wandb.Table(dataframe=pa.table({"a": [1]}).to_pandas())
    assert (frame.columns, frame.data) == (["a"], [[1]])


# -- the snapshot buffers ------------------------------------------------------------------------


def test_snapshot_buffers_are_reused_after_the_image_is_freed_and_bounded() -> None:
    """A numpy image's snapshot goes into a buffer given back when the Image is freed (after
    its encoding), so the next image of that size reuses it (memory already mapped: no page
    faults); the free buffers stay under LIMIT bytes, and another size drops them."""
    from traintape.emitter.media_pixels import SNAPSHOTS, SnapshotBuffers

    first = _pixels(32, 32, 3)
    image = traintape.Image(first)
    buffer = image._source[0]
    encoded, _ = image.encode()
    del image
    second = _pixels(32, 32, 3) ^ 0xFF
    again = traintape.Image(second)
    assert again._source[0] is buffer  # the freed buffer, reused
    assert np.array_equal(_decoded(encoded), first)  # what was encoded before is unchanged
    assert np.array_equal(_decoded(again.encode()[0]), second)
    pool = SnapshotBuffers()
    pool.LIMIT = 3 * 1000
    taken = [pool.take(np, 1000) for _ in range(5)]
    for b in taken:
        pool.give(b)
    assert len(pool.free) == 3  # bounded
    assert pool.take(np, 1000) is taken[2] and pool.take(np, 10).nbytes == 10
    assert pool.free == []  # another size: the free buffers of the old one are dropped
    assert SNAPSHOTS.LIMIT <= 16 << 20


@pytest.mark.parametrize("order", ["strided", "fortran", "float"])
def test_non_contiguous_and_float_arrays_are_copied_in_order(order: str) -> None:
    """A strided view, a Fortran-ordered array and a float image are copied into the snapshot
    buffer pixel for pixel (numpy's copy, not the raw bytes), and later changes of the array
    are not logged."""
    base = _pixels(20, 24, 3)
    if order == "strided":
        array = base[:, ::-1]
    elif order == "fortran":
        array = np.asfortranarray(base)
    else:
        array = base.astype(np.float32) / 255.0
    expected = base[:, ::-1].copy() if order == "strided" else base.copy()
    image = traintape.Image(array)
    array[...] = 0
    assert np.array_equal(_decoded(image.encode()[0]), expected)


# -- copy=False: an array handed over ------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_an_array_handed_over_is_read_without_a_copy_and_made_read_only(dtype: str) -> None:
    """`Image(array, copy=False)` keeps the array itself (no copy), makes it read-only so a
    later write raises instead of changing what is stored, stores its pixels, and never puts
    its memory into the snapshot buffers (its owner still holds it)."""
    from traintape.emitter.media_pixels import SNAPSHOTS

    pixels = _pixels(6, 9, 3)
    array = pixels if dtype == "uint8" else pixels.astype(np.float32) / 255.0
    image = traintape.Image(array, copy=False)
    assert np.shares_memory(image._source[0], array)
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0, 0] = 0
    assert np.array_equal(_decoded(image.encode()[0]), pixels)
    assert (image.width, image.height, image.channels, image.nbytes) == (9, 6, 3, array.nbytes)
    del image
    assert not any(np.shares_memory(b, array) for b in SNAPSHOTS.free)
    assert not array.flags.writeable  # handed over: it stays read-only


@pytest.mark.parametrize("kind", ["view", "strided", "fortran"])
def test_an_array_that_does_not_own_its_memory_is_copied_even_with_copy_false(kind: str) -> None:
    """A view (its base could still be written), a strided view or a Fortran-ordered array is
    copied as without copy=False: it stays writeable, and later writes change nothing stored."""
    base = _pixels(10, 12, 3)
    array = {"view": base[2:8], "strided": base[:, ::-1], "fortran": np.asfortranarray(base)}[kind]
    expected = array.copy()
    image = traintape.Image(array, copy=False)
    assert not np.shares_memory(image._source[0], array)
    array[...] = 0
    base[...] = 0
    assert np.array_equal(_decoded(image.encode()[0]), expected)


def test_copy_takes_a_bool_and_bad_arrays_are_refused_before_being_made_read_only() -> None:
    """copy= takes True or False; an array refused (a bad dtype or range) handed over stays
    writeable, as nothing was taken."""
    with pytest.raises(TypeError, match="copy="):
        traintape.Image(_pixels(4, 4), copy="no")  # type: ignore[arg-type]
    bad = np.full((4, 4), 2.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        traintape.Image(bad, copy=False)
    assert bad.flags.writeable
