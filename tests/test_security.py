"""Bind addresses parsed, CURVE keys private, CURVE links encrypted and their writers checked."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq.auth

from tests.conftest import CollectorProcess, free_port, query, wait_for
from traintape import emitter
from traintape.collector.routers import check_bind_address
from traintape.errors import CollectorError
from traintape.security import SecurityError, collector_keys, configure_client, is_remote_tcp


def _server_key(store: Path) -> str:
    return (store / "keys" / "collector.key").read_text().split('public-key = "')[1].split('"')[0]


def _log_some(store: Path, address: str, timeout: float) -> tuple[str, bool]:
    run = emitter.init(project="curve", store=store, address=address, resend_after=0.3)
    for step in range(50):
        emitter.log({"x": float(step)}, step=step)
    report = emitter.finish(timeout=timeout)
    return run.run_id, report.complete


@pytest.mark.parametrize(
    ("address", "remote"),
    [
        ("tcp://10.0.0.5:5555", True),
        ("tcp://node7.cluster:5555", True),
        ("tcp://127.0.0.1:5555", False),
        ("tcp://localhost:5555", False),
        ("tcp://[::1]:5555", False),
        ("ipc:///tmp/x.sock", False),
    ],
)
def test_which_addresses_leave_the_host(address: str, remote: bool) -> None:
    """Only tcp:// to a non-loopback host needs CURVE."""
    assert is_remote_tcp(address) is remote


def test_a_remote_collector_without_a_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An emitter pointed at a remote tcp:// collector without TRAINTAPE_SERVER_KEY says what to set."""
    monkeypatch.delenv("TRAINTAPE_SERVER_KEY", raising=False)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        with pytest.raises(SecurityError, match="TRAINTAPE_SERVER_KEY"):
            configure_client(sock, "tcp://10.1.2.3:5555")
    finally:
        sock.close(0)
        ctx.term()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flags", "yaml"])
def test_curve_link_delivers_with_the_key_and_refuses_plain_text(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """With --curve (or `curve: true` in the YAML file), an emitter holding the server key
    delivers everything; one without it is never answered (its events wait in the spool)."""
    address = f"tcp://127.0.0.1:{free_port()}"
    if how == "flags":
        args = ["--bind", address, "--curve", "--system-interval", "0"]
    else:
        config = tmp_path / "traintape.yaml"
        config.write_text(f"bind: {address}\ncurve: true\nsystem_interval: 0\n")
        args = ["--config", str(config)]
    coll = CollectorProcess(store, *args).start()
    try:
        assert "TRAINTAPE_SERVER_KEY=" in coll.log.read_text()
        monkeypatch.setenv("TRAINTAPE_SERVER_KEY", _server_key(store))
        run_id, complete = _log_some(store, address, timeout=20)
        assert complete
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run_id}'", 50)
        monkeypatch.delenv("TRAINTAPE_SERVER_KEY")
        plain_run, complete = _log_some(store, address, timeout=2)
        assert not complete
        assert query(store, "SELECT count(*) FROM metrics WHERE run_id = ?", plain_run) == [(0,)]
    finally:
        coll.close()


@pytest.mark.slow
def test_listed_clients_only(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With public keys in <store>/keys/clients/, a client with a listed key is served and a
    client with another key is not."""
    certs = tmp_path / "certs"
    certs.mkdir()
    zmq.auth.create_certificates(str(certs), "trainer")
    zmq.auth.create_certificates(str(certs), "stranger")
    (store / "keys" / "clients").mkdir(parents=True)
    shutil.copy(certs / "trainer.key", store / "keys" / "clients" / "trainer.key")
    address = f"tcp://127.0.0.1:{free_port()}"
    coll = CollectorProcess(store, "--bind", address, "--curve", "--system-interval", "0").start()
    try:
        monkeypatch.setenv("TRAINTAPE_SERVER_KEY", _server_key(store))
        monkeypatch.setenv("TRAINTAPE_CLIENT_KEY", str(certs / "trainer.key_secret"))
        run_id, complete = _log_some(store, address, timeout=20)
        assert complete
        monkeypatch.setenv("TRAINTAPE_CLIENT_KEY", str(certs / "stranger.key_secret"))
        _, complete = _log_some(store, address, timeout=2)
        assert not complete
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run_id}'", 50)
    finally:
        coll.close()


OFF_LOOPBACK = [
    "tcp://0:{port}",
    "tcp://0.0.0.0:{port}",
    "tcp://00.0.0.0:{port}",
    "tcp://0x0:{port}",
    "tcp://*:{port}",
    "tcp://[::]:{port}",
    "tcp://[::0]:{port}",
    "tcp://127.0.0.1.example.invalid:{port}",  # a host name, not loopback for starting "127."
    "tcp://{interface}:{port}",
    "tcp://{interface_address}:{port}",
    "ipc://@traintape-abstract-{port}",  # no file modes: every local user may connect
]
"""Every spelling of an address other hosts may reach that `serve` must refuse by default."""


def _non_loopback_interface() -> tuple[str, str] | None:
    """(name, IPv4 address) of a network interface the kernel does not flag loopback, if any."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        flags = Path(f"/sys/class/net/{name}/flags")
        if not flags.exists() or int(flags.read_text(), 16) & 0x8:  # IFF_LOOPBACK
            continue
        for addr in addresses:
            if addr.family == socket.AF_INET:
                return name, addr.address
    return None


@pytest.mark.slow
@pytest.mark.parametrize("spelling", OFF_LOOPBACK)
def test_serve_refuses_every_spelling_off_loopback(store: Path, spelling: str) -> None:
    """`traintape serve --bind` of any address other hosts may reach (every spelling of the
    unspecified address, an interface, its address, a host name) exits 2 naming
    --allow-remote, and creates no store."""
    interface = _non_loopback_interface()
    if "{interface" in spelling and interface is None:
        pytest.skip("no network interface off loopback here")
    name, address = interface or ("", "")
    bind = spelling.format(port=free_port(), interface=name, interface_address=address)
    done = subprocess.run(
        [sys.executable, "-m", "traintape.collector", "serve", "--store", str(store)]
        + ["--bind", bind, "--system-interval", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--allow-remote" in done.stderr
    assert not store.exists()


@pytest.mark.parametrize(
    "address",
    [
        "tcp://127.0.0.1:5555",
        "tcp://127.1:5555",
        "tcp://0177.0.0.1:5555",
        "tcp://localhost:5555",
        "tcp://[::1]:5555",
        "tcp://[::ffff:127.0.0.1]:5555",
        "tcp://lo:5555",
    ],
)
def test_loopback_spellings_need_no_flag(address: str) -> None:
    """Every spelling of loopback (an address, a name resolving to it, the loopback interface)
    binds without --allow-remote and is served without CURVE."""
    if "lo:" in address and "lo" not in {n for _, n in socket.if_nameindex()}:
        pytest.skip("no interface named lo here")
    check_bind_address(address, allow_remote=False)
    assert not is_remote_tcp(address)


def test_a_host_name_resolving_off_the_host_needs_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host name counts as loopback only if every address it resolves to is: one loopback
    and one routable address needs --allow-remote, and CURVE."""
    import traintape.security

    def fake(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        ips = {"db.cluster": ["127.0.0.1", "192.0.2.7"], "me.cluster": ["127.0.0.1", "::1"]}
        if host not in ips:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in ips[host]]

    monkeypatch.setattr(traintape.security.socket, "getaddrinfo", fake)
    with pytest.raises(CollectorError, match="192.0.2.7.*--allow-remote"):
        check_bind_address("tcp://db.cluster:5555", allow_remote=False)
    check_bind_address("tcp://db.cluster:5555", allow_remote=True)
    assert is_remote_tcp("tcp://db.cluster:5555")
    check_bind_address("tcp://me.cluster:5555", allow_remote=False)
    assert not is_remote_tcp("tcp://me.cluster:5555")


def test_the_secret_key_is_0600_from_its_creation(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under umask 0 the collector's secret key file is created 0600 (never chmod-ed down from
    something wider) in a 0700 keys/ folder."""
    chmodded: list[Path] = []
    real_chmod = os.chmod

    def spy(path: Any, mode: int, *args: Any, **kwargs: Any) -> None:
        chmodded.append(Path(path))
        real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", spy)
    old = os.umask(0)
    try:
        public, secret = collector_keys(store)
    finally:
        os.umask(old)
    secret_file = store / "keys" / "collector.key_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((store / "keys").stat().st_mode) == 0o700
    assert secret_file not in chmodded
    assert zmq.auth.load_certificate(str(secret_file)) == (public, secret)
    assert zmq.auth.load_certificate(str(store / "keys" / "collector.key"))[0] == public


@pytest.mark.slow
def test_serve_warns_when_curve_accepts_any_client(store: Path, tmp_path: Path) -> None:
    """With CURVE on and no keys/clients/ allow-list, `serve` warns at start that anyone with
    the public key may write; with an allow-list it does not."""
    address = f"tcp://127.0.0.1:{free_port()}"
    coll = CollectorProcess(store, "--bind", address, "--curve", "--system-interval", "0")
    coll.start()
    assert coll.stop() == 0
    assert "WARNING: CURVE without an allow-list" in coll.log.read_text()
    zmq.auth.create_certificates(str(tmp_path), "trainer")
    (store / "keys" / "clients").mkdir()
    shutil.copy(tmp_path / "trainer.key", store / "keys" / "clients" / "trainer.key")
    seen = len(coll.log.read_text())
    coll.start()
    assert coll.stop() == 0
    later = coll.log.read_text()[seen:]
    assert "for the clients in keys/clients/" in later
    assert "WARNING" not in later


@pytest.mark.slow
def test_key_rotation_old_emitters_spool_and_replay_with_the_new_key(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --rotate-key` retires the key for a new one: an emitter still holding the old key
    loses nothing (what it logs after the rotation is spooled, and `traintape replay` with the
    new key delivers it exactly once), and new emitters deliver with the new key."""
    address = f"tcp://127.0.0.1:{free_port()}"
    args = ("--bind", address, "--curve", "--system-interval", "0")
    coll = CollectorProcess(store, *args).start()
    try:
        old_key = _server_key(store)
        monkeypatch.setenv("TRAINTAPE_SERVER_KEY", old_key)
        old = emitter.init(
            project="rotate", store=store, address=address, resend_after=0.3, spool_after=0.5
        )
        for step in range(20):
            emitter.log({"x": float(step)}, step=step)
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{old.run_id}'", 20)
        assert coll.stop() == 0
        coll = CollectorProcess(store, *args, "--rotate-key").start()
        new_key = _server_key(store)
        assert new_key != old_key
        retired = list((store / "keys" / "retired").glob("*.key_secret"))
        assert [zmq.auth.load_certificate(str(p))[0].decode() for p in retired] == [old_key]
        for step in range(20, 40):
            emitter.log({"x": float(step)}, step=step)
        assert emitter.finish(timeout=3).spooled > 0
        monkeypatch.setenv("TRAINTAPE_SERVER_KEY", new_key)
        new_run, _ = _log_some(store, address, timeout=20)
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{new_run}'", 50)
        done = subprocess.run(
            [sys.executable, "-m", "traintape", "replay", "--store", str(store)]
            + ["--address", address, "--timeout", "30"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{old.run_id}'", 40)
        assert query(
            store, "SELECT count(DISTINCT step) FROM metrics WHERE run_id = ?", old.run_id
        ) == [(40,)]
    finally:
        coll.close()
