"""Which sinks a collector feeds, and how: `--sink`, a YAML file, `TRAINTAPE_*` variables.

The YAML file (`traintape serve --config traintape.yaml`)::

    store: ./traintape-store          # optional, as --store
    bind: [ipc:///tmp/tt.sock]         # optional, as --bind
    materialize_interval: 0.5          # optional, as --materialize-interval; likewise
    system_interval: 1.0               #   system_interval, compact_settle, curve (true: CURVE
    curve: true                        #   on loopback tcp:// too) and allow_remote
    sinks:
      tensorboard:                     # a sink's name; its type too, unless `type:` says
        dir: ./tb-logs
        ranks: mean
      mlflow:
        tracking_uri: http://127.0.0.1:5000
      mlflow-archive:                  # a second sink of one type needs its own name
        type: mlflow
        tracking_uri: sqlite:///archive.db
      wandb: {mode: offline}

Each sink takes its backend's options (see the `options` of its class) and the runner's
(`RUNNER_OPTIONS`: ranks, batch_events, interval, retry_initial, retry_max, wait_ranks,
drain_timeout), and `enabled: false` turns it off.

Precedence, lowest first: the file; `TRAINTAPE_SINKS=tensorboard,mlflow=URI` (adds sinks, as
--sink does); `TRAINTAPE_SINK_<NAME>_<OPTION>=VALUE` (sets an option of a configured sink, e.g.
TRAINTAPE_SINK_MLFLOW_RANKS=all); `--sink TYPE[=VALUE]` on the command line, whose VALUE sets the
type's main option (tensorboard: dir, mlflow: tracking_uri, wandb: mode). Every error names the
file and key, the variable, or the flag it comes from.
"""

from __future__ import annotations

import builtins
import importlib
import os
import re
from collections.abc import Mapping, Sequence
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

SERVE_OPTIONS: dict[str, type] = {
    "materialize_interval": float,
    "system_interval": float,
    "compact_settle": float,
    "min_free_mb": float,
    "max_message_mb": float,
    "curve": bool,
    "allow_remote": bool,
}
"""`traintape serve` options a YAML file may set (its --flag of the same name overrides)."""

TOP_LEVEL = ("store", "bind", *SERVE_OPTIONS, "sinks")
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


@dataclass
class ServeConfig:
    sinks: list[SinkConfig] = field(default_factory=list)
    store: str | None = None
    bind: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # SERVE_OPTIONS found in the file

    def option(self, key: str, flag: Any, default: Any) -> Any:
        """A serve option: the flag if given, else the file's value, else `default`."""
        if flag is not None:
            return flag
        return self.options.get(key, default)


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


class _Entry:
    """A sink while its configuration is assembled: raw values and where each came from."""

    def __init__(self, name: str, type_name: str, where: str) -> None:
        self.name = name
        self.type = type_name
        self.where = where
        self.values: dict[str, tuple[Any, str]] = {}
        self.enabled = True


def _new_entry(entries: dict[str, _Entry], name: str, type_name: str, where: str) -> _Entry:
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
        entry = entries[name] = _Entry(name, type_name, where)
    elif entry.type != type_name:
        msg = f"{where}: sink {name!r} is already a {entry.type} sink ({entry.where})"
        raise ConfigError(msg)
    return entry


def parse_sink_spec(spec: str, where: str, entries: dict[str, _Entry]) -> tuple[_Entry, Any]:
    """`TYPE` or `TYPE=VALUE`; returns the entry and the VALUE (None without one)."""
    type_name, eq, value = spec.strip().partition("=")
    type_name = type_name.strip()
    name = type_name.rpartition(":")[2].lower() if ":" in type_name else type_name
    entry = _new_entry(entries, name, type_name, f"{where} {spec!r}")
    return entry, (value if eq else None)


def _set_value(entry: _Entry, value: Any, where: str) -> None:
    option = entry_class(entry).value_option
    if value is not None and option:
        entry.values[option] = (value, where)


def entry_class(entry: _Entry) -> type[Sink]:
    return sink_class(entry.type)


def load_file(path: str | os.PathLike[str], entries: dict[str, _Entry]) -> ServeConfig:
    """Reads a YAML config into `entries`; returns its top-level serve options."""
    try:
        import yaml
    except ImportError:
        msg = "reading a YAML config needs PyYAML: pip install pyyaml (or traintape[all])"
        raise ConfigError(msg) from None
    where = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        msg = f"{where}: cannot read: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{where}: not valid YAML: {exc}"
        raise ConfigError(msg) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        msg = f"{where}: the top level must be a mapping of {', '.join(TOP_LEVEL)}"
        raise ConfigError(msg)
    for key in data:
        if key not in TOP_LEVEL:
            msg = f"{where}: unknown key {key!r} (known: {', '.join(TOP_LEVEL)})"
            raise ConfigError(msg)
    serve = ServeConfig()
    if data.get("store") is not None:
        serve.store = str(_coerce(data["store"], str, f"{where}: store"))
    if data.get("bind") is not None:
        binds = data["bind"]
        binds = [binds] if isinstance(binds, str) else binds
        if not isinstance(binds, list) or not all(isinstance(b, str) for b in binds):
            msg = f"{where}: bind: expected an address or a list of addresses"
            raise ConfigError(msg)
        serve.bind = binds
    for key, typ in SERVE_OPTIONS.items():
        if data.get(key) is not None:
            serve.options[key] = _coerce(data[key], typ, f"{where}: {key}")
    sinks = data.get("sinks") or {}
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
        entry = _new_entry(entries, str(name), str(type_name), key)
        for opt, value in options.items():
            if opt == "type":
                continue
            if opt == "enabled":
                entry.enabled = _coerce(value, bool, f"{key}.enabled")
                continue
            entry.values[str(opt)] = (value, f"{key}.{opt}")
    return serve


def _env_sink_options(entries: dict[str, _Entry], environ: Mapping[str, str]) -> None:
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
            entry.enabled = _coerce(environ[var], bool, var)
        else:
            entry.values[option] = (environ[var], var)


def resolve(
    sink_specs: Sequence[str] = (),
    config_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    check_installed: bool = True,
) -> ServeConfig:
    """The sinks and serve options from a config file, the environment and --sink flags."""
    environ = os.environ if environ is None else environ
    entries: dict[str, _Entry] = {}
    serve = load_file(config_path, entries) if config_path else ServeConfig()
    for spec in filter(None, (environ.get("TRAINTAPE_SINKS") or "").split(",")):
        entry, value = parse_sink_spec(spec, "TRAINTAPE_SINKS", entries)
        _set_value(entry, value, f"TRAINTAPE_SINKS {spec!r}")
    cli = [(*parse_sink_spec(spec, "--sink", entries), spec) for spec in sink_specs]
    _env_sink_options(entries, environ)
    for entry, value, spec in cli:
        entry.enabled = True
        _set_value(entry, value, f"--sink {spec!r}")
    serve.sinks = [_validate(e) for e in entries.values() if e.enabled]
    wandb = [c.name for c in serve.sinks if c.type == "wandb"]
    if len(wandb) > 1:
        msg = (
            f"sinks {', '.join(wandb)}: one collector feeds one W&B sink (W&B allows one live "
            "run per id in a process); run a second collector, or `traintape sync --to wandb`"
        )
        raise ConfigError(msg)
    if check_installed:
        for config in serve.sinks:
            config.sink_class.check_available()
    return serve


def single(spec: str, config_path: str | None = None, environ: Mapping[str, str] | None = None):
    """One sink by `TYPE[=VALUE]`, taking its options from the config file when it names it
    (for `traintape sync --to`)."""
    environ = os.environ if environ is None else environ
    entries: dict[str, _Entry] = {}
    if config_path:
        load_file(config_path, entries)
    entry, value = parse_sink_spec(spec, "--to", entries)
    for name in [n for n in entries if n != entry.name]:
        del entries[name]
    _env_sink_options(entries, {k: v for k, v in environ.items() if k != "TRAINTAPE_SINKS"})
    _set_value(entry, value, f"--to {spec!r}")
    config = _validate(entry)
    config.sink_class.check_available()
    return config


def _validate(entry: _Entry) -> SinkConfig:
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
        value = _coerce(value, spec.type, where)
        if key == "ranks" and value not in RANK_POLICIES:
            msg = f"{where}: ranks {value!r} is not one of {', '.join(RANK_POLICIES)}"
            raise ConfigError(msg)
        if spec.type in (int, float) and key in RUNNER_OPTIONS and value <= 0:
            msg = f"{where}: {key} must be > 0, got {value!r}"
            raise ConfigError(msg)
        (runner if key in RUNNER_OPTIONS else options)[key] = value
    return SinkConfig(entry.name, entry.type, options, runner)


def _coerce(value: Any, typ: type, where: str) -> Any:
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
