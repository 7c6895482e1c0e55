"""W&B's API on traintape: `import traintape.wandb as wandb`, and a W&B script records into
traintape instead (every rank logs, nothing lost on a crash, SQL over the store).

    import traintape.wandb as wandb

    run = wandb.init(project="mnist", config={"lr": 1e-3})
    wandb.define_metric("val/*", step_metric="epoch", summary="max")
    wandb.log({"loss": 0.3}, commit=False)
    wandb.log({"acc": 0.9})                  # one row: loss and acc at step 0
    wandb.summary["best_acc"] = 0.9
    wandb.finish()

Steps, commits, the config and the summary behave as in W&B 0.31 (traintape.wandb.history,
.config, .summary). What traintape has no use for (entity, group, job_type, notes) is stored as
params `wandb.<name>`; arguments with no effect are named in one warning. `Image` and `Table` are
stored as traintape's media (traintape.emitter.media), and so are the tables of `wandb.plot`'s
charts; other media (`Audio`, `Video`, ...) raise `UnsupportedMediaError`. Inside traintape, `import wandb` is still W&B itself.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from typing import Any

from traintape.errors import NoRunError, TraintapeError
from traintape.wandb import plot
from traintape.wandb.config import Config, PreInit, as_config_dict
from traintape.wandb.data_types import (
    Artifact,
    Audio,
    Histogram,
    Html,
    Image,
    Molecule,
    Object3D,
    Plotly,
    Settings,
    Table,
    Video,
)
from traintape.wandb.run import Run
from traintape.wandb.summary import Metric

logger = logging.getLogger("traintape.wandb")

__all__ = [
    "Artifact",
    "Audio",
    "Config",
    "Error",
    "Histogram",
    "Html",
    "Image",
    "Metric",
    "Molecule",
    "Object3D",
    "Plotly",
    "Run",
    "Settings",
    "Table",
    "Video",
    "alert",
    "config",
    "define_metric",
    "finish",
    "init",
    "log",
    "login",
    "plot",
    "run",
    "save",
    "summary",
    "unwatch",
    "watch",
]


def __getattr__(name: str) -> Any:
    # `except wandb.Error` catches what traintape.wandb raises on purpose. Looked up here, not
    # bound as a module name, so the error classes of the package are defined once (errors.py).
    if name == "Error":
        return TraintapeError
    msg = f"module 'traintape.wandb' has no attribute {name!r}"
    raise AttributeError(msg)


run: Run | None = None
config: Config | PreInit = PreInit("wandb.config")
summary: Any = PreInit("wandb.summary")

_NO_EFFECT = (
    "force",
    "resume",
    "resume_from",
    "fork_from",
    "save_code",
    "tensorboard",
    "sync_tensorboard",
    "monitor_gym",
    "settings",
    "anonymous",
)
"""init() arguments taken for compatibility that change nothing in traintape."""


def init(
    entity: str | None = None,
    project: str | None = None,
    dir: str | os.PathLike[str] | None = None,
    id: str | None = None,
    name: str | None = None,
    notes: str | None = None,
    tags: Sequence[str] | None = None,
    config: Any = None,
    config_exclude_keys: list[str] | None = None,
    config_include_keys: list[str] | None = None,
    allow_val_change: bool | None = None,
    group: str | None = None,
    job_type: str | None = None,
    mode: str | None = None,
    force: bool | None = None,
    reinit: bool | str | None = None,
    resume: bool | str | None = None,
    **options: Any,
) -> Run:
    """Starts a run (W&B's arguments, in W&B's order) and makes it `wandb.run`.

    The project defaults to $WANDB_PROJECT, else "uncategorized"; `id` (or $WANDB_RUN_ID) is
    the traintape run id, and an earlier run's id resumes it. `mode="disabled"` (or
    $WANDB_MODE=disabled) records nothing. A second `init()` while a run is active returns that
    run, as W&B does in a script, unless `reinit=True`/"finish_previous" (finishes it first) or
    "create_new" (a second run, not made `wandb.run`).
    """
    unknown = set(options) - set(_NO_EFFECT)
    if unknown:
        msg = f"init() got unexpected keyword arguments: {', '.join(sorted(unknown))}"
        raise TypeError(msg)
    if run is not None and reinit in (None, False, "default", "return_previous"):
        return run
    if run is not None and reinit in (True, "finish_previous"):
        run.finish()
    mode = mode or getattr(options.get("settings"), "mode", None) or os.environ.get("WANDB_MODE")
    _warn_no_effect(mode, {**options, "force": force, "resume": resume})
    items = as_config_dict(config, config_exclude_keys, config_include_keys)
    extras = {"entity": entity, "group": group, "job_type": job_type, "notes": notes}
    extras = {k: v for k, v in extras.items() if v is not None}
    project = project or os.environ.get("WANDB_PROJECT") or "uncategorized"
    name = name or os.environ.get("WANDB_NAME")
    new = _start(project, name, id, tags or (), items, extras, mode, reinit, allow_val_change, dir)
    if reinit != "create_new":
        _make_current(new)
    return new


def _start(
    project: str,
    name: str | None,
    run_id: str | None,
    tags: Sequence[str],
    items: dict[str, Any],
    extras: dict[str, Any],
    mode: str | None,
    reinit: Any,
    allow_val_change: bool | None,
    dir: Any,
) -> Run:
    run_id = run_id or os.environ.get("WANDB_RUN_ID")
    em: Any = None
    if mode != "disabled":
        from traintape import emitter as emitter_api

        # Checked (and sanitized) as W&B's config is, before the run starts.
        checked = Config(items, allow_val_change=bool(allow_val_change)).as_dict()
        if reinit == "create_new":  # beside the current run: not the module's current emitter
            em = emitter_api.Emitter(project, name, checked, list(tags), run_id=run_id)
        else:
            em = emitter_api.init(project, name, checked, list(tags), run_id=run_id)
        if extras:
            em.log_params({f"wandb.{k}": v for k, v in extras.items()})
        run_id, name = em.run_id, em.name
    cfg = Config(
        items,
        on_change=em.log_params if em is not None else None,
        allow_val_change=bool(allow_val_change),
    )
    return Run(
        em,
        project,
        name,
        run_id or secrets.token_hex(4),
        cfg,
        tags=tags,
        extras=extras,
        dir=dir,
    )


def _warn_no_effect(mode: str | None, options: dict[str, Any]) -> None:
    ignored = sorted(k for k, v in options.items() if v is not None)
    if mode not in (None, "disabled", "offline"):
        ignored.append(f"mode={mode!r} (traintape records to its collector, never to W&B)")
    if ignored:
        logger.warning(
            f"traintape.wandb: init() arguments with no effect in traintape: {', '.join(ignored)}"
        )


def _make_current(new: Run) -> None:
    global run, config, summary, log
    run, config, summary, log = new, new.config, new.summary, new.log


def _forget(finished: Run) -> None:
    """Called by Run.finish: `wandb.run` is None again, as in W&B."""
    global run, config, summary, log
    if run is finished:
        run, config, summary = None, PreInit("wandb.config"), PreInit("wandb.summary")
        log = _log_current


def _current(what: str) -> Run:
    if run is None:
        msg = f"call traintape.wandb.init() before traintape.wandb.{what}()"
        raise NoRunError(msg)
    return run


def _log_current(
    data: dict[str, Any],
    step: int | None = None,
    commit: bool | None = None,
    sync: bool | None = None,
) -> None:
    """Logs `data` on the current run (see `Run.log`)."""
    _current("log").log(data, step, commit)


log = _log_current
"""`wandb.log`: the current run's `log` while there is one, as W&B's `init` sets it (no Python
call in between on the hot path), else a function that says to call init() first (which is also
what `from traintape.wandb import log` gets before init: it logs on the current run)."""


def define_metric(
    name: str,
    step_metric: str | Any | None = None,
    step_sync: bool | None = None,
    hidden: bool | None = None,
    summary: str | None = None,
    goal: str | None = None,
    overwrite: bool | None = None,
) -> Metric:
    """Defines a metric's x-axis and summary on the current run (see `Run.define_metric`)."""
    return _current("define_metric").define_metric(
        name, step_metric, step_sync, hidden, summary, goal, overwrite
    )


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """Finishes the current run (failed when `exit_code` is nonzero); nothing without one."""
    if run is not None:
        run.finish(exit_code)


def watch(
    models: Any,
    criterion: Any = None,
    log: str | None = "gradients",
    log_freq: int = 1000,
    idx: int | None = None,
    log_graph: bool = False,
) -> None:
    """`emitter.watch(model, every=log_freq)` on the current run (see `Run.watch`)."""
    _current("watch").watch(models, criterion, log, log_freq, idx, log_graph)


def unwatch(models: Any = None) -> None:
    _current("unwatch").unwatch(models)


def save(glob_str: str | None = None, base_path: str | None = None, policy: str = "live") -> bool:
    return _current("save").save(glob_str, base_path, policy)


def alert(title: str, text: str, level: Any = None, wait_duration: Any = None) -> None:
    _current("alert").alert(title, text, level, wait_duration)


def login(*args: Any, **kwargs: Any) -> bool:
    """Nothing to log in to: traintape's collector is local. Returns True, as W&B's does."""
    return True
