"""Which local user a loopback connection to the dashboard comes from (Linux).

Without a token (`traintape ui` on loopback, the default) the dashboard answers requests naming a
loopback host. Any user of the machine can open a loopback connection, though, and the store
is private to its owner (folders 0700, objects 0600): without this check another local user
would read every run, config and artifact through the dashboard. The kernel's socket tables
(/proc/net/tcp, tcp6) give the owner of the client's end of each TCP connection: a request
whose connection belongs to another user (not root) is refused. Where the tables cannot tell
(another OS, another network namespace), the request is answered, as before this check.
"""

from __future__ import annotations

import os

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def peer_uid(client_port: int, server_port: int) -> int | None:
    """The uid owning the TCP socket whose local port is `client_port` and remote port is
    `server_port` (the client's end of a loopback connection), or None when none is listed."""
    for table in TABLES:
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8:
                continue
            local, remote = fields[1].rpartition(":")[2], fields[2].rpartition(":")[2]
            if int(local, 16) == client_port and int(remote, 16) == server_port:
                return int(fields[7])
    return None


def foreign_user(client: tuple[str, int] | None, server: tuple[str, int] | None) -> int | None:
    """The uid of another user (neither this process's nor root) whose connection this is, else
    None."""
    if client is None or server is None or not isinstance(client[1], int):
        return None
    uid = peer_uid(client[1], server[1])
    if uid is None or uid in (0, os.geteuid()):
        return None
    return uid
