"""`traintape artifacts RUN`, `traintape artifacts get RUN NAME -o DIR` and `traintape gc`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from traintape.cli.output import print_rows

_FORMAT = "output format"


def add_parsers(sub: Any) -> None:
    """Registers `artifacts` and `gc` on the CLI's subparsers."""
    p = sub.add_parser(
        "artifacts",
        help="a run's artifacts; `artifacts get RUN NAME -o DIR` fetches one, hash verified",
    )
    p.add_argument("words", nargs="+", metavar="RUN | get RUN NAME", help="what to list or get")
    p.add_argument(
        "--store",
        default=None,
        help="store folder, or s3://BUCKET/PREFIX to list (`get` needs the folder) "
        "(default: $TRAINTAPE_STORE)",
    )
    p.add_argument("-o", "--out", default=".", help="folder `get` writes the file into")
    p.add_argument("--rank", type=int, help="only this rank's artifacts")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help=_FORMAT)
    p.set_defaults(func=_cmd_artifacts)

    p = sub.add_parser("gc", help="remove stored artifact content no event refers to any more")
    p.add_argument("--store", default=None, help="store folder (default: $TRAINTAPE_STORE)")
    p.add_argument(
        "--min-age-hours",
        type=float,
        default=24.0,
        help="never remove content younger than this (its event may be on its way)",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be removed")
    p.add_argument("--ignore-spool", action="store_true", help="go on even if spooled batches wait")
    p.set_defaults(func=_cmd_gc)


def _cmd_artifacts(args: argparse.Namespace) -> int:
    from traintape.paths import local_store
    from traintape.read.artifacts import artifact_rows, fetch
    from traintape.read.history import resolve_run
    from traintape.read.query import store_of
    from traintape.read.store import connect

    words = args.words
    getting = words[0] == "get" and len(words) == 3
    if not getting and len(words) != 1:
        print("usage: traintape artifacts RUN | traintape artifacts get RUN NAME", file=sys.stderr)
        return 2
    if getting:  # the content is in the store's folder, never published with the tables
        local_store(
            args.store,
            "artifacts' content is not published to object storage (only the tables, which "
            "list them: `traintape artifacts RUN --store s3://...`); get it from the store "
            "folder: --store DIR",
        )
    con = connect(args.store)
    try:
        run_id = resolve_run(con, words[1] if getting else words[0])
        found = artifact_rows(con, run_id)
        store = store_of(con)
    finally:
        con.close()
    if args.rank is not None:
        found = [r for r in found if r["rank"] == args.rank]
    if getting:
        assert store is not None  # a traintape.connect() connection
        path = fetch(store, found, words[2], Path(args.out), args.rank)
        print(path)
        return 0
    columns = ["step", "rank", "name", "kind", "bytes", "sha256", "metadata", "ts"]
    if args.format == "table":
        print(f"run {run_id}: {len(found)} artifacts")
    out = [[_cell(r[c], c, args.format) for c in columns] for r in found]
    print_rows(columns, out, args.format)
    return 0


def _cell(value: Any, column: str, fmt: str) -> Any:
    if column == "sha256" and fmt == "table":
        return str(value)[:12]
    if column == "metadata" and fmt == "json":
        return json.loads(value) if value else {}
    return value


def _cmd_gc(args: argparse.Namespace) -> int:
    from traintape.paths import local_store
    from traintape.read.artifacts import gc
    from traintape.read.query import store_of
    from traintape.read.store import connect

    local_store(
        args.store,
        "gc removes artifact objects from the store folder (they are not published to object "
        "storage): run it with --store DIR",
    )
    con = connect(args.store)
    try:
        store = store_of(con)
        assert store is not None  # a traintape.connect() connection
        report = gc(
            con,
            store,
            args.min_age_hours * 3600.0,
            dry_run=args.dry_run,
            ignore_spool=args.ignore_spool,
        )
    finally:
        con.close()
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {len(report.removed)} objects ({report.freed_bytes} bytes); kept "
        f"{report.referenced} referenced, {report.fresh} younger than "
        f"{args.min_age_hours:g} h; {report.leftovers} leftover copies {verb}"
    )
    return 0
