"""Another user of the machine (`nobody`) tries to read the store, reach the collector's socket
and squat its fallback path: every attempt fails, and the real collector and trainer go on.

The tests run as root (as in CI) and start the intruder with `user=nobody`; elsewhere they skip.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, CollectorProcess, query, wait_for, worker_argv
from traintape import emitter
from traintape.paths import default_address

INTRUDER = REPO / "tests" / "workers" / "intruder.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # nobody cannot enter the virtual environment under /root

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists(),
    reason="needs root (to act as nobody) and the system Python",
)


def _nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def _as_nobody(*args: str, groups: tuple[int, ...] = ()) -> dict[str, str]:
    """Runs intruder.py `try` as nobody (with these supplementary groups); its results."""
    who = _nobody()
    done = subprocess.run(
        [SYSTEM_PYTHON, str(INTRUDER), "try", *args],
        user=who.pw_uid,
        group=who.pw_gid,
        extra_groups=list(groups),
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user may enter and write (sticky, as /tmp is): where nobody can act."""
    folder = Path(tempfile.mkdtemp(prefix="security-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Processes started by the test get umask 0: only traintape's own modes protect the store."""
    old = os.umask(0)
    yield
    os.umask(old)


def _env(open_dir: Path) -> dict[str, str]:
    """This process's environment with the temp folder in `open_dir` and no $XDG_RUNTIME_DIR,
    so a long store path falls back to `<open_dir>/traintape-<uid>/`."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(open_dir)
    return env


def _long_store(open_dir: Path) -> Path:
    """A store path too long for a Unix socket name, in folders anyone may enter."""
    parent = open_dir / ("a-long-folder-name-" * 6)
    parent.mkdir()
    parent.chmod(0o755)
    return parent / "store"


def _log_run(store: Path, env: dict[str, str], run_id: str, steps: int = 40) -> None:
    """A trainer (a worker process, root) logs `steps` steps of 2 metrics and finishes."""
    done = subprocess.run(
        worker_argv(store, "--steps", steps, "--metrics", 2, "--finish-timeout", 30),
        env={**env, "TRAINTAPE_RUN_ID": run_id},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run_id}'", 2 * steps)


def _shutdown(coll: CollectorProcess) -> None:
    """SIGTERM, and wait for the collector and its children: none may write into the folder
    after the test removed it."""
    if coll.proc is not None and coll.proc.poll() is None:
        coll.stop(timeout=60)


class _Squatter:
    """nobody listening on a Unix socket at `path` (intruder.py squat)."""

    def __init__(self, path: Path) -> None:
        who = _nobody()
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(INTRUDER), "squat", str(path)],
            user=who.pw_uid,
            group=who.pw_gid,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def connections(self) -> int:
        """Stops the squatter; how many clients connected to it."""
        out, _ = self.proc.communicate(input="", timeout=30)
        return out.split().count("connection")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.slow
def test_nobody_cannot_read_the_store_nor_reach_the_socket(
    open_dir: Path, umask_zero: None
) -> None:
    """Under umask 0, with a store an earlier run left world-readable, the collector makes it
    0700 with 0600 files and a 0600 socket: nobody can list, read, write or connect, and the
    trainer's run is complete and readable."""
    store = open_dir / "store"
    (store / "state").mkdir(parents=True)
    old_file = store / "state" / "left-by-an-old-version.json"
    old_file.write_text("{}")
    for path in (store, store / "state", old_file):
        path.chmod(0o755 if path.is_dir() else 0o644)
    coll = CollectorProcess(store, "--system-interval", "0").start()
    try:
        _log_run(store, os.environ.copy(), "private-run")
        for folder, _, files in os.walk(store):
            assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
            for name in files:
                mode = stat.S_IMODE(os.lstat(Path(folder) / name).st_mode)
                assert mode == 0o600, (folder, name, oct(mode))
        parquet = next((store / "tables" / "metrics").rglob("part-*.parquet"))
        segment = next((store / "journal").glob("*.log"))
        results = _as_nobody(
            f"list:{store}",
            f"write:{store}",
            f"read:{segment}",
            f"read:{parquet}",
            f"read:{store / 'state' / 'collector.json'}",
            f"connect:{store / 'collector.sock'}",
        )
        assert set(results.values()) == {"denied"}, results
        assert coll.proc is not None and coll.proc.poll() is None
        assert query(store, "SELECT count(*) FROM metrics WHERE run_id = 'private-run'") == [(80,)]
    finally:
        _shutdown(coll)


@pytest.mark.slow
def test_a_socket_squatted_before_the_collector_is_refused_on_both_sides(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nobody makes the fallback folder and listens at the fallback socket first (the attack of
    issue 13): `serve` refuses to start and the trainer refuses to send, both saying why, and
    nobody receives no connection at all."""
    store = _long_store(open_dir)
    monkeypatch.setattr(tempfile, "tempdir", str(open_dir))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    path = Path(default_address(store).removeprefix("ipc://"))
    env = _env(open_dir)
    squatter = _Squatter(path)
    coll = CollectorProcess(store, "--system-interval", "0", env=env)
    try:
        with pytest.raises(RuntimeError, match="collector exited 2"):
            coll.start()
        assert "belongs to nobody" in coll.log.read_text()
        trainer = subprocess.run(
            worker_argv(store, "--steps", 5, "--finish-timeout", 5),
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert trainer.returncode != 0
        assert "belongs to nobody" in trainer.stderr
        assert squatter.connections() == 0
    finally:
        squatter.close()
        _shutdown(coll)


@pytest.mark.slow
def test_the_fallback_folder_cannot_be_squatted_once_made(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a long store path the socket lives in a 0700 `traintape-<uid>` folder: nobody can
    plant a file in it, move it, remove or reach the socket, and the trainer's run is complete."""
    store = _long_store(open_dir)
    monkeypatch.setattr(tempfile, "tempdir", str(open_dir))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    path = Path(default_address(store).removeprefix("ipc://"))
    assert path.parent == open_dir / f"traintape-{os.geteuid()}"
    env = _env(open_dir)
    coll = CollectorProcess(store, "--system-interval", "0", env=env).start()
    try:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        results = _as_nobody(
            f"write:{path.parent}",
            f"rename:{path.parent}",
            f"unlink:{path}",
            f"connect:{path}",
            f"list:{path.parent}",
        )
        assert set(results.values()) == {"denied"}, results
        _log_run(store, env, "fallback-run")
        assert coll.proc is not None and coll.proc.poll() is None
    finally:
        _shutdown(coll)


@pytest.mark.slow
def test_an_ipc_socket_of_another_user_is_never_used(
    open_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit ipc:// address where nobody listens: `serve --bind` refuses to take it over
    and an emitter refuses to send to it; nobody gets no connection."""
    path = open_dir / "collector.sock"
    squatter = _Squatter(path)
    store = tmp_path / "store"
    coll = CollectorProcess(store, "--bind", f"ipc://{path}", "--system-interval", "0")
    try:
        with pytest.raises(RuntimeError, match="collector exited 2"):
            coll.start()
        assert "belongs to nobody" in coll.log.read_text()
        from traintape.errors import SecurityError

        with pytest.raises(SecurityError, match="belongs to nobody"):
            emitter.init(project="p", store=store, address=f"ipc://{path}")
        assert squatter.connections() == 0
    finally:
        squatter.close()
        _shutdown(coll)


@pytest.mark.slow
def test_group_shares_the_store_read_only(open_dir: Path, umask_zero: None) -> None:
    """With `--group users` the store is 2750/0640 with that group and the socket 0660: a member
    reads it but cannot write, nobody outside the group cannot even list it, and keys/ stays
    0700."""
    users = 100  # the `users` group of Debian-like systems; nobody is not in it
    store = open_dir / "store"
    coll = CollectorProcess(store, "--group", str(users), "--system-interval", "0").start()
    try:
        _log_run(store, os.environ.copy(), "shared-run")
        st = store.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2750, users)
        segment = next((store / "journal").glob("*.log"))
        assert (stat.S_IMODE(segment.stat().st_mode), segment.stat().st_gid) == (0o640, users)
        sock = (store / "collector.sock").stat()
        assert (stat.S_IMODE(sock.st_mode), sock.st_gid) == (0o660, users)
        member = _as_nobody(f"list:{store}", f"read:{segment}", f"write:{store}", groups=(users,))
        assert member == {
            f"list:{store}": "ALLOWED",
            f"read:{segment}": "ALLOWED",
            f"write:{store}": "denied",
        }
        outsider = _as_nobody(f"list:{store}", f"read:{segment}")
        assert set(outsider.values()) == {"denied"}, outsider
    finally:
        _shutdown(coll)
    # The same from the config file's `group` key, by name; CURVE keys stay the user's alone.
    config = open_dir / "serve.yaml"
    config.write_text("group: users\nbind: tcp://127.0.0.1:0\ncurve: true\nsystem_interval: 0\n")
    coll = CollectorProcess(store, "--config", str(config))
    try:
        coll.start()
        assert (stat.S_IMODE(store.stat().st_mode), store.stat().st_gid) == (0o2750, users)
        keys = store / "keys"
        assert stat.S_IMODE(keys.stat().st_mode) == 0o700
        assert stat.S_IMODE((keys / "collector.key_secret").stat().st_mode) == 0o600
        assert set(_as_nobody(f"list:{keys}", groups=(users,)).values()) == {"denied"}
    finally:
        _shutdown(coll)


def test_an_emitter_spools_into_a_private_folder(tmp_path: Path, umask_zero: None) -> None:
    """Under umask 0, an emitter with no collector creates the store and its spool 0700 and
    the spool file 0600."""
    store = tmp_path / "store"
    emitter.init(project="p", store=store, address=f"ipc://{tmp_path}/none.sock", spool_after=0.1)
    for step in range(10):
        emitter.log({"x": float(step)}, step=step)
    report = emitter.finish(timeout=1)
    assert report.spooled > 0
    spooled = list((store / "spool").glob("*.spool"))
    assert spooled
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert stat.S_IMODE((store / "spool").stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in spooled} == {0o600}


@pytest.mark.slow
def test_intruder_runs_as_nobody(open_dir: Path) -> None:
    """The intruder really is another user: it cannot write in a 0755 folder of root's."""
    folder = open_dir / "roots"
    folder.mkdir(mode=0o755)
    assert _as_nobody(f"write:{folder}", f"write:{open_dir}") == {
        f"write:{folder}": "denied",
        f"write:{open_dir}": "ALLOWED",
    }
