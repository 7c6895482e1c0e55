"""Is a process still alive? What an emitter records about itself, and what the collector checks.

A pid alone is not enough: pids are reused, and a collector in another container on the same
host (a Kubernetes sidecar) sees other pids under the same host name. So an emitter records,
with its pid, the start time of its process (clock ticks since boot, field 22 of
/proc/<pid>/stat), its pid namespace and the host's boot id. A collector judges a pid only when
it shares that boot and pid namespace; otherwise (another host, another container, no /proc) it
cannot, and relies on heartbeats. Linux only; elsewhere nothing is recorded.
"""

from __future__ import annotations

import os
from typing import Any

_PROC = "/proc"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of `pid`, or None if there is no such process."""
    text = _read(f"{_PROC}/{pid}/stat")
    if text is None:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after the
    # last ')'. Then field 3 is the state and field 22 the start time.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _namespace() -> str | None:
    try:
        return os.readlink(f"{_PROC}/self/ns/pid")
    except OSError:
        return None


def _boot_id() -> str | None:
    text = _read(f"{_PROC}/sys/kernel/random/boot_id")
    return text.strip() if text else None


def identity(pid: int | None = None) -> dict[str, Any] | None:
    """{"start_ticks", "pid_ns", "boot_id"} of `pid` (this process by default), or None."""
    stat = _stat(os.getpid() if pid is None else pid)
    ns, boot = _namespace(), _boot_id()
    if stat is None or ns is None or boot is None:
        return None
    return {"start_ticks": stat[1], "pid_ns": ns, "boot_id": boot}


def local(ident: Any) -> bool:
    """Whether a process with this recorded identity can be judged from here by its pid."""
    return (
        isinstance(ident, dict)
        and ident.get("boot_id") == _boot_id()
        and ident.get("pid_ns") == _namespace()
        and ident.get("boot_id") is not None
    )


def alive(pid: int, ident: dict[str, Any]) -> bool:
    """Whether the process `pid` with identity `ident` (see `local`) still runs.

    A zombie counts as gone (it has exited; its parent, torchrun say, just did not reap it yet),
    and so does another process that got the same pid later (another start time).
    """
    stat = _stat(pid)
    if stat is None:
        return False
    state, start = stat
    return state not in ("Z", "X") and start == ident.get("start_ticks")
