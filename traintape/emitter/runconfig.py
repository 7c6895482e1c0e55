"""`run.config`: the run's config, a dict whose every change after `init()` is recorded.

As W&B's `config.update` does, a change made at any time after `init()` (`run.config["lr"] =
0.1`, `run.config.update({...})`, `setdefault`, `|=`) reaches the store as a `params` event:
nested dicts flattened with ".", through the run's redaction, checked as `log_params` checks.
`traintape show` lists such params beside the config. `run.config` holds what was stored: plain
values, secret ones redacted. Nested dicts are `RunConfig`s too, so `run.config["opt"]["lr"] =
0.1` is recorded as `opt.lr`. A recorded key cannot be removed (a param has no removal): `del`,
`pop`, `popitem` and `clear` raise ConfigError. A list or other value changed in place is not
seen: assign the key again. A copy (`dict(run.config)`, `copy.deepcopy`, pickle) is a plain dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from traintape.emitter.checks import check_body
from traintape.emitter.port import Emit
from traintape.emitter.redact import Redaction
from traintape.errors import ConfigError, RunFinishedError
from traintape.schemas.events import PARAMS
from traintape.schemas.values import flatten, plain

Record = Callable[[str, dict[str, Any]], dict[str, Any]]
"""`record(prefix, changes)`: queues the params event of `changes` (keys under `prefix`) and
returns the values as stored (plain, redacted)."""


def recorder(run_id: str, redaction: Redaction, emit: Emit, finished: Callable[[], bool]) -> Record:
    """How a run records its config's changes: checked and redacted like `log_params`."""

    def record(prefix: str, changes: dict[str, Any]) -> dict[str, Any]:
        if finished():
            msg = f"run {run_id} is finished: a change of run.config is no longer recorded"
            raise RunFinishedError(msg)
        stored = redaction.mapping(plain(changes), prefix)
        body = flatten(stored, prefix)
        check_body(body, "the change of run.config")
        emit(PARAMS, None, body)
        return stored

    return record


class RunConfig(dict[str, Any]):
    """The run's config (see the module docstring); made by the Emitter at `init()`."""

    __slots__ = ("_prefix", "_record")

    def __init__(self, items: Mapping[str, Any], record: Record, prefix: str = "") -> None:
        super().__init__()
        self._record = record
        self._prefix = prefix
        for key, value in items.items():
            dict.__setitem__(self, key, self._wrap(key, value))

    def _wrap(self, key: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return RunConfig(value, self._record, f"{self._prefix}{key}.")
        return value

    def update(self, other: Any = (), /, **kwargs: Any) -> None:  # type: ignore[override]
        """Sets every key (one params event for all of them), checked before any is set."""
        changes = dict(other, **kwargs)
        for key in changes:
            if not isinstance(key, str) or not key:
                msg = f"run.config keys must be non-empty str, got {key!r}"
                raise (ValueError if isinstance(key, str) else TypeError)(msg)
        if not changes:
            return
        for key, value in self._record(self._prefix, changes).items():
            dict.__setitem__(self, key, self._wrap(key, value))

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> RunConfig:  # type: ignore[override,misc]
        self.update(other)
        return self

    def _no_removal(self, *_: Any) -> Any:
        msg = (
            "run.config keys cannot be removed: each is recorded as a param of the run; "
            "set the key to None instead"
        )
        raise ConfigError(msg)

    __delitem__ = pop = popitem = clear = _no_removal  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        """A copy or a pickle is a plain dict (nested ones too): nothing it changes is recorded."""
        return (dict, (dict(self),))
