"""What the emitter checks before anything is queued or sent, so the collector never has to
refuse what a user logged: steps, event bodies (shape, depth, int range, size) and batch sizes.

The collector refuses a message over its limit (`serve --max-message-mb`, default
MAX_MESSAGE_BYTES), and ZeroMQ drops a connection that carries a frame over it; so one event over
the limit is refused at the call, and a batch is split so that every message stays under it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from traintape.emitter.values import coerce_scalar
from traintape.schemas.events import METRICS
from traintape.schemas.limits import MAX_INT64, MAX_MESSAGE_BYTES
from traintape.schemas.shape import artifact_problem, body_problem
from traintape.schemas.values import plain, to_float
from traintape.schemas.wire import encode_body

SLACK_BYTES = 4096
"""Room for the header frame and the column framing of a batch, beside the event bodies."""
MAX_EVENT_BYTES = MAX_MESSAGE_BYTES - SLACK_BYTES
"""The largest packed body of one event."""
_SHORT_KEY = 1024  # an ASCII key this short alone is far under one event: not measured

Event = tuple[int, int, Any, dict[str, Any]]  # (kind, ts, step, body), as queued


def check_body(body: dict[str, Any], what: str) -> None:
    """ValueError if `body` (of `what`: "log_text()", "the params", ...) could not be stored."""
    problem = body_problem(body)
    if problem is not None:
        msg = f"{what} {problem}; nothing of it was logged"
        raise ValueError(msg)
    size = len(msgpack.packb(body))
    if size > MAX_EVENT_BYTES:
        msg = (
            f"{what} is {size} bytes packed, over the {MAX_EVENT_BYTES}-byte limit of one event "
            f"(messages are at most {MAX_MESSAGE_BYTES} bytes); nothing of it was logged"
        )
        raise ValueError(msg)


def check_artifact(body: dict[str, Any], what: str) -> None:
    """ValueError if an `artifact` event's body is not one the collector stores."""
    check_body(body, what)
    problem = artifact_problem(body)
    if problem is not None:
        msg = f"{what}: {problem}"
        raise ValueError(msg)


def check_media_text(key: str, texts: tuple[str, ...]) -> None:
    """ValueError at the call for a media value of `log()` whose event could not be stored: its
    key or `texts` (a caption, column names) not UTF-8 text (a lone surrogate) or, together, over
    the size of one event (found only on the artifact thread otherwise, with the value lost)."""
    if not texts and len(key) < _SHORT_KEY and key.isascii():
        return  # an image's usual key alone: ASCII, far under one event
    size = 0
    for text in (key, *texts):
        try:
            size += len(text.encode()) + 5  # msgpack's str header
        except UnicodeEncodeError as exc:
            msg = f"log(): {text[:40]!r} of media {key[:40]!r} is not UTF-8 text ({exc.reason})"
            raise ValueError(msg) from None
    if size > MAX_EVENT_BYTES - SLACK_BYTES:  # room for the rest of the event's metadata
        msg = (
            f"log(): media {key[:40]!r}: its key, caption and column names are {size} bytes, "
            f"over the {MAX_EVENT_BYTES - SLACK_BYTES}-byte room of one event; nothing was logged"
        )
        raise ValueError(msg)


def check_arguments(project: Any, batch_size: int) -> None:
    """ValueError for an `Emitter` that cannot start: no project name, or no room in a batch."""
    if not isinstance(project, str) or not project:
        msg = "init() needs a project name (a non-empty str)"
        raise ValueError(msg)
    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size}"
        raise ValueError(msg)


def check_step(step: Any) -> int:
    """`step` as an int in 0..MAX_INT64 (stored as int64); TypeError or ValueError otherwise."""
    try:
        if isinstance(step, bool):
            raise TypeError
        value = step.__index__()
    except (AttributeError, TypeError):
        msg = f"step must be an int, got {step!r} ({type(step).__name__})"
        raise TypeError(msg) from None
    if not 0 <= value <= MAX_INT64:
        msg = f"step must be in 0..{MAX_INT64} (stored as int64), got {value}"
        raise ValueError(msg)
    return int(value)


def storable(kind: int, body: dict[str, Any]) -> dict[str, Any]:
    """A body msgpack can pack: metric ints beyond 64 bits become floats (±inf past the float
    range)."""
    if kind == METRICS:
        return {k: to_float(v) if type(v) is int else v for k, v in body.items()}
    return plain(body)


def split_batch(
    events: Sequence[Event], storable: Any
) -> tuple[list[tuple[int, bytes]], list[tuple[Event, str]]]:
    """Packs `events` as batches under the message limit: ([(n, body), ...], refused).

    For the slow path only (a batch that did not pack, or packed over the limit). `storable`
    maps (kind, body) to a body msgpack can pack. An event that cannot be packed, or that
    alone is over the limit, is refused with a reason instead of blocking everything behind it.
    """
    sized: list[tuple[Event, int]] = []
    refused: list[tuple[Event, str]] = []
    for event in events:
        kind, ts, step, body = event
        try:
            try:
                size = len(encode_body((kind,), (ts,), (step,), (body,)))
            except (OverflowError, TypeError, ValueError):
                body = storable(kind, body)
                size = len(encode_body((kind,), (ts,), (step,), (body,)))
        except (OverflowError, TypeError, ValueError) as exc:
            refused.append((event, f"cannot be packed: {exc}"))
            continue
        if size > MAX_EVENT_BYTES:
            refused.append(
                (event, f"is {size} bytes packed, over the {MAX_EVENT_BYTES}-byte limit")
            )
            continue
        sized.append(((kind, ts, step, body), size))
    batches: list[tuple[int, bytes]] = []
    group: list[Event] = []
    total = 0
    for event, size in sized:
        if group and total + size > MAX_EVENT_BYTES:
            batches.append((len(group), encode_body(*zip(*group))))
            group, total = [], 0
        group.append(event)
        total += size
    if group:
        batches.append((len(group), encode_body(*zip(*group))))
    return batches, refused


def checkpoint_metrics(metrics: Any) -> dict[str, Any]:
    """The metrics of a `save_checkpoint()` as plain numbers (one-element tensors read)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        msg = f"metrics must be a dict of name -> number, not {type(metrics).__name__}"
        raise TypeError(msg)
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            msg = f"metric names must be str, got {key!r}"
            raise TypeError(msg)
        numel = getattr(value, "numel", None)
        if callable(numel) and numel() == 1:  # a one-element tensor
            value = value.item()
        out[key] = coerce_scalar(key, value)
    return out
