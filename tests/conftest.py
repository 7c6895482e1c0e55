"""Shared fixtures: a real collector process on a temporary store, and ways to wait on the store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from traintape import emitter
from traintape.layout import StoreLayout
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

    def __init__(
        self,
        store: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        collector_id: str | None = None,
    ) -> None:
        """`collector_id`: one of several collectors on `store` (`serve --collector-id`)."""
        self.store = store
        self.collector_id = collector_id
        if collector_id is not None:
            extra = ("--collector-id", collector_id, *extra)
        self.extra = extra
        self.env = env  # the whole environment of the process; None: this one's
        self.proc: subprocess.Popen[bytes] | None = None
        suffix = f"-{collector_id}" if collector_id else ""
        self.log = store.parent / f"{store.name}-collector{suffix}.log"
        self._status_before = 0  # the status file's mtime before the last start

    @property
    def address(self) -> str:
        return default_address(self.store, self.collector_id)

    @property
    def status_file(self) -> Path:
        return StoreLayout(self.store, self.collector_id).collector_status

    def start(self, wait: bool = True) -> CollectorProcess:
        self.store.mkdir(parents=True, exist_ok=True)
        status = self.status_file
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
        self._status_before = before
        if wait:
            self.wait_started()
        return self

    def wait_started(self, timeout: float = 30) -> CollectorProcess:
        """Returns once the collector serves (it wrote its status file), so several can start
        at once and be waited for together."""
        assert self.proc is not None
        status = self.status_file
        deadline = time.monotonic() + timeout
        while not (status.exists() and status.stat().st_mtime_ns != self._status_before):
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


PROCESS_FIXTURES = frozenset(("collector", "shared_collector", "mlflow_server", "fleet"))
"""Fixtures that start a process (`fleet`: test_history's runs, logged through a collector): a
test using one (directly or through another fixture) is `slow`, like every test marked so by
hand because it starts or kills a process itself."""

ALLOWED_IN_FAST_TESTS = frozenset(("git", "uname"))
"""Programs a test not marked `slow` may run: `emitter.init` asks git for the repository state
and `platform` asks uname for the processor once (milliseconds, part of every first init)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "share_collector: the test's `collector` (and `store`) is its module's one collector; "
        "the test reads back only its own run ids and never stops, kills or fills that store; "
        "share_collector(False) on a test of such a module: its own collector",
    )


def _shares_collector(request: pytest.FixtureRequest) -> bool:
    marker = request.node.get_closest_marker("share_collector")
    return marker is not None and marker.args[:1] != (False,)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`pytest -m "not slow"` (`make test-fast`) is the quick loop: no test that starts a process."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


class _ProcessGuard:
    """Holds the fast loop to its promise: a test not marked `slow` that starts a process (a
    subprocess, a fork, a collector in a module fixture) or signals one fails, naming it.
    An audit hook sees every start, however deep in a library it happens."""

    def __init__(self) -> None:
        self.item: str | None = None  # the test not marked slow that runs now
        self.started: list[str] = []

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if self.item is None:
            return
        if event == "subprocess.Popen":
            argv = args[1]
            words = [argv] if isinstance(argv, (str, bytes)) else list(argv or ())
            program = Path(os.fsdecode(args[0] or (words[0] if words else ""))).name
            if program in ALLOWED_IN_FAST_TESTS:
                return
            what = f"started {' '.join(map(os.fsdecode, words))[:200]}"
        elif event in ("os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system"):
            what = f"called {event}"
        elif event in ("os.kill", "os.killpg") and args[0] not in (0, os.getpid(), os.getpgrp()):
            what = f"sent signal {args[1]} to {args[0]}"
        else:
            return
        self.started.append(what)
        msg = f"{self.item} is not marked slow but {what}: mark it @pytest.mark.slow"
        raise RuntimeError(msg)


_GUARD = _ProcessGuard()
sys.addaudithook(_GUARD.audit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Set-up and call are watched; teardown is not: the last test of a module tears down the
    module's collector, whichever test that is."""
    _GUARD.started.clear()
    _GUARD.item = None if item.get_closest_marker("slow") else item.nodeid
    try:
        yield
    finally:
        _GUARD.item = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _GUARD.item = None if item.get_closest_marker("slow") else item.nodeid
    try:
        yield
    finally:
        _GUARD.item = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A start that the code under test caught and swallowed still fails the test."""
    outcome = yield
    report = outcome.get_result()
    if call.when in ("setup", "call") and _GUARD.started and report.passed:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} is not marked slow but {'; '.join(_GUARD.started)}"
    if call.when == "call":
        _GUARD.started.clear()


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The test's own store folder, or its module's shared one (see `share_collector`)."""
    if _shares_collector(request) and "collector" in request.fixturenames:
        shared: CollectorProcess = request.getfixturevalue("shared_collector")
        return shared.store
    return tmp_path / "store"


@pytest.fixture(scope="module")
def shared_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    """One collector for the tests of a module marked `share_collector` (one start, not one per
    test): each test logs its own runs and reads back only their run ids."""
    proc = CollectorProcess(tmp_path_factory.mktemp("shared") / "store").start()
    yield proc
    proc.close()


@pytest.fixture
def collector(request: pytest.FixtureRequest, store: Path) -> Iterator[CollectorProcess]:
    """A collector on `store`: the test's own, or its module's shared one (`share_collector`)."""
    if _shares_collector(request):
        shared: CollectorProcess = request.getfixturevalue("shared_collector")
        assert shared.proc is not None and shared.proc.poll() is None, (
            f"the module's shared collector exited: {shared.log.read_text()[-2000:]}"
        )
        yield shared
        assert shared.proc.poll() is None, "a test stopped the shared collector: give it its own"
        return
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
    """The rows of `sql`, asked again if a compaction moved a file the query listed."""
    import traintape
    from traintape.read.query import rows

    con = traintape.connect(store)
    try:
        return rows(con, sql, params)
    finally:
        con.close()


def value_now(store: Path, sql: str) -> Any:
    """A one-value query's answer now, or None while the store cannot answer it yet."""
    try:
        return query(store, sql)[0][0]
    except Exception:  # the store, or the table, may not exist yet
        return None


def wait_for(store: Path, sql: str, expected: Any, timeout: float = 30.0) -> Any:
    """Polls a one-value query until it equals `expected` (the materializer runs on a timer)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = value_now(store, sql)
        if value == expected:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{sql!r} gave {value!r}, expected {expected!r} within {timeout}s")


def env_without_traintape() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRAINTAPE_")}
