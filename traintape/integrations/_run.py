"""What the adapters share: starting or joining a run, splitting logged values by kind, and the
error for a framework that is not installed."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from traintape import emitter
from traintape.emitter import Emitter, run_end
from traintape.errors import MissingBackendError


def missing_framework(package: str, extra: str, exc: ImportError) -> MissingBackendError:
    """The error an adapter module raises when its framework cannot be imported."""
    msg = (
        f"traintape.integrations.{extra} needs {package} ({exc}): pip install 'traintape[{extra}]'"
    )
    return MissingBackendError(msg)


def is_live(run: Emitter | None) -> bool:
    """Whether `run` can still take events (not finished)."""
    return run is not None and not run_end(run).port.finished()


def join_or_start(project: str, options: dict[str, Any]) -> tuple[Emitter, bool]:
    """The current run of `traintape.emitter` if one is live (joined: the script owns its end),
    else a new run made current (owned: the adapter ends it; an uncaught exception marks it
    failed through the emitter's excepthook). `options` are `emitter.init`'s keywords."""
    run = emitter.current()
    if is_live(run):
        assert run is not None
        return run, False
    return emitter.init(project, **options), True


def split_values(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(numbers, texts) of what a framework logged: one-element tensors and numpy scalars are
    numbers; nested mappings are flattened with "/"; anything else is kept as text."""
    numbers_out: dict[str, Any] = {}
    texts: dict[str, str] = {}
    _split(values, "", numbers_out, texts)
    return numbers_out, texts


def _split(
    values: Mapping[str, Any], prefix: str, out: dict[str, Any], texts: dict[str, str]
) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if type(value) in (float, int, bool):
            out[name] = value
        elif isinstance(value, Mapping):
            _split(value, f"{name}/", out, texts)
        elif isinstance(value, numbers.Real):
            out[name] = float(value)
        elif _is_one_element(value):
            out[name] = value  # a tensor: the emitter reads it without a device sync
        else:
            texts[name] = value if isinstance(value, str) else repr(value)


def _is_one_element(value: Any) -> bool:
    numel = getattr(value, "numel", None)
    try:
        return callable(numel) and numel() == 1
    except TypeError:
        return False
