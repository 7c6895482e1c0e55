"""The shape every event body must have, checked by the emitter (at the call) and the collector
(at ingest): plain msgpack values only, nesting at most MAX_BODY_DEPTH, ints within int64.

Iterative, so a body nested thousands deep is refused with a reason, never a RecursionError.
"""

from __future__ import annotations

from typing import Any

from traintape.schemas.limits import MAX_BODY_DEPTH, MAX_INT64

MIN_INT64 = -(2**63)
_SCALAR = frozenset((type(None), bool, int, float, str, bytes))


def body_problem(body: Any) -> str | None:
    """Why `body` cannot be stored (depth, a non-plain value, an int past int64), or None."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        t = type(value)
        if t is dict:
            if depth > MAX_BODY_DEPTH:
                return f"nested deeper than {MAX_BODY_DEPTH} levels"
            for k, v in value.items():
                if type(k) not in (str, bytes):
                    return f"map key {k!r} is not a str"
                stack.append((v, depth + 1))
        elif t is list or t is tuple:
            if depth > MAX_BODY_DEPTH:
                return f"nested deeper than {MAX_BODY_DEPTH} levels"
            stack.extend((v, depth + 1) for v in value)
        elif t is int or (t not in _SCALAR and isinstance(value, int)):
            if not MIN_INT64 <= value <= MAX_INT64:
                return f"int {value} is out of int64 range"
        elif t not in _SCALAR and not isinstance(value, (str, bytes, float)):
            # (subclasses, such as torch's TorchVersion str, pack as their base type)
            return f"holds a {t.__name__}, not a plain value"
    return None


_ARTIFACT_FIELDS: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("name", (str,)),
    ("kind", (str, type(None))),
    ("bytes", (int,)),
    ("sha256", (str,)),
    ("path", (str,)),
    ("metadata", (dict,)),
)
_HEX = frozenset("0123456789abcdef")


def artifact_problem(body: dict[str, Any]) -> str | None:
    """Why an `artifact` event's body is not one (traintape.emitter.artifacts), or None."""
    for name, types in _ARTIFACT_FIELDS:
        if name not in body:
            return f"lacks {name!r}"
        if type(body[name]) not in types:
            return f"{name!r} must be {' or '.join(t.__name__ for t in types)}"
    sha = body["sha256"]
    if len(sha) != 64 or not _HEX.issuperset(sha):
        return "'sha256' must be 64 lowercase hex digits"
    if body["bytes"] < 0:
        return f"'bytes' {body['bytes']} is negative"
    return None
