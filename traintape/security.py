"""CURVE encryption and authentication for collector links that leave the host.

ipc:// and loopback tcp:// stay plain. A tcp:// bind on any other interface (or any tcp:// bind
with `traintape serve --curve`) is served with CURVE: the collector's keypair lives in
`<store>/keys/collector.key` (public) and `collector.key_secret`, made on first use. Emitters
name the collector's public key with $TRAINTAPE_SERVER_KEY (the z85 text `traintape serve`
prints). When `<store>/keys/clients/` holds public keys (`*.key`), only those clients are
accepted, each with its own secret key file in $TRAINTAPE_CLIENT_KEY; otherwise any client that
knows the server's key is (the link is still encrypted and the server authenticated).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from traintape.errors import SecurityError
from traintape.layout import StoreLayout

SERVER_KEY_ENV = "TRAINTAPE_SERVER_KEY"
CLIENT_KEY_ENV = "TRAINTAPE_CLIENT_KEY"


def is_remote_tcp(address: str) -> bool:
    """A tcp:// address whose host is not loopback."""
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    return not (host == "localhost" or host == "::1" or host.startswith("127."))


def keys_dir(store: Path) -> Path:
    return StoreLayout(store).keys


def collector_keys(store: Path) -> tuple[bytes, bytes]:
    """(public, secret) of the collector, made on first use (the secret file is 0600)."""
    folder = keys_dir(store)
    secret_file = folder / "collector.key_secret"
    if not secret_file.exists():
        folder.mkdir(parents=True, exist_ok=True)
        zmq.auth.create_certificates(str(folder), "collector")
        os.chmod(secret_file, 0o600)
    public, secret = zmq.auth.load_certificate(str(secret_file))
    assert secret is not None
    return public, secret


def allowed_clients(store: Path) -> Path | None:
    """The folder of accepted client public keys, or None to accept any client."""
    folder = keys_dir(store) / "clients"
    return folder if folder.is_dir() and any(folder.glob("*.key")) else None


def serve_curve(sock: zmq.Socket, store: Path) -> bytes:
    """Makes `sock` a CURVE server with the store's keys; returns the public key (z85)."""
    public, secret = collector_keys(store)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return public


def start_authenticator(ctx: zmq.Context, store: Path) -> Any:
    """The ZAP handler that checks client keys for every CURVE socket of `ctx`."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    clients = allowed_clients(store)
    auth.configure_curve(domain="*", location=str(clients) if clients else zmq.auth.CURVE_ALLOW_ANY)
    return auth


def configure_client(sock: zmq.Socket, address: str, server_key: str | None = None) -> None:
    """Sets CURVE on an emitter's (or replay's) socket when a server key is given.

    A remote tcp:// collector without a key is an error: plain text would never be answered.
    """
    key = server_key or os.environ.get(SERVER_KEY_ENV)
    if not key:
        if is_remote_tcp(address):
            msg = (
                f"the collector at {address} speaks CURVE: set {SERVER_KEY_ENV} to the public key "
                "`traintape serve` printed (also in <store>/keys/collector.key)"
            )
            raise SecurityError(msg)
        return
    client_file = os.environ.get(CLIENT_KEY_ENV)
    if client_file:
        try:
            public, secret = zmq.auth.load_certificate(client_file)
        except (OSError, ValueError) as exc:
            msg = f"{CLIENT_KEY_ENV}={client_file}: not a readable CURVE secret key file ({exc})"
            raise SecurityError(msg) from None
        if secret is None:
            msg = f"{CLIENT_KEY_ENV}={client_file} holds no secret key (use the .key_secret file)"
            raise SecurityError(msg)
    else:
        public, secret = zmq.curve_keypair()
    sock.curve_serverkey = key.encode() if isinstance(key, str) else key
    sock.curve_publickey = public
    sock.curve_secretkey = secret
