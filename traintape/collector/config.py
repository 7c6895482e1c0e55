"""`traintape serve`'s configuration: a YAML file, `TRAINTAPE_*` variables and its flags.

The YAML file (`traintape serve --config traintape.yaml`)::

    store: ./traintape-store          # optional, as --store
    bind: [ipc:///tmp/tt.sock]         # optional, as --bind
    materialize_interval: 0.5          # optional, as --materialize-interval; likewise
    system_interval: 1.0               #   system_interval, compact_settle, curve (true: CURVE
    curve: true                        #   on loopback tcp:// too), allow_remote, group and
    collector_id: node07               #   collector_id (one of several sharing the store)
    tables: s3://bucket/prefix         # optional, as --tables; tables_grace: seconds replaced
                                       #   objects stay for readers (300; collector/publish.py)
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

What each sink takes, and the precedence of the file, the variables and `--sink`, are in
traintape.sinks.config, which builds the sinks' part; this module reads the file and the
top-level serve options. Every error names the file and key, the variable, or the flag it comes
from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traintape.errors import ConfigError
from traintape.sinks.config import (
    Entry,
    SinkConfig,
    coerce,
    env_sink_options,
    file_sinks,
    parse_sink_spec,
    set_main_value,
    validate,
)

SERVE_OPTIONS: dict[str, type] = {
    "materialize_interval": float,
    "system_interval": float,
    "compact_settle": float,
    "min_free_mb": float,
    "max_message_mb": float,
    "curve": bool,
    "allow_remote": bool,
    "group": str,
    "collector_id": str,
    "tables": str,
    "tables_grace": float,
}
"""`traintape serve` options a YAML file may set (its --flag of the same name overrides)."""

TOP_LEVEL = ("store", "bind", *SERVE_OPTIONS, "sinks")


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


def load_file(path: str | os.PathLike[str], entries: dict[str, Entry]) -> ServeConfig:
    """Reads a YAML config: its sinks into `entries`; returns its top-level serve options."""
    where = str(path)
    data = _read_yaml(path)
    serve = ServeConfig()
    if data.get("store") is not None:
        serve.store = str(coerce(data["store"], str, f"{where}: store"))
    if data.get("bind") is not None:
        binds = data["bind"]
        binds = [binds] if isinstance(binds, str) else binds
        if not isinstance(binds, list) or not all(isinstance(b, str) for b in binds):
            msg = f"{where}: bind: expected an address or a list of addresses"
            raise ConfigError(msg)
        serve.bind = binds
    for key, typ in SERVE_OPTIONS.items():
        if data.get(key) is not None:
            serve.options[key] = coerce(data[key], typ, f"{where}: {key}")
    file_sinks(entries, data.get("sinks") or {}, where)
    return serve


def _read_yaml(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """The file's top-level mapping, its keys checked."""
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
    return data


def resolve(
    sink_specs: Sequence[str] = (),
    config_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    check_installed: bool = True,
) -> ServeConfig:
    """The sinks and serve options from a config file, the environment and --sink flags."""
    environ = os.environ if environ is None else environ
    entries: dict[str, Entry] = {}
    serve = load_file(config_path, entries) if config_path else ServeConfig()
    for spec in filter(None, (environ.get("TRAINTAPE_SINKS") or "").split(",")):
        entry, value = parse_sink_spec(spec, "TRAINTAPE_SINKS", entries)
        set_main_value(entry, value, f"TRAINTAPE_SINKS {spec!r}")
    cli = [(*parse_sink_spec(spec, "--sink", entries), spec) for spec in sink_specs]
    env_sink_options(entries, environ)
    for entry, value, spec in cli:
        entry.enabled = True
        set_main_value(entry, value, f"--sink {spec!r}")
    serve.sinks = [validate(e) for e in entries.values() if e.enabled]
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


def single(
    spec: str, config_path: str | None = None, environ: Mapping[str, str] | None = None
) -> SinkConfig:
    """One sink by `TYPE[=VALUE]`, taking its options from the config file when it names it
    (for `traintape sync --to`)."""
    environ = os.environ if environ is None else environ
    entries: dict[str, Entry] = {}
    if config_path:
        load_file(config_path, entries)
    entry, value = parse_sink_spec(spec, "--to", entries)
    for name in [n for n in entries if n != entry.name]:
        del entries[name]
    env_sink_options(entries, {k: v for k, v in environ.items() if k != "TRAINTAPE_SINKS"})
    set_main_value(entry, value, f"--to {spec!r}")
    config = validate(entry)
    config.sink_class.check_available()
    return config
