"""Publishes a collector's Parquet tables to object storage (`traintape serve --tables s3://...`).

The journal and the local Parquet files stay as they are; a thread of the materializer's process
copies the committed files (journal range ending at or below the materializer's cursor, so
durable and never rewritten) of the folders this collector owns to the bucket, then writes this
collector's manifest (traintape.schemas.objectstore has the layout):

1. list the local files (`tables/<table>/<run folder>/part-*|compact-*.parquet`);
2. the next manifest: those files, plus any file of the previous manifest that no listed file of
   its folder covers (a merge renaming its inputs one by one can hide a file for a moment: its
   rows stay listed until the merged file is), minus any file another one covers (a merge's
   inputs once the merged file is there), so no journal range is listed twice;
3. upload each file of it not yet in the bucket (a file gone meanwhile was merged: the round is
   abandoned and the next one lists the merged file);
4. put the manifest, which replaces the previous one whole;
5. objects the manifest stopped listing are deleted `grace` seconds later, so a reader that
   listed an older manifest can finish its query.

The bucket is what a reader sees; it lags the local tables by about `interval` seconds. When the
object store cannot be reached, the thread says so once, retries with backoff (up to
BACKOFF_MAX_S) and, when it answers again, publishes everything from the local files; the next
start of the collector does the same from what the bucket holds (its manifest and objects).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from traintape.collector.objectstore import S3Client
from traintape.durable import write_json_atomic
from traintape.errors import StoreError
from traintape.layout import EMPTY_FOLDER, StoreLayout, data_file_range
from traintape.schemas import tables
from traintape.schemas.objectstore import Bucket, Manifest, ManifestFile

INTERVAL_S = 1.0
GRACE_S = 300.0
"""How long an object a manifest stopped listing is kept for readers that listed an older one
(a `traintape.connect()` connection reads the manifest when it opens: see traintape.read.remote)."""
BACKOFF_MAX_S = 30.0
VERIFY_S = 60.0
"""After a failed round, each round for this long checks that the bucket's manifest is the last
one put (a request given up on may still be applied, after a later one)."""

logger = logging.getLogger(__name__)


class Publisher:
    """Keeps `bucket` holding the committed table files of the collector of `layout`."""

    def __init__(
        self,
        layout: StoreLayout,
        bucket: Bucket,
        *,
        interval: float = INTERVAL_S,
        grace: float = GRACE_S,
        client: S3Client | None = None,
    ) -> None:
        self.layout = layout
        self.bucket = bucket
        self.interval = interval
        self.grace = grace
        self._client = client
        self.owner = owner_id(layout)
        self.published: list[ManifestFile] | None = None  # the bucket's manifest; None: unread
        self._manifest: bytes | None = None  # as last put
        self._verify_until = 0.0  # after a failure, each round checks the bucket's manifest
        self.position = -1  # the journal position the bucket's manifest covers
        self.uploaded: set[str] = set()  # keys known to be in the bucket
        self.retired: dict[str, float] = {}  # key -> when (monotonic) a manifest dropped it
        self.uploads = 0
        self.deletes = 0
        self.published_at: float | None = None
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traintape-publisher", daemon=True)

    @property
    def client(self) -> S3Client:
        if self._client is None:  # made on the thread: boto3 takes about a second to import
            self._client = S3Client(self.bucket)
        return self._client

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """A last round (the materializer stopped first, so it sees the last files), unless the
        object store is failing now: then the next start catches up."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.failing_since is None:
            self.round()

    def status(self) -> dict[str, Any]:
        return {
            "url": self.bucket.url,
            "position": max(self.position, 0),
            "files": len(self.published or ()),
            "uploads": self.uploads,
            "deletes": self.deletes,
            "pending_deletes": len(self.retired),
            "published_at": self.published_at,
            "failing_since": self.failing_since,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            delay = self.interval if self.round() else min(max(delay, 1.0) * 2, BACKOFF_MAX_S)

    def round(self) -> bool:
        """One publishing round; False if the object store failed it (logged once per outage)."""
        try:
            self.publish_once()
        except Exception as exc:  # the object store, the network: the local files keep it all
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._verify_until = time.monotonic() + VERIFY_S
            if self.failing_since is None:
                self.failing_since = time.time()
                logger.warning(
                    "cannot publish the tables to %s (%s); retrying with backoff, the local "
                    "tables keep everything",
                    self.bucket.url,
                    self.last_error,
                )
            return False
        if self.failing_since is not None:
            logger.warning(
                "publishing to %s again after %.0f s: caught up to journal position %d",
                self.bucket.url,
                time.time() - self.failing_since,
                self.position,
            )
            self.failing_since = None
        self.last_error = None
        return True

    def publish_once(self) -> None:
        """Steps 1-5 of the module docstring."""
        if self.published is None:
            self._load_bucket()
        assert self.published is not None
        committed = committed_position(self.layout)
        # A cursor that went back (its state file lost): the materializer rewrites its files with
        # other ranges, so none of the last manifest's is carried over.
        previous = self.published if committed >= self.position else []
        files = next_manifest(previous, self.local_files(committed), committed)
        for f in files:
            key = self.bucket.data_key(f.table, f.folder, f.name)
            if key not in self.uploaded:
                try:
                    self.client.upload(self.layout.table(f.table) / f.folder / f.name, key)
                except FileNotFoundError:  # merged away since listed: the next round lists
                    return  # the merged file (not an outage; nothing was published yet)
                self.uploaded.add(key)
                self.uploads += 1
        if files != self.published or committed != self.position:
            manifest = Manifest(self.layout.collector, committed, files, self.owner).encode()
            self.client.put(self.bucket.manifest(self.layout.collector), manifest)
            self._manifest = manifest
            now, listed = time.monotonic(), self._keys(files)
            for key in self._keys(self.published) - listed:
                self.retired.setdefault(key, now)
            for key in listed:  # a leftover found at the start that this manifest lists again
                self.retired.pop(key, None)
            self.published, self.position, self.published_at = files, committed, time.time()
        if time.monotonic() < self._verify_until:
            self._manifest_is_ours()
        self._delete_retired()

    def _manifest_is_ours(self) -> bool:
        """Whether the bucket's manifest is the one last put; if not, puts it again. A PUT the
        client gave up on in an outage may reach the server after a later one (an older
        manifest, listing objects since deleted, would otherwise stay)."""
        key = self.bucket.manifest(self.layout.collector)
        if self._manifest is None or self.client.get(key) == self._manifest:
            return True
        self.client.put(key, self._manifest)
        logger.warning("%s was an older one than last put (a late request): put again", key)
        return False

    def _keys(self, files: Iterable[ManifestFile]) -> set[str]:
        return {self.bucket.data_key(f.table, f.folder, f.name) for f in files}

    def _load_bucket(self) -> None:
        """What the bucket holds of this collector: its manifest and its objects (an object no
        manifest lists is a leftover: an upload before a crash, a merge's input)."""
        key = self.bucket.manifest(self.layout.collector)
        data = self.client.get(key)
        found = None if data is None else Manifest.decode(data, self.bucket.object_url(key))
        if found is not None and found.owner != self.owner:
            msg = (
                f"{self.bucket.object_url(key)} is published by another store folder (owner "
                f"{found.owner}, this one {self.owner}): give each collector its own "
                "--collector-id, or each store its own --tables prefix (if this store replaced "
                "that one, delete that manifest)"
            )
            raise StoreError(msg)
        files = [] if found is None else found.files
        uploaded = set()
        for table in tables.TABLES:
            prefix = self.bucket.data_prefix(table)
            for stored in self.client.keys(prefix):
                if self.layout.owns_folder(stored[len(prefix) :].split("/", 1)[0]):
                    uploaded.add(stored)
        now = time.monotonic()
        for leftover in uploaded - self._keys(files):
            self.retired.setdefault(leftover, now)
        self.uploaded, self.published, self._manifest = uploaded, files, data

    def _delete_retired(self) -> None:
        due = [k for k, t in self.retired.items() if time.monotonic() - t >= self.grace]
        if not due:
            return
        if not self._manifest_is_ours():  # that older one may list them: another grace
            for k in due:
                self.retired[k] = time.monotonic()
            return
        self.client.delete(sorted(due))
        for key in due:
            del self.retired[key]
            self.uploaded.discard(key)
        self.deletes += len(due)

    def local_files(self, committed: int) -> list[ManifestFile]:
        """This collector's committed data files, as they are now."""
        found = []
        for table in tables.TABLES:
            try:
                folders = list(self.layout.table(table).iterdir())
            except FileNotFoundError:
                continue
            for folder in folders:
                if folder.name == EMPTY_FOLDER or not self.layout.owns_folder(folder.name):
                    continue
                found += _folder_files(table, folder, committed)
        return found


def _folder_files(table: str, folder: Path, committed: int) -> list[ManifestFile]:
    files = []
    try:
        paths = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for path in paths:
        bounds = data_file_range(path.name)
        if bounds is None or not path.name.endswith(".parquet") or bounds[1] > committed:
            continue  # a tmp file, a merge's hidden input, or a range not committed yet
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # merged away just now: the merged file stands for it
            continue
        files.append(ManifestFile(table, folder.name, path.name, bounds[0], bounds[1], size))
    return files


def next_manifest(
    previous: list[ManifestFile], listed: list[ManifestFile], committed: int
) -> list[ManifestFile]:
    """The files the next manifest lists (step 2 of the module docstring), sorted."""
    by_folder: dict[tuple[str, str], list[ManifestFile]] = {}
    for f in listed:
        by_folder.setdefault((f.table, f.folder), []).append(f)
    for f in previous:
        here = by_folder.setdefault((f.table, f.folder), [])
        if f.end <= committed and not any(g.contains(f) for g in here):
            here.append(f)
    chosen = []
    for group in by_folder.values():
        for f in group:
            if not any(g != f and g.contains(f) for g in group):
                chosen.append(f)
    return sorted(set(chosen), key=lambda f: (f.table, f.folder, f.start, f.end, f.name))


def status_line(status: dict[str, Any]) -> str:
    """A publisher's status (`Publisher.status()`) as `traintape status` prints it."""
    text = (
        f"{status.get('url')}: {status.get('files')} files to journal position "
        f"{status.get('position')}, {status.get('uploads')} uploaded, "
        f"{status.get('pending_deletes')} replaced objects awaiting deletion"
    )
    if status.get("failing_since") is not None:
        age = time.time() - float(status["failing_since"])
        text += f"; FAILING for {age:.0f}s (retrying; the local tables keep everything)"
    if status.get("last_error"):
        text += f", last error: {status['last_error']}"
    return text


def owner_id(layout: StoreLayout) -> str:
    """This collector's publisher id (`<home>/state/publisher.json`), made at its first start:
    what its manifest names as its owner."""
    path = layout.state / "publisher.json"
    try:
        return str(json.loads(path.read_text())["owner"])
    except FileNotFoundError:
        owner = uuid.uuid4().hex
        write_json_atomic(path, {"owner": owner}, durable=True)
        return owner


def committed_position(layout: StoreLayout) -> int:
    """The materializer's cursor: every file range at or below it is committed."""
    try:
        return int(json.loads(layout.materializer_cursor.read_text())["position"])
    except FileNotFoundError:
        return 0


class PublishingMaterializer:
    """The materializer process's follower when `--tables` is given: the materializer, and the
    publisher beside it (stopped after it, so its last round sees the last files)."""

    def __init__(self, materializer: Any, publisher: Publisher) -> None:
        self.materializer = materializer
        self.publisher = publisher

    def start(self) -> None:
        self.materializer.start()
        self.publisher.start()

    def stop(self) -> None:
        self.materializer.stop()
        self.publisher.stop()

    def status(self) -> dict[str, Any]:
        return {**self.materializer.status(), "tables": self.publisher.status()}


def publishing(materializer: Any, config: dict[str, Any]) -> PublishingMaterializer:
    """Wraps the materializer of `layout` with a publisher to `config["tables"]`."""
    publisher = Publisher(
        materializer.layout,
        Bucket.parse(config["tables"]),
        grace=GRACE_S if config.get("tables_grace") is None else float(config["tables_grace"]),
    )
    return PublishingMaterializer(materializer, publisher)
