"""Event kinds, the wire format and the stored tables' schemas."""

from traintape.schemas.events import KIND_CODES, KIND_NAMES, RUN_STATUSES
from traintape.schemas.wire import WIRE_VERSION, BatchBody, BatchHeader, WireError

__all__ = [
    "KIND_CODES",
    "KIND_NAMES",
    "RUN_STATUSES",
    "WIRE_VERSION",
    "BatchBody",
    "BatchHeader",
    "WireError",
]
