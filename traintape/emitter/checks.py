"""What the emitter checks before anything is queued or sent, so the collector never has to
refuse what a user logged: event bodies (shape, depth, int range, size) and batch sizes.

The collector refuses a message over its limit (`serve --max-message-mb`, default
MAX_MESSAGE_BYTES), and ZeroMQ drops a connection that carries a frame over it; so one event over
the limit is refused at the call, and a batch is split so that every message stays under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from traintape.schemas.limits import MAX_MESSAGE_BYTES
from traintape.schemas.shape import body_problem
from traintape.schemas.wire import encode_body

SLACK_BYTES = 4096
"""Room for the header frame and the column framing of a batch, beside the event bodies."""
MAX_EVENT_BYTES = MAX_MESSAGE_BYTES - SLACK_BYTES
"""The largest packed body of one event."""

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
