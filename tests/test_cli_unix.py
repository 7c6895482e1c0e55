"""The CLI behaves like a Unix tool: plain line ends in CSV, quiet in a closed pipe, a version,
help that shows every default, and tables that stay aligned with wide characters."""

from __future__ import annotations

import argparse
import subprocess
import sys
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
