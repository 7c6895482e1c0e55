"""Another local user, for tests/test_second_user.py: run as `nobody` with the system Python
(standard library only: the test's virtual environment lives where `nobody` cannot enter).

    intruder.py try ACTION:PATH ...   one JSON object: ACTION:PATH -> "denied" (PermissionError),
                                      "failed: ..." (another OSError) or "ALLOWED"
    intruder.py squat PATH            makes PATH's folder (open to all) unless it exists, binds a
                                      listening Unix socket at PATH, prints "ready", then one
                                      "connection" line per client until its stdin closes

Actions: list (a folder), read (a file), write (a new file in a folder), connect (a Unix
socket), unlink, rename (to a name beside it).
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys


def _connect(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)


def _write(folder: str) -> None:
    with open(os.path.join(folder, "planted-by-nobody"), "x") as f:
        f.write("x")


def _read(path: str) -> None:
    with open(path, "rb") as f:
        f.read(1)


ACTIONS = {
    "list": os.listdir,
    "read": _read,
    "write": _write,
    "connect": _connect,
    "unlink": os.unlink,
    "rename": lambda path: os.rename(path, path + ".moved"),
}


def attempt(spec: str) -> str:
    action, _, path = spec.partition(":")
    try:
        ACTIONS[action](path)
    except PermissionError:
        return "denied"
    except OSError as exc:
        return f"failed: {exc}"
    return "ALLOWED"


def squat(path: str) -> None:
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        os.mkdir(folder)
        os.chmod(folder, 0o777)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(16)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([server, sys.stdin], [], [])
        if sys.stdin in readable and not sys.stdin.readline():
            return
        if server in readable:
            conn, _ = server.accept()
            print("connection", flush=True)
            conn.close()


def main() -> int:
    if sys.argv[1] == "squat":
        squat(sys.argv[2])
    else:
        print(json.dumps({spec: attempt(spec) for spec in sys.argv[2:]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
