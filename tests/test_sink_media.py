"""Artifact events in the sinks (issue 18): images, tables and files logged through a real
collector reach TensorBoard (read back by its own EventAccumulator), W&B (its offline file) and
MLflow (its sqlite store in the store) with the stored bytes; a missing or damaged object is
one event's error in the sink's status, and the sink goes on."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import traintape
from tests.conftest import REPO, CollectorProcess, query
from tests.test_sink_wandb import wandb_records
from traintape import emitter
from traintape.layout import StoreLayout
from traintape.schemas.events import ARTIFACT, METRICS
from traintape.sinks import Event, RunInfo, SinkConfig
from traintape.sinks.projection import Projection

SIZE = 256
STEPS_PER_RANK = 500

WORKER = textwrap.dedent(
    """
    import io, sys
    import numpy as np
    from PIL import Image
    from traintape import emitter

    def png(rank, step, size):
        ramp = np.add.outer(np.arange(size), np.arange(size))
        pixels = np.stack([ramp + step, ramp * 2 + rank * 7, np.full_like(ramp, step % 251)], -1)
        out = io.BytesIO()
        Image.fromarray((pixels % 256).astype(np.uint8)).save(out, format="PNG")
        return out.getvalue()

    store, steps, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    run = emitter.init(project="media", name="many", store=store)
    meta = {"media": "image", "format": "png", "width": size, "height": size, "channels": 3,
            "caption": None}
    for step in range(steps):
        emitter.log_artifact(png(run.rank, step, size), name="img", kind="image",
                             metadata=meta, step=step)
    emitter.finish()
    """
)


def png(seed: int, size: int = 8) -> bytes:
    """A small PNG whose pixels depend on `seed`."""
    import numpy as np
    from PIL import Image

    pixels = (np.arange(size * size * 3).reshape(size, size, 3) * (seed + 1)) % 256
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def image_meta(size: int = 8, caption: str | None = None) -> dict[str, Any]:
    return {
        "media": "image",
        "format": "png",
        "width": size,
        "height": size,
        "channels": 3,
        "caption": caption,
    }


def table_parquet() -> tuple[bytes, dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [1, 2, 3], "label": ["cat", "dog|wolf", "eel"], "p": [0.5, 0.25, 1.0]})
    out = io.BytesIO()
    pq.write_table(table, out)
    meta = {"media": "table", "format": "parquet", "rows": 3, "columns": table.column_names}
    return out.getvalue(), meta


def sink_status(store: Path, name: str) -> dict[str, Any]:
    return json.loads((store / "state" / "collector.json").read_text())["sinks"][name]


def tb_images(folder: Path) -> dict[str, list[Any]]:
    """Every image of a TensorBoard run folder by tag, through TensorBoard's classic reader."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(folder), size_guidance={ea.IMAGES: 0, ea.TENSORS: 0})
    acc.Reload()
    return {tag: acc.Images(tag) for tag in acc.Tags()[ea.IMAGES]}


def wandb_media(folder: Path, run_id: str) -> tuple[dict[int, dict[str, Any]], list[Any]]:
    """(history rows by step, with media values as dicts; artifact records) of an offline run."""
    (run,) = sorted(folder.glob(f"wandb/offline-run-*-{run_id}"))
    rows: dict[int, dict[str, Any]] = {}
    artifacts = []
    for record in wandb_records(run / f"run-{run_id}.wandb"):
        kind = record.WhichOneof("record_type")
        if kind == "artifact":
            artifacts.append(record.artifact)
        if kind != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            value = json.loads(item.value_json)
            if item.key or len(item.nested_key) == 1:
                row[item.key or item.nested_key[0]] = value
            else:  # a dict W&B split into nested keys: (tag, field)
                *tag, field = item.nested_key
                row.setdefault("/".join(tag), {})[field] = value
        assert row["_step"] not in rows, "a step logged twice"
        rows[row["_step"]] = row
    return rows, artifacts


def wandb_file(folder: Path, run_id: str, value: dict[str, Any]) -> bytes:
    (run,) = sorted(folder.glob(f"wandb/offline-run-*-{run_id}"))
    return (run / "files" / value["path"]).read_bytes()


@pytest.mark.slow
def test_a_thousand_images_from_two_ranks_reach_tensorboard_and_wandb_byte_for_byte(
    tmp_path: Path, monkeypatch
):
    """1,000 PNGs of 256x256 logged by 2 ranks: each is in the store, in TensorBoard (tag `img`,
    `img/rank1`) and in W&B's offline run at its step, with the stored object's bytes."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    store = tmp_path / "store"
    config = tmp_path / "tt.yaml"
    config.write_text("sinks:\n  tensorboard: {ranks: all}\n  wandb: {mode: offline, ranks: all}\n")
    collector = CollectorProcess(store, "--config", str(config), "--system-interval", "0").start()
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(store), str(STEPS_PER_RANK), str(SIZE)],
                env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "TRAINTAPE_RUN_ID": "many"},
                cwd=REPO,
            )
            for r in range(2)
        ]
        for p in procs:
            assert p.wait(180) == 0
        assert collector.stop() == 0
    finally:
        collector.close()

    rows = query(store, "SELECT rank, step, path, sha256 FROM artifacts WHERE run_id = 'many'")
    assert len(rows) == 2 * STEPS_PER_RANK
    stored = {}
    for rank, step, path, sha256 in rows:
        data = (store / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256
        stored[rank, step] = data
    assert len(set(stored.values())) == len(stored)  # every image is its own

    images = tb_images(store / "tensorboard" / "media" / "many")
    assert sorted(images) == ["img", "img/rank1"]
    for tag, rank in (("img", 0), ("img/rank1", 1)):
        assert sorted(e.step for e in images[tag]) == list(range(STEPS_PER_RANK))
        for e in images[tag]:
            assert e.encoded_image_string == stored[rank, e.step], (tag, e.step)
            assert (e.width, e.height) == (SIZE, SIZE)

    history, _ = wandb_media(store, "many")
    assert sorted(history) == list(range(STEPS_PER_RANK))
    for step, row in history.items():
        for tag, rank in (("img", 0), ("img/rank1", 1)):
            assert row[tag]["_type"] == "image-file", (step, row)
            assert wandb_file(store, "many", row[tag]) == stored[rank, step], (tag, step)
    status = sink_status(store, "wandb")["backend"]
    assert status["images"] == 2 * STEPS_PER_RANK and "artifacts_failed" not in status


@pytest.mark.slow
def test_images_tables_and_files_in_every_sink_and_bad_objects_are_one_events_error(
    tmp_path: Path, monkeypatch
):
    """Images logged among metric values (their events come after later steps' values) land
    at their own step in all three backends; a table becomes TensorBoard markdown, a
    `wandb.Table` and an MLflow table; a plain file a text line, a `wandb.Artifact` and an
    MLflow artifact; a missing and a damaged object are counted and named in each sink's
    status while everything after them is still sent."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    store = tmp_path / "store"
    config = tmp_path / "tt.yaml"  # MLflow's first start makes its database: it may drain long
    config.write_text(
        "sinks:\n  tensorboard: {}\n  wandb: {mode: offline}\n  mlflow: {drain_timeout: 90}\n"
    )
    collector = CollectorProcess(store, "--config", str(config), "--system-interval", "0").start()
    images = {step: png(step) for step in (2, 5, 8)}
    table, table_meta = table_parquet()
    try:
        run = emitter.init(project="media", name="mixed", store=store, run_id="mixed1")
        for step in range(10):
            emitter.log({"loss": float(step)}, step=step)
            if step in images:
                meta = image_meta(caption=f"at {step}")
                emitter.log_artifact(
                    images[step], name="sample", kind="image", metadata=meta, step=step
                )
        damaged = png(99)  # its object in the store holds other bytes (bit rot, say)
        obj = StoreLayout(store).artifact_object(hashlib.sha256(damaged).hexdigest())
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(b"not the image")
        emitter.log_artifact(damaged, name="damaged", kind="image", metadata=image_meta(), step=9)
        missing = {"name": "missing", "kind": "image", "bytes": 5, "sha256": "ab" * 32}
        missing |= {"path": "artifacts/objects/ab/" + "ab" * 31, "metadata": image_meta()}
        run._port.emit(ARTIFACT, 9, missing)  # an object gone from the store
        emitter.log_artifact(table, name="worst", kind="table", metadata=table_meta, step=9)
        emitter.log_artifact(b"lr: 0.1\n", name="config.yaml", kind="config", step=9)
        grid = [traintape.Image(p, caption=f"g{i}") for i, p in enumerate(GRID)]
        emitter.log({"grid": grid}, step=9)  # a list: grid/0, grid/1; one W&B gallery
        emitter.finish()
        assert collector.stop() == 0
    finally:
        collector.close()

    for name in ("tensorboard", "wandb", "mlflow"):
        backend = sink_status(store, name)["backend"]
        assert backend["artifacts_failed"] == 2, (name, backend)
        assert "'missing'" in backend["last_artifact_error"] or "damaged" in str(backend)
        assert backend["images"] == 5 and backend["tables"] == 1, (name, backend)
    _check_tensorboard(store / "tensorboard" / "media" / "mixed", images)
    _check_wandb(store, images)
    _check_mlflow(store, images, table_meta["columns"])


def _check_tensorboard(folder: Path, images: dict[int, bytes]) -> None:
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    tb = tb_images(folder)
    assert sorted(tb) == ["grid/0", "grid/1", "sample"]
    assert {e.step: e.encoded_image_string for e in tb["sample"]} == images
    for i, pixels in enumerate(GRID):
        (event,) = tb[f"grid/{i}"]
        assert event.step == 9 and np.array_equal(_pixels_of(event.encoded_image_string), pixels)
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    texts = {
        tag: [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)]
        for tag in acc.PluginTagToContent("text")
    }
    (markdown,) = texts["worst"]
    assert markdown.splitlines()[:3] == ["| id | label | p |", "|---|---|---|", "| 1 | cat | 0.5 |"]
    assert "dog\\|wolf" in markdown
    assert any("`config.yaml` (config) 8 bytes" in t for t in texts["artifacts"])


def _check_wandb(store: Path, images: dict[int, bytes]) -> None:
    history, artifacts = wandb_media(store, "mixed1")
    assert sorted(history) == list(range(10))
    for step, row in history.items():
        assert row["loss"] == float(step)
        if step in images:
            assert (
                row["sample"]["_type"] == "image-file" and row["sample"]["caption"] == f"at {step}"
            )
            assert wandb_file(store, "mixed1", row["sample"]) == images[step]
        else:
            assert "sample" not in row
    table = json.loads(wandb_file(store, "mixed1", history[9]["worst"]))
    assert table["columns"] == ["id", "label", "p"] and table["data"][1] == [2, "dog|wolf", 0.25]
    assert "damaged" not in history[9] and "missing" not in history[9]
    gallery = history[9]["grid"]  # the list's images, one W&B gallery as W&B logs a batch
    assert gallery["_type"] == "images/separated" and gallery["count"] == 2
    assert gallery["captions"] == ["g0", "g1"]
    (run,) = sorted(store.glob("wandb/offline-run-*-mixed1"))
    for name, pixels in zip(gallery["filenames"], GRID):
        assert np.array_equal(_pixels_of((run / "files" / name).read_bytes()), pixels)
    (config,) = [a for a in artifacts if a.type == "config"]
    assert config.name == "config.yaml"
    assert [e.path for e in config.manifest.contents] == ["config.yaml"]


GRID = [np.full((3, 5, 3), 40, np.uint8), np.full((3, 5, 3), 220, np.uint8)]
"""The images of the list logged at step 9."""


def _pixels_of(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.array(image)


def _check_mlflow(store: Path, images: dict[int, bytes], columns: list[str]) -> None:
    """MLflow's file store as the sink's sqlite tracking store left it (read with sqlite3 and
    pandas: importing MLflow here would cost seconds)."""
    import sqlite3

    import pandas as pd

    with sqlite3.connect(store / "mlflow.db") as db:
        ((rid, where),) = db.execute(
            "SELECT r.run_uuid, r.artifact_uri FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid"
            " WHERE t.key = 'traintape.run_id' AND t.value = 'mixed1'"
        ).fetchall()
        logged = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (rid,)))
    assert logged["mlflow.loggedImages"] == "True"
    files = Path(where.removeprefix("file://"))
    out = files / "traintape"
    assert (out / "config.yaml").read_bytes() == b"lr: 0.1\n"
    for step, data in images.items():
        assert (out / "sample" / f"step-{step:09d}.png").read_bytes() == data
    charts = [p.name for p in (files / "images").iterdir()]
    for step in images:
        assert sum(p.startswith(f"sample+step+{step}+") for p in charts) == 2  # png, webp
    frame = pd.read_json(out / "worst" / "step-000000009.json", orient="split")
    assert list(frame.columns) == columns and frame["label"].tolist()[1] == "dog|wolf"
    assert (out / "worst" / "step-000000009.parquet").read_bytes() == table_parquet()[0]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "grid", "sample", "worst"]
    for i, pixels in enumerate(GRID):  # a list's images: one folder each, as any name's
        png = (out / "grid" / str(i) / "step-000000009.png").read_bytes()
        assert np.array_equal(_pixels_of(png), pixels)


# -- in-process: the projection and the TensorBoard sink alone --------------------------------


def test_an_artifact_event_after_later_steps_still_reaches_its_step_for_an_ordered_sink():
    """For a backend that wants increasing steps (W&B), an image whose event comes after the
    values of later steps (it was stored off the caller) waits no more than `late_s` of the
    run's time, then goes out in its step's place; without `late_s` it went out after them.
    The held event survives a restart through `state()`."""
    from traintape.schemas.events import RUN_START
    from traintape.schemas.wire import BatchBody, BatchHeader

    second = 10**9
    start = {"project": "p", "name": "n", "world_size": 1}
    image = {"name": "img", "kind": "image", "metadata": {"media": "image"}}

    def feed(p: Projection, seq: int, events: list[tuple[int, int | None, int, dict]]) -> None:
        kinds, steps, ts, bodies = zip(*events)
        p.feed(
            BatchHeader("r", 0, "s", seq, len(events)),
            BatchBody(list(kinds), list(ts), list(steps), list(bodies)),
        )

    def order(ops: list) -> list[tuple[int, int]]:
        return [(e.kind, e.step) for op in ops if op[0] == "write" for e in op[2]]

    before = Projection("rank0", ordered_steps=True)
    feed(before, 0, [(RUN_START, None, 0, start), (METRICS, 0, 0, {"x": 1.0})])
    feed(before, 2, [(METRICS, 1, second, {"x": 1.0})])
    feed(before, 3, [(ARTIFACT, 0, 0, image)])
    assert order(before.take_ops()) == [(METRICS, 0), (METRICS, 1), (ARTIFACT, 0)]
    p = Projection("rank0", ordered_steps=True, late_s=2.0)
    feed(
        p, 0, [(RUN_START, None, 0, start), *[(METRICS, s, s * second, {"x": 1.0}) for s in (0, 1)]]
    )
    feed(p, 3, [(ARTIFACT, 0, 0, image)])  # logged at step 0, stored after step 1's values
    assert order(p.take_ops()) == []  # step 0 is younger than 2 s of the run's time
    restarted = Projection("rank0", ordered_steps=True, late_s=2.0)
    restarted.load_state(json.loads(json.dumps(p.state())))
    restarted.lookup = lambda run_id: RunInfo(run_id, "p", "n")
    for q in (p, restarted):
        feed(q, 4, [(METRICS, 3, 3 * second, {"x": 1.0})])
        assert order(q.take_ops())[-3:] == [(METRICS, 0), (ARTIFACT, 0), (METRICS, 1)]


def test_tensorboard_writes_images_and_goes_on_after_a_damaged_object(tmp_path: Path):
    """The TensorBoard sink alone: an image whose object was altered is counted and named in
    its stats, and the images around it are written with their bytes."""
    store = tmp_path / "store"
    layout = StoreLayout(store)
    events = []
    for step in range(3):
        data = png(step)
        sha = hashlib.sha256(data).hexdigest()
        obj = layout.artifact_object(sha)
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(b"altered" if step == 1 else data)
        body = {"name": "img", "kind": "image", "bytes": len(data), "sha256": sha}
        body |= {"path": str(obj.relative_to(store)), "metadata": image_meta()}
        events.append(Event(ARTIFACT, 0, step, time.time_ns(), body))
    sink = SinkConfig("tensorboard", "tensorboard", {}).create(store)
    run = RunInfo("r1", "p", "n")
    sink.open_run(run)
    sink.write(run, events)
    sink.close()
    stats = sink.stats()
    assert stats["images"] == 2 and stats["artifacts_failed"] == 1
    assert "'img' (step 1, rank 0): ArtifactVerifyError" in stats["last_artifact_error"]
    got = {
        e.step: e.encoded_image_string for e in tb_images(store / "tensorboard" / "p" / "n")["img"]
    }
    assert got == {0: png(0), 2: png(2)}


def test_values_at_the_step_sent_last_still_go_to_an_ordered_sink():
    """Holding steps for late artifacts drops nothing W&B takes: values logged again at the
    step that went out last (W&B merges them into its row) are sent, not counted late."""
    from traintape.schemas.events import RUN_START
    from traintape.schemas.wire import BatchBody, BatchHeader

    p = Projection("rank0", ordered_steps=True, late_s=1.0)
    start = {"project": "p", "name": "n", "world_size": 1}
    p.feed(
        BatchHeader("r", 0, "s", 0, 3),
        BatchBody([RUN_START, METRICS, METRICS], [0, 0, 2 * 10**9], [None, 0, 1], [start] * 3),
    )
    p.take_ops()
    p.feed(BatchHeader("r", 0, "s", 3, 1), BatchBody([METRICS], [3 * 10**9], [0], [{"y": 2.0}]))
    sent = [(e.step, e.body) for op in p.take_ops() if op[0] == "write" for e in op[2]]
    assert sent == [(0, {"y": 2.0})] and p.late_values == 0


def test_an_objects_hash_is_checked_without_reading_it_whole(tmp_path: Path):
    """A sink verifies a large object 8 MiB at a time: Python's memory peak stays far below the
    object's size, and one changed byte is found."""
    import tracemalloc

    from traintape.errors import ArtifactVerifyError
    from traintape.sinks.media import object_path

    data = os.urandom(1 << 20) * 48  # 48 MiB
    sha = hashlib.sha256(data).hexdigest()
    obj = StoreLayout(tmp_path).artifact_object(sha)
    obj.parent.mkdir(parents=True)
    obj.write_bytes(data)
    body = {"name": "big.bin", "bytes": len(data), "sha256": sha}
    del data
    tracemalloc.start()
    try:
        assert object_path(tmp_path, body) == obj
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, peak
    with open(obj, "r+b") as f:
        f.seek(30 << 20)
        f.write(b"\0" if f.read(1) != b"\0" else b"\1")
    with pytest.raises(ArtifactVerifyError, match="big.bin"):
        object_path(tmp_path, body)
