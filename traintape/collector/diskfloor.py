"""The collector's free-space floor: below it, nothing more is journaled (so nothing is acked).

A full disk must stop acknowledgements, never the collector. The ingest loop asks `allows()`
before each group's append: when the journal's filesystem would keep less than `min_free_bytes`
free, the group is not written and not acknowledged (emitters keep and resend it), and the loop
goes on. The floor leaves room for what recovery needs once space returns (the materializer's
Parquet files, cursors, the status file, dead letters), and the emitters' spools keep a higher
floor of their own (traintape.emitter.spool), so a spool on the same disk never takes the room the
collector needs to take its batches back.

Every condition is logged once when it starts and once when it ends, never per group: a full
disk under a flood of resends must not flood the log too.
"""

from __future__ import annotations

import logging
from pathlib import Path

from traintape.durable import free_bytes

DEFAULT_MIN_FREE_BYTES = 64 << 20
"""Free bytes the collector keeps on the journal's filesystem (`serve --min-free-mb`)."""

_MIB = 1 << 20

logger = logging.getLogger(__name__)


class DiskFloor:
    """Decides whether a group may be journaled, and says once why not (`reason`)."""

    def __init__(self, folder: Path, min_free_bytes: int) -> None:
        if min_free_bytes < 0:
            msg = f"the free-space floor must be >= 0 bytes, got {min_free_bytes}"
            raise ValueError(msg)
        self.folder = folder
        self.min_free_bytes = min_free_bytes
        self.reason: str | None = None  # why groups are not journaled now, or None
        self._errors: dict[str, str] = {}  # what else failed to be written: what -> error

    def allows(self, nbytes: int) -> bool:
        """Whether `nbytes` more can be journaled and still leave the floor free."""
        try:
            free = free_bytes(self.folder)
        except OSError as exc:  # cannot tell: try the write, which says more
            self._note_reason(f"cannot read the free space of {self.folder} ({exc})")
            return True
        if free - nbytes >= self.min_free_bytes:
            if self.reason is not None:
                logger.info(
                    "%.0f MiB free on %s again: journaling and acknowledging again",
                    free / _MIB,
                    self.folder,
                )
                self.reason = None
            return True
        self._note_reason(
            f"{free / _MIB:.1f} MiB free on {self.folder}, under the floor of "
            f"{self.min_free_bytes / _MIB:g} MiB: not journaling, batches are not acknowledged "
            "(emitters keep and resend them) until space returns"
        )
        return False

    def write_failed(self, exc: OSError) -> None:
        """A journal append or fsync failed: the group was rolled back, not acknowledged."""
        self._note_reason(
            f"journal write failed ({exc}): batches are not acknowledged (emitters keep and "
            "resend them)"
        )

    def _note_reason(self, reason: str) -> None:
        if self.reason is None:
            logger.warning("%s", reason)
        self.reason = reason

    def error(self, what: str, exc: OSError) -> None:
        """Something besides the journal could not be written (the status file): logged once."""
        if what not in self._errors:
            logger.warning("cannot write %s (%s); the collector goes on", what, exc)
        self._errors[what] = str(exc)

    def cleared(self, what: str) -> None:
        """`what` was written again."""
        if self._errors.pop(what, None) is not None:
            logger.info("%s written again", what)
