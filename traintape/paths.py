"""Where things live: the store folder, the collector's default address, the spool folder.

Settled once by whoever starts (emitter `init`, `traintape serve`, a CLI command); never per call.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from traintape.layout import StoreLayout

DEFAULT_STORE_NAME = "traintape-store"
"""A hyphenated name can never be imported, so it cannot shadow the `traintape` package."""

# sockaddr_un.sun_path is 108 bytes on Linux (104 on macOS) including the trailing NUL.
_MAX_IPC_PATH = 100


def resolve_store(store: str | os.PathLike[str] | None = None) -> Path:
    """The store folder: the argument, else $TRAINTAPE_STORE, else ./traintape-store."""
    chosen = store if store is not None else os.environ.get("TRAINTAPE_STORE") or DEFAULT_STORE_NAME
    return Path(chosen).expanduser().resolve()


def default_address(store: Path) -> str:
    """The collector's ipc:// address for a store.

    It is a socket inside the store, unless that path is too long for a Unix socket name: then it
    is a name in the temp folder derived from the store path, which the emitter and the
    collector compute alike.
    """
    sock = StoreLayout(store).socket
    if len(str(sock)) <= _MAX_IPC_PATH:
        return f"ipc://{sock}"
    digest = hashlib.sha1(str(store).encode()).hexdigest()[:16]
    return f"ipc://{Path(tempfile.gettempdir()) / f'traintape-{digest}.sock'}"


def resolve_address(address: str | None, store: Path) -> str:
    """The argument, else $TRAINTAPE_ADDRESS, else the store's default ipc:// socket."""
    return address or os.environ.get("TRAINTAPE_ADDRESS") or default_address(store)


def spool_dir(store: Path) -> Path:
    """Where an emitter spools batches the collector has not acknowledged in time."""
    return StoreLayout(store).spool
