"""Retention deletions recorded while the collector was away are carried out once it is back:
during the run, at `traintape replay` of the spool, and at a resumed run's first save. A file is
unlinked only after the collector has stored its deletion, and only when it still holds the
content that was doomed.

Every test runs a real collector process (stopped and restarted, or started late), real torch
files and the store read back through DuckDB.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, CollectorProcess, env_without_traintape, wait_for
from traintape import CheckpointPolicy, emitter
from traintape.checkpoint import list_checkpoints
from traintape.cli import main as cli_main
from traintape.paths import spool_dir

pytestmark = pytest.mark.slow

# Four saves with keep_last=2 while no collector answers, then the process ends.
_AWAY_SCRIPT = """
import sys
from traintape import CheckpointPolicy, emitter
store, run_id = sys.argv[1], sys.argv[2]
emitter.init("away", store=store, run_id=run_id, checkpoint=CheckpointPolicy(keep_last=2),
             spool_after=0.2)
for step in range(4):
    emitter.save_checkpoint({"step": step}, step=step).result(timeout=60)
report = emitter.finish(timeout=float(sys.argv[3]))
assert report.spooled > 0, report
"""


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _run_away(store: Path, run_id: str, finish_timeout: float) -> None:
    subprocess.run(
        [sys.executable, "-c", _AWAY_SCRIPT, str(store), run_id, str(finish_timeout)],
        env=env_without_traintape(),
        cwd=REPO,
        check=True,
        timeout=300,
    )


def test_deletions_wait_through_an_outage_mid_run(store: Path, collector: CollectorProcess) -> None:
    """Collector stopped mid-run past the spool delay, then restarted: the two doomed files go
    while the run goes on, and the store records both deletions."""
    run = emitter.init(
        "ckpt", store=store, checkpoint=CheckpointPolicy(keep_last=2), spool_after=0.2
    )
    folder = store.resolve() / "checkpoints" / run.run_id
    for step in range(2):
        emitter.save_checkpoint({"step": step}, step=step).result(timeout=30)
    collector.stop()
    for step in range(2, 4):
        emitter.save_checkpoint({"step": step}, step=step).result(timeout=30)
    spool = spool_dir(store.resolve())
    _until(lambda: any(spool.glob("*.spool")), "the deletions to be spooled")
    assert _files(folder) == [f"step-{s:08d}.pt" for s in range(4)]
    collector.start()
    _until(lambda: len(_files(folder)) == 2, "the deletions after the collector came back")
    assert _files(folder) == ["step-00000002.pt", "step-00000003.pt"]
    emitter.finish(timeout=30)
    wait_for(store, "SELECT count(*) FROM checkpoints WHERE action = 'deleted'", 2)
    assert [r.step for r in list_checkpoints(store, run.run_id)] == [2, 3]


def test_replay_carries_out_the_deletions_of_an_ended_process(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No collector until the process has ended: `traintape replay` delivers the spool, then
    removes the two files whose deletion the collector has now stored; the newest two stay."""
    run_id = "away-replay"
    _run_away(store, run_id, finish_timeout=1.0)
    folder = store.resolve() / "checkpoints" / run_id
    assert _files(folder) == [f"step-{s:08d}.pt" for s in range(4)]
    collector = CollectorProcess(store).start()
    try:
        assert cli_main(["replay", "--store", str(store)]) == 0
        assert _files(folder) == ["step-00000002.pt", "step-00000003.pt"]
        assert "2 checkpoint files deleted" in capsys.readouterr().err
        wait_for(store, "SELECT count(*) FROM checkpoints WHERE action = 'deleted'", 2)
        assert [r.step for r in list_checkpoints(store, run_id)] == [2, 3]
    finally:
        collector.close()


def test_replay_leaves_a_file_whose_content_changed(store: Path) -> None:
    """A doomed name that holds other bytes by the time of the replay is not the file retention
    doomed: replay leaves it."""
    run_id = "away-changed"
    _run_away(store, run_id, finish_timeout=1.0)
    folder = store.resolve() / "checkpoints" / run_id
    (folder / "step-00000000.pt").write_bytes(b"another content under the same name")
    collector = CollectorProcess(store).start()
    try:
        assert cli_main(["replay", "--store", str(store)]) == 0
        assert _files(folder) == ["step-00000000.pt", "step-00000002.pt", "step-00000003.pt"]
    finally:
        collector.close()


def test_a_resumed_run_carries_out_the_deletions_its_first_attempt_recorded(store: Path) -> None:
    """The first attempt ends with two deletions unacknowledged; the resumed run (same run id,
    a policy that would keep everything) records them at its first save, then removes them; the
    first attempt's spool, replayed later, changes nothing on disk."""
    run_id = "away-resumed"
    _run_away(store, run_id, finish_timeout=1.0)
    folder = store.resolve() / "checkpoints" / run_id
    collector = CollectorProcess(store).start()
    try:
        emitter.init("away", store=store, run_id=run_id, checkpoint=CheckpointPolicy())
        emitter.save_checkpoint({"step": 4}, step=4).result(timeout=30)
        emitter.finish(timeout=30)
        assert _files(folder) == [f"step-{s:08d}.pt" for s in (2, 3, 4)]
        assert cli_main(["replay", "--store", str(store)]) == 0  # the first attempt's events
        assert _files(folder) == [f"step-{s:08d}.pt" for s in (2, 3, 4)]
        wait_for(  # both attempts' events: 5 saves, 2 deletions each
            store,
            f"SELECT count(*) FILTER (action = 'saved') || '/' || count(*) FILTER "
            f"(action = 'deleted') FROM checkpoints WHERE run_id = '{run_id}'",
            "5/4",
        )
        assert [r.step for r in list_checkpoints(store, run_id)] == [2, 3, 4]
    finally:
        collector.close()
