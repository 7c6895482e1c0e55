"""Paths in DuckDB's file globs: a store folder that matches itself only.

DuckDB expands `*`, `?` and `[...]` in every part of a path given to read_parquet, even a file's
own name: a store at `runs[1]` would read `runs1` (a sibling store) and a store under `x*` every
folder starting with `x`. Each of those characters is put in a class of its own (`[[]`, `[*]`,
`[?]`), which DuckDB matches literally; `]` and `{` are literal already. A backslash cannot be
matched by any DuckDB glob (it is taken for an escape), so a store path with one is refused.
"""

from __future__ import annotations

import os
import re

from traintape.errors import UnreadablePathError

_SPECIAL = re.compile(r"[\[*?]")


def literal(path: str | os.PathLike[str]) -> str:
    """`path` as a DuckDB glob that matches exactly that path."""
    text = os.fspath(path)
    if "\\" in text:
        msg = (
            f"DuckDB cannot read a store whose path holds a backslash: {text}; "
            "rename the folder (or use a symlink without one)"
        )
        raise UnreadablePathError(msg)
    return _SPECIAL.sub(lambda m: f"[{m.group()}]", text)


def sql_string(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
