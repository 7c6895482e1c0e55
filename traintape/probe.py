"""Is anything listening at a collector's address? A quick look, without ZeroMQ.

ZeroMQ connects lazily and retries forever, so an emitter or `traintape replay` aimed at an
address where no collector runs learns nothing until its acknowledgement deadline. This module
answers in milliseconds, so they can say so at once and name the command that fixes it:

- `ipc://PATH`: no file there, a file that is not a socket, or a socket nothing accepts on (a
  collector that died leaves its socket file behind) -> a reason.
- `tcp://HOST:PORT`: a refused TCP connection -> a reason; no answer within `timeout` -> None,
  since a firewall or a slow network may still let ZeroMQ through later.

None means "something listens (or we cannot tell)": never a reason to stop logging.
"""

from __future__ import annotations

import os
import socket
import stat

__all__ = ["nothing_listens"]


def nothing_listens(address: str, timeout: float = 0.5) -> str | None:
    """Why no collector can be listening at `address`, or None when one may be."""
    if address.startswith("ipc://"):
        return _ipc(address.removeprefix("ipc://"), timeout)
    if address.startswith("tcp://"):
        return _tcp(address.removeprefix("tcp://"), timeout)
    return None  # inproc://, and schemes ZeroMQ may add: not ours to judge


def _ipc(path: str, timeout: float) -> str | None:
    if path.startswith("@"):
        return None  # Linux abstract namespace: no file to look at
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"no collector socket at {path}"
    except OSError as exc:
        return f"cannot look at {path}: {exc.strerror}"
    if not stat.S_ISSOCK(mode):
        return f"{path} is not a socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return f"nothing listens on {path} (a collector that stopped left it behind)"
    except PermissionError:
        return f"{path} belongs to another user"
    except OSError:
        return None
    finally:
        probe.close()
    return None


def _tcp(hostport: str, timeout: float) -> str | None:
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return f"nothing listens on {hostport}"
    except (OSError, ValueError):
        return None  # unreachable for now, a timeout, a name that does not resolve yet
