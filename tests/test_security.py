"""CURVE on tcp:// links: encrypted, the server authenticated, clients checked when listed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import zmq.auth

from tests.conftest import CollectorProcess, free_port, query, wait_for
from traintape import emitter
from traintape.security import SecurityError, configure_client, is_remote_tcp


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
