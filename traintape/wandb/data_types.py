"""W&B's data types as traintape takes them: `Histogram` is stored (as a histogram event, the
kind `watch(histograms=True)` writes); media (`Image`, `Audio`, `Table`, `Video`, ...) raise
`UnsupportedMediaError` when made, so nothing is ever silently dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from traintape.errors import UnsupportedMediaError

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


def as_histogram(value: Any) -> Histogram | None:
    """`value` as our Histogram when it is one, or W&B's own (from `import wandb`); else None."""
    if isinstance(value, Histogram):
        return value
    cls = type(value)
    if cls.__name__ == "Histogram" and cls.__module__.split(".")[0] == "wandb":
        return Histogram(np_histogram=(value.histogram, value.bins))
    return None


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
            "text (str) or wandb.Histogram, or keep W&B itself for this data"
        )
        raise UnsupportedMediaError(msg)


class Image(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""


class Audio(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""


class Video(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""


class Table(_Unsupported):
    """Not stored by traintape: raises UnsupportedMediaError."""

    what = "tables"


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
