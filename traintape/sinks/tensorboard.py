"""TensorBoard sink: one log folder per run, written with TensorBoard's own protos and framing.

Layout: `<dir>/<project>/<run name>/` (`<run name>-<run id>` when another run already took the
name), holding `events.out.tfevents.<time>.<host>.<n>.<sink>` files:

- metric values as classic scalar summaries (`simple_value`, a float32: the nearest float32 to
  the stored float64, ±Inf beyond its range), as PyTorch's `SummaryWriter.add_scalar` writes
  them, so TensorBoard's UI, its classic `EventAccumulator.Scalars()` and the plugin-based
  reader all see them; with the event's step and wall time; all values of one event share one
  TensorBoard Event (the store keeps the exact values);
- text events as text-plugin summaries tagged by their key, checkpoint events as text under the
  tag `checkpoints`;
- histogram events (`watch(histograms=True)`) as histogram-plugin summaries (the HISTOGRAMS and
  DISTRIBUTIONS tabs) tagged by their key (`weights/<param>`, `grads/<param>`);
- artifact events: images as image summaries, tables as markdown text, other files as a line
  of text under `artifacts` (`tbmedia`);
- at the run's end, its params (config + log_params) as the HPARAMS tab's session info, its
  status, and its summary as `summary/<key>` scalars. The HPARAMS tab takes the metric columns
  from the run's scalar tags, so their final values show there.

Exactly once, also across a collector crash: `flush()` returns the size of every open event
file; the runner stores that with its cursor, and `restore()` after a restart truncates those
files back to it and deletes files this sink created after it, before the batch after the
cursor is written again. Each (re)start opens a new event file, as TensorBoard expects.

`traintape sync` writes a run into a fresh folder and swaps it in at the end, so syncing twice
leaves one copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traintape.layout import StoreLayout
from traintape.schemas.events import (
    ARTIFACT,
    CHECKPOINT,
    HISTOGRAM,
    METRICS,
    PARAMS,
    RUN_END,
    TEXT,
)
from traintape.sinks._base import (
    Event,
    Option,
    RunInfo,
    Sink,
    flatten,
    histogram_bins,
    safe_name,
)
from traintape.sinks.media import ArtifactProblems
from traintape.sinks.tbevents import (
    FLOAT,
    EventFile,
    float32,
    load_crc32c,
    scalar_event,
    value_prefix,
)
from traintape.sinks.tbmedia import write_artifact

MARKER = ".traintape-run"
PARAMS_FILE = "traintape-params.json"


class _Run:
    def __init__(self, info: RunInfo, folder: Path, file: EventFile) -> None:
        self.info = info
        self.folder = folder
        self.file = file
        self.params: dict[str, Any] = {}
        self.last_step = 0
        self.prefix: dict[str, bytes] = {}  # tag -> encoded Summary.Value up to the float


class TensorBoardSink(Sink):
    type = "tensorboard"
    module = "tensorboard"
    extra = "tensorboard"
    value_option = "dir"
    options = {
        "dir": Option(str, None, "root of the per-run log folders (default: <store>/tensorboard)"),
        "hparams": Option(bool, True, "write params and final metrics for the HPARAMS tab"),
    }

    def __init__(self, name: str, options: Any, store: Path, *, replay: bool = False) -> None:
        super().__init__(name, options, store, replay=replay)
        self.root = (
            Path(self.config["dir"] or StoreLayout(store).tensorboard).expanduser().resolve()
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self._crc = load_crc32c()
        self._host = safe_name(socket.gethostname())
        # Files are named by sink and store, so restore() never touches another collector's.
        self._tag = (
            f"{safe_name(name)}-{hashlib.sha1(str(store.resolve()).encode()).hexdigest()[:8]}"
        )
        self._runs: dict[str, _Run] = {}
        self._next_file = 0
        self._swaps: list[tuple[Path, Path]] = []  # replay: (fresh folder, final folder)
        self._complete = False  # replay: flushed after the last write, so the swap may happen
        self.values_written = 0
        self.histograms_written = 0
        self.histograms_skipped = 0  # histograms of tensors with no finite value
        self.counts: Counter[str] = Counter()  # images, tables, artifacts written
        self.problems = ArtifactProblems(name)

    # -- crash recovery ------------------------------------------------------------------------

    def restore(self, checkpoint: Any) -> None:
        if not checkpoint:
            return
        self._next_file = int(checkpoint.get("next_file", 0))
        sizes = checkpoint.get("files", {})
        for path_text, size in sizes.items():
            path = Path(path_text)
            if path.exists() and path.stat().st_size > size:
                with open(path, "r+b") as f:
                    f.truncate(size)
        for path in self.root.rglob(f"events.out.tfevents.*.{self._tag}"):
            n = _file_number(path)
            if n is not None and n >= self._next_file and str(path) not in sizes:
                path.unlink()

    # -- the sink calls ------------------------------------------------------------------------

    def open_run(self, run: RunInfo) -> None:
        self._complete = False
        if run.run_id in self._runs:
            self._runs[run.run_id].info = run
            return
        folder = self._folder(run)
        target = folder
        if self.replay:
            folder = folder.with_name(f"{folder.name}.sync-{os.getpid()}")
            shutil.rmtree(folder, ignore_errors=True)
            self._swaps.append((folder, target))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text(run.run_id)
        stamp = int(time.time())
        path = (
            folder / f"events.out.tfevents.{stamp:010d}.{self._host}.{self._next_file}.{self._tag}"
        )
        self._next_file += 1
        state = _Run(run, folder, EventFile(path, self._crc))
        saved = folder / PARAMS_FILE
        if saved.exists():
            state.params = json.loads(saved.read_text())
        else:
            self._add_params(state, flatten(run.config))
        self._runs[run.run_id] = state

    def write(self, run: RunInfo, events: Sequence[Event]) -> None:
        self._complete = False
        state = self._runs.get(run.run_id)
        if state is None:
            self.open_run(run)
            state = self._runs[run.run_id]
        for event in events:
            kind = event.kind
            if kind == METRICS:
                self._scalars(state, event.step or 0, event.ts, event.body)
            elif kind == PARAMS:
                self._add_params(state, event.body)
            elif kind == TEXT:
                key = str(event.body.get("key") or "text")
                self._text(state, key, str(event.body.get("text", "")), event)
            elif kind == HISTOGRAM:
                self._histogram(state, event)
            elif kind == CHECKPOINT:
                self._text(state, "checkpoints", _describe_checkpoint(event.body), event)
            elif kind == ARTIFACT:
                write_artifact(self, state, event)
            elif kind == RUN_END:
                self._end(state, event)

    def flush(self) -> dict[str, Any]:
        files = {str(r.file.path): r.file.flush() for r in self._runs.values()}
        self._complete = True
        return {"files": files, "next_file": self._next_file}

    def close(self) -> None:
        for state in list(self._runs.values()):
            state.file.close()
        self._runs.clear()
        for fresh, final in self._swaps:
            if self._complete:
                _swap_in(fresh, final)
            else:  # a replay that failed half-way leaves the earlier copy as it was
                shutil.rmtree(fresh, ignore_errors=True)
        self._swaps.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "dir": str(self.root),
            "values_written": self.values_written,
            "histograms_written": self.histograms_written,
            "histograms_skipped": self.histograms_skipped,
            **self.counts,
            **self.problems.stats(),
        }

    # -- writing -------------------------------------------------------------------------------

    def _folder(self, run: RunInfo) -> Path:
        folder = self.root / safe_name(run.project) / safe_name(run.name)
        marker = folder / MARKER
        if marker.exists() and marker.read_text().strip() != run.run_id:
            folder = folder.with_name(f"{folder.name}-{safe_name(run.run_id)}")
        return folder

    def _scalars(self, state: _Run, step: int, ts: int, values: dict[str, Any]) -> None:
        prefix = state.prefix
        pack = FLOAT.pack
        parts = []
        for key, value in values.items():
            head = prefix.get(key)
            if head is None:
                head = prefix[key] = value_prefix(key)
            parts.append(head)
            try:
                parts.append(pack(value))
            except (OverflowError, struct.error):  # beyond float32's range; not a float
                parts.append(float32(float(value)))
        state.file.write_bytes(scalar_event(ts, step, b"".join(parts)))
        self.values_written += len(values)
        if step > state.last_step:
            state.last_step = step

    def _add_params(self, state: _Run, params: dict[str, Any]) -> None:
        changed = {k: v for k, v in params.items() if state.params.get(k, _MISSING) != v}
        if not changed:
            return
        state.params.update(changed)
        path = state.folder / PARAMS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.params, default=str))
        os.replace(tmp, path)

    def _histogram(self, state: _Run, event: Event) -> None:
        """A histogram-plugin summary: a float64 tensor of [left edge, right edge, count] rows."""
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.histogram import metadata as histogram_metadata
        from tensorboard.util import tensor_util

        bins = histogram_bins(event)
        if bins is None:
            self.histograms_skipped += 1
            return
        tag, counts, edges = bins
        rows = [[edges[i], edges[i + 1], c] for i, c in enumerate(counts)]
        value = summary_pb2.Summary.Value(tag=tag)
        value.tensor.CopyFrom(tensor_util.make_tensor_proto(rows, dtype="float64"))
        if tag not in state.file.tags:
            value.metadata.CopyFrom(histogram_metadata.create_summary_metadata(tag, ""))
            state.file.tags.add(tag)
        step = event.step if event.step is not None else state.last_step
        state.file.write(
            event_pb2.Event(
                wall_time=event.ts / 1e9, step=step, summary=summary_pb2.Summary(value=[value])
            )
        )
        self.histograms_written += 1

    def _text(self, state: _Run, tag: str, text: str, event: Event) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.text import metadata as text_metadata

        if event.rank not in (None, 0):
            tag = f"{tag}/rank{event.rank}"
        value = summary_pb2.Summary.Value(tag=tag)
        value.tensor.dtype = 7  # DT_STRING
        value.tensor.string_val.append(text.encode("utf-8"))
        value.tensor.tensor_shape.dim.add(size=1)
        if tag not in state.file.tags:
            value.metadata.CopyFrom(text_metadata.create_summary_metadata("", ""))
            state.file.tags.add(tag)
        step = event.step if event.step is not None else state.last_step
        state.file.write(
            event_pb2.Event(
                wall_time=event.ts / 1e9, step=step, summary=summary_pb2.Summary(value=[value])
            )
        )

    def _end(self, state: _Run, event: Event) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2, summary_v2
        from tensorboard.plugins.hparams import metadata as hp_metadata

        status = event.body.get("status", "completed")
        summary = event.body.get("summary") or {}
        numbers = {
            f"summary/{k}": v
            for k, v in flatten(summary).items()
            if type(v) in (int, float) and not isinstance(v, bool)
        }
        if numbers:
            self._scalars(state, state.last_step, event.ts, numbers)
        if self.config["hparams"]:
            hparams = {k: _hparam_value(v) for k, v in state.params.items()}
            start = summary_v2.hparams_pb(
                hparams, trial_id=state.info.name, start_time_secs=state.info.started_ns / 1e9
            )
            end_info = plugin_data_pb2.SessionEndInfo(
                status=api_pb2.STATUS_SUCCESS if status == "completed" else api_pb2.STATUS_FAILURE,
                end_time_secs=event.ts / 1e9,
            )
            end = summary_pb2.Summary()
            end.value.add(
                tag=hp_metadata.SESSION_END_INFO_TAG,
                metadata=hp_metadata.create_summary_metadata(
                    plugin_data_pb2.HParamsPluginData(session_end_info=end_info)
                ),
                tensor=hp_metadata.NULL_TENSOR,
            )
            for summ in (start, end):
                state.file.write(
                    event_pb2.Event(wall_time=event.ts / 1e9, step=state.last_step, summary=summ)
                )
        state.file.close()
        del self._runs[state.info.run_id]


_MISSING = object()


def _hparam_value(value: Any) -> bool | float | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _describe_checkpoint(body: dict[str, Any]) -> str:
    parts = [f"{body.get('action', 'saved')} `{body.get('path', '?')}`"]
    if body.get("bytes") is not None:
        parts.append(f"{body['bytes']} bytes")
    if body.get("sha256"):
        parts.append(f"sha256 {str(body['sha256'])[:16]}")
    if body.get("is_best"):
        parts.append("best")
    if body.get("error"):
        parts.append(f"error: {body['error']}")
    metrics = body.get("metrics")
    if isinstance(metrics, dict) and metrics:
        parts.append(", ".join(f"{k}={v}" for k, v in metrics.items()))
    return "; ".join(parts)


def _file_number(path: Path) -> int | None:
    try:
        return int(path.name.split(".")[-2])
    except (IndexError, ValueError):
        return None


def _swap_in(fresh: Path, final: Path) -> None:
    """Replaces `final` by `fresh` (a folder written by `traintape sync`)."""
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(fresh, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(fresh, final)
