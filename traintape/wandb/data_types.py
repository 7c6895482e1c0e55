"""W&B's data types as traintape takes them: `Histogram` is stored as a histogram event (the
kind `watch(histograms=True)` writes), `Image` and `Table` as traintape's media of `log()`
(traintape.emitter.media: a PNG or Parquet artifact at the row's step); the other media (`Audio`,
`Video`, `Html`, ...) raise `UnsupportedMediaError` when made, so nothing is silently dropped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from traintape.emitter import media
from traintape.errors import UnsupportedMediaError

logger = logging.getLogger("traintape.wandb")

MAX_BINS = 512
"""W&B's limit on a histogram's length."""


class Histogram:
    """W&B's `Histogram(sequence=None, np_histogram=None, num_bins=64)`: counts over bins.

    traintape stores a histogram as (min, max, counts) over bins of equal width, which is what
    `np.histogram` makes; a precomputed histogram with bins of unequal widths raises ValueError.
    """

    def __init__(
        self,
        sequence: Sequence[Any] | Any | None = None,
        np_histogram: tuple[Any, Any] | None = None,
        num_bins: int = 64,
    ) -> None:
        import numpy as np

        if np_histogram is not None:
            if len(np_histogram) != 2:
                msg = "np_histogram must be a (values, bin_edges) pair, as np.histogram returns"
                raise ValueError(msg)
            counts, edges = np_histogram
        elif sequence is not None:
            counts, edges = np.histogram(np.asarray(sequence, dtype=np.float64), bins=num_bins)
        else:
            msg = "Histogram() needs a sequence of numbers or np_histogram=(values, bin_edges)"
            raise ValueError(msg)
        self.histogram: list[Any] = np.asarray(counts).tolist()
        self.bins: list[float] = [float(b) for b in np.asarray(edges).tolist()]
        if len(self.histogram) > MAX_BINS:
            msg = f"the maximum length of a histogram is {MAX_BINS}"
            raise ValueError(msg)
        if len(self.histogram) + 1 != len(self.bins) or not self.histogram:
            msg = "len(bins) must be len(histogram) + 1, with at least one bin"
            raise ValueError(msg)
        widths = np.diff(np.asarray(self.bins))
        if not np.allclose(widths, widths[0], rtol=1e-6, atol=1e-12 * max(1.0, abs(widths[0]))):
            msg = (
                "traintape stores histograms over bins of equal width (min, max, counts); "
                "these bin edges are uneven"
            )
            raise ValueError(msg)

    def body(self, key: str) -> dict[str, Any]:
        """The histogram event's body (traintape.schemas: key, min, max, counts)."""
        return {"key": key, "min": self.bins[0], "max": self.bins[-1], "counts": self.histogram}

    def to_json(self) -> dict[str, Any]:
        """As W&B writes a histogram in a run's summary."""
        return {"_type": "histogram", "values": self.histogram, "bins": self.bins}

    def __repr__(self) -> str:
        return f"Histogram({len(self.histogram)} bins, {self.bins[0]:g}..{self.bins[-1]:g})"


def of_wandb_itself(value: Any) -> Any | None:
    """Ours for a `Histogram`, `Image` or `Table` of W&B itself (made with `import wandb`), so a
    script that mixes both imports stores them: a Histogram of its counts and bins, an Image of
    the PNG or JPEG file W&B wrote for it (with its caption), a Table of its columns and rows.
    None for anything else (W&B's other types are refused where the row is checked)."""
    cls = type(value)
    if cls.__module__.split(".")[0] != "wandb":
        return None
    if cls.__name__ == "Histogram":
        return Histogram(np_histogram=(value.histogram, value.bins))
    path = getattr(value, "_path", None)
    if cls.__name__ == "Image" and isinstance(path, str):
        return Image(path, caption=getattr(value, "_caption", None))
    columns, rows = getattr(value, "columns", None), getattr(value, "data", None)
    if cls.__name__ == "Table" and isinstance(columns, list) and isinstance(rows, list):
        return Table(columns=columns, data=rows)
    return None


class Image(media.Image):
    """W&B's `Image(data_or_path, mode=None, caption=None, ...)`, stored as traintape's Image.

    As in W&B 0.31: a numpy array is HWC (or HW), its values 0-255 (cast to uint8); a tensor is
    CHW; a PIL image or a file path as they are; `mode` converts ("L", "RGB", "RGBA"). The
    pixels are taken when the Image is made. `grouping`, `classes`, `boxes`, `masks` and
    `file_type` have no effect (one warning); it is stored as PNG.
    """

    __slots__ = ()

    def __init__(
        self, data_or_path: Any, mode: str | None = None, caption: str | None = None, **more: Any
    ) -> None:
        unused = sorted(k for k, v in more.items() if v is not None)
        if unused:
            _warn_once(f"Image({', '.join(unused)}=) have no effect; the image is stored")
        super().__init__(_wandb_pixels(data_or_path, mode), caption=caption)


def _wandb_pixels(data: Any, mode: str | None) -> Any:
    """What traintape's Image takes, from what W&B 0.31's Image takes."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(data, torch.Tensor):
        if data.dim() != 3:
            msg = f"wandb.Image(tensor): a CHW tensor, got shape {tuple(data.shape)}"
            raise ValueError(msg)
        data = data.detach().permute(1, 2, 0).cpu().numpy()
    if hasattr(data, "ndim") and hasattr(data, "astype"):
        import numpy as np

        if data.ndim > 2:
            data = data.squeeze()
        if data.dtype != np.uint8:
            values = np.asarray(data, dtype=np.float64)
            if np.isnan(values).any() or values.min() < 0 or values.max() > 255:
                msg = "wandb.Image(array): values must lie in 0..255 (W&B casts them to uint8)"
                raise ValueError(msg)
            data = data.astype(np.uint8)
    if mode is not None:
        from PIL import Image as PILImage

        if not isinstance(data, PILImage.Image):
            data = PILImage.open(data) if isinstance(data, str) else PILImage.fromarray(data)
        data = data.convert(mode)
    return data


class Table:
    """W&B's `Table(columns=None, data=None, rows=None, dataframe=None, ...)`, stored as
    traintape's Table (one Parquet file) when logged; `add_data`, `add_column` and
    `get_column` as in W&B. Columns default to W&B's ["Input", "Output", "Expected"]."""

    def __init__(
        self,
        columns: Sequence[str] | None = None,
        data: Any = None,
        rows: Any = None,
        dataframe: Any = None,
        **more: Any,
    ) -> None:
        if data is None and rows is not None:
            data = rows
        if dataframe is None and type(data).__module__.split(".")[0] == "pandas":
            dataframe, data = data, None
        self.data: list[list[Any]]
        if dataframe is not None:
            table = media.Table(dataframe=dataframe)
            self.columns = list(table.columns)
            self.data = [list(r.values()) for r in table.arrow.to_pylist()]
            return
        self.columns = list(columns) if columns is not None else ["Input", "Output", "Expected"]
        rows_of = data.tolist() if hasattr(data, "tolist") else data
        self.data = [list(r) for r in rows_of or []]
        media.Table(self.columns, self.data)  # checked now, as W&B checks when a table is made

    def add_data(self, *data: Any) -> None:
        if len(data) != len(self.columns):
            msg = f"add_data(): {len(data)} values for {len(self.columns)} columns"
            raise ValueError(msg)
        self.data.append(list(data))

    add_row = add_data

    def add_column(self, name: str, data: Sequence[Any]) -> None:
        if name in self.columns:
            msg = f"add_column(): column {name!r} exists"
            raise ValueError(msg)
        if self.data and len(data) != len(self.data):
            msg = f"add_column(): {len(data)} values for {len(self.data)} rows"
            raise ValueError(msg)
        self.columns.append(name)
        if not self.data:
            self.data = [[] for _ in data]
        for row, value in zip(self.data, data):
            row.append(value)

    def get_column(self, name: str) -> list[Any]:
        return [row[self.columns.index(name)] for row in self.data]

    def media(self) -> media.Table:
        """The rows as they are now, as traintape's Table (what `log` stores)."""
        return media.Table(self.columns, self.data)

    def __repr__(self) -> str:
        return f"<traintape.wandb Table {len(self.data)} rows, columns {self.columns!r}>"


_warned: set[str] = set()


def _warn_once(text: str) -> None:
    if text not in _warned:
        _warned.add(text)
        logger.warning(f"traintape.wandb: {text}")


class Settings:
    """W&B's `Settings(...)`: taken and kept (`init(settings=...)`); traintape uses `mode` only."""

    def __init__(self, **settings: Any) -> None:
        self.__dict__.update(settings)

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class _Unsupported:
    """A W&B type traintape does not store: making one raises, with what to do instead."""

    what = "media"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        name = type(self).__name__
        msg = (
            f"traintape.wandb.{name}: traintape does not store {self.what} yet. Log numbers, "
            "text (str), wandb.Histogram, wandb.Image or wandb.Table, or keep W&B itself for "
            "this data"
        )
        raise UnsupportedMediaError(msg)


class Audio(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""


class Video(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""


class Html(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""


class Object3D(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""


class Molecule(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""


class Plotly(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""


class Artifact(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""

    what = "artifacts"
