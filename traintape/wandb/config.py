"""`wandb.config`, as W&B 0.31 behaves: attribute and item access, `update(d,
allow_val_change=)`, `setdefaults`, `as_dict`; changing a key's value raises `ConfigError` unless
`allow_val_change` (here or at `init`). The config given to `init` is the run's config; every
later change is recorded as a params event (nested dicts flattened with ".").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from traintape.errors import ConfigError, NoRunError
from traintape.schemas.values import plain


def as_config_dict(params: Any, exclude: Any = None, include: Any = None) -> dict[str, Any]:
    """A dict, an argparse Namespace or any object with attributes, as a config dict."""
    if params is None:
        return {}
    if isinstance(params, str):
        msg = "traintape.wandb does not read config files: load the YAML yourself and pass a dict"
        raise ConfigError(msg)
    if isinstance(params, Config):
        out = params.as_dict()
    elif isinstance(params, Mapping):
        out = dict(params)
    elif hasattr(params, "__dict__"):
        out = dict(vars(params))
    else:
        msg = f"config must be a dict or have attributes (an argparse Namespace), not {params!r}"
        raise TypeError(msg)
    if exclude and include:
        msg = "pass at most one of config_exclude_keys and config_include_keys"
        raise ConfigError(msg)
    if include:
        out = {k: v for k, v in out.items() if k in include}
    if exclude:
        out = {k: v for k, v in out.items() if k not in exclude}
    return out


class Config:
    """The run's config. `on_change` receives each change (a dict) after it is applied."""

    def __init__(
        self,
        items: dict[str, Any] | None = None,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        allow_val_change: bool = False,
    ) -> None:
        object.__setattr__(self, "_items", {})
        object.__setattr__(self, "_on_change", None)
        object.__setattr__(self, "_allow", allow_val_change)
        self.update(items or {})
        object.__setattr__(self, "_on_change", on_change)

    def _sanitize(self, key: Any, value: Any, allow: bool | None) -> tuple[str, Any]:
        if not isinstance(key, str):
            msg = f"config keys are str, got {key!r}"
            raise TypeError(msg)
        key = key.strip("-")  # as W&B: argparse's "--lr" is "lr"
        value = plain(value)
        allowed = self._allow if allow is None else allow
        if not allowed and key in self._items and self._items[key] != value:
            msg = (
                f"attempted to change config key {key!r} from {self._items[key]!r} to "
                f"{value!r}; pass allow_val_change=True to config.update() to do so"
            )
            raise ConfigError(msg)
        return key, value

    def _apply(self, changes: dict[str, Any]) -> None:
        self._items.update(changes)
        if changes and self._on_change is not None:
            self._on_change(changes)

    def update(self, d: Any, allow_val_change: bool | None = None) -> None:
        """Sets every key of `d` (a dict, argparse Namespace, ...), checked before any is set."""
        changes = dict(self._sanitize(k, v, allow_val_change) for k, v in as_config_dict(d).items())
        self._apply(changes)

    def setdefaults(self, d: Any) -> None:
        """Sets the keys of `d` the config does not hold yet."""
        new = {k: v for k, v in as_config_dict(d).items() if k.strip("-") not in self._items}
        self._apply(dict(self._sanitize(k, v, None) for k, v in new.items()))

    def __setitem__(self, key: str, value: Any) -> None:
        self._apply(dict([self._sanitize(key, value, None)]))

    __setattr__ = __setitem__

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self._items[key]
        except KeyError:
            msg = f"the config has no key {key!r}"
            raise AttributeError(msg) from None

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key, default)

    def keys(self) -> list[str]:
        return [k for k in self._items if not k.startswith("_")]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in self._items.items() if not k.startswith("_")]

    def values(self) -> list[Any]:
        return [v for _, v in self.items()]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items())

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return repr(self.as_dict())


class PreInit:
    """`wandb.config` / `wandb.summary` before `init()` (and after `finish()`): any use raises
    NoRunError saying to call `init()` first, as W&B raises."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def _fail(self, what: str) -> Any:
        msg = f"call traintape.wandb.init() before using {self._name}{what}"
        raise NoRunError(msg)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self._fail(f".{key}")

    def __setattr__(self, key: str, value: Any) -> None:
        self._fail(f".{key}")

    def __getitem__(self, key: str) -> Any:
        return self._fail(f"[{key!r}]")

    def __setitem__(self, key: str, value: Any) -> None:
        self._fail(f"[{key!r}]")

    def __repr__(self) -> str:
        return f"<{self._name} before init()>"
