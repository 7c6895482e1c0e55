"""Saying that no collector listens, instead of waiting in silence.

ZeroMQ connects lazily and retries forever, so an emitter aimed at an address where no collector
runs learns nothing until its acknowledgement deadline. `traintape.probe.nothing_listens` answers
in milliseconds without ZeroMQ; this module asks it off the caller's thread and says what it
found once, naming the address, the store it was derived from (and where that came from) and the
command that starts a collector for it:

- at `init()`: a short-lived thread (`look_at_start`) probes the address; when nothing listens
  for `GRACE_S` (a collector started beside the trainer gets that long to bind), one warning.
  `init()` never waits on it.
- at `finish()`: a `Lookout` probes while finish waits for acknowledgements; when nothing
  listened for `GRACE_S`, and the collector has not answered this run for `outbox.RESTART_S`
  (else it is restarting: finish waits for it until its deadline), finish stops waiting and
  spools at once (report.py says where the events are and how to deliver them).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from traintape import paths
from traintape.paths import DEFAULT_STORE_NAME
from traintape.probe import nothing_listens

logger = logging.getLogger(__name__)

PROBE_S = 0.25
"""Seconds between two looks at the address."""
GRACE_S = 1.0
"""How long nothing must listen before it is said (at init) or finish stops waiting."""

Probe = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Where:
    """The address a run sends to, the store it belongs to, and where each came from."""

    address: str
    address_origin: str
    store: Path
    store_origin: str
    collector: str | None = None  # $TRAINTAPE_COLLECTOR_ID: its spool, its collector

    @classmethod
    def resolve(cls, address: str | None, store: object, resolved: tuple[str, Path]) -> Where:
        """From init's `address` and `store` arguments and what they resolved to."""
        final_address, final_store = resolved
        store_from = paths.store_origin(store, "init(store=...)") or (
            f"./{DEFAULT_STORE_NAME} of the current folder {os.getcwd()}"
        )
        address_from = paths.address_origin(address, "init(address=...)") or "the store's socket"
        return cls(final_address, address_from, final_store, store_from, paths.env_collector())

    def serve(self) -> str:
        """The command that starts a collector for this store (this node's, with an id)."""
        return f"traintape serve --store {self.store}{self.collector_arg()}"

    def collector_arg(self) -> str:
        """` --collector-id ID` when the run aims at a named collector (its spool is that one's)."""
        return f" --collector-id {self.collector}" if self.collector else ""

    def no_collector(self, reason: str) -> str:
        """The one line said at init when nothing listens."""
        return (
            f"traintape: no collector at {self.address} ({self.address_origin}; {reason}). "
            f"The store is {self.store} (from {self.store_origin}). Events wait in memory, then "
            f"in the spool, until one runs: start it with `{self.serve()}`"
        )


class Lookout:
    """Probes `where.address` at most every PROBE_S; says when nothing listened for GRACE_S."""

    def __init__(self, where: Where, probe: Probe = nothing_listens) -> None:
        self.where = where
        self._probe = probe
        self._absent_since: float | None = None
        self._next = 0.0
        self.reason: str | None = None
        """Why nothing listens, as the latest probe said (None: something may)."""

    def look(self, now: float) -> str | None:
        """The reason nothing listens, once nothing did for GRACE_S; else None. Probes only
        when one is due (monotonic `now`)."""
        if now >= self._next:
            self._next = now + PROBE_S
            self.reason = self._probe(self.where.address)
            if self.reason is None:
                self._absent_since = None
            elif self._absent_since is None:
                self._absent_since = now
        if self.reason is None or self._absent_since is None:
            return None
        return self.reason if now - self._absent_since >= GRACE_S else None


def look_at_start(
    where: Where,
    warn: Callable[[str], None],
    finished: Callable[[], bool],
    probe: Probe = nothing_listens,
) -> None:
    """Starts the thread that warns (once, through `warn`) when no collector listens at init;
    a run `finished` by then says nothing here (finish() has its own line)."""
    lookout = Lookout(where, probe)
    thread = threading.Thread(
        target=_look, args=(lookout, warn, finished), name="traintape-lookout", daemon=True
    )
    thread.start()


def _look(lookout: Lookout, warn: Callable[[str], None], finished: Callable[[], bool]) -> None:
    start = time.monotonic()
    while True:
        now = time.monotonic()
        reason = lookout.look(now)
        if reason is not None:
            if not finished():
                warn(lookout.where.no_collector(reason))
            return
        if lookout.reason is None or now - start > GRACE_S + PROBE_S:
            return  # something listens (or came up): nothing to say
        time.sleep(PROBE_S)
