"""What MLflow accepts: its limits per call and per value, the names and values the MLflow sink
sends (mlflow.py's docstring says how a name outside MLflow's alphabet is sent), and where the
experiments it creates keep their artifacts."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

MAX_METRICS_PER_CALL = 1000
MAX_PARAMS_TAGS_PER_CALL = 100
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
_MAX_FLOAT = 1.7976931348623157e308
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. /:")


_DIGEST = 10


def clean_key(key: str) -> str:
    """A name MLflow accepts for a metric or param: `key` itself when MLflow takes it as it is,
    else `key` cleaned (and cut) + `-` + 10 hex digits of the sha1 of `key`. The suffix keeps
    names that clean alike apart (`损失`, `精度`), the same in every process."""
    text = "".join(c if c in _ALLOWED else "_" for c in key)
    # MLflow refuses names that normalise to another path ("a//b", "./a", "a/", "/a").
    parts = [("__" if p == ".." else p) for p in text.split("/") if p not in ("", ".")]
    text = "/".join(parts) or "_"
    if text == key and len(text) <= MAX_KEY:
        return key
    digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST]
    return f"{text[: MAX_KEY - _DIGEST - 1]}-{digest}"


def row_value(value: float) -> Any:
    """A metric value as MLflow gives it back: NaN as a marker, ±Inf as ±max float."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value) or abs(value) == _MAX_FLOAT:
        return "+inf" if value > 0 else "-inf"
    return value


def param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    return json.dumps(value, default=str)


def rename_tag(name: str) -> str:
    """The tag that names the original of MLflow key `name` (a renamed key ends with its hash,
    which stands for it when the whole tag would pass MLflow's 250 characters)."""
    tag = f"traintape.key.{name}"
    return tag if len(tag) <= MAX_KEY else f"traintape.key.{name[-_DIGEST:]}"


def artifact_root(tracking_uri: str) -> Path | None:
    """The folder that holds the artifacts of the experiments the sink creates in a sqlite
    tracking store: `mlartifacts` beside the database file, as an absolute path (MLflow's own
    default, `./mlruns`, is the current folder of whichever process creates the experiment).
    None for any other store, whose server or configuration decides."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).expanduser().absolute().parent / "mlartifacts"
