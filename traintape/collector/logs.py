"""Where the collector's messages go: `logging`, on `traintape.collector.*` and `traintape.sinks.*`.

Library code logs on its module's logger and configures nothing, so a program that runs a
collector, a materializer or a sink runner in-process routes or silences them as it does any
library's (`logging.getLogger("traintape.collector").setLevel(logging.ERROR)`). Without any
configuration, Python shows their warnings and errors on stderr.

`traintape serve` and the follower processes it starts (collector/child.py) are programs, not
libraries: `to_stderr()` gives them one stderr handler that shows every message from INFO up as
`traintape collector: <message>`, the lines users, docs and tests know.
"""

from __future__ import annotations

import logging
import sys

PREFIX = "traintape collector: "
LOGGERS = ("traintape.collector", "traintape.sinks")
"""The loggers `to_stderr` configures (every module of the collector and the sinks is below one)."""


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to whatever `sys.stderr` is at each message (a test may swap it), that
    never raises nor prints a traceback when stderr fails: stderr redirected to a file on a full
    disk loses a line, the collector goes on."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(PREFIX + "%(message)s"))

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 (the base class's attribute, read at each message)
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass  # always sys.stderr, as it is when a message is written

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


def to_stderr() -> None:
    """Shows the collector's and the sinks' messages on stderr (once per process)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _Stderr) for h in logger.handlers):
            logger.addHandler(_Stderr())
        logger.setLevel(logging.INFO)
        # Shown here: a root handler a program may have would print each line twice.
        logger.propagate = False
