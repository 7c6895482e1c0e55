"""Shared fixtures: a real collector process on a temporary store, and ways to wait on the store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from traintape import emitter
from traintape.paths import default_address

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "workers" / "log_steps.py"
"""A training-process stand-in logging deterministic values (see its docstring)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for torchrun's rendezvous, an mlflow server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_argv(script: Path, *args: object, nproc: int = 2) -> list[str]:
    """`torchrun --standalone` of `script` with `nproc` ranks on a free port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(free_port()),
        str(script),
        *map(str, args),
    ]


def worker_argv(store: Path, *args: object) -> list[str]:
    """The command line of a `log_steps.py` worker on `store`, e.g. ("--steps", 500)."""
    return [sys.executable, str(WORKER), "--store", str(store), *map(str, args)]


def start_ranks(
    store: Path, run_id: str, *args: object, world_size: int = 2
) -> list[subprocess.Popen[bytes]]:
    """`world_size` workers started as the ranks of one job (RANK, WORLD_SIZE, one run id)."""
    return [
        subprocess.Popen(
            worker_argv(store, *args),
            env={
                **os.environ,
                "RANK": str(rank),
                "WORLD_SIZE": str(world_size),
                "TRAINTAPE_RUN_ID": run_id,
            },
            cwd=REPO,
        )
        for rank in range(world_size)
    ]


class CollectorProcess:
    """A `traintape serve` subprocess on `store`; stop() is SIGTERM, kill() is SIGKILL."""

    def __init__(self, store: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.store = store
        self.extra = extra
        self.env = env  # the whole environment of the process; None: this one's
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"{store.name}-collector.log"

    @property
    def address(self) -> str:
        return default_address(self.store)

    def start(self, wait: bool = True) -> CollectorProcess:
        self.store.mkdir(parents=True, exist_ok=True)
        status = self.store / "state" / "collector.json"
        before = status.stat().st_mtime_ns if status.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "traintape.collector",
                    "serve",
                    "--store",
                    str(self.store),
                    "--materialize-interval",
                    "0.2",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.store.parent,  # whatever a backend writes to its cwd stays out of the repo
                env=self.env,
            )
        if wait:
            deadline = time.monotonic() + 30
            while not (status.exists() and status.stat().st_mtime_ns != before):
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"collector exited {self.proc.returncode}: {self.log.read_text()}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"collector did not start: {self.log.read_text()}")
                time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def kill_all(self) -> None:
        """SIGKILL of the collector and its child processes at once (a killed process group)."""
        import psutil

        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children(recursive=True)
        for proc in [psutil.Process(self.proc.pid), *children]:
            proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        psutil.wait_procs(children, timeout=10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


PROCESS_FIXTURES = frozenset(("collector", "mlflow_server"))
"""Fixtures that start a process: a test using one (directly or through another fixture) is
`slow`, like every test marked so by hand because it starts or kills a process itself."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`pytest -m "not slow"` (`make test-fast`) is the quick loop: no test that starts a process."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def collector(store: Path) -> Iterator[CollectorProcess]:
    proc = CollectorProcess(store).start()
    yield proc
    proc.close()


@pytest.fixture(autouse=True)
def _fresh_emitter_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No run leaks from one test to the next, no test sees the developer's variables, and
    nothing a test or a backend writes to the working directory (MLflow's ./mlruns) lands in
    the repository."""
    monkeypatch.chdir(tmp_path)
    for var in (
        "TRAINTAPE_STORE",
        "TRAINTAPE_ADDRESS",
        "TRAINTAPE_RUN_ID",
        "TRAINTAPE_SPOOL_DIR",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "TORCHELASTIC_RUN_ID",
    ):
        monkeypatch.delenv(var, raising=False)
    yield
    run = emitter.current()
    if run is not None:
        run.finish(timeout=1)
    emitter._reset_for_tests()


def query(store: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import traintape

    con = traintape.connect(store)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def wait_for(store: Path, sql: str, expected: Any, timeout: float = 30.0) -> Any:
    """Polls a one-value query until it equals `expected` (the materializer runs on a timer)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = query(store, sql)[0][0]
        except Exception:  # the store may not exist yet
            value = None
        if value == expected:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{sql!r} gave {value!r}, expected {expected!r} within {timeout}s")


def env_without_traintape() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRAINTAPE_")}
