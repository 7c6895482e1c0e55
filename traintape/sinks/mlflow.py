"""MLflow sink: experiment = project, run = run name, found again by the tag `traintape.run_id`.

What goes where:

- metric values through `log_batch` (at most 1000 per call, MLflow's limit), with the event's
  step and timestamp (ms). A key outside MLflow's alphabet (letters, digits, `_ - . / : ` and
  space) or longer than 250 characters is sent cleaned (anything else becomes `_`), cut, and
  suffixed with `-` and 10 hex digits of the sha1 of the whole key (`损失` -> `__-<hash>`), so
  distinct names stay distinct and every process (a restarted sink, `traintape sync`) maps a
  name alike. Each run records the mapping as tags `traintape.key.<MLflow key>` = original
  name (`traintape.key.<hash>` when that tag would be too long); a log line says it once per
  name;
- params (config at `run_start`, then `log_params`) flattened with dots, 100 per call; a value
  longer than MLflow's 6000 characters is cut to 6000, a key like a metric key; what was cut is
  listed in the tag `traintape.truncated` and in a log line. MLflow params cannot change: a
  second, different value for a key is not sent (a log line says so);
- tags: `traintape.run_id`, `traintape.project`, `traintape.host`, `traintape.world_size`,
  `mlflow.source.git.commit` (and branch), each user tag as a tag with value "true", the
  run_end summary as `summary.<key>`; checkpoint events as `traintape.checkpoint.last`/`.best`;
- text and checkpoint events as artifacts `text/<key>/step-<step>.txt` and
  `checkpoints/step-<step>.json` (option `artifacts`); artifact events' files under `traintape/`,
  images also by `log_image`, tables by `log_table` (`mlflow_media`). An experiment the sink
  creates in a sqlite tracking store keeps them beside the database, in `<db folder>/mlartifacts/
  <name>` (MLflow's default: `./mlruns` of whichever folder the process runs in); elsewhere the
  tracking server decides. `stats()` names where (`artifacts_in`: printed by `traintape sync`,
  and in the collector's status file under the sink's `backend`);
- status from `run_end`: completed -> FINISHED, failed -> FAILED, killed -> KILLED;
- histogram events are not sent: MLflow has no histograms (they stay in the store's `events`).

Exactly once: a metric row that MLflow already holds is never sent again. After a call that
failed (MLflow may or may not have stored it) and for a run found already existing when it is
opened (the collector restarted after sending a batch, before persisting its cursor), the
sink reads the run's history of the batch's keys (`get_metric_history`) and sends only the
rows, counted as (key, step, timestamp, value), that are not there yet. `traintape sync` always
checks. Params and tags are idempotent (same key, same value), artifacts are overwritten by
name, status updates are idempotent.

MLflow's HTTP client retries failed requests itself, and a retried POST may store a row twice;
the sink turns those retries off (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 unless set) and retries
through the runner, which checks first.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traintape.errors import SinkRejected
from traintape.schemas.events import ARTIFACT, CHECKPOINT, METRICS, PARAMS, RUN_END, TEXT
from traintape.sinks._base import Event, Option, RunInfo, Sink, flatten, safe_name
from traintape.sinks.mlflow_media import ArtifactProblems, send_artifact
from traintape.sinks.mlflow_names import (
    MAX_KEY,
    MAX_METRICS_PER_CALL,
    MAX_PARAM_VALUE,
    MAX_PARAMS_TAGS_PER_CALL,
    MAX_TAG_VALUE,
    artifact_root,
    clean_key,
    param_text,
    rename_tag,
    row_value,
)

_STATUS = {"completed": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST"}

logger = logging.getLogger(__name__)


class _Run:
    def __init__(self, mlflow_id: str, verify: bool, params: dict[str, str]) -> None:
        self.mlflow_id = mlflow_id
        self.verify = verify
        self.params = params
        self.existing: dict[str, Counter] = {}  # key -> Counter of (step, ts, value) held
        self.truncated: list[str] = []
        self.renamed: set[str] = set()  # MLflow keys whose original name this run's tags hold
        self.media: dict[str, list[str]] | None = None  # folder -> files held (mlflow_media)


class MlflowSink(Sink):
    type = "mlflow"
    module = "mlflow"
    extra = "mlflow"
    value_option = "tracking_uri"
    batch_events = 2_000  # a tracking store takes a few thousand values/s: keep batches short
    options = {
        "tracking_uri": Option(
            str, None, "tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in the store)"
        ),
        "experiment": Option(str, None, "experiment name (default: the run's project)"),
        "http_timeout": Option(float, 10.0, "seconds per request to a tracking server"),
        "artifacts": Option(bool, True, "log text and checkpoint events as artifacts"),
    }

    def __init__(self, name: str, options: Any, store: Path, *, replay: bool = False) -> None:
        super().__init__(name, options, store, replay=replay)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(self.config["http_timeout"])))
        from mlflow.tracking import MlflowClient

        self.uri = (
            self.config["tracking_uri"]
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{store / 'mlflow.db'}"
        )
        self.client = MlflowClient(tracking_uri=self.uri)
        self._experiments: dict[str, str] = {}
        self._artifact_root = artifact_root(self.uri)
        self._artifact_locations: dict[str, str] = {}  # experiment name -> its artifact folder
        self._runs: dict[str, _Run] = {}
        self._keys: dict[str, str] = {}
        self._warned_keys: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.problems = ArtifactProblems(name)

    # -- the sink calls ------------------------------------------------------------------------

    def open_run(self, run: RunInfo) -> None:
        try:
            self._open(run)
        except Exception as exc:
            _reraise(exc, f"opening run {run.run_id}")

    def write(self, run: RunInfo, events: Sequence[Event]) -> None:
        state = self._runs.get(run.run_id)
        if state is None:
            self.open_run(run)
            state = self._runs[run.run_id]
        try:
            self._write(run, state, events)
        except Exception as exc:
            state.verify, state.media = True, None  # MLflow may hold part: check before resending
            _reraise(exc, f"run {run.run_id}")
        if not self.replay:
            state.verify, state.media = False, None
            state.existing.clear()

    def stats(self) -> dict[str, Any]:
        where = {"artifacts_in": " ".join(sorted(set(self._artifact_locations.values())))}
        return {
            "tracking_uri": self.uri,
            **(where if self._artifact_locations else {}),
            **self.counts,
            **self.problems.stats(),
        }

    # -- opening -------------------------------------------------------------------------------

    def _experiment(self, name: str) -> str:
        exp_id = self._experiments.get(name)
        if exp_id is None:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                root = self._artifact_root
                location = str(root / safe_name(name)) if root else None
                try:
                    exp_id = self.client.create_experiment(name, artifact_location=location)
                except Exception:  # another client created it meanwhile
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                exp_id = exp.experiment_id
            self._experiments[name] = exp_id
            where = self.client.get_experiment(exp_id).artifact_location
            self._artifact_locations[name] = where
            logger.info("sink mlflow: experiment %r keeps its artifacts in %s", name, where)
        return exp_id

    def _open(self, run: RunInfo) -> None:
        from mlflow.entities import ViewType

        exp_id = self._experiment(self.config["experiment"] or run.project)
        found = self.client.search_runs(
            [exp_id],
            filter_string=f"tags.`traintape.run_id` = '{run.run_id}'",
            run_view_type=ViewType.ALL,
            max_results=1,
        )
        if found:
            existing = found[0]
            state = _Run(existing.info.run_id, True, dict(existing.data.params))
            ended = existing.info.end_time
            if existing.info.status != "RUNNING" and ended and ended < run.started_ns // 10**6:
                self.client.update_run(state.mlflow_id, status="RUNNING")  # a resumed attempt
        else:
            created = self.client.create_run(
                exp_id,
                start_time=run.started_ns // 10**6 or None,
                tags={"traintape.run_id": run.run_id},
                run_name=run.name,
            )
            state = _Run(created.info.run_id, self.replay, {})
        self._runs[run.run_id] = state
        env = run.environment
        tags = {
            "traintape.run_id": run.run_id,
            "traintape.project": run.project,
            "traintape.world_size": str(run.world_size),
        }
        for key, tag in (("host", "traintape.host"), ("git_commit", "mlflow.source.git.commit")):
            if env.get(key):
                tags[tag] = str(env[key])
        if env.get("git_branch"):
            tags["mlflow.source.git.branch"] = str(env["git_branch"])
        for tag in run.tags:
            tags[clean_key(tag)] = "true"
        self._log_tags(state, tags)
        self._log_params(run, state, flatten(run.config))

    # -- writing -------------------------------------------------------------------------------

    def _write(self, run: RunInfo, state: _Run, events: Sequence[Event]) -> None:
        from mlflow.entities import Metric

        metrics: list[Any] = []
        keys = self._keys
        renamed: dict[str, str] = {}
        end: Event | None = None
        for event in events:
            kind = event.kind
            if kind == METRICS:
                ts = event.ts // 1_000_000
                step = event.step or 0
                for key, value in event.body.items():
                    name = keys.get(key)
                    if name is None:
                        name = keys[key] = clean_key(key)
                    if name != key and name not in state.renamed:
                        renamed[name] = key
                    metrics.append(Metric(name, float(value), ts, step))
            elif kind == PARAMS:
                self._send_metrics(state, metrics)
                metrics = []
                self._log_params(run, state, flatten(event.body))
            elif kind in (TEXT, CHECKPOINT, ARTIFACT):
                self._send_metrics(state, metrics)
                metrics = []
                self._artifact(state, event)
            elif kind == RUN_END:
                end = event
        self._record_renames(run, state, renamed, "metric")
        self._send_metrics(state, metrics)
        if end is not None:
            summary = flatten(end.body.get("summary") or {})
            self._log_tags(
                state, {f"summary.{clean_key(k)}": param_text(v) for k, v in summary.items()}
            )
            status = _STATUS.get(str(end.body.get("status")), "FINISHED")
            self.client.set_terminated(state.mlflow_id, status, end_time=end.ts // 1_000_000)

    def _send_metrics(self, state: _Run, metrics: list[Any]) -> None:
        if not metrics:
            return
        if state.verify:
            metrics = self._not_yet_stored(state, metrics)
        for i in range(0, len(metrics), MAX_METRICS_PER_CALL):
            chunk = metrics[i : i + MAX_METRICS_PER_CALL]
            self.client.log_batch(state.mlflow_id, metrics=chunk, synchronous=True)
            self.counts["metric_values"] += len(chunk)

    def _not_yet_stored(self, state: _Run, metrics: list[Any]) -> list[Any]:
        for key in {m.key for m in metrics} - state.existing.keys():
            history = self.client.get_metric_history(state.mlflow_id, key)
            state.existing[key] = Counter(
                (m.step, m.timestamp, row_value(m.value)) for m in history
            )
        out = []
        for m in metrics:
            held = state.existing[m.key]
            row = (m.step, m.timestamp, row_value(m.value))
            if held[row] > 0:
                held[row] -= 1
                self.counts["already_stored"] += 1
            else:
                out.append(m)
        return out

    def _log_params(self, run: RunInfo, state: _Run, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        todo: dict[str, str] = {}
        renamed: dict[str, str] = {}
        for raw_key, raw_value in params.items():
            key = clean_key(str(raw_key))
            if key != raw_key:
                renamed[key] = str(raw_key)
            value = param_text(raw_value)
            if len(value) > MAX_PARAM_VALUE:
                value = value[:MAX_PARAM_VALUE]
                self._truncated(run, state, f"{key} (value cut to {MAX_PARAM_VALUE} chars)")
            if key != raw_key and len(str(raw_key)) > MAX_KEY:
                self._truncated(run, state, f"{key} (key cut to {MAX_KEY} chars)")
            held = state.params.get(key)
            if held == value:
                continue
            if held is not None:
                self.counts["param_changes_not_sent"] += 1
                _warn(
                    f"mlflow: run {run.run_id}: param {key!r} changed from {held[:80]!r} to "
                    f"{value[:80]!r}; MLflow params cannot change, the first value stays"
                )
                continue
            todo[key] = value
        self._record_renames(run, state, renamed, "param")
        items = list(todo.items())
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_CALL):
            chunk = items[i : i + MAX_PARAMS_TAGS_PER_CALL]
            self.client.log_batch(
                state.mlflow_id, params=[Param(k, v) for k, v in chunk], synchronous=True
            )
            state.params.update(chunk)
            self.counts["params"] += len(chunk)

    def _record_renames(
        self, run: RunInfo, state: _Run, renamed: dict[str, str], what: str
    ) -> None:
        """Tags `traintape.key.<MLflow key>` = original name on the run, before the values
        are sent under that key; a log line once per name in this process."""
        new = {k: v for k, v in renamed.items() if k not in state.renamed}
        if not new:
            return
        for name, original in new.items():
            if original not in self._warned_keys:
                self._warned_keys.add(original)
                self.counts["keys_renamed"] += 1
                _warn(
                    f"mlflow: {what} {original[:80]!r} is sent as {name!r} (MLflow names take "
                    f"letters, digits, '_-. /:' and space, at most {MAX_KEY} characters); "
                    "the run's tags traintape.key.<key> hold the original names"
                )
        self._log_tags(state, {rename_tag(k): v for k, v in new.items()})
        state.renamed.update(new)

    def _truncated(self, run: RunInfo, state: _Run, what: str) -> None:
        if what in state.truncated:
            return
        state.truncated.append(what)
        self.counts["params_truncated"] += 1
        _warn(f"mlflow: run {run.run_id}: param {what}, MLflow's limit")
        self._log_tags(state, {"traintape.truncated": "; ".join(state.truncated)})

    def _log_tags(self, state: _Run, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [(k[:MAX_KEY], v[:MAX_TAG_VALUE]) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_CALL):
            chunk = items[i : i + MAX_PARAMS_TAGS_PER_CALL]
            self.client.log_batch(
                state.mlflow_id, tags=[RunTag(k, v) for k, v in chunk], synchronous=True
            )

    def _artifact(self, state: _Run, event: Event) -> None:
        if event.kind == ARTIFACT:
            return send_artifact(self, state, event)
        step = event.step if event.step is not None else 0
        rank = "" if event.rank in (None, 0) else f"-rank{event.rank}"
        if event.kind == CHECKPOINT:
            body = event.body
            action = str(body.get("action", "saved"))
            if action == "saved":  # a deletion or a failure names no checkpoint to point at
                tags = {"traintape.checkpoint.last": str(body.get("path"))}
                if body.get("is_best"):
                    tags["traintape.checkpoint.best"] = str(body.get("path"))
                self._log_tags(state, tags)
            if self.config["artifacts"]:
                # One artifact per event: a save and a later deletion of the same step differ.
                text = json.dumps(body, default=str, indent=1)
                name = f"checkpoints/step-{step:09d}{rank}-{clean_key(action)}.json"
                self.client.log_text(state.mlflow_id, text, name)
        elif self.config["artifacts"]:
            key = clean_key(str(event.body.get("key") or "text"))
            name = f"text/{key}/step-{step:09d}{rank}.txt"
            self.client.log_text(state.mlflow_id, str(event.body.get("text", "")), name)
        self.counts["artifacts"] += 1


def _reraise(exc: Exception, where: str) -> None:
    """MLflow refusing the data itself is permanent (SinkRejected); the rest is retried."""
    code = getattr(exc, "error_code", None)
    if code in _PERMANENT:
        msg = f"MLflow refused {where}: {exc}"
        raise SinkRejected(msg) from exc
    raise exc


def _warn(text: str) -> None:
    logger.warning("sink %s", text)
