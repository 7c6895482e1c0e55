"""Where things live: the store folder, the collector's default address, the spool folder.

Settled once by whoever starts (emitter `init`, `traintape serve`, a CLI command); never per call.

A store path too long for a Unix socket name gets its socket in this user's runtime folder
(`runtime_dir`): $XDG_RUNTIME_DIR, else `<temp>/traintape-<uid>`. Both sides check that folder
before use (`private_folder`): it must be a real folder, owned by this user, mode 0700. A folder
or socket another user planted there (to receive a trainer's events, or to keep the collector
from binding) is refused with the reason, never used. Neither side needs anything else: nobody
else can create, replace or connect to a socket inside a 0700 folder of ours.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from traintape.errors import SecurityError, StoreError
from traintape.layout import COLLECTOR_ID_ENV, StoreLayout, check_collector_id

DEFAULT_STORE_NAME = "traintape-store"
"""A hyphenated name can never be imported, so it cannot shadow the `traintape` package."""

RUNTIME_ENV = "XDG_RUNTIME_DIR"

# sockaddr_un.sun_path is 108 bytes on Linux (104 on macOS) including the trailing NUL.
_MAX_IPC_PATH = 100


def resolve_store(store: str | os.PathLike[str] | None = None) -> Path:
    """The store folder: the argument, else $TRAINTAPE_STORE, else ./traintape-store."""
    chosen = store if store is not None else os.environ.get("TRAINTAPE_STORE") or DEFAULT_STORE_NAME
    return Path(chosen).expanduser().resolve()


def remote_store(store: str | os.PathLike[str] | None = None) -> str | None:
    """The s3://bucket/prefix URL that the argument, else $TRAINTAPE_STORE, names (a store whose
    tables are on object storage: traintape.read.remote), or None for a store folder."""
    chosen = store if store is not None else os.environ.get("TRAINTAPE_STORE")
    return chosen if isinstance(chosen, str) and chosen.startswith("s3://") else None


def local_store(store: str | os.PathLike[str] | None, why: str) -> Path:
    """`resolve_store(store)` for a command that needs the store's folder itself (a journal, a
    collector's state, a spool, artifact objects): an s3:// store, which holds the published
    tables only, is refused at once with `why` (what the command needs, and where to run it)."""
    url = remote_store(store)
    if url is not None:
        msg = f"{url} holds only the published tables: {why}"
        raise StoreError(msg)
    return resolve_store(store)


def store_origin(given: object, argument: str) -> str | None:
    """Which setting `resolve_store(given)` followed, in words: `argument` (how the caller names
    its argument), "$TRAINTAPE_STORE", or None for the default, ./traintape-store of the current
    folder, which each caller words for its reader. Kept beside `resolve_store`: one order."""
    if given is not None:
        return argument
    return "$TRAINTAPE_STORE" if os.environ.get("TRAINTAPE_STORE") else None


def address_origin(given: str | None, argument: str) -> str | None:
    """Which setting `resolve_address(given, ...)` followed, as `store_origin` says it; None:
    the store's own socket."""
    if given:
        return argument
    return "$TRAINTAPE_ADDRESS" if os.environ.get("TRAINTAPE_ADDRESS") else None


def runtime_dir() -> Path:
    """This user's folder for sockets that cannot live in the store (checked by
    `private_folder` before use): $XDG_RUNTIME_DIR, else `<temp folder>/traintape-<uid>`."""
    xdg = os.environ.get(RUNTIME_ENV)
    if xdg:
        return Path(xdg)
    return Path(tempfile.gettempdir()) / f"traintape-{os.geteuid()}"


def default_address(store: Path, collector: str | None = None) -> str:
    """The ipc:// address of a store's collector (`collector`: its id, None: the store's own).

    It is a socket inside the store, unless that path is too long for a Unix socket name: then it
    is a name derived from the store path in this user's `runtime_dir()`, which the emitter and
    the collector compute alike (and check with `check_ipc_path` before they bind or connect).
    """
    sock = StoreLayout(store, collector).socket
    if len(str(sock)) <= _MAX_IPC_PATH:
        return f"ipc://{sock}"
    named = str(store) if collector is None else f"{store}\0{collector}"
    digest = hashlib.sha1(named.encode()).hexdigest()[:16]
    return f"ipc://{runtime_dir() / f'traintape-{digest}.sock'}"


def resolve_address(address: str | None, store: Path) -> str:
    """The argument, else $TRAINTAPE_ADDRESS, else the default ipc:// socket of the store's
    collector ($TRAINTAPE_COLLECTOR_ID names one of several: traintape.layout)."""
    return address or os.environ.get("TRAINTAPE_ADDRESS") or default_address(store, env_collector())


def spool_dir(store: Path, collector: str | None = None) -> Path:
    """Where an emitter spools batches the collector has not acknowledged in time: the spool of
    `collector`, else of $TRAINTAPE_COLLECTOR_ID's (the one whose socket `resolve_address`
    picks), so a batch waits only in the spool of the collector it was meant for."""
    return StoreLayout(store, collector or env_collector()).spool


def env_collector() -> str | None:
    """$TRAINTAPE_COLLECTOR_ID, checked: the collector an emitter (and `replay`) aims at when
    no address says otherwise."""
    return check_collector_id(os.environ.get(COLLECTOR_ID_ENV) or None, COLLECTOR_ID_ENV)


def owner_name(uid: int) -> str:
    """`name (uid N)` for messages, or `uid N` when the system knows no such user."""
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def private_folder(folder: Path, *, create: bool) -> None:
    """Checks (after making it 0700 when `create` and it is missing) that `folder` is a real
    folder owned by this user that nobody else may enter; raises SecurityError otherwise."""
    if create:
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass  # checked below, whoever made it
        except OSError as exc:
            msg = f"cannot make the socket folder {folder}: {exc}"
            raise SecurityError(msg) from None
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        msg = f"the socket folder {folder} does not exist (${RUNTIME_ENV} names a missing folder?)"
        raise SecurityError(msg) from None
    if not stat.S_ISDIR(st.st_mode):  # a symlink or a file planted in its place
        msg = f"{folder} is not a folder but a {_kind(st.st_mode)}: refusing to use it; remove it"
        raise SecurityError(msg)
    if st.st_uid != os.geteuid():
        msg = (
            f"the socket folder {folder} belongs to {owner_name(st.st_uid)}, not to you: refusing "
            "to use it (another user may be waiting for your events there); remove it, or name "
            "the address with --bind / $TRAINTAPE_ADDRESS"
        )
        raise SecurityError(msg)
    if st.st_mode & 0o077:
        msg = (
            f"the socket folder {folder} has mode {stat.S_IMODE(st.st_mode):04o}: others may "
            f"enter it, so refusing to use it; `chmod 700 {folder}` (after checking what is in it)"
        )
        raise SecurityError(msg)


def check_ipc_path(address: str, *, binding: bool) -> None:
    """Refuses an ipc:// socket another user may have planted (SecurityError).

    A socket in the runtime folder: that folder is checked first (and made 0700 when missing, so
    nobody can make it before us). Any ipc:// path: an existing socket must be ours (or root's, or,
    for a store shared with `--group`, one our group was given on purpose).
    """
    if not address.startswith("ipc://") or address.startswith(("ipc://@", "ipc://*")):
        return  # abstract (no file) or a name ZeroMQ picks
    path = Path(address[len("ipc://") :])
    if path.parent == runtime_dir():
        # $XDG_RUNTIME_DIR is the session manager's to make; our temp folder is ours.
        private_folder(path.parent, create=not os.environ.get(RUNTIME_ENV))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # nothing there yet: the collector binds it, or the emitter waits for it
    except PermissionError:
        return  # the folder is not ours to look into: connecting fails with EACCES alike
    role = "bind" if binding else "send events to"
    if not stat.S_ISSOCK(st.st_mode):
        msg = f"{path} is a {_kind(st.st_mode)}, not a socket: refusing to {role} it; remove it"
        raise SecurityError(msg)
    if not _trusted(st):
        msg = (
            f"the socket {path} belongs to {owner_name(st.st_uid)}, not to you: refusing to "
            f"{role} it (another user may be posing as the collector); stop that process or "
            "remove the file, or use another address"
        )
        raise SecurityError(msg)


def _trusted(st: os.stat_result) -> bool:
    if st.st_uid in (os.geteuid(), 0):
        return True
    # A collector of another user that shares its store with our group (`serve --group`).
    shared = bool(st.st_mode & stat.S_IWGRP) and not st.st_mode & stat.S_IWOTH
    return shared and st.st_gid in {os.getegid(), *os.getgroups()}


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "folder"
    return "socket" if stat.S_ISSOCK(mode) else "file"
