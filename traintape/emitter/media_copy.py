"""Copies and pickles of a `traintape.Image` (media.py): each with a snapshot of its own.

An Image gives its numpy snapshot's buffer back for reuse when it is freed (media.SNAPSHOTS),
and closes its file's descriptor. A copy sharing either (what `copy.copy` and pickle make of
slots by default) would give one buffer back twice, so that two later images share it and one
is stored with the other's pixels, or close a descriptor twice (the second time, whatever file
reuses its number). So a copy takes its own buffer; an Image of a file is neither copied nor
pickled (a descriptor means nothing in another process): make another Image of the path.
"""

from __future__ import annotations

from typing import Any

_FIELDS = ("caption", "channels", "height", "nbytes", "width")


def reduced(image: Any) -> tuple[Any, tuple[Any, ...]]:
    """`__reduce_ex__` of an Image: rebuilt by `rebuilt` with a copy of its pixels."""
    source = image._source
    if isinstance(source, int):
        msg = "an Image of a file cannot be copied or pickled: make another Image(path)"
        raise TypeError(msg)
    return rebuilt, (type(image), source, tuple(getattr(image, f) for f in _FIELDS))


def rebuilt(cls: type, source: tuple[Any, ...], fields: tuple[Any, ...]) -> Any:
    image: Any = object.__new__(cls)
    pixels, shape, dtype, layout = source
    if dtype:  # numpy pixels (a buffer the original gives back, or an array handed over)
        import numpy as np

        pixels = np.frombuffer(pixels, dtype=np.uint8).copy()  # this one's own flat bytes
    image._source = (pixels, shape, dtype, layout)  # a tensor's copy: never given back, shared
    for name, value in zip(_FIELDS, fields):
        setattr(image, name, value)
    return image
