"""`wandb.summary` and `define_metric`, as W&B 0.31 computes them.

The summary holds the last value logged of each key. `define_metric(name, summary="min,max")`
makes it a dict of those statistics instead ({"min": .., "max": ..}; ops: min, max, mean, first,
last, "none" for no summary, "copy" for the last value; `summary="best"` with
`goal="minimize"|"maximize"` as older W&B versions took it). A key set by hand
(`summary["best_acc"] = x`) keeps that value until the key is logged again, and from then on
holds the last value logged, as W&B 0.31 does. `step_metric` names another key as the metric's
x-axis; with `step_sync` (the default then) a row holding the metric but not its x-axis gets the
x-axis's last value, as W&B adds it. Names ending in "*" match every key with that prefix.

The summary lives in the Emitter's `summary` dict, which the run's `run_end` event stores (a
`traintape show` section); definitions are stored as params `wandb.metric.<name>.<field>`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from traintape.schemas.values import plain
from traintape.wandb.data_types import Histogram

SUMMARY_OPS = ("min", "max", "mean", "first", "last", "best", "copy", "none")
GOALS = {"minimize": "min", "min": "min", "maximize": "max", "max": "max"}


@dataclass
class Metric:
    """One `define_metric` definition (after merging with earlier calls for the same name)."""

    name: str
    step_metric: str | None = None
    step_sync: bool | None = None
    hidden: bool | None = None
    summary: list[str] | None = None
    goal: str | None = None

    def params(self) -> dict[str, Any]:
        """As stored: `wandb.metric.<name>.<field>` params (summary ops joined with ",")."""
        fields = asdict(self)
        fields.pop("name")
        fields["summary"] = ",".join(self.summary) if self.summary else None
        return {f"wandb.metric.{self.name}.{k}": v for k, v in fields.items()}


class MetricRules:
    """Every definition by exact name and by prefix ("val/*"), and the last value of each key."""

    def __init__(self) -> None:
        self.exact: dict[str, Metric] = {}
        self.globs: dict[str, Metric] = {}
        self.last: dict[str, Any] = {}
        self._rule_of: dict[str, Metric | None] = {}  # cache of rule(); cleared by define()

    def define(self, name: Any, overwrite: bool | None = None, **fields: Any) -> Metric:
        """Checks the arguments as W&B does (TypeError/ValueError), merges, returns the result."""
        if not isinstance(name, str) or not name:
            msg = "define_metric() needs a non-empty name (str)"
            raise ValueError(msg)
        if "*" in name[:-1]:
            msg = f"define_metric(): only a trailing '*' is a wildcard, got {name!r}"
            raise ValueError(msg)
        summary = fields.pop("summary")
        if summary is not None:
            if not isinstance(summary, str):
                msg = f"define_metric(summary=) takes a str, got {type(summary).__name__}"
                raise TypeError(msg)
            fields["summary"] = _ops(summary, fields.get("goal"))
        goal = fields.get("goal")
        if goal is not None and goal not in GOALS:
            msg = f"define_metric(goal=) is 'minimize' or 'maximize', got {goal!r}"
            raise ValueError(msg)
        table, key = (self.globs, name[:-1]) if name.endswith("*") else (self.exact, name)
        old = table.get(key) if not overwrite else None
        new = Metric(name, **fields)
        if old is not None:
            for field, value in asdict(old).items():
                if getattr(new, field) is None:
                    setattr(new, field, value)
            if fields.get("summary") and old.summary:  # W&B keeps the earlier ops too
                new.summary = list(dict.fromkeys([*old.summary, *fields["summary"]]))
        table[key] = new
        self._rule_of.clear()
        return new

    def rule(self, key: str) -> Metric | None:
        """The definition of `key`: by its name, else the longest matching prefix."""
        try:
            return self._rule_of[key]
        except KeyError:
            pass
        found = self.exact.get(key)
        if found is None and self.globs:
            matches = [p for p in self.globs if key.startswith(p)]
            found = self.globs[max(matches, key=len)] if matches else None
        self._rule_of[key] = found
        return found

    def sync_steps(self, row: dict[str, Any]) -> dict[str, Any]:
        """`row` with the last value of each x-axis its metrics sync to, then remembered."""
        if self.exact or self.globs:
            for key in list(row):
                m = self.rule(key)
                if m is None or not m.step_metric or m.step_sync is False:
                    continue
                x = m.step_metric
                if x != key and x not in row and x in self.last:
                    row[x] = self.last[x]
        self.last.update(row)  # also before any definition: one may come later
        return row


def _ops(summary: str, goal: str | None) -> list[str]:
    ops = [s.strip().lower() for s in summary.split(",") if s.strip()]
    for op in ops:
        if op not in SUMMARY_OPS:
            msg = f"define_metric(): unknown summary op {op!r} (one of {', '.join(SUMMARY_OPS)})"
            raise ValueError(msg)
    if "best" in ops and goal is None:
        msg = "define_metric(summary='best') needs goal='minimize' or goal='maximize'"
        raise ValueError(msg)
    return ops


class Summary:
    """`wandb.summary`: dict-like, with attribute access; values set by hand win until logged."""

    def __init__(
        self, values: dict[str, Any], before_change: Callable[[], None] | None = None
    ) -> None:
        object.__setattr__(self, "_values", values)  # the Emitter's summary: stored at run_end
        object.__setattr__(self, "_explicit", set())
        object.__setattr__(self, "_stats", {})
        # Called before a value is set or deleted by hand (the Run's summary dict is also its
        # last values logged until then: traintape.wandb.rows).
        object.__setattr__(self, "_before_change", before_change or _nothing)

    def record(self, row: dict[str, Any], rules: MetricRules) -> None:
        """Takes one committed history row into the summary."""
        values, stats = self._values, self._stats
        for key, value in row.items():
            m = rules.rule(key) if key not in self._explicit else None
            ops = m.summary if m is not None else None
            if ops and "none" in ops:
                continue
            if not ops or ops == ["copy"] or not _is_number(value):
                values[key] = _stored(value)
                continue
            x = float(value)  # a tensor is read here: a device sync, only for these summaries
            s = stats.get(key)
            if s is None:
                s = stats[key] = {"first": value, "min": x, "max": x, "sum": 0.0, "n": 0}
            s["min"], s["max"] = min(s["min"], x), max(s["max"], x)
            s["sum"] += x
            s["n"] += 1
            best = GOALS[m.goal] if m is not None and m.goal else "min"
            out = {}
            for op in ops:
                if op in ("min", "max"):
                    out[op] = _same_type(value, s[op])
                elif op == "mean":
                    out[op] = s["sum"] / s["n"]
                elif op == "first":
                    out[op] = _stored(s["first"])
                elif op == "last":
                    out[op] = _stored(value)
                elif op == "best":
                    out[op] = _same_type(value, s[best])
            values[key] = out

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            msg = f"summary keys are str, got {key!r}"
            raise TypeError(msg)
        self._before_change()
        self._values[key] = _stored(value)
        self._explicit.add(key)
        self._stats.pop(key, None)

    __setattr__ = __setitem__

    def __getitem__(self, key: str) -> Any:
        return plain(self._values[key])

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            msg = f"the summary has no key {key!r}"
            raise AttributeError(msg) from None

    def __delitem__(self, key: str) -> None:
        self._before_change()
        del self._values[key]
        self._explicit.discard(key)
        self._stats.pop(key, None)

    __delattr__ = __delitem__

    def update(self, d: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key, value in {**(d or {}), **kwargs}.items():
            self[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._values else default

    def keys(self) -> list[str]:
        return list(self._values)

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self[k]) for k in self._values]

    def values(self) -> list[Any]:
        return [self[k] for k in self._values]

    def as_dict(self) -> dict[str, Any]:
        return {k: self[k] for k in self._values}

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return repr(self.as_dict())


def _nothing() -> None:
    pass


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, str, Histogram)):
        return False
    return hasattr(value, "__float__")


def _same_type(value: Any, x: float) -> Any:
    """min/max keep ints as ints, as W&B's JSON does."""
    return int(x) if isinstance(value, int) and x.is_integer() else x


def _stored(value: Any) -> Any:
    """What the summary keeps: a tensor as it is (read by `plain` at finish, not now), W&B's
    JSON of a histogram, plain values otherwise."""
    if isinstance(value, Histogram):
        return value.to_json()
    if callable(getattr(value, "detach", None)):
        return value.detach()
    return plain(value)
