"""`make demo`, the README's first command, works from a fresh store and says what to do next."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_demo_trains_two_ranks_and_summarizes_them(tmp_path: Path) -> None:
    """The demo starts a collector, trains 2 ranks under torchrun, stops the collector and
    prints the run's summary from SQL, with no warning and no meaningless 'best' column."""
    store = tmp_path / "store"
    out = subprocess.run(
        [sys.executable, "examples/run_demo.py", "--store", str(store), "--steps", "20"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "completed, 2 ranks" in out.stdout
    assert "min_value" in out.stdout and " best" not in out.stdout
    assert f"traintape runs --store {store}" in out.stdout
    assert f"traintape ui --store {store}" in out.stdout and "/#/run/" in out.stdout
    assert "Warning" not in out.stderr and "Traceback" not in out.stderr, out.stderr
