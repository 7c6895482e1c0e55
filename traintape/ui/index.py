"""What each Parquet file of a run's metrics holds, kept by the dashboard's server between
requests: per file and metric, the ranks that logged it and its last step.

Files never change once in place (new rows come in new files, a compaction writes a merged
file under a new name and removes the parts), so each file is read once, when it first shows
up in the run's folder, and forgotten when it leaves it. A live poll (`after=`) then reads only
the files holding steps past the page's cursor, one or two, not every file of a long run, and
knows which running ranks log the metric at all (a rank that does holds the cursor back).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from traintape.globs import literal, sql_string
from traintape.layout import StoreLayout
from traintape.read.query import rows, store_of

__all__ = ["Lookup", "MetricIndex"]

FileKeys = dict[str, tuple[frozenset[int], int | None]]
"""key -> (ranks that logged it in the file, its last step there: None when it has none)"""


@dataclass
class Lookup:
    """One metric of one run: the ranks logging it, and a FROM clause with only the rows of
    the files past `after_step` (None: no such narrowing, read the run's folder)."""

    ranks: set[int]
    source: str | None


class MetricIndex:
    """Per run: its metrics files and what each holds (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, dict[str, FileKeys]] = {}

    def lookup(
        self, con: duckdb.DuckDBPyConnection, run_id: str, key: str, after_step: int | None
    ) -> Lookup:
        store = store_of(con)
        if store is None:  # not a store's connection: ask the view
            found = rows(
                con, "SELECT DISTINCT rank FROM metrics WHERE run_id = ? AND key = ?", [run_id, key]
            )
            return Lookup({int(r[0]) for r in found}, None)
        layout = StoreLayout(store)
        folder = layout.table("metrics")  # files are named `<run folder>/<file>` below
        files = self._update(con, layout, run_id)
        ranks: set[int] = set()
        newer = []
        for name, keys in files.items():
            if key in keys:
                ranks |= keys[key][0]
                last = keys[key][1]
                if after_step is not None and last is not None and last > after_step:
                    newer.append(name)
        if after_step is None:
            return Lookup(ranks, None)
        empty = layout.empty_table_file("metrics")
        paths = [f"{literal(empty.parent)}/{empty.name}"]  # never an empty list: the schema
        paths += [f"{literal(folder)}/{name}" for name in sorted(newer)]
        listed = ", ".join(sql_string(p) for p in paths)
        source = f"(SELECT * FROM read_parquet([{listed}]) WHERE run_id = {sql_string(run_id)})"
        return Lookup(ranks, source)

    def _update(
        self, con: duckdb.DuckDBPyConnection, layout: StoreLayout, run_id: str
    ) -> dict[str, FileKeys]:
        """The run's files now, as `<run folder>/<file>` (every collector's folder of the run:
        traintape.layout), each new one read once (key, ranks, last step)."""
        folder = layout.table("metrics")
        names: set[str] = set()
        for run_folder in layout.run_folders_of("metrics", run_id):
            try:
                listing = os.listdir(run_folder)
            except FileNotFoundError:
                continue
            names |= {f"{run_folder.name}/{n}" for n in listing if n.endswith(".parquet")}
        with self._lock:
            known = self._runs.setdefault(run_id, {})
            for gone in set(known) - names:
                del known[gone]
            new = sorted(names - set(known))
        if new:
            listed = ", ".join(sql_string(f"{literal(folder)}/{n}") for n in new)
            found = rows(
                con,
                f"""SELECT filename, key, list(DISTINCT rank), max(step)
                    FROM read_parquet([{listed}], filename = true) WHERE run_id = ?
                    GROUP BY filename, key""",
                [run_id],
            )
            read: dict[str, FileKeys] = {n: {} for n in new}
            for path, key, ranks, last in found:
                read.setdefault("/".join(Path(path).parts[-2:]), {})[key] = (frozenset(ranks), last)
            with self._lock:
                known.update(read)
        with self._lock:
            return {n: known[n] for n in names if n in known}
