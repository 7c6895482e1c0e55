"""Artifacts: files and bytes stored by content with a run (traintape/emitter/artifacts.py), read
back through the `artifacts` view and the CLI (read/artifacts.py, cli/artifacts.py), and `gc`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, CollectorProcess, query, wait_for
from traintape import emitter
from traintape.cli.main import main
from traintape.collector.validate import _other_reason
from traintape.emitter.artifacts import ArtifactWriter
from traintape.emitter.port import EmitterPort
from traintape.errors import ArtifactNotFoundError, ArtifactVerifyError, RunFinishedError
from traintape.layout import StoreLayout
from traintape.schemas.events import ARTIFACT

DAY = 24 * 3600


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _objects(store: Path) -> list[Path]:
    return sorted(p for p in (store / "artifacts" / "objects").glob("*/*") if p.is_file())


def _port(store: Path, events: list[tuple[Any, ...]], finished: bool = False) -> EmitterPort:
    """A port whose events land in `events` (the writer's side alone, no collector)."""

    def emit(kind: int, step: int | None, body: dict[str, Any], ts: int | None = None) -> None:
        events.append((kind, step, body))

    return EmitterPort(
        run_id="r1",
        rank=0,
        store=store,
        emit=emit,
        send_now=lambda: None,
        acked_below=lambda: None,
        next_step=lambda: 7,
        finished=lambda: finished,
        deferred=None,  # type: ignore[arg-type]  # the writer never uses it
    )


# -- the writer, without a collector --------------------------------------------------------


def test_the_same_content_is_one_private_object_and_logging_it_again_touches_it(
    tmp_path: Path,
) -> None:
    """A file and bytes of the same content make two events and one object (mode 0600 in 0700
    folders); logging it again renews the object's time, so gc's grace starts over."""
    store, events = tmp_path / "store", []
    data = os.urandom(100_000)
    (tmp_path / "a.bin").write_bytes(data)
    writer = ArtifactWriter(_port(store, events))
    first = writer.log(tmp_path / "a.bin", kind="model", metadata={"opset": 17}).result(30)
    (obj,) = _objects(store)
    os.utime(obj, (time.time() - 2 * DAY, time.time() - 2 * DAY))
    second = writer.log(data, name="b.bin").result(30)
    writer.close()
    assert _objects(store) == [obj] and obj.read_bytes() == data
    assert obj.stat().st_mtime > time.time() - DAY
    assert obj.stat().st_mode & 0o777 == 0o600
    assert (store / "artifacts" / "objects").stat().st_mode & 0o777 == 0o700
    assert first == {
        "name": "a.bin",
        "kind": "model",
        "bytes": len(data),
        "sha256": _sha(data),
        "path": str(StoreLayout(store).artifact_object(_sha(data)).relative_to(store)),
        "metadata": {"opset": 17},
    }
    assert (second["name"], second["sha256"], second["kind"]) == ("b.bin", _sha(data), None)
    assert [(k, s, b["name"]) for k, s, b in events] == [
        (ARTIFACT, 7, "a.bin"),
        (ARTIFACT, 7, "b.bin"),
    ]


def test_the_bytes_of_the_call_are_stored_even_if_the_caller_changes_them(tmp_path: Path) -> None:
    """The file is opened and a buffer copied at the call: replacing the file or changing the
    buffer right after changes nothing in what is stored."""
    store, events = tmp_path / "store", []
    path, buf = tmp_path / "cfg.yaml", bytearray(b"lr: 1")
    path.write_bytes(b"first")
    writer = ArtifactWriter(_port(store, events))
    from_file = writer.log(path)
    from_buf = writer.log(buf, name="buf")
    path.unlink()
    path.write_bytes(b"second")
    buf[:] = b"changed"
    assert from_file.result(30)["sha256"] == _sha(b"first")
    assert from_buf.result(30)["sha256"] == _sha(b"lr: 1")
    writer.close()


def test_bad_input_is_refused_at_the_call(tmp_path: Path) -> None:
    """A missing file, a folder, bytes without a name, a name with '/', metadata that cannot be
    stored, and a finished run each raise at the call, and nothing is queued."""
    store, events = tmp_path / "store", []
    writer = ArtifactWriter(_port(store, events))
    with pytest.raises(FileNotFoundError):
        writer.log(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        writer.log(tmp_path)
    with pytest.raises(ValueError, match="needs a name"):
        writer.log(b"x")
    with pytest.raises(ValueError, match="without '/'"):
        writer.log(b"x", name="a/b")
    with pytest.raises(TypeError):
        writer.log(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metadata"):
        writer.log(b"x", name="x", metadata={"big": 2**70})
    writer.close()
    assert events == [] and not _objects(store)
    with pytest.raises(RunFinishedError):
        ArtifactWriter(_port(store, events, finished=True)).log(b"x", name="x")


def test_the_collector_refuses_a_malformed_artifact_body() -> None:
    """An `artifact` event without a valid sha256, or with negative bytes, is refused at ingest;
    a well-formed one passes."""
    good = {"name": "m", "kind": None, "bytes": 3, "sha256": "a" * 64, "path": "p", "metadata": {}}
    assert _other_reason(ARTIFACT, good) is None
    assert "sha256" in str(_other_reason(ARTIFACT, {**good, "sha256": "../../etc"}))
    assert "negative" in str(_other_reason(ARTIFACT, {**good, "bytes": -1}))
    assert "lacks" in str(_other_reason(ARTIFACT, {"name": "m"}))


# -- through a real collector ---------------------------------------------------------------


@pytest.mark.slow
def test_logged_artifacts_are_listed_shown_and_fetched_verified(
    store: Path, collector: CollectorProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file and bytes logged through the module functions are rows of the `artifacts` view,
    listed by `traintape artifacts` and `show`, and `artifacts get` writes the same bytes; a
    stored object whose bytes changed is refused on fetch."""
    model = os.urandom(3 << 20)
    (tmp_path / "model.onnx").write_bytes(model)
    run = emitter.init(project="t", store=store)
    emitter.log({"loss": 1.0}, step=3)
    emitter.log_artifact(tmp_path / "model.onnx", kind="model", metadata={"opset": 17})
    emitter.log_artifact(b"a,b\n1,2\n", name="preds.csv", kind="table", step=9)
    emitter.log_artifact(model, name="model-copy.onnx")  # the same content: one object
    emitter.finish()
    rows = query(
        store,
        "SELECT step, name, kind, bytes, sha256, metadata::VARCHAR FROM artifacts ORDER BY seq",
    )
    assert rows == [
        (4, "model.onnx", "model", len(model), _sha(model), '{"opset":17}'),
        (9, "preds.csv", "table", 8, _sha(b"a,b\n1,2\n"), "{}"),
        (4, "model-copy.onnx", None, len(model), _sha(model), "{}"),
    ]
    assert len(_objects(store)) == 2
    assert main(["artifacts", run.run_id, "--store", str(store), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["metadata"]) for r in listed][:1] == [("model.onnx", {"opset": 17})]
    assert main(["show", run.run_id, "--store", str(store)]) == 0
    assert "preds.csv" in capsys.readouterr().out
    out = tmp_path / "got"
    argv = ["artifacts", "get", run.run_id, "model.onnx", "-o", str(out), "--store", str(store)]
    assert main(argv) == 0
    assert (out / "model.onnx").read_bytes() == model
    obj = StoreLayout(store).artifact_object(_sha(model))
    obj.write_bytes(model[:-1] + bytes([model[-1] ^ 1]))  # a bit flipped on disk
    assert main(argv) == 1
    assert "sha256" in capsys.readouterr().err
    import traintape
    from traintape.read.artifacts import artifact_rows, fetch

    con = traintape.connect(store)
    found = artifact_rows(con, run.run_id)
    con.close()
    with pytest.raises(ArtifactVerifyError):
        fetch(store, found, "model-copy.onnx", out)
    with pytest.raises(ArtifactNotFoundError, match="preds.csv"):
        fetch(store, found, "nothing", out)


_KILLED_CHILD = """
import sys, threading
from pathlib import Path
from traintape import emitter
from traintape.emitter import artifacts

store, big, marker = map(Path, sys.argv[1:4])
write_all = artifacts._write_all
def first_chunk_then_hang(fd, data):
    # the copy has begun: say so, then never finish (the parent kills this process now)
    write_all(fd, data)
    marker.write_text("copying")
    threading.Event().wait()
artifacts._write_all = first_chunk_then_hang
emitter.init(project="t", store=store)
emitter.log({"before": 1.0}, step=1)
emitter.current().send_now()
emitter.log_artifact(big, name="big.bin")
threading.Event().wait()
"""


@pytest.mark.slow
def test_a_trainer_killed_during_a_large_copy_leaves_no_object_and_no_event(
    store: Path, collector: CollectorProcess, tmp_path: Path
) -> None:
    """SIGKILL while a 200 MB file is being copied: no object is visible and no artifact event
    is stored; the partial copy lies in artifacts/tmp/, and gc removes it once old."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MB to copy, none of it on disk
    marker = tmp_path / "marker"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_KILLED_CHILD))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, str(script), str(store), str(big), str(marker)], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), "the child never began copying"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    wait_for(store, "SELECT count(*) FROM metrics WHERE key = 'before'", 1)
    wait_for(store, "SELECT count(*) FROM runs WHERE status = 'crashed'", 1)
    assert query(store, "SELECT count(*) FROM artifacts") == [(0,)]
    assert _objects(store) == []
    (partial,) = (store / "artifacts" / "tmp").glob("*.tmp")
    assert 0 < partial.stat().st_size < 200 << 20
    os.utime(partial, (time.time() - 2 * DAY, time.time() - 2 * DAY))
    assert main(["gc", "--store", str(store)]) == 0
    assert not partial.exists()


@pytest.mark.slow
def test_gc_removes_only_old_unreferenced_objects(
    store: Path, collector: CollectorProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gc removes an object no event refers to once it is older than the grace period, and
    keeps a referenced one however old and an unreferenced one still young; with spooled
    batches waiting it refuses unless told to go on."""
    emitter.init(project="t", store=store)
    emitter.log_artifact(b"kept: referenced", name="ref.txt")
    emitter.finish()
    layout = StoreLayout(store)
    referenced = layout.artifact_object(_sha(b"kept: referenced"))
    orphan, young = (layout.artifact_object(_sha(d)) for d in (b"orphan", b"young"))
    for path, data in ((orphan, b"orphan"), (young, b"young")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in (referenced, orphan):
        os.utime(path, (time.time() - 2 * DAY, time.time() - 2 * DAY))
    assert main(["gc", "--store", str(store), "--dry-run"]) == 0
    assert "would remove 1 objects" in capsys.readouterr().out
    assert orphan.exists()
    (layout.spool).mkdir(parents=True, exist_ok=True)
    (layout.spool / "x.0.y.spool").write_bytes(b"")
    assert main(["gc", "--store", str(store)]) == 1
    assert "traintape replay" in capsys.readouterr().err
    assert main(["gc", "--store", str(store), "--ignore-spool"]) == 0
    assert "removed 1 objects (6 bytes); kept 1 referenced, 1 younger" in capsys.readouterr().out
    assert not orphan.exists() and referenced.exists() and young.exists()


@pytest.mark.slow
def test_import_traintape_loads_no_artifact_code() -> None:
    """`import traintape` (and the emitter) loads neither the artifact writer nor its readers,
    nor concurrent.futures: they come with the first `log_artifact` or `traintape artifacts`."""
    code = (
        "import sys, traintape; from traintape import emitter; "
        "print(' '.join(m for m in sys.modules if 'artifacts' in m or m == 'concurrent.futures'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == []
