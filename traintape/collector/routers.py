"""The collector's ROUTER sockets: where it listens, and who may talk to it.

One ROUTER for the plain binds (ipc://, loopback tcp://) and one for the CURVE binds (tcp:// that
leaves the host, or every tcp:// bind with `curve`): CURVE is a property of a socket, not of an
address. Every socket drops a connection that sends a message over `max_message_bytes` before it
is buffered whole (ZMQ_MAXMSGSIZE).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from traintape.errors import CollectorError
from traintape.security import (
    SERVER_KEY_ENV,
    allowed_clients,
    is_remote_tcp,
    serve_curve,
    start_authenticator,
)

HWM = 100_000
"""Messages a socket queues each way before ZeroMQ pushes back."""


def check_bind_address(address: str, allow_remote: bool) -> None:
    """tcp:// binds stay on loopback unless an explicit interface is given on purpose."""
    if address.startswith("ipc://"):
        return
    if not address.startswith("tcp://"):
        msg = f"--bind {address!r}: use ipc://PATH or tcp://HOST:PORT"
        raise CollectorError(msg)
    host = address[len("tcp://") :].rsplit(":", 1)[0]
    if host in ("*", "0.0.0.0", "::", "[::]") and not allow_remote:
        msg = (
            f"--bind {address!r} listens on every interface; bind tcp://127.0.0.1:PORT, or name "
            "the interface's address explicitly to accept other hosts"
        )
        raise CollectorError(msg)


class Routers:
    """The bound sockets (`sockets`), their context and, for CURVE, the authenticator."""

    def __init__(
        self,
        store: Path,
        binds: list[str],
        *,
        curve: bool,
        max_message_bytes: int,
        log: Callable[[str], None],
    ) -> None:
        self.store = store
        self.max_message_bytes = max_message_bytes
        self._log = log
        self._ctx = zmq.Context()
        self._auth: Any = None
        self.sockets: list[zmq.Socket] = []
        secure = [a for a in binds if is_remote_tcp(a) or (curve and a.startswith("tcp://"))]
        plain = [a for a in binds if a not in secure]
        try:
            if plain:
                self.sockets.append(self._router(plain, secure=False))
            if secure:
                self._auth = start_authenticator(self._ctx, store)
                self.sockets.append(self._router(secure, secure=True))
        except CollectorError:
            self.close()
            raise

    def _router(self, addresses: list[str], secure: bool) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        if secure:
            public = serve_curve(sock, self.store)
            who = "the clients in keys/clients/" if allowed_clients(self.store) else "any client"
            self._log(
                f"CURVE on {', '.join(addresses)} for {who}; emitters need "
                f"{SERVER_KEY_ENV}={public.decode()}"
            )
        for address in addresses:
            try:
                sock.bind(address)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                msg = f"cannot bind {address}: {exc}"
                raise CollectorError(msg) from exc
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
