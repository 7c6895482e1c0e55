"""Tables on object storage: the bucket's layout and the manifest, shared by the collector's
publisher (traintape.collector.publish) and the reader (traintape.read.remote).

::

    s3://<bucket>/<prefix>/
      manifests/<collector id>.json                each collector's current files (`_default`:
                                                   the store's own collector, which has no id)
      tables/<table>/<run folder>[@<id>]/<file>    part-*/compact-*.parquet, immutable: the
                                                   store's local paths (traintape.layout)

Each collector publishes only under its own id: no object is written by two collectors, so
nothing needs a lock across nodes, and a reader unions every manifest. A data object is put
whole (an S3 PUT is atomic) before any manifest lists it; a manifest is replaced whole, so a
reader that lists the manifest reads a set of whole files in which no journal range appears
twice. An object a newer manifest no longer lists (compaction replaced it) is deleted only
after a grace period, so a query that read the older manifest can still finish.

Importing this module imports nothing but the standard library.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from traintape.errors import ConfigError, StoreError

SCHEME = "s3://"
MANIFEST_VERSION = 1
MANIFESTS = "manifests"
TABLES = "tables"
ENDPOINT_ENV = ("TRAINTAPE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Variables naming an S3-compatible server's endpoint, first found wins (AWS's own names)."""
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"[A-Za-z0-9._\-=/]*")
DEFAULT_COLLECTOR = "_default"
"""The manifest name of a store's own collector (no id; ids start alphanumeric)."""


def is_remote(store: object) -> bool:
    """Whether a store argument names object storage (`s3://bucket/prefix`)."""
    return isinstance(store, str) and store.startswith(SCHEME)


@dataclass(frozen=True)
class Bucket:
    """Where a store's tables live on object storage: `s3://<bucket>/<prefix>`."""

    bucket: str
    prefix: str  # without a leading or trailing "/"; "" for the bucket's root

    @classmethod
    def parse(cls, url: str, where: str = "--tables") -> Bucket:
        """`s3://bucket[/prefix]`; credentials in the URL are refused (they would end up in
        logs and status files): they come from the AWS variables and files."""
        if not url.startswith(SCHEME):
            msg = f"{where}: {url!r} is not an s3://bucket/prefix URL"
            raise ConfigError(msg)
        bucket, _, prefix = url[len(SCHEME) :].partition("/")
        if "@" in bucket or ":" in bucket:
            msg = (
                f"{where}: put no credentials or port in the URL; they come from "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws, the endpoint from "
                "AWS_ENDPOINT_URL"
            )
            raise ConfigError(msg)
        if not _BUCKET.match(bucket):
            msg = f"{where}: {bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)"
            raise ConfigError(msg)
        prefix = prefix.strip("/")
        if not _PREFIX.fullmatch(prefix):  # no glob characters: readers list objects by URL
            msg = f"{where}: the prefix {prefix!r} may hold only A-Z a-z 0-9 . _ - = /"
            raise ConfigError(msg)
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            msg = f"{where}: the prefix {prefix!r} has an empty, '.' or '..' part"
            raise ConfigError(msg)
        return cls(bucket, prefix)

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def manifests(self) -> str:
        """The key prefix every collector's manifest lies under (ends with "/")."""
        return self.key(MANIFESTS) + "/"

    def manifest(self, collector: str | None) -> str:
        """The manifest of collector `collector` (None: the store's own)."""
        return self.key(MANIFESTS, f"{collector or DEFAULT_COLLECTOR}.json")

    def data_prefix(self, table: str) -> str:
        """The key prefix of every collector's objects of one table (ends with "/")."""
        return self.key(TABLES, table) + "/"

    def data_key(self, table: str, folder: str, name: str) -> str:
        """The object of the local file `tables/<table>/<folder>/<name>` (the run folder names
        its collector: `<run>@<ID>`, traintape.layout)."""
        return self.key(TABLES, table, folder, name)

    def object_url(self, key: str) -> str:
        return f"{SCHEME}{self.bucket}/{key}"


def endpoint_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The S3-compatible endpoint the environment names, or None for AWS's own."""
    environ = os.environ if environ is None else environ
    for name in ENDPOINT_ENV:
        if environ.get(name):
            return environ[name]
    return None


_TABLE_NAME = re.compile(r"[a-z_]{1,32}")
_FOLDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._\-]{0,254}(@[A-Za-z0-9][A-Za-z0-9._\-]{0,63})?")
_FILE = re.compile(r"(part|compact)-[0-9]{20}-[0-9]{20}\.parquet")


def _a_data_object(f: ManifestFile) -> bool:
    """Whether `f` names a file a collector publishes (traintape.layout's names): no `..`, no
    `/`, nothing a reader would fetch from outside `tables/`."""
    return bool(
        _TABLE_NAME.fullmatch(f.table)
        and _FOLDER.fullmatch(f.folder)
        and ".." not in f.folder
        and _FILE.fullmatch(f.name)
        and 0 <= f.start <= f.end
    )


@dataclass(frozen=True)
class ManifestFile:
    """One data object a manifest lists: the local file's table, run folder and name."""

    table: str
    folder: str
    name: str
    start: int
    end: int
    size: int

    def contains(self, other: ManifestFile) -> bool:
        """Whether this file's journal range covers `other`'s (a merge of it, or itself)."""
        return self.start <= other.start and other.end <= self.end


@dataclass(frozen=True)
class Manifest:
    """One collector's manifest: its id, the journal position its files cover, its files, and
    `owner`: the id of the local store folder that publishes it (two stores publishing under one
    collector id would delete each other's objects: the publisher refuses, traintape.collector.
    publish)."""

    collector: str | None
    position: int
    files: list[ManifestFile]
    owner: str

    def encode(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "collector": self.collector,
            "owner": self.owner,
            "position": self.position,
            "files": [[f.table, f.folder, f.name, f.start, f.end, f.size] for f in self.files],
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, where: str) -> Manifest:
        try:
            body: Any = json.loads(data)
            if body.get("version") != MANIFEST_VERSION:
                version = body.get("version")
                msg = f"{where}: manifest version {version!r}, expected {MANIFEST_VERSION}"
                raise StoreError(msg)
            files = [
                ManifestFile(str(t), str(d), str(n), int(s), int(e), int(z))
                for t, d, n, s, e, z in body["files"]
            ]
            bad = next((f for f in files if not _a_data_object(f)), None)
            if bad is not None:  # a reader must never be pointed outside the prefix's tables
                msg = f"{where}: lists {bad.table}/{bad.folder}/{bad.name}, not a table's file"
                raise StoreError(msg)
            return cls(body["collector"], int(body["position"]), files, str(body["owner"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            msg = f"{where}: not a traintape manifest ({type(exc).__name__}: {exc})"
            raise StoreError(msg) from None
