"""Running a framework's 2-rank job (a script of tests/workers/) under torchrun, and reading back
what its run stored."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO, env_without_traintape, query, torchrun_argv, wait_for


def run_job(
    script: str, store: Path, root: Path, *args: object, torchrun: bool = True
) -> subprocess.CompletedProcess[str]:
    """`tests/workers/<script>` on 2 ranks (gloo, one torch thread each) into `store`: under
    torchrun, or (`torchrun=False`) started as one process that launches its ranks itself."""
    worker = REPO / "tests" / "workers" / script
    tail = ("--store", store, "--root", root, *args)
    if torchrun:
        argv = torchrun_argv(worker, *tail)
    else:
        argv = [sys.executable, str(worker), *map(str, tail)]
    env = {**env_without_traintape(), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        argv, cwd=root.parent, env=env, capture_output=True, text=True, timeout=300
    )


def the_run(store: Path, status: str) -> str:
    """The one run in `store`, once it has ended with `status` (its id)."""
    (run_id,) = {r[0] for r in query(store, "SELECT run_id FROM events WHERE kind = 'run_start'")}
    wait_for(store, f"SELECT status FROM runs WHERE run_id = '{run_id}'", status)
    return run_id


def rank_ends(store: Path, run_id: str) -> dict[int, str]:
    """Each rank's status in its run_end event."""
    sql = (
        "SELECT rank, json_extract_string(body, '$.status') FROM events "
        "WHERE run_id = ? AND kind = 'run_end'"
    )
    return dict(query(store, sql, run_id))


def steps_of(store: Path, run_id: str, key: str) -> set[tuple[int, int]]:
    """(rank, step) of every value of `key`."""
    sql = "SELECT rank, step FROM metrics WHERE run_id = ? AND key = ?"
    return {(r, s) for r, s in query(store, sql, run_id, key)}


def params_of(store: Path, run_id: str) -> dict[str, Any]:
    return dict(query(store, "SELECT key, value FROM params WHERE run_id = ?", run_id))


def media_of(store: Path, run_id: str) -> list[tuple[Any, ...]]:
    """(rank, step, name, kind, width, height, caption, path) of the run's media, in that
    order (the `media` view)."""
    return query(
        store,
        "SELECT rank, step, name, kind, width, height, caption, path FROM media "
        "WHERE run_id = ? ORDER BY rank, step, name",
        run_id,
    )


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def worker_output(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stdout + proc.stderr)[-4000:]


def files_in(folder: str | os.PathLike[str]) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())
