"""Journal records -> Arrow tables: the columnar conversion at the heart of the materializer.

Whole batches are converted at once: keys and values of all metric events are flattened with
C-level iterators, per-event columns (seq, ts, step) are expanded with one `take`, so the Python
work per metric value is a few list operations, not a loop iteration.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa

from traintape.errors import StoreError
from traintape.schemas import tables
from traintape.schemas.events import KIND_NAMES, METRICS, PARAMS, SYSTEM
from traintape.schemas.values import to_float, to_json
from traintape.schemas.wire import BatchBody, BatchHeader


class _Columns:
    """Per-event identity columns plus per-row payload columns of one table of one run."""

    def __init__(self) -> None:
        self.rank: list[int] = []
        self.source: list[str] = []
        self.seq: list[int] = []
        self.ts: list[int] = []
        self.step: list[int | None] = []
        self.counts: list[int] = []  # rows per event
        self.payload: dict[str, list[Any]] = defaultdict(list)

    def add_events(
        self, h: BatchHeader, seqs: list[int], ts: list[int], steps: list[Any], counts: list[int]
    ) -> None:
        self.rank.extend([h.rank] * len(seqs))
        self.source.extend([h.source] * len(seqs))
        self.seq.extend(seqs)
        self.ts.extend(ts)
        self.step.extend(steps)
        self.counts.extend(counts)

    def __bool__(self) -> bool:
        return bool(self.seq)

    def mark(self) -> tuple[int, dict[str, int]]:
        return len(self.seq), {k: len(v) for k, v in self.payload.items()}

    def truncate(self, mark: tuple[int, dict[str, int]]) -> None:
        """Back to `mark`: what a failed `add` appended is gone."""
        n, payload = mark
        for col in (self.rank, self.source, self.seq, self.ts, self.step, self.counts):
            del col[n:]
        for key, col in self.payload.items():
            del col[payload.get(key, 0) :]

    def to_table(self, run_id: str, schema: pa.Schema) -> pa.Table:
        index = np.repeat(np.arange(len(self.seq)), self.counts)
        rows = len(index)
        cols: dict[str, pa.Array] = {
            "run_id": pa.repeat(pa.scalar(run_id, pa.string()), rows),
            "rank": pa.array(self.rank, pa.int32()).take(index),
            "source": pa.array(self.source, pa.string()).take(index),
            "seq": pa.array(self.seq, pa.int64()).take(index),
            "ts": tables.ts_from_ns(pa.array(self.ts, pa.int64()).take(index)),
            "step": pa.array(self.step, pa.int64()).take(index),
        }
        for field in schema:
            if field.name not in cols:
                cols[field.name] = _payload_array(self.payload[field.name], field.type)
        return pa.table([cols[f.name] for f in schema], schema=schema)


def _payload_array(values: list[Any], typ: pa.DataType) -> pa.Array:
    if typ == pa.float64():
        try:
            return pa.array(np.fromiter(values, np.float64, len(values)))
        except (OverflowError, TypeError, ValueError):
            return pa.array([None if v is None else to_float(v) for v in values], pa.float64())
    return pa.array(values, typ)


class BuildError(StoreError):
    """One table of one run could not be converted to Arrow (`table`, `run_id`, `cause`)."""

    def __init__(self, table: str, run_id: str, cause: BaseException) -> None:
        super().__init__(f"{table} of run {run_id}: {type(cause).__name__}: {cause}")
        self.table = table
        self.run_id = run_id
        self.cause = cause


class TableBuilder:
    """Accumulates decoded batches; `build()` returns {(table, run_id): pa.Table}."""

    def __init__(self) -> None:
        self._cols: dict[tuple[str, str], _Columns] = defaultdict(_Columns)

    def add(self, h: BatchHeader, body: BatchBody) -> None:
        """Adds a batch whole, or (raising) nothing of it: a record that fails to convert is
        set aside by the caller, and the rest of the chunk is not touched."""
        touched = [(t, h.run_id) for t in tables.TABLES]
        marks = {key: self._cols[key].mark() for key in touched if key in self._cols}
        try:
            self._add(h, body)
        except BaseException:
            for key in touched:
                if key in marks:
                    self._cols[key].truncate(marks[key])
                else:
                    self._cols.pop(key, None)
            raise

    def _add(self, h: BatchHeader, body: BatchBody) -> None:
        kinds = body.kinds
        seqs = list(range(h.seq0, h.seq0 + h.n))
        if all(k == METRICS for k in kinds):
            self._add_metrics(h, seqs, body.ts, body.steps, body.bodies)
            return
        m = [i for i, k in enumerate(kinds) if k == METRICS]
        if m:
            self._add_metrics(
                h,
                [seqs[i] for i in m],
                [body.ts[i] for i in m],
                [body.steps[i] for i in m],
                [body.bodies[i] for i in m],
            )
        for i, kind in enumerate(kinds):
            if kind != METRICS:
                self._add_other(h, kind, seqs[i], body.ts[i], body.steps[i], body.bodies[i])

    def _add_metrics(
        self,
        h: BatchHeader,
        seqs: list[int],
        ts: list[int],
        steps: list[Any],
        bodies: list[dict[str, Any]],
    ) -> None:
        cols = self._cols["metrics", h.run_id]
        cols.add_events(h, seqs, ts, steps, list(map(len, bodies)))
        cols.payload["key"].extend(chain.from_iterable(bodies))
        cols.payload["value"].extend(chain.from_iterable(map(dict.values, bodies)))

    def _add_other(
        self, h: BatchHeader, kind: int, seq: int, ts: int, step: Any, body: dict[str, Any]
    ) -> None:
        events = self._cols["events", h.run_id]
        events.add_events(h, [seq], [ts], [step], [1])
        events.payload["kind"].append(KIND_NAMES[kind])
        events.payload["body"].append(to_json(body))
        if kind == PARAMS:
            params = self._cols["params", h.run_id]
            params.add_events(h, [seq], [ts], [step], [len(body)])
            for key, value in body.items():
                params.payload["key"].append(str(key))
                params.payload["value"].append(to_json(value))
                number = type(value) in (int, float)
                params.payload["value_num"].append(to_float(value) if number else None)
        elif kind == SYSTEM:
            values = body.get("values") or {}
            system = self._cols["system", h.run_id]
            system.add_events(h, [seq], [ts], [step], [len(values)])
            for key, value in values.items():
                system.payload["host"].append(body.get("host"))
                system.payload["device"].append(body.get("device"))
                system.payload["key"].append(str(key))
                system.payload["value"].append(value if type(value) in (int, float) else None)

    def build(self) -> dict[tuple[str, str], pa.Table]:
        """{(table, run_id): table}; BuildError naming the table and run that failed."""
        built = {}
        for (table, run_id), cols in self._cols.items():
            if cols:
                try:
                    built[table, run_id] = cols.to_table(run_id, tables.TABLES[table])
                except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
                    raise BuildError(table, run_id, exc) from exc
        return built

    def __bool__(self) -> bool:
        return any(self._cols.values())
