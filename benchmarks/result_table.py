"""The Markdown table the benchmarks print their results as (one copy for all)."""

from __future__ import annotations


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, so the table reads as text too."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
