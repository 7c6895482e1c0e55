"""What a run says when it starts: its `run_start` body (project, name, config, tags, the
environment it runs on, world size) and its config as `params`.

Both are checked here, before anything is sent: a config that cannot be stored fails `init()`
itself. The environment passes through the run's redaction (redact.py) like the config did.
"""

from __future__ import annotations

from typing import Any

from traintape.emitter import environment
from traintape.emitter.checks import check_body
from traintape.emitter.redact import Redaction
from traintape.emitter.values import flatten
from traintape.placement import Placement


def start_bodies(
    project: str,
    name: str,
    config: dict[str, Any],
    tags: list[str],
    where: Placement,
    redaction: Redaction,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The checked `run_start` body, and the config flattened as params (None: no config)."""
    start_body = {
        "project": project,
        "name": name,
        "config": config,
        "tags": tags,
        "environment": {
            **redaction.environment(environment.environment(where)),
            "config_sha1": environment.config_hash(config),
        },
        "world_size": where.world_size,
    }
    check_body(start_body, "the run's config and environment")
    params = flatten(config) if config else None
    if params:
        check_body(params, "the config (as params)")
    return start_body, params
