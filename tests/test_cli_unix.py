"""The CLI behaves like a Unix tool: plain line ends in CSV, quiet in a closed pipe, a version,
help that shows every default, and tables that stay aligned with wide characters."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pytest

import traintape
from tests.conftest import REPO
from traintape.cli import build_parser, main
from traintape.cli.output import display_width, print_rows
from traintape.collector.materializer import ensure_empty_tables


@pytest.fixture
def empty_store(tmp_path: Path) -> Path:
    ensure_empty_tables(tmp_path)
    return tmp_path


def test_csv_lines_end_with_a_plain_newline(
    empty_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--format csv` ends lines with \\n, so `$(... | tail -1)` carries no \\r."""
    assert (
        main(["query", "SELECT 1 AS a, 'x' AS b", "--store", str(empty_store), "--format", "csv"])
        == 0
    )
    out = capsys.readouterr().out
    assert out == "a,b\n1,x\n"


@pytest.mark.slow
def test_a_closed_pipe_ends_the_command_quietly(empty_store: Path) -> None:
    """`traintape query ... | head -1` prints one line and no BrokenPipeError traceback."""
    cmd = (
        f"{sys.executable} -m traintape query 'SELECT range FROM range(300000)' "
        f"--store {empty_store} | head -1"
    )
    out = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, capture_output=True, text=True
    )
    assert out.stdout.splitlines()[0].strip() == "range"
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    assert out.returncode in (0, 141)  # 141: as a process that SIGPIPE ended


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`traintape --version` prints the package's version."""
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"traintape {traintape.__version__}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_says_what_it_does_and_its_default() -> None:
    """Each subcommand's options have help text, and an option with a default shows it."""
    missing = []
    for name, sub in _subparsers(build_parser()).items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            flag = action.option_strings[-1]
            if not action.help:
                missing.append(f"{name} {flag}: no help")
            shown = "default" in (action.help or "") or f"(default: {action.default})" in text
            if action.default not in (None, False) and not shown:
                missing.append(f"{name} {flag}: default {action.default!r} not shown")
    assert missing == []


def test_tables_stay_aligned_with_wide_characters(capsys: pytest.CaptureFixture[str]) -> None:
    """A run name in CJK takes two columns per character; the next column still lines up."""
    print_rows(("name", "status"), [("学习率实验", "running"), ("plain", "completed")])
    lines = capsys.readouterr().out.splitlines()
    starts = {
        display_width(line[: line.index(word)])
        for line, word in zip([lines[0], lines[2], lines[3]], ["status", "running", "completed"])
    }
    assert len(starts) == 1, lines


def test_status_prints_dates_and_sizes_not_raw_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` shows when the collector last wrote it as a UTC date with its age, sizes with
    units, and leaves out fields that are empty (no error, nothing withheld)."""
    import json

    from traintape.layout import StoreLayout

    layout = StoreLayout(tmp_path)
    layout.collector_status.parent.mkdir(parents=True, exist_ok=True)
    written = {
        "pid": 0,
        "store": str(tmp_path),
        "binds": ["ipc:///x.sock"],
        "updated": time.time() - 5,
        "journal_bytes": 2_500_000,
        "materializer_error": None,
        "acks_withheld": None,
        "sinks": {},
    }
    layout.collector_status.write_text(json.dumps(written))
    assert main(["status", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and str(int(written["updated"])) not in out
    assert " UTC (" in out and "ago)" in out and "2.5 MB" in out and "ipc:///x.sock" in out
    assert "materializer_error" not in out


@pytest.mark.slow
def test_replay_without_a_collector_fails_at_once_with_advice(tmp_path: Path) -> None:
    """`traintape replay` with spool files but no collector says so at once (no 30 s wait),
    keeps the spool, and names the command that starts a collector for this store."""
    from traintape.emitter.spool import spool_files
    from traintape.paths import spool_dir

    store = tmp_path / "store"
    script = (
        "from traintape import emitter\n"
        f"emitter.init(project='p', store={str(store)!r}, spool_after=0.05, resend_after=0.05)\n"
        "emitter.log({'x': 1.0}, step=0)\n"
        "emitter.finish(timeout=0.5, wait_visible=False)\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, capture_output=True)
    assert spool_files(spool_dir(store)), "the emitter spooled nothing"
    for stale in (False, True):
        if stale:  # a collector that died leaves its socket file: nothing accepts on it
            import socket

            from traintape.paths import default_address

            path = default_address(store).removeprefix("ipc://")
            left = socket.socket(socket.AF_UNIX)
            left.bind(path)
            left.close()
        out = subprocess.run(
            [sys.executable, "-m", "traintape", "replay", "--store", str(store), "--timeout", "60"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 1 and f"traintape serve --store {store}" in out.stderr, out.stderr
        # Said from a look at the address, not after the acknowledgement deadline ran out:
        reason = "nothing listens on" if stale else "no collector socket at"
        assert reason in out.stderr and "no acknowledgement" not in out.stderr, out.stderr
        assert spool_files(spool_dir(store)), "the spool went"


def test_query_is_asked_again_when_a_file_it_listed_vanished(
    empty_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`traintape query` runs the statement again when DuckDB could not open a file it had
    listed (a compaction replaced it meanwhile) and prints the answer, instead of failing."""
    import duckdb

    from traintape.cli import read as cli_read

    real_connect = cli_read._connect
    failures = []

    class Vanishing:
        """A connection whose first statement fails as a read of a vanished Parquet file does."""

        def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
            self.con = con

        def execute(self, sql: str, params: list[object] | None = None) -> object:
            if not failures:
                failures.append(sql)
                msg = 'IO Error: Cannot open file "tables/metrics/r/part-1-2.parquet"'
                raise duckdb.IOException(msg)
            return self.con.execute(sql, params or [])

    monkeypatch.setattr(cli_read, "_connect", lambda args: Vanishing(real_connect(args)))
    argv = ["query", "SELECT 2 AS n", "--store", str(empty_store), "--format", "csv"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "n\n2\n"
    assert failures == ["SELECT 2 AS n"]
