"""Compacting a store offline: `python -m traintape.collector.compaction --store DIR` (or
`python -m traintape.collector.offline`). A running collector compacts its store by itself, so
this refuses while one holds the store's lock."""

from __future__ import annotations

import argparse
import sys

from traintape.collector.compaction import METHODS, Compactor, committed_position
from traintape.collector.storelock import take_store
from traintape.errors import CollectorError, ConfigError
from traintape.layout import StoreLayout, check_collector_id


def main(argv: list[str] | None = None) -> int:
    """`python -m traintape.collector.compaction --store DIR`: compacts a store offline."""
    from traintape.paths import resolve_store

    p = argparse.ArgumentParser(prog="python -m traintape.collector.compaction")
    p.add_argument("--store", default=None)
    p.add_argument("--collector-id", default=None, help="whose run folders (layout.py)")
    p.add_argument("--min-files", type=int, default=2)
    p.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="swap: exchange folders atomically; hide: rename file by file; auto: swap if "
        "this filesystem can (default)",
    )
    args = p.parse_args(argv)
    store = resolve_store(args.store)
    try:
        layout = StoreLayout(store, check_collector_id(args.collector_id))
        lock = take_store(layout)
    except CollectorError:
        print(f"a collector serves {store}; it compacts by itself", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    with lock:
        committed = committed_position(layout.home)
        compactor = Compactor(store, method=args.method, collector=layout.collector)
        compactor.recover(committed)
        merges = compactor.compact_all(committed, args.min_files)
    print(f"{merges} merges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
