"""W&B's history rows, as W&B 0.31 builds them: which values share a step, and when a row is done.

`run.log(data, step=None, commit=None)` merges `data` into the row being built at the current
step. Without `step` the row is committed (written, and the step advances by one) unless
`commit=False`. With a `step` above the current one, the row being built is written first and
the new step begins; it stays open (more calls may add to it) until a call commits it, a later
step begins, or the run finishes. A `step` below the current one is refused with a warning and
its data dropped, as W&B drops it. Nested dicts are flattened with "/" ({"val": {"acc": 1}} ->
"val/acc"), as W&B stores them.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from typing import Any

from traintape.emitter.media import MEDIA_TYPES
from traintape.errors import UnsupportedMediaError
from traintape.schemas.limits import MAX_INT64
from traintape.wandb.data_types import Histogram, Table, of_wandb_itself
from traintape.wandb.plot import CustomChart

logger = logging.getLogger("traintape.wandb")

NUMBER, TEXT, HISTOGRAM, MEDIA = "number", "text", "histogram", "media"
"""What a logged value becomes: a metric value, a text event, a histogram event, or a media
value of `emitter.log` (an Image or a Table: traintape.emitter.media)."""


class StepHistory:
    """The row being built and its step; `add` returns the rows that are done, as (step, row)."""

    def __init__(self) -> None:
        self.step = 0
        self.row: dict[str, Any] = {}

    def add(
        self, data: dict[str, Any], step: int | None, commit: bool | None
    ) -> list[tuple[int, dict[str, Any]]]:
        if step is None and commit is not False and not self.row:  # the usual call: one row
            self.step += 1
            return [(self.step - 1, data)]
        done: list[tuple[int, dict[str, Any]]] = []
        if step is not None:
            if step < self.step:
                logger.warning(
                    f"traintape.wandb: tried to log to step {step}, below the current step "
                    f"{self.step}; as in W&B, steps only increase and this data is ignored "
                    "(use define_metric for another x-axis)"
                )
                return done
            if step > self.step:
                if self.row:
                    done.append((self.step, self.row))
                self.row = {}
                self.step = step
            self.row.update(data)
            if commit:
                done.append(self.commit())
            return done
        self.row.update(data)
        if commit is None or commit:
            done.append(self.commit())
        return done

    def commit(self) -> tuple[int, dict[str, Any]]:
        """The current row is done (empty or not) and the step advances, as W&B's commit does."""
        row, self.row = (self.step, self.row), {}
        self.step += 1
        return row

    def take_open(self) -> list[tuple[int, dict[str, Any]]]:
        """The row still being built, if it holds anything (at finish, as W&B writes it)."""
        if not self.row:
            return []
        row, self.row = (self.step, self.row), {}
        return [row]


def check_step(step: Any) -> int:
    """A step as W&B takes it: an int from 0 (bools refused); TypeError/ValueError otherwise."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        msg = f"step must be an int, got {step!r} ({type(step).__name__})"
        raise TypeError(msg)
    if not 0 <= int(step) <= MAX_INT64:
        msg = f"step must be in 0..{MAX_INT64}, got {step}"
        raise ValueError(msg)
    return int(step)


def flatten_row(data: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """`data` with nested dicts flattened with "/", every value checked: the whole call is
    refused (nothing of it logged) when one value cannot be stored."""
    if not isinstance(data, Mapping):
        msg = f"log() takes a dict, not {type(data).__name__}"
        raise TypeError(msg)
    out = {} if out is None else out
    for key, value in data.items():
        if not isinstance(key, str):
            msg = f"keys passed to log() must be str, got {key!r} ({type(key).__name__})"
            raise TypeError(msg)
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flatten_row(value, f"{name}/", out)
            continue
        if isinstance(value, CustomChart):  # wandb.plot's: its table, named as W&B names it
            out[value.table_key(name)] = value.table
            continue
        if type(value) is list and value:  # a batch of samples: [wandb.Image(...), ...], maybe
            value = [_ours(name, item) for item in value]
        else:
            value = _ours(name, value)
        kind_of(name, value)  # raises for what cannot be stored
        out[name] = value
    return out


def _ours(name: str, value: Any) -> Any:
    """`value`, as traintape's type when W&B itself made it (a Histogram, Image or Table)."""
    ours = of_wandb_itself(value)
    return value if ours is None else ours


def kind_of(key: str, value: Any) -> str:
    """NUMBER, TEXT, HISTOGRAM or MEDIA; UnsupportedMediaError for other W&B media, TypeError
    otherwise."""
    if type(value) in (float, int, bool):
        return NUMBER
    if isinstance(value, str):
        return TEXT
    if isinstance(value, Histogram):
        return HISTOGRAM
    if type(value) in MEDIA_TYPES or isinstance(value, Table):
        return MEDIA
    if type(value) is list and value and all(kind_of(key, v) == MEDIA for v in value):
        return MEDIA  # stored as key/0, key/1, ... (emitter.log)
    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        return NUMBER  # numpy scalars
    numel = getattr(value, "numel", None)
    if callable(numel) and callable(getattr(value, "detach", None)):  # a torch tensor
        if numel() == 1:
            return NUMBER  # the emitter reads it without a device sync
    elif callable(getattr(value, "item", None)) and getattr(value, "size", None) == 1:
        return NUMBER  # a one-element numpy array
    cls = type(value)
    if cls.__module__.split(".")[0] == "wandb":
        msg = (
            f"{key!r}: a {cls.__name__} of W&B itself (`import wandb`); make it with "
            "`import traintape.wandb as wandb` (Image, Table, Histogram), or keep W&B itself"
        )
        raise UnsupportedMediaError(msg)
    msg = (
        f"{key!r}: traintape.wandb.log() takes numbers, one-element tensors, str, "
        f"wandb.Histogram, Image, Table, dicts of those or lists of Images and Tables, not "
        f"{cls.__name__} (wrap a sequence of numbers in wandb.Histogram)"
    )
    raise TypeError(msg)
