"""Hostile input to the media features (issue 18): values `log()` takes, and artifact events
whose metadata lies, read back by `traintape show`, `artifacts get`, the dashboard's endpoints
and the sinks' helpers. Fast tests: functions are called directly, no process is started; each
bad input is stored correctly or refused with a clear error, and one bad event never fails the
others."""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import os
import pickle
import pwd
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import traintape
from tests.conftest import CollectorProcess, query, wait_for
from tests.test_media import _log_media, _Run
from tests.test_sink_media import sink_status
from tests.test_ui_api import start_ui, stop_ui
from traintape import connect, emitter
from traintape.collector.materializer import ensure_empty_tables
from traintape.errors import ArtifactVerifyError
from traintape.layout import StoreLayout
from traintape.read.artifacts import artifact_rows, fetch, media_summary
from traintape.schemas.tables import EVENTS
from traintape.sinks import media as sink_media
from traintape.ui import media as ui_media
from traintape.ui.server import _object

RUN = "attacked"


# -- values log() takes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (pa.table({"s": pa.array([{}], type=pa.struct([]))}), "Parquet cannot store"),
        (
            pa.table({"u": pa.UnionArray.from_sparse(pa.array([0], pa.int8()), [pa.array([1])])}),
            "Parquet cannot store",
        ),
        (pa.table([pa.array([1]), pa.array([2])], names=["a", "a"]), "repeat"),
        (pa.table({"": [1]}), "non-empty"),
    ],
)
def test_a_table_parquet_cannot_hold_is_refused_when_made(frame: pa.Table, match: str) -> None:
    """An Arrow frame of a type Parquet has no form for, or with a repeated or empty column name,
    raises when the Table is made (not later on the artifact thread, where it would be lost)."""
    with pytest.raises((TypeError, ValueError), match=match):
        traintape.Table(dataframe=frame)


def test_rows_that_are_not_rows_are_refused_with_a_clear_error() -> None:
    """A dict or a str as data, a str as a row, and an int past int64 each raise a message
    naming the problem, never a table of keys or characters."""
    with pytest.raises(TypeError, match="takes rows"):
        traintape.Table(columns=["a"], data={"a": [1, 2]})
    with pytest.raises(TypeError, match="row 0 is a str"):
        traintape.Table(columns=["a", "b"], data=["ab"])
    with pytest.raises(TypeError, match="takes rows"):
        traintape.Table(columns=["a"], data=5)
    with pytest.raises(TypeError, match="column 'a' cannot be stored"):
        traintape.Table(columns=["a"], data=[(2**70,)])


def test_text_no_event_can_hold_is_refused_at_the_call_and_later_media_are_stored(
    tmp_path: Path,
) -> None:
    """A caption over one event's size, a lone surrogate in a caption or key, and column names
    over one event's size raise at log() with nothing queued; the next image is stored."""
    run = _Run(tmp_path / "store")
    pixels = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="over the"):
        _log_media(run, {"img": traintape.Image(pixels, caption="x" * (17 << 20))}, 0, 0)
    with pytest.raises(ValueError, match="not UTF-8"):
        _log_media(run, {"img": traintape.Image(pixels, caption="\ud800")}, 0, 0)
    with pytest.raises(ValueError, match="not UTF-8"):
        _log_media(run, {"k\udcff": traintape.Image(pixels)}, 0, 0)
    names = [f"{i:06d}" + "c" * 100 for i in range(170_000)]
    with pytest.raises(ValueError, match="over the"):
        _log_media(run, {"t": traintape.Table(columns=names, data=[])}, 0, 0)
    _log_media(run, {"ok": traintape.Image(pixels, caption="fine")}, 1, 0)
    run.writer.close()
    assert [body["name"] for _, _, body in run.events] == ["ok"]


def test_a_copied_or_pickled_image_has_its_own_pixels_and_later_images_keep_theirs(
    tmp_path: Path,
) -> None:
    """copy.copy, deepcopy and pickle of an Image give one with the same PNG and its own snapshot,
    so once both are freed two new images never share a buffer (each encodes its own pixels); an
    Image of a file refuses to be copied rather than close its descriptor twice."""
    image = traintape.Image(np.full((32, 32, 3), 10, np.uint8), caption="c")
    png = image.encode()
    clones = [copy.copy(image), copy.deepcopy(image), pickle.loads(pickle.dumps(image))]
    assert [c.encode() for c in clones] == [png] * 3
    del image, clones
    gc.collect()
    first = traintape.Image(np.full((32, 32, 3), 1, np.uint8))
    second = traintape.Image(np.full((32, 32, 3), 2, np.uint8))
    assert first.encode()[0] != second.encode()[0]
    path = tmp_path / "a.png"
    path.write_bytes(png[0])
    with pytest.raises(TypeError, match="make another Image"):
        copy.copy(traintape.Image(str(path)))


def test_a_copied_or_pickled_handed_over_float_image_keeps_its_values() -> None:
    """A copy or pickle of an Image whose float array was handed over (copy=False) encodes the
    same PNG (its bytes copied as bytes, not the floats cast to uint8), and none of them puts
    the caller's array into the snapshot buffers when freed."""
    from traintape.emitter.media_pixels import SNAPSHOTS

    array = np.linspace(0.0, 1.0, 24 * 16 * 3, dtype=np.float32).reshape(24, 16, 3)
    image = traintape.Image(array, copy=False)
    png = image.encode()
    clones = [copy.copy(image), copy.deepcopy(image), pickle.loads(pickle.dumps(image))]
    assert [c.encode() for c in clones] == [png] * 3
    del image, clones
    gc.collect()
    assert not any(np.shares_memory(b, array) for b in SNAPSHOTS.free)


# -- events whose metadata lies ------------------------------------------------------------------


def _object_of(store: Path, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    path = StoreLayout(store).artifact_object(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha


def _event(name: str, kind: str, sha: str, size: int, meta: Any, path: str = "") -> str:
    path = path or f"artifacts/objects/{sha[:2]}/{sha[2:]}"
    body = {"name": name, "kind": kind, "bytes": size, "sha256": sha, "path": path}
    return json.dumps({**body, "metadata": meta})


@pytest.fixture(scope="module")
def lying(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store whose run RUN holds good media and artifact events that lie (written as an
    events file, as a client sending raw frames or another tool could leave them)."""
    store = tmp_path_factory.mktemp("attack") / "store"
    store.mkdir()
    ensure_empty_tables(store)
    png, _ = traintape.Image(np.full((4, 4), 9, np.uint8)).encode()
    table, _ = traintape.Table(columns=["a"], data=[(1,)]).encode()
    other, _ = traintape.Table(columns=["b"], data=[(2,)]).encode()
    s_png, s_table, s_other = (_object_of(store, d) for d in (png, table, other))
    damaged = bytearray(png)
    damaged[-5] ^= 0xFF  # flipped: stored under the hash of the good bytes
    s_bad = hashlib.sha256(png + b"x").hexdigest()
    StoreLayout(store).artifact_object(s_bad).parent.mkdir(parents=True, exist_ok=True)
    StoreLayout(store).artifact_object(s_bad).write_bytes(bytes(damaged) + b"x")
    image = {"media": "image", "format": "png", "width": 4, "height": 4, "channels": 1}
    tab = {"media": "table", "format": "parquet", "rows": 1, "columns": ["a"]}
    bodies = [
        _event("good", "image", s_png, len(png), image),
        _event("w", "image", s_png, len(png), {**image, "width": "abc", "height": -5}),
        _event("huge", "image", s_png, len(png), {**image, "width": 2**63 - 1, "height": [1]}),
        _event("cols", "table", s_table, len(table), {**tab, "columns": 5, "rows": "x"}),
        _event("escape", "image", s_png, len(png), image, path="../../../../etc/passwd"),
        _event("missing", "image", "ab" * 32, 10, image),
        _event("damaged", "image", s_bad, len(png) + 1, image),
        _event("png-as-table", "table", s_png, len(png), tab),
        _event("meta-list", "image", s_png, len(png), [1, 2]),
        _event("x" * 300, "table", s_table, len(table), tab),
        _event("nul\x00\n", "table", s_table, len(table), tab),
        _event("表/数据", "table", s_other, len(other), {**tab, "columns": ["b"]}),
    ]
    now = time.time_ns() // 1000
    n = len(bodies)
    columns = {
        "run_id": [RUN] * n,
        "rank": [0] * n,
        "source": ["raw"] * n,
        "seq": list(range(n)),
        "ts": pa.array([now + i for i in range(n)], pa.int64()).cast(pa.timestamp("us", "UTC")),
        "step": list(range(n)),
        "kind": ["artifact"] * n,
        "body": bodies,
    }
    arrays = {f.name: pa.array(columns[f.name]).cast(f.type) for f in EVENTS}
    folder = StoreLayout(store).table("events") / RUN
    folder.mkdir(parents=True)
    pq.write_table(pa.table(arrays, schema=EVENTS), folder / "external-0.parquet")
    con = connect(store)
    return {"store": store, "con": con, "png": s_png, "bad": s_bad, "other": s_other}


def test_the_media_view_and_summaries_read_lying_metadata_as_nulls(lying: dict[str, Any]) -> None:
    """Width, height, rows and columns of the wrong type read as NULL in the `media` view; the
    summaries of `traintape show` and the dashboard answer for the whole run."""
    con = lying["con"]
    found = dict(con.execute("SELECT name, width FROM media WHERE run_id = ?", [RUN]).fetchall())
    assert found["good"] == 4 and found["w"] is None and found["huge"] == 2**63 - 1
    assert "meta-list" not in found  # metadata that is no map: a plain artifact
    summary = {e["name"]: e for e in media_summary(artifact_rows(con, RUN))}
    assert summary["cols"]["last"] == "x rows x ? columns"
    listed = {m["name"] for m in ui_media.media_list(con, RUN)["media"]}
    assert {"good", "w", "cols", "escape"} <= listed


def test_objects_are_found_by_hash_and_checked_never_by_the_events_path(
    lying: dict[str, Any],
) -> None:
    """The dashboard and the sinks read the object named by the sha256, not an event's path
    ("../../etc/passwd"); a damaged object is ArtifactVerifyError (the UI's 409) everywhere."""
    con, store = lying["con"], lying["store"]
    row, path, data = ui_media.object_bytes(con, store, RUN, lying["png"])
    assert path == StoreLayout(store).artifact_object(lying["png"]) and data is not None
    with pytest.raises(ArtifactVerifyError):
        ui_media.object_bytes(con, store, RUN, lying["bad"])
    body = {"name": "damaged", "bytes": path.stat().st_size + 1, "sha256": lying["bad"]}
    with pytest.raises(ArtifactVerifyError):
        sink_media.object_path(store, body)
    with pytest.raises(ArtifactVerifyError):
        fetch(store, artifact_rows(con, RUN), "damaged", store.parent / "out")


def test_artifacts_get_writes_any_recorded_name_as_one_file_of_the_folder(
    lying: dict[str, Any],
) -> None:
    """A 300-character name, and one holding NUL and a newline, are fetched as one file of at most
    255 bytes in the output folder, with the media suffix, not an OSError."""
    con, store = lying["con"], lying["store"]
    out = store.parent / "fetched"
    found = artifact_rows(con, RUN)
    long = fetch(store, found, "x" * 300, out)
    odd = fetch(store, found, "nul\x00\n", out)
    assert long.parent == out and len(long.name.encode()) <= 255 and long.suffix == ".parquet"
    assert odd == out / "nul__.parquet"
    assert {p.name for p in out.iterdir()} == {long.name, odd.name}


def test_the_dashboard_serves_a_table_logged_under_a_non_ascii_key(lying: dict[str, Any]) -> None:
    """The download of a table's object whose key is "表/数据" is a response with an ASCII file
    name (headers are latin-1), not a server error."""
    con, store = lying["con"], lying["store"]
    response = _object(*ui_media.object_bytes(con, store, RUN, lying["other"]))
    assert response.headers["content-disposition"] == 'attachment; filename="__"'
    assert pq.read_table(pa.BufferReader(response.body)).column("b").to_pylist() == [2]


@pytest.mark.slow
def test_lying_media_events_through_a_collector_are_one_sink_error_each(tmp_path: Path) -> None:
    """Artifact events that call themselves media and lie (wrong-typed metadata, a "table" whose
    object is a PNG, an "image" whose object is Parquet), sent through a real collector feeding
    TensorBoard: the collector serves on and exits cleanly, the `media` view answers, the sink
    counts one error per event it cannot send and sends the good image logged after them."""
    store = tmp_path / "store"
    config = tmp_path / "tt.yaml"
    config.write_text("sinks:\n  tensorboard: {}\n")
    collector = CollectorProcess(store, "--config", str(config), "--system-interval", "0").start()
    png, image_meta = traintape.Image(np.full((4, 4), 7, np.uint8)).encode()
    table, table_meta = traintape.Table(columns=["a"], data=[(1,)]).encode()
    try:
        run = emitter.init("attack", name="liar", store=store)
        lies = [
            (png, "w", "image", {**image_meta, "width": "abc", "height": [1]}),
            (table, "cols", "table", {**table_meta, "columns": 5, "rows": "x"}),
            (png, "png-as-table", "table", table_meta),
            (table, "table-as-png", "image", image_meta),
        ]
        for data, name, kind, meta in lies:
            emitter.log_artifact(data, name=name, kind=kind, metadata=meta, step=0).result(30)
        emitter.log({"good": traintape.Image(np.full((4, 4), 9, np.uint8)), "loss": 1.0}, step=1)
        emitter.finish(timeout=60)
        wait_for(store, f"SELECT count(*) FROM media WHERE run_id = '{run.run_id}'", 5)
        widths = query(
            store, "SELECT name, width FROM media WHERE run_id = ? ORDER BY name", run.run_id
        )
        assert dict(widths) == {
            "cols": None,
            "good": 4,
            "png-as-table": None,
            "table-as-png": 4,
            "w": None,
        }
        assert collector.stop() == 0, collector.log.read_text()[-2000:]
    finally:
        collector.close()
    backend = sink_status(store, "tensorboard")["backend"]
    assert backend["artifacts_failed"] == 2, backend
    assert (backend["images"], backend["tables"]) == (2, 1), backend
    assert "'table-as-png'" in backend["last_artifact_error"] or "png-as-table" in str(backend)


# -- a full disk ----------------------------------------------------------------------------------


@pytest.fixture
def small_artifacts(store: Path) -> Iterator[Path]:
    """`store/artifacts` on its own 8 MiB tmpfs (root only), unmounted afterwards."""
    folder = store / "artifacts"
    folder.mkdir(parents=True)
    store.chmod(0o700)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_a_full_disk_loses_only_the_images_that_did_not_fit_and_says_so_once(
    store: Path, small_artifacts: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the artifact store full after a few incompressible images, every number of the run
    reaches the collector, each stored object matches its event, no partial object or temporary
    file is left, and the loss is one warning plus a count at finish()."""
    collector = CollectorProcess(store).start()
    try:
        rng = np.random.default_rng(8)
        run = emitter.init("attack", store=store)
        with caplog.at_level(logging.DEBUG, logger="traintape.emitter.artifacts"):
            for step in range(12):
                image = traintape.Image(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8))
                emitter.log({"loss": float(step), "img": image}, step=step)
            emitter.finish(timeout=60)
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 12)
        wait_for(store, "SELECT count(*) FROM runs WHERE status = 'completed'", 1)
        events = query(store, "SELECT sha256, bytes FROM media WHERE run_id = ?", run.run_id)
    finally:
        collector.stop()
    objects = sorted(p for p in (small_artifacts / "objects").glob("*/*"))
    assert 0 < len(events) < 12 and len(objects) == len(events)
    for path in objects:
        data = path.read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) in set(events)
    assert list((small_artifacts / "tmp").iterdir()) == []
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    lost = 12 - len(events)
    assert sum("No space left" in m for m in warned) == 1
    assert any(f"{lost} artifacts of run {run.run_id} were not stored" in m for m in warned)


# -- a trainer killed while it encodes ------------------------------------------------------------

_KILLED_WORKER = """
import sys, time
from pathlib import Path
import numpy as np
import traintape
sys.path.insert(0, sys.argv[2])
from tests.test_media import _log_media, _Run
run = _Run(Path(sys.argv[1]))
for step, image in enumerate(np.random.default_rng(18).integers(0, 256, (3, 1500, 1500, 3), np.uint8)):
    _log_media(run, {"img": traintape.Image(image)}, step, 0)
print("queued", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_trainer_killed_while_encoding_leaves_no_partial_object(tmp_path: Path) -> None:
    """A process SIGKILLed with images queued and being encoded and written leaves only whole
    objects (each hashes to its name); logging the same images again stores all of them."""
    store = tmp_path / "store"
    repo = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WORKER, str(store), str(repo)],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"queued\n"
    finally:
        child.kill()
        child.wait(10)
    objects = StoreLayout(store).artifacts / "objects"
    for path in objects.glob("*/*"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.parent.name + path.name
    run = _Run(store)
    images = np.random.default_rng(18).integers(0, 256, (3, 1500, 1500, 3), np.uint8)
    for step, image in enumerate(images):
        _log_media(run, {"img": traintape.Image(image)}, step, 0)
    run.writer.close()
    assert len(run.events) == 3
    for _, _, body in run.events:
        data = (store / body["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == body["sha256"] and len(data) == body["bytes"]


# -- another user of the machine ------------------------------------------------------------------

_FETCH = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
        print(r.status, len(r.read()))
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="needs root (to act as nobody) and the system Python",
)
def test_another_local_user_cannot_read_objects_through_the_dashboard(
    lying: dict[str, Any],
) -> None:
    """The store's objects are private to its owner (0600 in 0700 folders), and the tokenless
    loopback dashboard keeps them so: `nobody` gets 403 for an object and the media list, while
    the owner's request gets the PNG."""
    proc, url = start_ui(lying["store"])
    try:
        base = url.rstrip("/")
        paths = [f"/api/object/{lying['png']}?run={RUN}", f"/api/media?run={RUN}"]
        for path in paths:
            who = pwd.getpwnam("nobody")
            done = subprocess.run(
                ["/usr/bin/python3", "-c", _FETCH, base + path],
                user=who.pw_uid,
                group=who.pw_gid,
                env={"PATH": "/usr/bin:/bin"},
                cwd="/",
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert done.stdout.startswith("403 ") and "its own user only" in done.stdout
        with urllib.request.urlopen(base + paths[0], timeout=30) as r:
            assert r.status == 200
            assert r.read().startswith(b"\x89PNG")
    finally:
        stop_ui(proc)
