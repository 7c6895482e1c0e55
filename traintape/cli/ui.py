"""`traintape ui`: the dashboard (traintape.ui) served by uvicorn, read-only over a store."""

from __future__ import annotations

import argparse
import secrets
import signal
import socket
import sys
from typing import Any

from traintape.paths import remote_store, resolve_store

UI_EXTRA = "the dashboard needs its extra: pip install 'traintape[ui]'"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `ui` subcommand's options."""
    p = sub.add_parser("ui", help="a live dashboard of the store in the browser (Ctrl-C stops it)")
    p.add_argument(
        "--store",
        default=None,
        help="store folder, or s3://BUCKET/PREFIX for the tables published there (read-only; "
        "no artifacts' content) (default: $TRAINTAPE_STORE, else ./traintape-store)",
    )
    p.add_argument("--port", type=int, default=8421, help="TCP port; 0 picks a free one")
    p.add_argument("--bind", default="127.0.0.1", metavar="HOST", help="address to listen on")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --bind other hosts can reach; a random token printed at start is then "
        "required by every request",
    )
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.set_defaults(func=_cmd_ui)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the URL is printed (so --port 0 can say its port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket, token: str | None) -> str:
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    if host in ("0.0.0.0", "[::]"):
        host = socket.gethostname()
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _store(given: str | None) -> Any:
    """The store the dashboard reads: a store folder, or the tables published at an s3:// URL,
    followed as the collectors' manifests change (traintape.ui.stores)."""
    from traintape.errors import StoreNotFoundError
    from traintape.layout import StoreLayout

    remote = remote_store(given)
    if remote is not None:
        from traintape.read.remote import RemoteTables

        return RemoteTables(remote)
    store = resolve_store(given)
    if not StoreLayout(store).tables.is_dir():
        msg = f"no traintape store at {store}: pass --store DIR (the folder `serve` writes)"
        raise StoreNotFoundError(msg)
    return store


def _cmd_ui(args: argparse.Namespace) -> int:
    from traintape.security import remote_reason

    try:
        import uvicorn

        from traintape.ui.server import create_app, plotly_js
    except ImportError as exc:
        print(f"traintape ui: {UI_EXTRA} ({exc})", file=sys.stderr)
        return 2
    if not plotly_js().is_file():
        print(f"traintape ui: {UI_EXTRA} (no plotly.min.js)", file=sys.stderr)
        return 2
    reason = remote_reason(args.bind)
    if reason is not None and not args.allow_remote:
        print(
            f"traintape ui: --bind {args.bind} accepts other hosts ({reason}); keep the default "
            "127.0.0.1 (and use an SSH tunnel), or pass --allow-remote to mean it",
            file=sys.stderr,
        )
        return 2
    store = _store(args.store)
    token = secrets.token_urlsafe(24) if reason is not None else None
    try:
        sock = _listen(args.bind, args.port)
    except OSError as exc:
        print(f"traintape ui: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr)
        return 2
    app = create_app(store, token, args.bind)
    url = _url(sock, token)
    print(f"traintape ui: {getattr(store, 'url', store)} at {url}", flush=True)
    if token:
        print("traintape ui: the token in that URL is required by every request", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    # SIGINT/SIGTERM: uvicorn finishes the requests under way, then raises the signal again
    # with the handler it found: Ctrl-C's KeyboardInterrupt, and the same for SIGTERM (whose
    # default would kill the process mid-sentence), both a stop asked for, so a clean exit.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    print("traintape ui: stopped", flush=True)
    return 0
