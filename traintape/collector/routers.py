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

from traintape.errors import CollectorError, SecurityError
from traintape.paths import check_ipc_path
from traintape.security import (
    SERVER_KEY_ENV,
    allowed_clients,
    curve_warning,
    is_remote_tcp,
    remote_reason,
    restrict_socket,
    serve_curve,
    start_authenticator,
    tcp_host,
)

HWM = 100_000
"""Messages a socket queues each way before ZeroMQ pushes back."""


def check_bind_address(address: str, allow_remote: bool) -> None:
    """tcp:// binds stay on loopback unless `allow_remote` says otherwise on purpose.

    The host is parsed and resolved (traintape.security.remote_reason), so no spelling of the
    unspecified address (`0`, `0x0`, `00.0.0.0`, `[::0]`, ...), no interface name and no host
    name that reaches other hosts slips through as if it were loopback.
    """
    if address.startswith("ipc://@") and not allow_remote:
        msg = (
            f"--bind {address!r}: an abstract socket has no file modes, so every local user may "
            "connect; bind ipc://PATH, or pass --allow-remote to mean it"
        )
        raise CollectorError(msg)
    if address.startswith("ipc://"):
        return
    if not address.startswith("tcp://"):
        msg = f"--bind {address!r}: use ipc://PATH or tcp://HOST:PORT"
        raise CollectorError(msg)
    reason = remote_reason(tcp_host(address))
    if reason is not None and not allow_remote:
        msg = (
            f"--bind {address!r} accepts other hosts ({reason}); bind tcp://127.0.0.1:PORT, or "
            "pass --allow-remote (`allow_remote: true` in the config file) to mean it"
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
            warning = curve_warning(self.store)
            if warning is not None:
                self._log(warning)
        for address in addresses:
            try:
                self._bind(sock, address)
            except (zmq.ZMQError, SecurityError, OSError) as exc:
                sock.close(linger=0)
                msg = f"cannot bind {address}: {exc}"
                raise CollectorError(msg) from exc
        return sock

    def _bind(self, sock: zmq.Socket, address: str) -> None:
        """Binds one address; an ipc:// socket only where no other user can have put one (its
        folder and any file already there are checked), and 0600 (0660 for a shared store)."""
        check_ipc_path(address, binding=True)
        sock.bind(address)
        if address.startswith("ipc://"):  # ipc://* binds a name of ZeroMQ's choosing
            bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            restrict_socket(Path(bound[len("ipc://") :]), self.store)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
