"""Weights & Biases sink: offline unless W&B credentials are configured, then online.

One W&B run per traintape run, with the same id (characters W&B refuses become `-`): config
from `run_start` and `log_params`, metric values as history rows at their step with the event's
wall time as `_timestamp`, text events as string values and histogram events (`watch(histograms=
True)`) as `wandb.Histogram`s in the row of their step, the last and
best checkpoint paths and the `run_end` summary in the run's summary, artifact events as
`wandb.Image`s and `wandb.Table`s in the row of their step and other files as `wandb.Artifact`s
(`wbmedia`), and the run state from
`run_end` (completed -> exit code 0, failed or killed -> 1). Offline runs are written to
`<dir>/wandb/offline-run-<time>-<id>/`, ready for `wandb sync <that folder>`.

W&B keeps a run's steps increasing and ignores a row below the last one, so the runner hands
this sink each run's steps whole and in order (multi-rank values wait for every rank, and a
step waits `late_events_s` of the run's time for artifacts stored after later steps' values,
see `projection`); a value that still comes late is not sent and is counted (`out_of_order`).

Delivery: once `run.log` returned, W&B's service process has the row, and the runner moves its
cursor. Before opening a run again after a restart, the sink reads the last history step of the
run's earlier offline folders and skips rows up to it, so a batch sent again after a restart is
not logged twice. W&B's service writes its file in 32 KiB blocks and at `finish()`: rows it held
when the collector was killed with SIGKILL are not in the file (`traintape sync RUN --to wandb`
writes the run again from the journal). A clean stop (SIGTERM) finishes every open W&B run
(marked preempting when the run itself has not ended); after each `finish()` the sink waits
until the file holds the run's exit record (W&B returns from `finish()` before its service has
written the file out), so a run's end moves the cursor only once it is on disk.

`traintape sync --to wandb` offline replaces the run's earlier offline folders by one complete
folder; online it resumes the run and sends only the steps past the run's last one.
"""

from __future__ import annotations

import netrc
import os
import shutil
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from traintape.errors import SinkError
from traintape.schemas.events import (
    ARTIFACT,
    CHECKPOINT,
    HISTOGRAM,
    METRICS,
    PARAMS,
    RUN_END,
    TEXT,
)
from traintape.sinks._base import Event, Option, RunInfo, Sink, flatten, histogram_bins
from traintape.sinks.media import ArtifactProblems, media_kind
from traintape.sinks.wbmedia import WandbMedia

_BAD_ID = frozenset('/\\#?%:"')
_BLOCK = 32768
_HEADER = struct.Struct("<IHB")


def wandb_id(run_id: str) -> str:
    return "".join("-" if c in _BAD_ID or c.isspace() else c for c in run_id)[:128] or "-"


def has_credentials() -> bool:
    """An API key in the environment, or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def read_records(path: Path) -> Iterator[bytes]:
    """Records of a `.wandb` file (LevelDB log format); stops at a torn or corrupt tail."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        return
    pos, pending = 7, b""
    while pos + _HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER.size:
            pos += left
            continue
        crc, length, kind = _HEADER.unpack_from(data, pos)
        chunk = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if kind == 0 or len(chunk) < length:
            return
        if zlib.crc32(chunk, zlib.crc32(bytes((kind,)))) & 0xFFFFFFFF != crc:
            return
        pos += _HEADER.size + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def wait_written(path: Path, timeout: float = 30.0) -> bool:
    """Waits until W&B's service has written the run's exit record (its last) to `path`.

    `finish()` returns before the service has written the file out; a reader, or the sink
    itself reopening the run after a restart, must not see it half-written.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    size = -1
    while time.monotonic() < deadline:
        now = path.stat().st_size if path.exists() else -1
        if now == size and now > 0:
            for raw in read_records(path):
                record = pb.Record()  # type: ignore[attr-defined]  # generated protobuf
                try:
                    record.ParseFromString(raw)
                except Exception:
                    continue
                if record.WhichOneof("record_type") == "exit":
                    return True
        size = now
        time.sleep(0.05)
    return False


def last_history_step(path: Path) -> int:
    """The highest history step in a `.wandb` file, -1 if none."""
    from wandb.proto import wandb_internal_pb2 as pb

    last = -1
    for raw in read_records(path):
        record = pb.Record()  # type: ignore[attr-defined]  # generated protobuf
        try:
            record.ParseFromString(raw)
        except Exception:  # a record of a newer format: not history
            continue
        if record.WhichOneof("record_type") == "history":
            last = max(last, record.history.step.num)
    return last


class _Run:
    def __init__(self, wb: Any, skip_through: int) -> None:
        self.wb = wb
        self.skip_through = skip_through  # rows up to this step are in W&B already
        self.last_step = -1


class WandbSink(Sink):
    type = "wandb"
    module = "wandb"
    extra = "wandb"
    value_option = "mode"
    batch_events = 5_000
    ordered_steps = True
    late_events_s = 2.0
    options = {
        "mode": Option(str, "auto", "offline, online, or auto (online when credentials are set)"),
        "dir": Option(str, None, "folder that gets wandb/ (default: the store)"),
        "entity": Option(str, None, "W&B entity (team or user)"),
        "project": Option(str, None, "W&B project (default: the run's project)"),
    }

    def __init__(self, name: str, options: Any, store: Path, *, replay: bool = False) -> None:
        super().__init__(name, options, store, replay=replay)
        mode = self.config["mode"]
        if mode not in ("auto", "offline", "online"):
            msg = f"sink {name}: mode must be auto, offline or online, not {mode!r}"
            raise SinkError(msg)
        self.mode = ("online" if has_credentials() else "offline") if mode == "auto" else mode
        self.dir = Path(self.config["dir"] or store).expanduser().resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._runs: dict[str, _Run] = {}
        self.counts: Counter = Counter()
        self.problems = ArtifactProblems(name)
        self.media = WandbMedia(store, self.problems, self.counts)

    # -- the sink calls ------------------------------------------------------------------------

    def open_run(self, run: RunInfo) -> None:
        if run.run_id in self._runs:
            return
        import wandb

        wid = wandb_id(run.run_id)
        skip_through = -1
        if self.mode == "offline":
            earlier = sorted(self.dir.glob(f"wandb/offline-run-*-{wid}"))
            if self.replay:
                for folder in earlier:
                    shutil.rmtree(folder, ignore_errors=True)
            else:
                for folder in earlier:
                    for file in folder.glob("*.wandb"):
                        skip_through = max(skip_through, last_history_step(file))
            if earlier:
                # W&B names the folder by the second; a second init of the id within the same
                # second would write into the first one's folder and overwrite its file.
                newest = (
                    max(f.stat().st_mtime for f in earlier if f.exists()) if not self.replay else 0
                )
                time.sleep(max(0.0, 1.05 - (time.time() - newest)))
        settings = wandb.Settings(
            mode=self.mode,  # type: ignore[arg-type]  # checked in __init__
            silent=True,
            console="off",
            save_code=False,
            disable_git=True,
            disable_job_creation=True,
            x_disable_stats=True,  # the collector's own CPU and GPU are not the run's
            x_disable_meta=True,
        )
        wb = wandb.init(
            project=self.config["project"] or run.project,
            entity=self.config["entity"],
            name=run.name,
            id=wid,
            dir=str(self.dir),
            config=run.config,
            tags=[t[:64] for t in run.tags],
            resume="allow",
            reinit="create_new",
            settings=settings,
        )
        if self.mode == "online":
            skip_through = max(skip_through, int(getattr(wb, "step", 0) or 0) - 1)
        wb.config.update(
            {"traintape": {"run_id": run.run_id, "world_size": run.world_size}},
            allow_val_change=True,
        )
        self._runs[run.run_id] = _Run(wb, skip_through)

    def write(self, run: RunInfo, events: Sequence[Event]) -> None:
        state = self._runs.get(run.run_id)
        if state is None:
            self.open_run(run)
            state = self._runs[run.run_id]
        wb = state.wb
        row: dict[str, Any] = {}
        row_step = -1
        for event in events:
            kind = event.kind
            if kind == ARTIFACT and media_kind(event.body) is None:
                self.media.artifact(wb, event)
            elif kind in (METRICS, TEXT, HISTOGRAM, ARTIFACT):
                step = event.step if event.step is not None else max(state.last_step, 0)
                values = len(event.body) if kind == METRICS else 1
                if step <= state.skip_through:
                    self.counts["already_stored"] += values
                    continue
                if step < state.last_step:  # the same step again merges into W&B's row
                    self.counts["out_of_order"] += values
                    continue
                if step != row_step and row:
                    self._log(state, row, row_step)
                    row = {}
                row_step = step
                if kind == METRICS:
                    row.update(event.body)
                elif kind == TEXT:
                    row[str(event.body.get("key") or "text")] = str(event.body.get("text", ""))
                elif kind == HISTOGRAM:
                    self._add_histogram(row, event)
                else:
                    self.media.add(row, event)
                row["_timestamp"] = event.ts / 1e9
                state.last_step = step
            elif kind == PARAMS:
                wb.config.update(flatten(event.body), allow_val_change=True)
            elif kind == CHECKPOINT and event.body.get("action", "saved") == "saved":
                path = str(event.body.get("path"))
                wb.summary["checkpoint/last"] = path
                if event.body.get("is_best"):
                    wb.summary["checkpoint/best"] = path
            elif kind == RUN_END:
                if row:
                    self._log(state, row, row_step)
                    row = {}
                self._end(run, state, event)
                return
        if row:
            self._log(state, row, row_step)

    def close(self) -> None:
        for run_id, state in list(self._runs.items()):
            state.wb.mark_preempting()  # the run goes on; the collector stops
            self._finish(state, 0)
            del self._runs[run_id]

    def stats(self) -> dict[str, Any]:
        where = {"mode": self.mode, "dir": str(self.dir / "wandb")}
        return {**where, **self.counts, **self.problems.stats()}

    # -- helpers -------------------------------------------------------------------------------

    def _add_histogram(self, row: dict[str, Any], event: Event) -> None:
        import wandb

        bins = histogram_bins(event)
        if bins is None:
            self.counts["histograms_skipped"] += 1
            return
        tag, counts, edges = bins
        row[tag] = wandb.Histogram(np_histogram=(np.asarray(counts), np.asarray(edges)))
        self.counts["histograms"] += 1

    def _log(self, state: _Run, row: dict[str, Any], step: int) -> None:
        try:
            state.wb.log(row, step=step)
        finally:
            self.media.logged()
        self.counts["rows"] += 1
        self.counts["values"] += len(row) - 1

    def _end(self, run: RunInfo, state: _Run, event: Event) -> None:
        summary = event.body.get("summary") or {}
        if summary:
            state.wb.summary.update(dict(summary))
        status = event.body.get("status", "completed")
        self._finish(state, 0 if status == "completed" else 1)
        del self._runs[run.run_id]

    def _finish(self, state: _Run, exit_code: int) -> None:
        path = Path(state.wb.settings.sync_file) if self.mode == "offline" else None
        state.wb.finish(exit_code=exit_code)
        if path is not None and not wait_written(path):
            self.counts["finish_not_confirmed"] += 1
