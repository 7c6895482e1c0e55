"""Printing rows, durations and sizes the same way in every command."""

from __future__ import annotations

import csv
import json
import math
import sys
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def display_width(text: str) -> int:
    """Columns `text` takes in a terminal: East Asian wide and fullwidth characters take two,
    combining marks none (so a CJK run name keeps its table aligned)."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def pad(text: str, width: int) -> str:
    """`text` padded with spaces to `width` terminal columns."""
    return text + " " * (width - display_width(text))


def print_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table") -> None:
    out = sys.stdout
    if fmt == "csv":
        # Plain \n line ends (the csv module's default is \r\n): `... | tail -1` in a shell
        # must not carry a \r into the next command.
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "json":
        records = [dict(zip(columns, row)) for row in rows]
        json.dump(records, out, default=str, indent=1)
        out.write("\n")
    else:
        text = [[_format_value(v) for v in row] for row in rows]
        widths = [
            max([display_width(c), *(display_width(r[i]) for r in text)])
            for i, c in enumerate(columns)
        ]
        out.write("  ".join(pad(c, w) for c, w in zip(columns, widths)).rstrip() + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for row in text:
            out.write("  ".join(pad(v, w) for v, w in zip(row, widths)).rstrip() + "\n")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
