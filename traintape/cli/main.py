"""The `traintape` command. Each subcommand has --help; every one takes --store DIR."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from traintape import __version__
from traintape.cli.artifacts import add_parsers as _add_artifacts_parsers
from traintape.cli.collector import _cmd_replay, _cmd_serve, _cmd_status, _cmd_sync
from traintape.cli.doctor import _cmd_doctor
from traintape.cli.output import format_duration, print_rows
from traintape.cli.read import (
    _cmd_best,
    _cmd_checkpoints,
    _cmd_compare,
    _cmd_export,
    _cmd_importance,
    _cmd_plot,
    _cmd_query,
    _cmd_runs,
    _cmd_show,
    _cmd_tail,
)
from traintape.cli.ui import add_parser as _add_ui_parser
from traintape.schemas.events import RUN_STATES

RUN_STATUSES_SHOWN = RUN_STATES
"""What `runs.status` can say (see traintape.schemas.events.RUN_STATES)."""

__all__ = ["build_parser", "format_duration", "main", "print_rows"]


_FORMAT = "output: an aligned table for people, csv or json for programs"
_MODE = "min or max: which end of the metric is best"


class _Formatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text
            and default not in (None, False, argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser: help with defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default=None,
        help="store folder, or s3://BUCKET/PREFIX for tables published there (read commands) "
        "(default: $TRAINTAPE_STORE, else ./traintape-store)",
    )


def _collector_id_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--collector-id",
        default=None,
        metavar="ID",
        help="one of several collectors sharing the store, one per node (its journal, state "
        "and table folders are its own: docs/scale.md); default: $TRAINTAPE_COLLECTOR_ID, else "
        "the store's own collector",
    )


def _run_filter_args(p: argparse.ArgumentParser) -> None:
    """Which runs a listing covers: the same three filters for runs, best and importance."""
    p.add_argument("--project", help="only runs of this project")
    p.add_argument("--status", choices=RUN_STATUSES_SHOWN, help="only runs in this state")
    p.add_argument("--tag", help="only runs carrying this tag")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traintape", description="A flight recorder for ML training."
    )
    parser.add_argument("--version", action="version", version=f"traintape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("serve", help="run the collector (Ctrl-C or SIGTERM stops it cleanly)")
    _store_arg(p)
    _collector_id_arg(p)
    p.add_argument(
        "--tables",
        metavar="s3://BUCKET/PREFIX",
        help="also publish the Parquet tables there (read with --store s3://BUCKET/PREFIX; "
        "credentials: the AWS variables and files, AWS_ENDPOINT_URL; docs/scale.md)",
    )
    p.add_argument(
        "--bind",
        action="append",
        metavar="ADDR",
        help="ipc://PATH or tcp://HOST:PORT; repeatable (default: ipc:// socket in the store)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a tcp:// bind other hosts can reach (every interface, an address or name "
        "off loopback); by default only loopback",
    )
    p.add_argument(
        "--materialize-interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between Parquet flushes (default 0.5)",
    )
    p.add_argument(
        "--sink",
        action="append",
        metavar="TYPE[=VALUE]",
        help="feed a sink: tensorboard[=DIR], mlflow[=TRACKING_URI], wandb[=offline|online]; "
        "repeatable (options and YAML file: docs/serve.md)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file with sinks and their options (TRAINTAPE_SINK_<NAME>_<OPTION> overrides)",
    )
    p.add_argument(
        "--system-interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between CPU/RAM/GPU samples of this host (default 1; 0 turns them off)",
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="CURVE on every tcp:// bind, loopback too (tcp:// binds off this host always use "
        "it); the public key emitters need is printed and kept in <store>/keys/",
    )
    p.add_argument(
        "--rotate-key",
        action="store_true",
        help="retire the CURVE key to <store>/keys/retired/ and make a new one (emitters with the "
        "old key spool; `traintape replay` with the new key delivers their events)",
    )
    p.add_argument(
        "--group",
        metavar="NAME",
        help="share the store read-only with this group (0750/0640, setgid folders; the ipc "
        "socket 0660); by default it is private to you (0700/0600)",
    )
    p.add_argument(
        "--compact-settle",
        type=float,
        default=None,
        metavar="S",
        help="seconds after a run ends (and after start) before its Parquet files are merged "
        "(default 30)",
    )
    p.add_argument(
        "--min-free-mb",
        type=float,
        default=None,
        metavar="MB",
        help="free space kept on the store's disk: below it nothing is journaled or acknowledged "
        "until space returns (default 64)",
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=None,
        metavar="MB",
        help="largest message (one batch) accepted; a larger one is refused and its connection "
        "dropped before it is buffered (default 16, as emitters split their batches)",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("query", help="run SQL over the store's views (docs/querying.md)")
    p.add_argument("sql", help='e.g. "SELECT key, max(value) FROM metrics GROUP BY key"')
    _store_arg(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help=_FORMAT)
    p.set_defaults(func=_cmd_query)

    p = sub.add_parser("runs", help="one line per run: status, duration, steps, last metrics")
    _store_arg(p)
    _run_filter_args(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help=_FORMAT)
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser("replay", help="deliver spooled batches to the collector, exactly once")
    _store_arg(p)
    _collector_id_arg(p)
    p.add_argument("--spool", help="spool folder (default: the collector's, docs/scale.md)")
    p.add_argument(
        "--address", help="collector address (default: $TRAINTAPE_ADDRESS or the store's)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acks")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser(
        "sync",
        help="replay a stored run into TensorBoard, MLflow or W&B (running it twice is safe)",
    )
    p.add_argument("run", help="run id, unique id prefix, or run name")
    p.add_argument(
        "--to",
        required=True,
        metavar="SINK",
        help="tensorboard[=DIR], mlflow[=TRACKING_URI] or wandb[=offline|online]",
    )
    _store_arg(p)
    p.add_argument("--config", metavar="FILE", help="YAML file whose options for that sink apply")
    p.add_argument(
        "--ranks",
        choices=("rank0", "all", "mean", "min", "max"),
        help="rank policy (default rank0)",
    )
    p.set_defaults(func=_cmd_sync)

    p = sub.add_parser("status", help="the collector's counters and lag")
    _store_arg(p)
    _collector_id_arg(p)
    p.add_argument("--format", choices=("table", "json"), default="table", help=_FORMAT)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "doctor",
        help="would logging here reach a store? the store, collector, address, sinks, disk, spool",
    )
    _store_arg(p)
    p.add_argument(
        "--address", help="collector address to check (default: $TRAINTAPE_ADDRESS or the store's)"
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help=_FORMAT)
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("show", help="one run: config, params, environment, metrics, checkpoints")
    p.add_argument("run", help="run id, unique id prefix, or run name")
    _store_arg(p)
    p.add_argument("--format", choices=("table", "json"), default="table", help=_FORMAT)
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("compare", help="runs side by side: params that differ, metrics")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, id prefixes or names")
    _store_arg(p)
    p.add_argument("--all-params", action="store_true", help="list equal params too")
    p.add_argument("--format", choices=("table", "json"), default="table", help=_FORMAT)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("best", help="runs ranked by the best value of a metric")
    _store_arg(p)
    p.add_argument("--metric", required=True, help="metric key, e.g. val_loss (see `runs`)")
    p.add_argument("--mode", choices=("min", "max"), default="min", help=_MODE)
    _run_filter_args(p)
    p.add_argument("--top", type=int, default=10, help="rows to list")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help=_FORMAT)
    p.set_defaults(func=_cmd_best)

    p = sub.add_parser("importance", help="how each numeric param correlates with a metric's best")
    _store_arg(p)
    p.add_argument("--metric", required=True, help="metric key whose best value each run reached")
    p.add_argument("--mode", choices=("min", "max"), default="min", help=_MODE)
    _run_filter_args(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help=_FORMAT)
    p.set_defaults(func=_cmd_importance)

    p = sub.add_parser("plot", help="metric curves of runs as a PNG (matplotlib)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, id prefixes or names")
    _store_arg(p)
    p.add_argument("--metric", action="append", required=True, help="repeatable: one panel each")
    p.add_argument("--smooth", type=int, default=1, metavar="K", help="trailing mean over K points")
    p.add_argument("--per-rank", action="store_true", help="one line per rank, not the mean")
    p.add_argument("--size", default="1200x800", metavar="WxH", help="pixels")
    p.add_argument("--dpi", type=int, default=100, help="dots per inch of the PNG")
    p.add_argument("--title", help="figure title (default: none, or the smoothing when --smooth)")
    p.add_argument("-o", "--out", default="curves.png", help="PNG path")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("export", help="a run's rows as Parquet or CSV files, one per table")
    p.add_argument("run", help="run id, unique id prefix, or run name")
    _store_arg(p)
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="file format")
    p.add_argument(
        "--table",
        action="append",
        choices=("metrics", "params", "events", "checkpoints", "system"),
        help="repeatable (default: all)",
    )
    p.add_argument("-o", "--out", help="folder (default ./traintape-export-<run id>)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("tail", help="live view of a run's latest values; ends with the run")
    p.add_argument("run", nargs="?", help="run id, prefix or name (default: the newest run)")
    _store_arg(p)
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds per refresh")
    p.add_argument("--seconds", type=float, metavar="N", help="stop after N seconds")
    p.add_argument("--once", action="store_true", help="print one view and exit")
    p.set_defaults(func=_cmd_tail)

    p = sub.add_parser(
        "checkpoints", help="a run's live checkpoints: step, size, metrics, best/latest"
    )
    p.add_argument(
        "run", nargs="?", help="run id, prefix or name (default: the run that saved last)"
    )
    _store_arg(p)
    p.add_argument("--rank", type=int, help="only this rank's files (ranks='all' runs)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help=_FORMAT)
    p.set_defaults(func=_cmd_checkpoints)
    _add_ui_parser(sub)
    _add_artifacts_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from traintape.errors import TraintapeError

    try:
        return int(args.func(args) or 0)
    except TraintapeError as exc:  # every error traintape raises on purpose says what to do
        print(f"traintape {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `traintape query ... | head`: the reader left. Quiet, as Unix tools are: point stdout
        # at /dev/null so the interpreter's last flush does not raise again, and exit as a
        # process killed by SIGPIPE would (128 + 13).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
