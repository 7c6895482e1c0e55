"""`traintape replay`: deliver spool files left by emitters whose collector was away.

Each file's batches are sent in order with a bounded window of unacknowledged batches; the file
is deleted only when every batch in it is acknowledged. Sending twice is harmless: the collector
drops duplicates by (run_id, rank, source, seq).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from traintape.emitter.spool import SpoolFile, spool_files
from traintape.schemas.wire import ACK_REJECTED, decode_ack, decode_header
from traintape.security import SecurityError, configure_client

WINDOW = 256


class ReplayError(RuntimeError):
    """The collector did not acknowledge in time: check that `traintape serve` runs there."""


@dataclass
class ReplayResult:
    files: int = 0
    batches: int = 0
    events: int = 0
    rejected_events: int = 0
    skipped: int = 0


def replay(
    folder: Path,
    address: str,
    timeout: float = 30.0,
    progress: Callable[[str], None] = lambda _: None,
) -> ReplayResult:
    result = ReplayResult()
    files = spool_files(folder)
    if not files:
        progress(f"no spool files in {folder}")
        return result
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        configure_client(sock, address)
    except SecurityError as exc:
        sock.close(linger=0)
        ctx.term()
        raise ReplayError(str(exc)) from None
    sock.connect(address)
    try:
        for spool in files:
            if spool.in_use():
                result.skipped += 1
                progress(
                    f"{spool.path.name}: skipped, its emitter is still running (it replays it)"
                )
                continue
            _replay_file(sock, spool, timeout, result)
            result.files += 1
            progress(f"{spool.path.name}: delivered; {result.events} events so far")
    finally:
        sock.close(linger=0)
        ctx.term()
    return result


def _replay_file(sock: zmq.Socket, spool: SpoolFile, timeout: float, result: ReplayResult) -> None:
    waiting: dict[tuple[str, int], int] = {}  # (source, seq0) -> n
    records = spool.read()
    exhausted = False
    deadline = time.monotonic() + timeout
    while not exhausted or waiting:
        while not exhausted and len(waiting) < WINDOW:
            item = next(records, None)
            if item is None:
                exhausted = True
                break
            _, header, body = item
            h = decode_header(header)
            waiting[(h.source, h.seq0)] = h.n
            sock.send_multipart((header, body))
            result.batches += 1
        if not waiting:
            break
        if not sock.poll(int(max(deadline - time.monotonic(), 0) * 1000), zmq.POLLIN):
            msg = (
                f"no acknowledgement from the collector within {timeout:g}s while replaying "
                f"{spool.path}: is `traintape serve` running for this store? The spool is kept."
            )
            raise ReplayError(msg)
        while True:
            try:
                source, seq0, n, status = decode_ack(sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
            if waiting.pop((source, seq0), None) is not None:
                result.events += n
                if status == ACK_REJECTED:
                    result.rejected_events += n
        deadline = time.monotonic() + timeout
    spool.delete()
