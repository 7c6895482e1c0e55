"""Event kinds and statuses: the vocabulary every part of traintape shares.

On the wire a kind travels as a small int (one byte in msgpack); in the store it is a string.
"""

from __future__ import annotations

RUN_START = 0
PARAMS = 1
METRICS = 2
TEXT = 3
CHECKPOINT = 4
SYSTEM = 5
RUN_END = 6
HISTOGRAM = 7
RUN_STATUS = 8
ARTIFACT = 9

KIND_NAMES: tuple[str, ...] = (
    "run_start",
    "params",
    "metrics",
    "text",
    "checkpoint",
    "system",
    "run_end",
    "histogram",
    "run_status",
    "artifact",
)
"""Stored name of each wire kind, indexed by the kind's int."""

KIND_CODES: dict[str, int] = {name: code for code, name in enumerate(KIND_NAMES)}

RUN_STATUSES: tuple[str, ...] = ("completed", "failed", "killed")
"""Statuses a `run_end` event may carry (`finish(status=...)`): `killed` for SIGINT and SIGTERM
(traintape.emitter.signals), `failed` for an uncaught exception."""

LIVENESS_STATUSES: tuple[str, ...] = ("crashed", "running")
"""Statuses of the `run_status` events the collector journals itself about one process (a
`source`) that sent no `run_end`: `crashed` when the process vanished (SIGKILL, OOM killer,
segfault; by its pid on the collector's host, by silence elsewhere), `running` when it turns out
alive after all (traintape.collector.liveness)."""

RUN_STATES: tuple[str, ...] = ("running", *RUN_STATUSES, "crashed")
"""What `runs.status` can say. Per rank of the run's latest attempt: its `run_end` status, else
`crashed` if the collector's latest `run_status` about that process says so, else `running`. The
run: `failed` if any rank failed; `crashed` if any crashed and none still runs; `killed` if any
was killed; `running` while any runs; else `completed`. A resumed run (a new attempt) is
`running` again."""
