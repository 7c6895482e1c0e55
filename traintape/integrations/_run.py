"""What the adapters share: starting or joining a run, splitting logged values by kind, images
and tables given as W&B's loggers take them, and the error for a framework that is not
installed."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
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


def sample_images(what: str, images: Iterable[Any], options: Mapping[str, Any]) -> list[Any]:
    """W&B-style `log_image(key, images, caption=[...])` as a list of `traintape.Image`s (stored
    as key/0, key/1, ...): `images` a list (or a batch, iterated: a 4-D array or tensor), each
    option a list of one value per image; `caption` is the option traintape keeps."""
    from traintape.emitter.media import Image

    if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
        msg = f"{what}: images must be a list of images, got {type(images).__name__}"
        raise TypeError(msg)
    images = list(images)
    unknown = sorted(set(options) - {"caption"})
    if unknown:
        msg = f"{what}: traintape takes caption= for images, not {', '.join(unknown)}"
        raise TypeError(msg)
    captions = options.get("caption")
    if captions is None:
        captions = [None] * len(images)
    elif isinstance(captions, str) or len(captions) != len(images):
        msg = f"{what}: caption= needs one caption per image ({len(images)})"
        raise ValueError(msg)
    return [
        Image(image, caption=None if caption is None else str(caption))
        for image, caption in zip(images, captions)
    ]


def table_of(columns: list[str] | None, data: Any, dataframe: Any) -> Any:
    """A `traintape.Table` of W&B-style `log_table` arguments."""
    from traintape.emitter.media import Table

    return Table(columns=columns, data=data, dataframe=dataframe)
