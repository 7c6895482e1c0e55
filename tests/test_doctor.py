"""`traintape doctor` says in one screen whether logging here reaches a store, and what to run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, CollectorProcess
from traintape.cli import main


def _doctor(store: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict]]:
    code = main(["doctor", "--store", str(store), "--format", "json"])
    return code, {c["name"]: c for c in json.loads(capsys.readouterr().out)}


@pytest.mark.slow
def test_doctor_with_a_collector_then_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a collector serving the store every check passes; once it stopped, the collector
    and address checks fail with `traintape serve --store ...`, and a run's spool is reported
    with `traintape replay`."""
    store = tmp_path / "store"
    collector = CollectorProcess(store, "--system-interval", "0").start()
    try:
        code, checks = _doctor(store, capsys)
        assert code == 0, checks
        assert {c["state"] for c in checks.values()} == {"ok"}, checks
        assert str(collector.proc.pid) in checks["collector"]["found"]
    finally:
        collector.stop()
    script = (
        "from traintape import emitter\n"
        f"emitter.init(project='p', store={str(store)!r}, spool_after=0.05, resend_after=0.05)\n"
        "emitter.log({'x': 1.0}, step=0)\n"
        "emitter.finish(timeout=0.5, wait_visible=False)\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, capture_output=True)
    code, checks = _doctor(store, capsys)
    assert code == 1
    assert checks["store"]["state"] == "ok"
    serve = f"traintape serve --store {store}"
    assert checks["collector"]["state"] == "FAIL" and serve in checks["collector"]["fix"]
    assert (
        checks["emitter address"]["state"] == "FAIL" and serve in checks["emitter address"]["fix"]
    )
    found = checks["spool"]["found"]  # run_start, the value, run_end: 3 events
    assert checks["spool"]["state"] == "warn" and "0 held by running emitters, 3 events" in found
    assert checks["spool"]["fix"] == f"traintape replay --store {store}"


def test_doctor_names_where_the_store_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --store or $TRAINTAPE_STORE, doctor says the store is ./traintape-store of this
    folder: the usual reason a trainer and a collector started in two folders never meet."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRAINTAPE_STORE", raising=False)
    monkeypatch.delenv("TRAINTAPE_ADDRESS", raising=False)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"./traintape-store in {tmp_path}" in out
    assert f"fix: traintape serve --store {tmp_path / 'traintape-store'}" in out
