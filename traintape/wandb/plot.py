"""`wandb.plot`: W&B's preset charts, as traintape.wandb records them.

    cm = wandb.plot.confusion_matrix(y_true=labels, preds=predictions, class_names=names)
    wandb.log({"val/confusion": cm})

Each function builds the table W&B builds (same columns, same rows) and returns a
`CustomChart` of it; logged under a key, the chart's table is stored as `<key>_table` (a
`traintape.Table`, Parquet), the name W&B's own history gives it. The chart drawing (W&B's Vega
spec and its field mapping) is kept on the object (`spec_name`, `fields`) but not stored: query
the table, or plot it with `traintape plot`. `pr_curve` and `roc_curve` need scikit-learn in W&B
and are not built here: they raise UnsupportedMediaError.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from traintape.errors import UnsupportedMediaError
from traintape.wandb.data_types import Table

__all__ = [
    "CustomChart",
    "bar",
    "confusion_matrix",
    "histogram",
    "line",
    "line_series",
    "plot_table",
    "pr_curve",
    "roc_curve",
    "scatter",
]


@dataclass
class CustomChart:
    """A chart of `table` (W&B's `CustomChart`): logged, its table is stored."""

    table: Table
    spec_name: str
    fields: dict[str, Any] = field(default_factory=dict)
    string_fields: dict[str, Any] = field(default_factory=dict)
    split_table: bool = False

    def table_key(self, key: str) -> str:
        """The name W&B gives the chart's table in the run's history."""
        return f"Custom Chart Tables/{key}_table" if self.split_table else f"{key}_table"


def plot_table(
    vega_spec_name: str,
    data_table: Table,
    fields: dict[str, Any],
    string_fields: dict[str, Any] | None = None,
    split_table: bool = False,
) -> CustomChart:
    """A chart of `data_table` drawn by the Vega spec `vega_spec_name` (W&B's signature)."""
    if not isinstance(data_table, Table):
        msg = f"plot_table(data_table=) takes a wandb.Table, got {type(data_table).__name__}"
        raise TypeError(msg)
    return CustomChart(
        data_table, vega_spec_name, dict(fields), dict(string_fields or {}), split_table
    )


def line(
    table: Table,
    x: str,
    y: str,
    stroke: str | None = None,
    title: str = "",
    split_table: bool = False,
) -> CustomChart:
    return plot_table(
        "wandb/line/v0", table, {"x": x, "y": y, "stroke": stroke}, {"title": title}, split_table
    )


def scatter(
    table: Table, x: str, y: str, title: str = "", split_table: bool = False
) -> CustomChart:
    return plot_table("wandb/scatter/v0", table, {"x": x, "y": y}, {"title": title}, split_table)


def bar(
    table: Table, label: str, value: str, title: str = "", split_table: bool = False
) -> CustomChart:
    fields = {"label": label, "value": value}
    return plot_table("wandb/bar/v0", table, fields, {"title": title}, split_table)


def histogram(table: Table, value: str, title: str = "", split_table: bool = False) -> CustomChart:
    return plot_table("wandb/histogram/v0", table, {"value": value}, {"title": title}, split_table)


def line_series(
    xs: Any,
    ys: Sequence[Iterable[Any]],
    keys: Sequence[str] | None = None,
    title: str = "",
    xname: str = "x",
    split_table: bool = False,
) -> CustomChart:
    """Lines `ys` over `xs` (one x series for all, or one per line), named by `keys`
    (`line_0`, `line_1`, ... by default): a table of (step, lineKey, lineVal) rows."""
    if not isinstance(xs[0], Iterable) or isinstance(xs[0], (str, bytes)):
        xs = [xs] * len(ys)
    if len(xs) != len(ys):
        msg = f"Number of x-series ({len(xs)}) must match y-series ({len(ys)})."
        raise ValueError(msg)
    keys = [f"line_{i}" for i in range(len(ys))] if keys is None else list(keys)
    if len(keys) != len(ys):
        msg = f"Number of keys ({len(keys)}) must match y-series ({len(ys)})."
        raise ValueError(msg)
    data = [[x, keys[i], y] for i, (xx, yy) in enumerate(zip(xs, ys)) for x, y in zip(xx, yy)]
    table = Table(columns=["step", "lineKey", "lineVal"], data=data)
    fields = {"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"}
    strings = {"title": title, "xname": xname}
    return plot_table("wandb/lineseries/v0", table, fields, strings, split_table)


def confusion_matrix(
    probs: Sequence[Sequence[float]] | None = None,
    y_true: Sequence[Any] | None = None,
    preds: Sequence[Any] | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "Confusion Matrix Curve",
    split_table: bool = False,
) -> CustomChart:
    """W&B's confusion matrix: one row (Actual, Predicted, nPredictions) per pair of classes,
    zeros included, from predicted labels or from per-class probabilities (their argmax)."""
    if probs is not None and preds is not None:
        raise ValueError("Only one of `probs` or `preds` should be provided, not both.")
    if y_true is None or (probs is None and preds is None):
        raise ValueError("confusion_matrix() needs y_true, and preds or probs")
    if probs is not None:
        preds = [_argmax(row) for row in probs]
    assert preds is not None
    preds, y_true = [_plain(p) for p in preds], [_plain(t) for t in y_true]
    if len(preds) != len(y_true):
        raise ValueError("The number of predictions and true labels must be equal.")
    if class_names is not None:
        classes: Iterable[Any] = range(len(class_names))
        if len(set(preds)) > len(class_names):
            msg = "The number of unique predicted classes exceeds the number of class names."
            raise ValueError(msg)
        if len(set(y_true)) > len(class_names):
            msg = "The number of unique true labels exceeds the number of class names."
            raise ValueError(msg)
    else:
        classes = set(preds) | set(y_true)
        class_names = [f"Class_{i + 1}" for i in range(len(classes))]
    index = {label: i for i, label in enumerate(sorted(classes))}
    n = len(class_names)
    counts = [[0.0] * n for _ in range(n)]
    for actual, predicted in zip(y_true, preds):
        if actual not in index or predicted not in index:
            bad = actual if actual not in index else predicted
            msg = f"confusion_matrix(): label {bad!r} is not one of the {n} classes (0..{n - 1})"
            raise ValueError(msg)
        counts[index[actual]][index[predicted]] += 1
    data = [[class_names[i], class_names[j], counts[i][j]] for i in range(n) for j in range(n)]
    table = Table(columns=["Actual", "Predicted", "nPredictions"], data=data)
    fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
    return plot_table("wandb/confusion_matrix/v1", table, fields, {"title": title}, split_table)


def pr_curve(*args: Any, **kwargs: Any) -> CustomChart:
    raise UnsupportedMediaError(_CURVES.format(name="pr_curve"))


def roc_curve(*args: Any, **kwargs: Any) -> CustomChart:
    raise UnsupportedMediaError(_CURVES.format(name="roc_curve"))


_CURVES = (
    "wandb.plot.{name} is not stored by traintape yet (W&B computes it with scikit-learn): log "
    "the curve's points as a wandb.Table, or use W&B itself for it"
)


def _argmax(row: Sequence[float]) -> int:
    """The index of a row's largest probability (the first, on a tie, as numpy's argmax)."""
    values = list(row)
    return values.index(max(values))


def _plain(label: Any) -> Any:
    """A numpy scalar label as a Python value (hashable and equal to its int)."""
    item = getattr(label, "item", None)
    return item() if callable(item) else label
