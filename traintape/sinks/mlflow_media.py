"""Artifact events in MLflow (the MLflow sink calls `send_artifact`).

Every artifact's stored file goes to the run through `log_artifact`, under `traintape/`:

- a plain artifact as `traintape/<name>` (`traintape/rank<N>/<name>` for ranks other than 0); a
  name logged again replaces the file (the store keeps every version);
- an image (media kind "image") as `traintape/<name>/step-<step>[-rank<N>].png`, the stored PNG's
  own bytes, and through `log_image(key=<name>, step=, timestamp=)` for MLflow's image charts
  (which re-encode it; the key gets `/rank<N>` for ranks other than 0);
- a table (media kind "table") as `traintape/<name>/step-<step>[-rank<N>].parquet`, and through
  `log_table` (a DataFrame of its first `MAX_TABLE_ROWS` rows) as the `.json` beside it: one file
  per event, because `log_table` appends to a file that exists.

Large files are never read whole: `log_artifact` is given a link named after the artifact to the
stored object, and MLflow copies or uploads it. Exactly once: `log_artifact` overwrites by path;
`log_image` and `log_table` add files, so when the sink checks (`verify`: after a failure, for a
run found existing, under `traintape sync`) it lists what the run holds and sends only what is
missing. A missing or damaged object is that event's error (`ArtifactProblems`), not the batch's.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from traintape.sinks._base import Event, safe_name
from traintape.sinks.media import (
    MAX_TABLE_ROWS,
    ArtifactProblems,
    linked,
    media_kind,
    media_tag,
    object_path,
    read_table,
    step_file,
)

__all__ = ["ArtifactProblems", "send_artifact"]

_KEY = re.compile(r"[^a-zA-Z0-9_\-./ ]")  # what log_image takes in a key


def send_artifact(sink: Any, state: Any, event: Event) -> None:
    """Sends one artifact event to the run `state` of `sink` (the MlflowSink)."""
    kind = media_kind(event.body)
    folder = Path(tempfile.mkdtemp(prefix="traintape-mlflow-"))
    try:
        path = object_path(sink.store, event.body)
        name = _path(str(event.body.get("name") or "artifact"))
        if kind is None:
            rank = "" if event.rank in (None, 0) else f"/rank{event.rank}"
            where = posixpath.join(f"traintape{rank}", name)
        else:
            where = posixpath.join("traintape", name, step_file(event, ""))
            where += ".png" if kind == "image" else ".parquet"
        _log_file(sink, state, path, folder, where)
        if kind == "image":
            _log_image(sink, state, path, event)
        elif kind == "table":
            _log_table(sink, state, path, where[: -len(".parquet")] + ".json")
        sink.counts[f"{kind or 'artifact'}s"] += 1
    except Exception as exc:  # this event's failure: the others still go
        sink.problems.note(event, exc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _log_file(sink: Any, state: Any, path: Path, folder: Path, where: str) -> None:
    link = linked(path, folder, posixpath.basename(where))
    sink.client.log_artifact(state.mlflow_id, str(link), posixpath.dirname(where))


def _log_image(sink: Any, state: Any, path: Path, event: Event) -> None:
    import PIL.Image

    key = _KEY.sub("_", media_tag(event))
    step, ts = event.step or 0, event.ts // 1_000_000
    prefix = f"images/{key.replace('/', '~')}+step+{step}+timestamp+{ts}+"
    if _held(sink, state, "images", prefix):
        sink.counts["already_stored"] += 1
        return
    with PIL.Image.open(path) as image:
        image.load()
        sink.client.log_image(state.mlflow_id, image, key=key, step=step, timestamp=ts)


def _log_table(sink: Any, state: Any, path: Path, artifact_file: str) -> None:
    import pandas as pd

    if _held(sink, state, posixpath.dirname(artifact_file), artifact_file):
        sink.counts["already_stored"] += 1
        return
    columns, rows, total = read_table(path, MAX_TABLE_ROWS)
    frame = pd.DataFrame(rows, columns=columns)
    sink.client.log_table(state.mlflow_id, data=frame, artifact_file=artifact_file)
    sink.counts["tables_cut"] += total > len(rows)


def _held(sink: Any, state: Any, folder: str, prefix: str) -> bool:
    """Whether the run holds a file whose path starts with `prefix` in `folder` (only when the
    sink checks: a listing per folder, kept until the next failure or batch)."""
    if not state.verify:
        return False
    if state.media is None:
        state.media = {}
    listed = state.media.get(folder)
    if listed is None:
        listed = state.media[folder] = [
            f.path for f in sink.client.list_artifacts(state.mlflow_id, folder)
        ]
    return any(p.startswith(prefix) for p in listed)


def _path(name: str) -> str:
    """An artifact name as a relative path: each part one safe path component."""
    parts = [safe_name(p) for p in name.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "artifact"
