"""The fast loop (`make test-fast`, `pytest -m "not slow"`) keeps its promise: a test not marked
`slow` that starts or signals a process fails, naming what it started (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import _GUARD, PROCESS_FIXTURES


def test_a_test_not_marked_slow_cannot_start_a_process() -> None:
    """A subprocess or a fork in a test not marked slow is refused, and the refusal names it;
    git (which emitter.init runs) is allowed."""
    try:
        with pytest.raises(RuntimeError, match=r"is not marked slow but started .* -c pass"):
            subprocess.run([sys.executable, "-c", "pass"], check=False)
        with pytest.raises(RuntimeError, match=r"is not marked slow but called os\.fork"):
            if os.fork() == 0:  # only if the guard let it through: the child leaves at once
                os._exit(0)
        assert len(_GUARD.started) == 2
    finally:
        _GUARD.started.clear()  # both were refused as they should be: this test passes
    assert subprocess.run(["git", "--version"], capture_output=True, check=False).returncode == 0


@pytest.mark.slow
def test_a_slow_test_may_start_a_process() -> None:
    """A test marked slow starts processes freely."""
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
    assert _GUARD.started == []


def test_a_test_using_a_collector_is_marked_slow(request: pytest.FixtureRequest) -> None:
    """Every collected test that uses a process-starting fixture carries the `slow` mark."""
    items = request.session.items
    assert items, "collected tests"
    for item in items:
        if PROCESS_FIXTURES & set(item.fixturenames):
            assert item.get_closest_marker("slow") is not None, item.nodeid
