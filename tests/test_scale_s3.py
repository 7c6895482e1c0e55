"""Tables on object storage (`traintape serve --tables s3://...`) against a real S3-compatible
server (moto's standalone server, started on 127.0.0.1 once for the module): every row read back
from the bucket exactly once, through compaction and an outage of the server; never a partial
object; never a credential in the store, the bucket or the collector's output."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import traintape
from tests.conftest import CollectorProcess, free_port, query
from traintape.collector.publish import Publisher, next_manifest
from traintape.emitter.emitter import Emitter
from traintape.errors import ConfigError, StoreError
from traintape.layout import StoreLayout
from traintape.schemas.objectstore import Bucket, Manifest, ManifestFile

pytest.importorskip("boto3", reason="the s3 extra: pip install 'traintape[s3]'")
pytest.importorskip("moto", reason="moto[server] (the dev extra) runs the S3 server")

BUCKET = "traintape-test"
URL = f"s3://{BUCKET}/runs/team-a"
SECRET = "tt-secret-" + secrets.token_hex(12)
OUTAGE_S = 10.0


class S3Server:
    """moto's standalone S3 server in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "tt-test-key",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="tt-test-key",
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().list_buckets()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        server.wait_ready()
        server.client().create_bucket(Bucket=BUCKET)
        with pytest.MonkeyPatch.context() as env:  # this process reads the bucket too
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
                env.setenv(name, server.env[name])
            env.setenv("AWS_ENDPOINT_URL", server.endpoint)
            yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def publishing(
    s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorProcess]:
    """One collector publishing to the bucket: runs compacted as soon as they end, replaced
    objects deleted 5 s after the manifest that dropped them."""
    root = tmp_path_factory.mktemp("published")
    config = root / "serve.yaml"
    config.write_text(f"tables: {URL}\ntables_grace: 5\n")
    proc = CollectorProcess(
        root / "store", "--config", str(config), "--compact-settle", "0", env=s3.env
    ).start()
    yield proc
    proc.close()


def manifest(s3: S3Server) -> tuple[int, list[ManifestFile]]:
    data = s3.client().get_object(Bucket=BUCKET, Key="runs/team-a/manifests/_default.json")
    found = Manifest.decode(data["Body"].read(), "manifest")
    return found.position, found.files


def log_run(store: Path, steps: int, chunks: int = 4) -> Emitter:
    """A run of `steps` steps of two values, sent in `chunks` flushes (several part files)."""
    em = Emitter("s3", store=store)
    for c in range(chunks):
        end = (c + 1) * steps // chunks
        for step in range(c * steps // chunks, end):
            em.log({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
        wait_until(f"{end} steps in the local tables", lambda n=2 * end: local_rows(em) == n)
    return em


def local_rows(em: Emitter) -> int:
    sql = "SELECT count(*) FROM metrics WHERE run_id = ?"
    return int(query(em.store, sql, em.run_id)[0][0])


def counts(run_id: str) -> tuple[int, int]:
    """(rows, distinct rows) of the run's metrics, read from the bucket by a new connection."""
    con = traintape.connect(URL)
    try:
        row = con.execute(
            "SELECT count(*), count(DISTINCT (rank, source, seq, key)) FROM metrics "
            "WHERE run_id = ?",
            [run_id],
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0]), int(row[1])


def wait_until(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def listed_objects_are_whole(s3: S3Server) -> None:
    """Every object the manifest lists is there, whole (the size the local file had)."""
    client = s3.client()
    for f in manifest(s3)[1]:
        key = f"runs/team-a/tables/{f.table}/{f.folder}/{f.name}"
        assert client.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == f.size, key


@pytest.mark.slow
def test_a_run_reads_back_from_the_bucket_exactly_once_through_compaction(
    s3: S3Server, publishing: CollectorProcess
) -> None:
    """Every value of a run is read back from the bucket exactly once, by traintape.connect and
    by `traintape query --store s3://...`, while its parts are published, merged and the
    replaced objects deleted; no reader ever counts a row twice or reads a partial object."""
    em = log_run(publishing.store, 4000)
    em.finish(timeout=30)
    expected = 8000
    seen: list[tuple[int, int]] = []
    state: list[Any] = []

    def merged_and_cleaned() -> bool:
        seen.append(counts(em.run_id))
        listed_objects_are_whole(s3)
        files = [f for f in manifest(s3)[1] if f.folder == em.run_id and f.table == "metrics"]
        prefix = f"runs/team-a/tables/metrics/{em.run_id}/"
        stored = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        state[:] = [[f.name for f in files], [o["Key"] for o in stored], seen[-1]]
        merged = len(files) == 1 and files[0].name.startswith("compact-")
        return merged and len(stored) == 1 and seen[-1][0] == expected

    try:
        wait_until("the run merged in the bucket and its parts deleted", merged_and_cleaned)
    except AssertionError as exc:
        msg = f"{exc}: listed, stored, (rows, distinct rows) last seen: {state}"
        raise AssertionError(msg) from None
    assert all(rows == distinct <= expected for rows, distinct in seen), seen
    assert [r for r, _ in seen] == sorted(r for r, _ in seen), "a reader saw rows go missing"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "traintape",
            "query",
            "--format",
            "csv",
            "--store",
            URL,
            f"SELECT count(*) FROM metrics WHERE run_id = '{em.run_id}'",
        ],
        env=s3.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.split() == ["count_star()", str(expected)], out


@pytest.mark.slow
def test_an_outage_of_the_bucket_loses_nothing(s3: S3Server, publishing: CollectorProcess) -> None:
    """With the S3 server stopped for 10 s mid-run, logging goes on, the collector's status and
    `traintape doctor` say publishing fails, and once the server is back every value is in the
    bucket exactly once."""
    em = log_run(publishing.store, 2000, chunks=2)
    wait_until("the first half in the bucket", lambda: counts(em.run_id)[0] == 4000)
    status_file = publishing.store / "state" / "collector.json"
    os.kill(s3.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        for step in range(2000, 4000):
            em.log({"loss": 1.0 / (step + 1), "acc": step / 4000}, step=step)
        report = em.finish(timeout=30)
        assert report.acked > 0 and report.lost == 0, report

        def failing() -> bool:
            return json.loads(status_file.read_text())["tables"]["failing_since"] is not None

        wait_until("the status to say publishing fails", failing, timeout=OUTAGE_S + 10)
        doctor = subprocess.run(
            [sys.executable, "-m", "traintape", "doctor", "--store", str(publishing.store)],
            env=s3.env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert any(line.split()[:2] == ["tables", "warn"] for line in doctor.splitlines()), doctor
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))  # the outage's length
    finally:
        os.kill(s3.proc.pid, signal.SIGCONT)
    wait_until("all of the run in the bucket", lambda: counts(em.run_id) == (8000, 8000))
    wait_until(
        "the status to say publishing works again",
        lambda: json.loads(status_file.read_text())["tables"]["failing_since"] is None,
    )
    log = publishing.log.read_text()
    assert log.count("cannot publish the tables") == 1, log  # said once per outage


@pytest.mark.slow
def test_no_credential_is_written_to_the_store_the_bucket_or_the_output(
    s3: S3Server, publishing: CollectorProcess
) -> None:
    """The secret key appears in no file of the store, no object of the bucket and nothing the
    collector printed (after the runs and the outage above)."""
    needle = SECRET.encode()
    for path in publishing.store.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert needle not in path.read_bytes(), path
    assert needle not in publishing.log.read_bytes()
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys, "nothing was published"
    for key in keys:
        assert needle not in client.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key


def _file(folder: str, start: int, end: int, kind: str = "part") -> ManifestFile:
    return ManifestFile("metrics", folder, f"{kind}-{start:020d}-{end:020d}.parquet", start, end, 1)


def test_the_next_manifest_never_lists_a_range_twice_nor_drops_one() -> None:
    """A merged file replaces the inputs it covers; an input hidden mid-merge stays listed until
    the merged file is; ranges past the cursor are never listed."""
    a, b, c = _file("r", 0, 10), _file("r", 10, 20), _file("r", 20, 30)
    merged = _file("r", 0, 20, "compact")
    assert next_manifest([a, b], [merged, c], 30) == [merged, c]
    assert next_manifest([a, b], [b], 30) == [a, b]  # `a` hidden by a merge under way
    assert next_manifest([], [a, b, merged], 30) == [merged]
    assert next_manifest([a, c], [a], 20) == [a]  # a range past the cursor: not committed


def test_a_manifest_pointing_outside_the_tables_is_refused() -> None:
    """A manifest (bucket content anyone with write access could change) whose entries are not
    a table's part/compact files of a run folder is refused, so a reader never fetches an object
    outside the prefix's tables; a collector's own manifest round-trips."""
    good = Manifest("node-a", 30, [_file("r@node-a", 0, 10), _file("r", 0, 20, "compact")], "o")
    assert Manifest.decode(good.encode(), "m") == good
    bad_files = [
        ManifestFile("metrics", "..", "part-" + "0" * 20 + "-" + "0" * 19 + "1.parquet", 0, 1, 1),
        ManifestFile("metrics", "r", "../../../secret.parquet", 0, 1, 1),
        ManifestFile("../x", "r", "part-" + "0" * 20 + "-" + "0" * 19 + "1.parquet", 0, 1, 1),
        ManifestFile(
            "metrics", "r/../..", "part-" + "0" * 20 + "-" + "0" * 19 + "1.parquet", 0, 1, 1
        ),
        _file(".hidden", 0, 1),
    ]
    for bad in bad_files:
        data = Manifest("node-a", 30, [bad], "o").encode()
        with pytest.raises(StoreError, match="not a table's file|not a traintape manifest"):
            Manifest.decode(data, "m")


def test_a_tables_url_with_credentials_or_a_bad_bucket_is_refused() -> None:
    """`--tables` takes s3://bucket/prefix only: credentials in it, bad names are clear errors."""
    assert Bucket.parse("s3://my-bucket/a/b/").key("x") == "a/b/x"
    for bad in ("s3://key:secret@bucket/p", "s3://B/p", "http://bucket/p", "s3://bucket/a/*"):
        with pytest.raises(ConfigError):
            Bucket.parse(bad)


class FakeBucket:
    """An in-memory stand-in for S3Client (the fast tests of the publisher's bookkeeping; the
    tests above run it against a real S3 server). `down`: every call raises, as in an outage."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.down = False
        self.uploads = 0

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("the object store is down")

    def upload(self, path: Path, key: str) -> None:
        self._check()
        self.objects[key] = path.read_bytes()
        self.uploads += 1

    def put(self, key: str, data: bytes) -> None:
        self._check()
        self.objects[key] = data

    def get(self, key: str) -> bytes | None:
        self._check()
        return self.objects.get(key)

    def keys(self, prefix: str) -> Iterator[str]:
        self._check()
        return iter([k for k in sorted(self.objects) if k.startswith(prefix)])

    def delete(self, keys: list[str]) -> None:
        self._check()
        for key in keys:
            self.objects.pop(key, None)


def _local_store(root: Path, ranges: list[tuple[int, int]], kind: str = "part") -> StoreLayout:
    """A store whose run `r1` has metrics files for `ranges`, committed up to the last end."""
    layout = StoreLayout(root)
    folder = layout.run_folder("metrics", "r1")
    folder.mkdir(parents=True, exist_ok=True)
    for start, end in ranges:
        (folder / f"{kind}-{start:020d}-{end:020d}.parquet").write_bytes(b"x" * (end - start))
    layout.materializer_cursor.parent.mkdir(parents=True, exist_ok=True)
    layout.materializer_cursor.write_text(json.dumps({"position": ranges[-1][1]}))
    return layout


def _publisher(layout: StoreLayout, fake: FakeBucket, grace: float) -> Publisher:
    return Publisher(layout, Bucket.parse("s3://b-1/p"), grace=grace, client=fake)  # type: ignore[arg-type]


def test_a_restarted_publisher_uploads_nothing_twice_and_deletes_leftovers(tmp_path: Path) -> None:
    """A publisher started on a bucket that holds its manifest uploads only what is new, and
    deletes an object no manifest lists (an upload before a crash) after the grace period."""
    layout = _local_store(tmp_path, [(0, 10), (10, 20)])
    fake = FakeBucket()
    _publisher(layout, fake, grace=0).publish_once()
    leftover = "p/tables/metrics/r1/part-00000000000000000040-00000000000000000050.parquet"
    fake.objects[leftover] = b"x"
    _local_store(tmp_path, [(20, 30)])
    again = _publisher(layout, fake, grace=0)
    again.publish_once()
    assert fake.uploads == 3
    names = sorted(k.rsplit("/", 1)[1] for k in fake.objects if "/tables/" in k)
    assert names == [f.name for f in again.published or []]
    assert [(f.start, f.end) for f in again.published or []] == [(0, 10), (10, 20), (20, 30)]


def test_a_late_older_manifest_is_put_back_before_anything_is_deleted(tmp_path: Path) -> None:
    """After a merge, if an older manifest (a PUT given up on in an outage) lands after the new
    one, the publisher puts its own again and deletes the merged inputs only a grace later."""
    layout = _local_store(tmp_path, [(0, 10), (10, 20)])
    fake = FakeBucket()
    publisher = _publisher(layout, fake, grace=3600)
    publisher.publish_once()
    key = "p/manifests/_default.json"
    older = fake.objects[key]
    for f in list(layout.run_folder("metrics", "r1").iterdir()):
        f.unlink()
    _local_store(tmp_path, [(0, 20)], kind="compact")
    publisher.publish_once()
    newer = fake.objects[key]
    fake.objects[key] = older  # the late request
    publisher.grace = 0
    publisher.publish_once()
    assert fake.objects[key] == newer
    assert len([k for k in fake.objects if "/tables/" in k]) == 3  # not deleted yet
    publisher.publish_once()
    assert [k.rsplit("/", 1)[1] for k in fake.objects if "/tables/" in k] == [
        "compact-00000000000000000000-00000000000000000020.parquet"
    ]


def test_an_outage_is_reported_once_and_caught_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the object store fails, rounds fail and the status says since when (one warning);
    when it answers again, one round publishes everything and clears the status."""
    layout = _local_store(tmp_path, [(0, 10)])
    fake = FakeBucket()
    publisher = _publisher(layout, fake, grace=0)
    fake.down = True
    assert not publisher.round() and not publisher.round()
    assert publisher.status()["failing_since"] is not None
    assert publisher.status()["last_error"] == "ConnectionError: the object store is down"
    fake.down = False
    assert publisher.round()
    assert publisher.status()["failing_since"] is None and publisher.status()["files"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "traintape.collector.publish"]
    assert len([w for w in warnings if "cannot publish" in w]) == 1, warnings


def test_two_stores_publishing_as_one_collector_are_refused(tmp_path: Path) -> None:
    """A second store folder publishing under the same collector id and prefix (two nodes
    without --collector-id) is refused with the reason, and deletes none of the first's objects."""
    fake = FakeBucket()
    _publisher(_local_store(tmp_path / "a", [(0, 10)]), fake, grace=0).publish_once()
    before = dict(fake.objects)
    other = _publisher(_local_store(tmp_path / "b", [(0, 5)]), fake, grace=0)
    assert not other.round()
    assert "published by another store folder" in (other.status()["last_error"] or "")
    assert fake.objects == before


READ_COMMANDS = (
    ["runs"],
    ["show", "{run}"],
    ["compare", "{run}"],
    ["best", "--metric", "loss"],
    ["importance", "--metric", "loss"],
    ["plot", "{run}", "--metric", "loss", "-o", "{out}/curves.png"],
    ["export", "{run}", "-o", "{out}/export"],
    ["checkpoints", "{run}"],
    ["tail", "{run}", "--once"],
    ["artifacts", "{run}"],
)
LOCAL_COMMANDS = (
    ["status"],
    ["doctor"],
    ["replay"],
    ["serve"],
    ["gc"],
    ["sync", "{run}", "--to", "tensorboard={out}/tb"],
    ["artifacts", "get", "{run}", "notes.txt", "-o", "{out}"],
)


@pytest.mark.slow
def test_every_command_reads_an_s3_store_or_says_at_once_why_not(
    s3: S3Server, publishing: CollectorProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command that reads tables answers from `--store s3://...` as from the folder; each
    that needs the store's folder (a journal, a collector's state, a spool, artifacts' content)
    exits 1 at once saying that the bucket holds only the published tables."""
    from traintape.cli.main import main

    em = log_run(publishing.store, 100, chunks=1)
    em.log_artifact(b"hello", "notes.txt")
    em.finish(timeout=30)
    wait_until("the run in the bucket", lambda: counts(em.run_id)[0] == 200)
    wait_until(
        "its artifact in the bucket",
        lambda: traintape.connect(URL).execute("SELECT count(*) FROM artifacts").fetchone()[0],
    )
    for argv in READ_COMMANDS:
        args = [a.format(run=em.run_id, out=tmp_path) for a in argv]
        capsys.readouterr()
        assert main([*args, "--store", URL]) == 0, (args, capsys.readouterr())
        if argv[0] == "artifacts":
            assert "notes.txt" in capsys.readouterr().out
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert len(list((tmp_path / "export").iterdir())) >= 4
    for argv in LOCAL_COMMANDS:
        args = [a.format(run=em.run_id, out=tmp_path) for a in argv]
        capsys.readouterr()
        assert main([*args, "--store", URL]) == 1, args
        err = capsys.readouterr().err
        assert f"{URL} holds only the published tables: " in err and "--store DIR" in err, err


@pytest.mark.slow
def test_the_dashboard_follows_an_s3_store_through_compaction_and_deletion(
    s3: S3Server, publishing: CollectorProcess
) -> None:
    """`traintape ui --store s3://...` answers from the bucket, and once the run ends, is merged
    and its part objects deleted (5 s after the manifest that dropped them), the same server
    shows the run completed with every value, read from the merged object; an artifact's
    content, not published, is a 404 that says so."""
    em = log_run(publishing.store, 400, chunks=4)
    wait_until("the parts in the bucket", lambda: counts(em.run_id)[0] == 800)
    proc = subprocess.Popen(
        [sys.executable, "-m", "traintape", "ui", "--store", URL, "--port", "0"],
        env=s3.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert URL in line, line + proc.stdout.read()
        base = line.split(" at ", 1)[1].strip().rstrip("/")

        def api(path: str) -> tuple[int, Any]:
            import urllib.error
            import urllib.request

            try:
                with urllib.request.urlopen(base + path, timeout=30) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        series = f"/api/series?run={em.run_id}&key=loss&ranks=all"
        assert api(series)[1]["total_points"] == 400

        def status() -> str:
            (run,) = [r for r in api("/api/runs")[1]["runs"] if r["run_id"] == em.run_id]
            return str(run["status"])

        assert status() == "running"
        em.finish(timeout=30)
        prefix = f"runs/team-a/tables/metrics/{em.run_id}/"

        def merged_and_deleted() -> bool:
            found = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
            return [o["Key"].rsplit("/", 1)[1][:8] for o in found] == ["compact-"]

        wait_until("the run merged and its parts deleted", merged_and_deleted)
        wait_until("the dashboard to show the run completed", lambda: status() == "completed")
        code, body = api(series)
        assert code == 200 and body["total_points"] == 400, body
        code, body = api(f"/api/object/{'0' * 64}?run={em.run_id}")
        assert code == 404 and "published tables only" in body["error"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
