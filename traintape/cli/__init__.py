"""The `traintape` command: `main` wires one module per group of subcommands (`collector`:
serve, sync, replay, status; `read`: query, runs, show, ...), all printing through `output`."""

from traintape.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
