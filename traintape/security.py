"""What keeps a store and its collector to their user: file modes, bind addresses, CURVE keys.

Files: `traintape serve` makes its process (and so its children) create everything 0600 in 0700
folders whatever the caller's umask, and fixes what an earlier run left wider (`secure_store`);
with `--group NAME` the store is shared read-only with that group instead (0640 files in 0750
setgid folders, the ipc socket 0660). CURVE secret keys are written 0600 from the first byte and
`keys/` stays 0700 either way.

Binds: a tcp:// address is loopback only if every address its host names is (`remote_reason`
parses and resolves it as ZeroMQ would: `*`, `0`, `0x0`, `00.0.0.0`, `[::0]`, interface names,
host names); anything else needs `--allow-remote`.

CURVE: ipc:// and loopback tcp:// stay plain. A tcp:// bind on any other interface (or any tcp://
bind with `traintape serve --curve`) is served with CURVE: the collector's keypair lives in
`<store>/keys/collector.key` (public) and `collector.key_secret`, made on first use. Emitters
name the collector's public key with $TRAINTAPE_SERVER_KEY (the z85 text `traintape serve`
prints). When `<store>/keys/clients/` holds public keys (`*.key`), only those clients are
accepted, each with its own secret key file in $TRAINTAPE_CLIENT_KEY; otherwise any client that
knows the server's key is (the link is still encrypted and the server authenticated), and
`serve` says so at start. `serve --rotate-key` retires the keypair to `keys/retired/` and makes a
new one: emitters still holding the old key spool what they log (nothing is lost), and
`traintape replay` with the new key delivers it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from traintape.errors import SecurityError
from traintape.layout import StoreLayout
from traintape.paths import check_ipc_path

SERVER_KEY_ENV = "TRAINTAPE_SERVER_KEY"
CLIENT_KEY_ENV = "TRAINTAPE_CLIENT_KEY"

_SIOCGIFFLAGS = 0x8913  # Linux
_IFF_LOOPBACK = 0x8

# -- bind and connect addresses ------------------------------------------------------------------


def tcp_host(address: str) -> str:
    """The host of `tcp://HOST:PORT` (brackets of an IPv6 address removed; for ZeroMQ's
    `tcp://SOURCE;HOST:PORT` connect form, the HOST after the `;`)."""
    rest = address[len("tcp://") :].rsplit(";", 1)[-1]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def remote_reason(host: str) -> str | None:
    """None when `host` (of a tcp:// address) stays on this machine, else why it does not.

    Parsed and resolved, never string-matched: `0`, `0x0`, `00.0.0.0` and `::0` are the
    unspecified address (every interface) as `*` and `0.0.0.0` are; an interface name counts as
    loopback only if the kernel flags it so; a host name only if every address it resolves to is
    loopback. A name that does not resolve cannot be told safe, so it counts as remote.
    """
    if host in ("", "*"):
        return "every interface"
    interface = _interface_is_loopback(host)
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        ips = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    except (OSError, UnicodeError, ValueError):
        ips = None
    if interface is False:
        return f"interface {host} is not the loopback interface"
    if interface is None and ips is None:
        return f"{host!r} resolves to no address here, so it cannot be told to be loopback"
    for ip in ips or ():
        plain = (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip
        if plain.is_unspecified:
            return "every interface"
        if not plain.is_loopback:
            return f"{host} is {ip}, which other hosts can reach"
    return None


def _interface_is_loopback(name: str) -> bool | None:
    """None if `name` is no network interface; else whether the kernel flags it loopback."""
    try:
        if name not in {n for _, n in socket.if_nameindex()}:
            return None
    except OSError:
        return None
    if not sys.platform.startswith("linux"):
        return False  # no portable way to ask: take it as remote
    import fcntl
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            request = struct.pack("16sH", name.encode()[:15], 0)
            flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, request))[1]
    except OSError:
        return False
    return bool(flags & _IFF_LOOPBACK)


def is_remote_tcp(address: str) -> bool:
    """A tcp:// address whose host is not loopback (see `remote_reason`)."""
    return address.startswith("tcp://") and remote_reason(tcp_host(address)) is not None


# -- the store's files ---------------------------------------------------------------------------


def resolve_group(name: str) -> int:
    """The gid of group `name` (or a number), which this user must belong to."""
    import grp

    try:
        gid = int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        msg = f"--group {name}: no such group on this machine"
        raise SecurityError(msg) from None
    if os.geteuid() != 0 and gid not in {os.getegid(), *os.getgroups()}:
        msg = f"--group {name}: you are not a member of that group, so the store cannot be given to it"
        raise SecurityError(msg)
    return gid


def secure_store(store: Path, group: str | None = None, *, rotate_key: bool = False) -> list[str]:
    """Makes this process create files 0600 in 0700 folders (0640 in 0750 with `group`),
    whatever the umask it was started with, and brings `store` to the same modes; with
    `rotate_key`, retires the CURVE keypair for a new one (`rotate_collector_key`). Returns what
    the person starting the collector should read (`traintape serve` prints it).

    Called once at the start of `traintape serve`: its children (materializer, sinks) inherit
    the umask. Files of other users in the store (a group member's checkpoints) are left as they
    are; keys/ stays 0700 with 0600 files even when the store is shared.
    """
    gid = resolve_group(group) if group else None
    os.umask(0o027 if gid is not None else 0o077)
    keys = StoreLayout(store).keys
    notes: list[str] = []
    try:
        store.mkdir(parents=True, exist_ok=True)
        failed: list[str] = []
        for folder, _, files in os.walk(store):
            here = Path(folder)
            private = here == keys or keys in here.parents
            for path in (here, *(here / name for name in files)):
                try:
                    _fix(path, gid, private)
                except OSError as exc:  # a mount that ignores modes: say so, serve anyway
                    failed.append(f"{path}: {exc.strerror}")
        if failed:
            notes.append(
                f"WARNING: could not set the mode of {len(failed)} entries of the store (first: "
                f"{failed[0]}); their privacy rests on the filesystem"
            )
        if rotate_key:
            retired = rotate_collector_key(store)
            notes.append(
                f"a new CURVE key; the old one is in {retired} (emitters holding it spool what "
                "they log: `traintape replay` with the new key delivers it)"
            )
    except OSError as exc:
        msg = f"cannot make {store} private: {exc}"
        raise SecurityError(msg) from None
    return notes


def _fix(path: Path, gid: int | None, private: bool) -> None:
    """Sets one entry we own to the store's modes (see `secure_store`)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # removed while we walked
    if st.st_uid != os.geteuid() or stat.S_ISLNK(st.st_mode):
        return  # not ours to change; a link's mode is its target's
    folder = stat.S_ISDIR(st.st_mode)
    if gid is None or private:
        mode = 0o700 if folder else 0o600
    else:
        mode = 0o2750 if folder else (0o660 if stat.S_ISSOCK(st.st_mode) else 0o640)
        if st.st_gid != gid:
            os.chown(path, -1, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def restrict_socket(path: Path, store: Path) -> None:
    """An ipc:// socket just bound: 0600, or 0660 for the group the store is shared with."""
    if str(path).startswith("@"):
        return  # an abstract socket has no file (check_bind_address asks --allow-remote for it)
    try:
        st = os.stat(store)
    except OSError:
        st = None
    if st is not None and st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IRGRP:
        os.chown(path, -1, st.st_gid)
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)


# -- CURVE keys ----------------------------------------------------------------------------------


def keys_dir(store: Path) -> Path:
    return StoreLayout(store).keys


def _private_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(folder)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(folder, 0o700)


def _write_0600(path: Path, text: str) -> None:
    """Writes `text` to a file that is 0600 from its creation on (no chmod window), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_keypair(folder: Path, name: str) -> Path:
    """A new CURVE keypair as `name.key` (public) and `name.key_secret`, in zmq.auth's format;
    returns the secret file."""
    _private_folder(folder)
    public, secret = (k.decode() for k in zmq.curve_keypair())
    made = f"#   made by traintape on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
    _write_0600(folder / f"{name}.key", f'{made}metadata\ncurve\n    public-key = "{public}"\n')
    secret_file = folder / f"{name}.key_secret"
    _write_0600(
        secret_file,
        f"{made}#   the secret key: give it to nobody\nmetadata\ncurve\n"
        f'    public-key = "{public}"\n    secret-key = "{secret}"\n',
    )
    return secret_file


def collector_keys(store: Path) -> tuple[bytes, bytes]:
    """(public, secret) of the collector, made on first use (0600 files in a 0700 keys/)."""
    folder = keys_dir(store)
    secret_file = folder / "collector.key_secret"
    _private_folder(folder)
    if not secret_file.exists():
        write_keypair(folder, "collector")
    public, secret = zmq.auth.load_certificate(str(secret_file))
    assert secret is not None
    return public, secret


def rotate_collector_key(store: Path) -> Path | None:
    """Moves the collector's keypair to `keys/retired/<UTC time>.key*` and makes a new one;
    returns the retired secret file (None when there was no key yet)."""
    folder = keys_dir(store)
    secret_file = folder / "collector.key_secret"
    retired = None
    if secret_file.exists():
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        _private_folder(folder / "retired")
        retired = folder / "retired" / f"collector-{stamp}.key_secret"
        os.replace(secret_file, retired)
        public = folder / "collector.key"
        if public.exists():
            os.replace(public, retired.with_suffix(".key"))
    write_keypair(folder, "collector")
    return retired


def allowed_clients(store: Path) -> Path | None:
    """The folder of accepted client public keys, or None to accept any client."""
    folder = keys_dir(store) / "clients"
    return folder if folder.is_dir() and any(folder.glob("*.key")) else None


def curve_warning(store: Path) -> str | None:
    """What `serve` says at start when CURVE accepts any client, or None with an allow-list."""
    if allowed_clients(store) is not None:
        return None
    return (
        f"WARNING: CURVE without an allow-list: any client that knows the public key may write "
        f"events. To restrict writers, put their public keys (*.key) in {keys_dir(store)}/clients/ "
        f"and give each emitter its secret key file in ${CLIENT_KEY_ENV}"
    )


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
    An ipc:// socket (or its runtime folder) that another user owns is refused: events would
    go to whoever planted it (`traintape.paths.check_ipc_path`).
    """
    check_ipc_path(address, binding=False)
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
