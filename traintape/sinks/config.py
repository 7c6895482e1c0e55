"""Which sinks a collector feeds, and how: `SinkConfig`, the sink types, and the sinks' part of
`traintape serve`'s configuration (traintape.collector.config reads the YAML file and the serve
options; its docstring shows a file).

Each sink takes its backend's options (see the `options` of its class) and the runner's
(`RUNNER_OPTIONS`: ranks, batch_events, interval, retry_initial, retry_max, wait_ranks,
drain_timeout), and `enabled: false` turns it off.

Precedence, lowest first: the file's `sinks:`; `TRAINTAPE_SINKS=tensorboard,mlflow=URI` (adds
sinks, as --sink does); `TRAINTAPE_SINK_<NAME>_<OPTION>=VALUE` (sets an option of a configured
sink, e.g. TRAINTAPE_SINK_MLFLOW_RANKS=all); `--sink TYPE[=VALUE]` on the command line, whose
VALUE sets the type's main option (tensorboard: dir, mlflow: tracking_uri, wandb: mode). Every
error names the file and key, the variable, or the flag it comes from.
"""

from __future__ import annotations

import builtins
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traintape.errors import ConfigError
from traintape.sinks._base import RANK_POLICIES, RUNNER_OPTIONS, Option, Sink

SINK_TYPES: dict[str, str] = {
    "tensorboard": "traintape.sinks.tensorboard:TensorBoardSink",
    "mlflow": "traintape.sinks.mlflow:MlflowSink",
    "wandb": "traintape.sinks.wandb:WandbSink",
}
"""Sink type -> its class, imported on demand (the modules import their backends lazily)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class SinkConfig:
    """One configured sink: `options` for the backend, `runner` for its SinkRunner."""

    name: str
    type: str  # noqa: A003 (the sink's type name, as in the YAML file)
    options: dict[str, Any] = field(default_factory=dict)
    runner: dict[str, Any] = field(default_factory=dict)

    @property
    def sink_class(self) -> builtins.type[Sink]:
        return sink_class(self.type)

    def runner_option(self, key: str) -> Any:
        value = self.runner.get(key, RUNNER_OPTIONS[key].default)
        if value is None and key == "batch_events":
            return self.sink_class.batch_events
        return value

    def create(self, store: Path, *, replay: bool = False) -> Sink:
        return self.sink_class(self.name, self.options, store, replay=replay)


def sink_class(type_name: str) -> type[Sink]:
    """The class of a sink type: a built-in name, or `package.module:Class` for your own."""
    path = SINK_TYPES.get(type_name, type_name)
    module, colon, name = path.partition(":")
    if not colon:
        msg = (
            f"unknown sink type {type_name!r} "
            f"(known: {', '.join(SINK_TYPES)}, or package.module:Class)"
        )
        raise ConfigError(msg)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        msg = f"sink type {type_name!r}: cannot import {path}: {exc}"
        raise ConfigError(msg) from None
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        msg = f"sink type {type_name!r}: {path} is not a traintape.sinks.Sink subclass"
        raise ConfigError(msg)
    return cls


# -- building --------------------------------------------------------------------------------


class Entry:
    """A sink while its configuration is assembled: raw values and where each came from."""

    def __init__(self, name: str, type_name: str, where: str) -> None:
        self.name = name
        self.type = type_name
        self.where = where
        self.values: dict[str, tuple[Any, str]] = {}
        self.enabled = True


def new_entry(entries: dict[str, Entry], name: str, type_name: str, where: str) -> Entry:
    if not _NAME.match(name):
        msg = f"{where}: sink name {name!r} may use letters, digits, '-' and '_' only"
        raise ConfigError(msg)
    try:
        sink_class(type_name)
    except ConfigError as exc:
        msg = f"{where}: {exc}"
        raise ConfigError(msg) from None
    entry = entries.get(name)
    if entry is None:
        entry = entries[name] = Entry(name, type_name, where)
    elif entry.type != type_name:
        msg = f"{where}: sink {name!r} is already a {entry.type} sink ({entry.where})"
        raise ConfigError(msg)
    return entry


def parse_sink_spec(spec: str, where: str, entries: dict[str, Entry]) -> tuple[Entry, Any]:
    """`TYPE` or `TYPE=VALUE`; returns the entry and the VALUE (None without one)."""
    type_name, eq, value = spec.strip().partition("=")
    type_name = type_name.strip()
    name = type_name.rpartition(":")[2].lower() if ":" in type_name else type_name
    entry = new_entry(entries, name, type_name, f"{where} {spec!r}")
    return entry, (value if eq else None)


def set_main_value(entry: Entry, value: Any, where: str) -> None:
    option = entry_class(entry).value_option
    if value is not None and option:
        entry.values[option] = (value, where)


def entry_class(entry: Entry) -> type[Sink]:
    return sink_class(entry.type)


def file_sinks(entries: dict[str, Entry], sinks: Any, where: str) -> None:
    """Adds the sinks of a config file's `sinks:` mapping (`where`: the file) to `entries`."""
    if not isinstance(sinks, Mapping):
        msg = f"{where}: sinks: expected a mapping of sink name -> options"
        raise ConfigError(msg)
    for name, options in sinks.items():
        key = f"{where}: sinks.{name}"
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            msg = f"{key}: expected a mapping of options (or nothing)"
            raise ConfigError(msg)
        type_name = options.get("type", name)
        entry = new_entry(entries, str(name), str(type_name), key)
        for opt, value in options.items():
            if opt == "type":
                continue
            if opt == "enabled":
                entry.enabled = coerce(value, bool, f"{key}.enabled")
                continue
            entry.values[str(opt)] = (value, f"{key}.{opt}")


def env_sink_options(entries: dict[str, Entry], environ: Mapping[str, str]) -> None:
    prefix = "TRAINTAPE_SINK_"
    by_env = {e.name.upper().replace("-", "_") + "_": e for e in entries.values()}
    for var in sorted(environ):
        if not var.startswith(prefix):
            continue
        rest = var[len(prefix) :]
        matches = [p for p in by_env if rest.startswith(p) and len(rest) > len(p)]
        if not matches:
            configured = ", ".join(entries) or "none"
            msg = f"{var}: names no configured sink (configured: {configured})"
            raise ConfigError(msg)
        best = max(matches, key=len)
        entry = by_env[best]
        option = rest[len(best) :].lower()
        if option == "enabled":
            entry.enabled = coerce(environ[var], bool, var)
        else:
            entry.values[option] = (environ[var], var)


def validate(entry: Entry) -> SinkConfig:
    cls = entry_class(entry)
    known: dict[str, Option] = {**cls.options, **RUNNER_OPTIONS}
    options: dict[str, Any] = {}
    runner: dict[str, Any] = {}
    for key, (value, where) in entry.values.items():
        spec = known.get(key)
        if spec is None:
            msg = (
                f"{where}: unknown option {key!r} for a {entry.type} sink "
                f"(its options: {', '.join(cls.options) or 'none'}; "
                f"every sink: {', '.join(RUNNER_OPTIONS)})"
            )
            raise ConfigError(msg)
        if value is None:
            continue
        value = coerce(value, spec.type, where)
        if key == "ranks" and value not in RANK_POLICIES:
            msg = f"{where}: ranks {value!r} is not one of {', '.join(RANK_POLICIES)}"
            raise ConfigError(msg)
        if spec.type in (int, float) and key in RUNNER_OPTIONS and value <= 0:
            msg = f"{where}: {key} must be > 0, got {value!r}"
            raise ConfigError(msg)
        (runner if key in RUNNER_OPTIONS else options)[key] = value
    return SinkConfig(entry.name, entry.type, options, runner)


def coerce(value: Any, typ: type, where: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        msg = f"{where}: expected true or false, got {value!r}"
        raise ConfigError(msg)
    if typ in (int, float):
        if isinstance(value, bool):
            pass
        elif isinstance(value, int) or (typ is float and isinstance(value, float)):
            return typ(value)
        elif isinstance(value, str):
            try:
                return typ(value.strip())
            except ValueError:
                pass
        kind = "an integer" if typ is int else "a number"
        msg = f"{where}: expected {kind}, got {value!r}"
        raise ConfigError(msg)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    msg = f"{where}: expected a string, got {value!r}"
    raise ConfigError(msg)


_MOVED = ("SERVE_OPTIONS", "TOP_LEVEL", "ServeConfig", "load_file", "resolve", "single")
"""Names that moved to traintape.collector.config (serve's configuration); still found here."""


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # imported on use: traintape.collector.config imports this module
        from traintape.collector import config

        return getattr(config, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
