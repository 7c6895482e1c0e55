"""`traintape replay`: deliver spool files left by emitters whose collector was away.

Each file's batches are sent in order with a bounded window of unacknowledged batches; the file
is deleted only when every batch in it is acknowledged. Sending twice is harmless: the collector
drops duplicates by (run_id, rank, source, seq).

Checkpoint files whose deletion the file's events record (retention, while the collector was
away) are removed once the collector has stored those events (checkpointing/deletions.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from traintape.emitter.checkpointing.deletions import GONE, Doomed, doomed_files, remove
from traintape.emitter.spool import SpoolFile, spool_files
from traintape.errors import ReplayError, SecurityError
from traintape.probe import nothing_listens
from traintape.schemas.wire import ACK_REJECTED, ACK_STORED, decode_ack_full, decode_header
from traintape.security import configure_client

WINDOW = 256


@dataclass
class ReplayResult:
    files: int = 0
    batches: int = 0
    events: int = 0
    rejected_events: int = 0
    skipped: int = 0
    deleted_checkpoints: int = 0
    kept_checkpoints: int = 0  # doomed, but not the doomed content any more (or unreadable)


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
    absent = nothing_listens(address)
    if absent is not None:  # ZeroMQ would wait out `timeout` to learn it
        msg = f"{absent}: no collector is serving {address}; the spool is kept"
        raise ReplayError(msg)
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
            _replay_file(sock, spool, timeout, result, progress)
            result.files += 1
            progress(f"{spool.path.name}: delivered; {result.events} events so far")
    finally:
        sock.close(linger=0)
        ctx.term()
    return result


def _replay_file(
    sock: zmq.Socket,
    spool: SpoolFile,
    timeout: float,
    result: ReplayResult,
    progress: Callable[[str], None],
) -> None:
    waiting: dict[tuple[str, int], int] = {}  # (source, seq0) -> n
    doomed: dict[tuple[str, int], list[Doomed]] = {}  # retention deletions in a batch in flight
    stored: list[Doomed] = []  # ... whose batch the collector stored whole
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
            found = doomed_files(body, h.n)
            if found:
                doomed[(h.source, h.seq0)] = found
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
                source, seq0, n, status, rejected = decode_ack_full(sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
            if waiting.pop((source, seq0), None) is not None:
                result.events += n
                result.rejected_events += n if status == ACK_REJECTED else rejected
                found = doomed.pop((source, seq0), [])
                if status == ACK_STORED and not rejected:  # a set-aside deletion is not durable
                    stored.extend(found)
        deadline = time.monotonic() + timeout
    # Before the spool goes: a crash in between replays it again, and a second removal of a file
    # that is gone (or holds other bytes by then) does nothing.
    for doomed_file in stored:
        why = remove(doomed_file)
        if why is None:
            result.deleted_checkpoints += 1
        elif why != GONE:
            result.kept_checkpoints += 1
            progress(f"{doomed_file.path}: left in place although its deletion is recorded: {why}")
    spool.delete()
