"""Runs whose processes vanished (SIGKILL, OOM killer, segfault) become `crashed`, not `running`
forever; and `running` again when the process turns out alive after all.

Every emitting process (a `source`) that sent a `run_start` and no `run_end` is watched:

- on this host (same boot, same pid namespace, see traintape.procinfo): by its pid, guarded
  against pid reuse by the process start time in its run_start; checked every CHECK_S;
- elsewhere (another node, another container): by silence. Emitters send a heartbeat when idle
  (schemas/wire.py); a source that was not heard from for `4 x heartbeat_s` (at least
  MIN_SILENCE_S) is taken for gone. Emitters older than the heartbeat are never judged.

A decision is journaled as a `run_status` event the collector makes itself (queued on the
ingest loop's local queue, as the system sampler's batches are): run and rank of the process,
the collector's own source, body {"status": "crashed" | "running", "source": <the process's
source>, "reason", "pid", "host"}. The `runs` view reads them (traintape.read.store), so every view
and reader sees the same truth. `running` is journaled when a source judged crashed speaks again
(a heartbeat, or a batch while its pid is alive); a new attempt (a resumed run) needs nothing:
it is the run's latest attempt, which has no end yet.

What this needs across restarts is in state/liveness.json: the watched sources and the journal
position the file covers. At start the journal is read from that position only (never from the
start again), so a run that died while the collector was down is found at once, and one judged
crashed stays so.
"""

from __future__ import annotations

import logging
import queue
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from traintape import procinfo
from traintape.durable import write_json_atomic
from traintape.layout import StoreLayout
from traintape.schemas.events import RUN_END, RUN_START, RUN_STATUS
from traintape.schemas.wire import (
    MAGIC,
    BatchBody,
    BatchHeader,
    encode_body,
    encode_header,
)

CHECK_S = 1.0
"""How often watched processes are checked (and the state file saved, when it changed)."""

MIN_SILENCE_S = 20.0
"""The shortest silence after which a process on another host is taken for gone."""

PENDING_S = 10.0
"""A decision not seen back from the journal in this long (its group failed to be written) is
taken again."""

SAVE_EVERY_BYTES = 16 << 20
"""The state file is saved at least once per this much journal (bounds the read at start)."""

STATE_VERSION = 1
MAX_ENDED = 100_000
"""Ended sources remembered (about 2 MiB in the state file at most)."""

logger = logging.getLogger(__name__)


class Liveness:
    """The watch over emitting processes; driven by the collector's ingest thread only."""

    def __init__(
        self,
        store: Path,
        out: queue.SimpleQueue[tuple[bytes, bytes]],
        log: Callable[[str], None] | None = None,
    ) -> None:
        """`log`: where its messages go instead of this module's logger (tests)."""
        self.path = StoreLayout(store).liveness
        self.out = out
        self._info = log or _info
        self._warning = log or _warning
        self.host = socket.gethostname()
        # A fresh source per collector start: its seq can never collide with an earlier one's.
        self.source = "liveness-" + secrets.token_hex(6)
        self._seq = 0
        self.procs: dict[str, dict[str, Any]] = {}  # watched source -> what is known of it
        # Sources whose run_end is in: a run_start journaled after it (a batch resent late)
        # must not start watching a process that has finished. Insertion-ordered, capped.
        self.ended: dict[str, None] = {}
        self._heard: dict[str, float] = {}  # source -> monotonic time it was last heard from
        self._pending: dict[str, float] = {}  # source -> when a decision about it was queued
        self.position = 0
        self._dirty = False
        self._next_check = 0.0
        self._save_failed = False
        self._saved_position = 0

    # -- start: the state file, then the journal written since ----------------------------------

    def load(self, journal: Any) -> None:
        """Reads state/liveness.json, then the journal from the position it covers."""
        import json

        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            state = None
        except (OSError, ValueError) as exc:
            self._warning(f"liveness: {self.path} is unreadable ({exc}); reading the whole journal")
            state = None
        if isinstance(state, dict) and state.get("version") == STATE_VERSION:
            self.procs = {s: p for s, p in state.get("procs", {}).items() if isinstance(p, dict)}
            self.ended = dict.fromkeys(s for s in state.get("ended", []) if isinstance(s, str))
            self.position = min(int(state.get("position", 0)), journal.durable_end)
        now = time.monotonic()
        t0 = time.perf_counter()
        records = 0
        for batch in journal.read(self.position).batches():
            if batch.header is None or batch.body is None:
                continue  # what ingest journaled decodes; damage is the journal's to report
            self.observe(batch.header, batch.body, now)
            records += 1
        self.position = journal.durable_end
        self._heard = dict.fromkeys(self.procs, now)  # a full silence allowance from now on
        self._dirty = True
        if records:
            self._info(
                f"liveness: {len(self.procs)} processes watched after {records} journal "
                f"batches in {time.perf_counter() - t0:.2f}s"
            )

    # -- what ingest sees ----------------------------------------------------------------------

    def heartbeat(self, header_frame: bytes) -> bool:
        """Notes a heartbeat (a header with n=0); False if the frame is not one."""
        try:
            fields = msgpack.unpackb(header_frame)
        except Exception:
            return False
        if not (isinstance(fields, list) and len(fields) == 7 and fields[0] == MAGIC):
            return False
        if fields[6] != 0 or not isinstance(fields[4], str):
            return False
        source = fields[4]
        proc = self.procs.get(source)
        if proc is None:
            return True  # not watched (a forked child, an ended run): nothing to note
        self._heard[source] = time.monotonic()
        if proc["state"] == "crashed" and source not in self._pending:
            self._decide(source, proc, "running", "it sent a heartbeat again")
        return True

    def observe(
        self, header: BatchHeader, body: BatchBody, now: float | None = None, bad: Any = ()
    ) -> None:
        """Takes note of an admitted batch: who spoke, who started, who ended, what was decided."""
        source = header.source
        now = time.monotonic() if now is None else now
        if source in self.procs:
            self._heard[source] = now
        kinds = body.kinds
        if RUN_START in kinds or RUN_END in kinds or RUN_STATUS in kinds:
            for i, (kind, b) in enumerate(zip(kinds, body.bodies)):
                if i in bad:
                    continue
                if kind == RUN_START:
                    self._started(header, b, now)
                elif kind == RUN_END:
                    self._ended(source)
                    if self.procs.pop(source, None) is not None:
                        self._dirty = True
                    self._pending.pop(source, None)
                    self._heard.pop(source, None)
                elif kind == RUN_STATUS:
                    self._status(b)
        proc = self.procs.get(source)
        if (
            proc is not None
            and proc["state"] == "crashed"
            and source not in self._pending
            and self._alive(proc) is not False  # a replayed spool of a dead process is not life
        ):
            self._decide(source, proc, "running", "it sent events again")

    def _ended(self, source: str) -> None:
        self.ended[source] = None
        self._dirty = True
        while len(self.ended) > MAX_ENDED:
            del self.ended[next(iter(self.ended))]

    def _started(self, header: BatchHeader, body: dict[str, Any], now: float) -> None:
        if header.source in self.procs or header.source in self.ended:
            return  # a resend (what was decided stands), or a start journaled after its end
        env = body.get("environment")
        env = env if isinstance(env, dict) else {}
        live = env.get("liveness")
        live = live if isinstance(live, dict) else {}
        beat = live.get("heartbeat_s")
        pid = env.get("pid")
        ident = {k: live.get(k) for k in ("start_ticks", "pid_ns", "boot_id")}
        proc = {
            "run_id": header.run_id,
            "rank": header.rank,
            "host": env.get("host") if isinstance(env.get("host"), str) else None,
            "pid": pid if type(pid) is int else None,
            "ident": ident if all(v is not None for v in ident.values()) else None,
            "heartbeat_s": float(beat) if isinstance(beat, (int, float)) and beat > 0 else None,
            "state": "running",
        }
        # A new attempt of the same rank supersedes a crashed earlier one: no need to keep it.
        run_id, rank = header.run_id, header.rank
        for old in [
            s
            for s, p in self.procs.items()
            if p["run_id"] == run_id and p["rank"] == rank and p["state"] == "crashed"
        ]:
            del self.procs[old]
        self.procs[header.source] = proc
        self._heard[header.source] = now
        self._dirty = True

    def _status(self, body: dict[str, Any]) -> None:
        target, status = body.get("source"), body.get("status")
        if not isinstance(target, str):
            return
        proc = self.procs.get(target)
        if proc is None or status not in ("crashed", "running"):
            return
        proc["state"] = status
        self._pending.pop(target, None)
        self._dirty = True

    # -- the periodic check --------------------------------------------------------------------

    def tick(self, journal_position: int) -> None:
        """Judges the watched processes and saves the state; at most once per CHECK_S."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_S
        for source, when in list(self._pending.items()):
            if now - when > PENDING_S:
                del self._pending[source]
        for source, proc in list(self.procs.items()):
            if proc["state"] != "running" or source in self._pending:
                continue
            alive = self._alive(proc)
            if alive is None and proc["heartbeat_s"] is not None:
                silence = now - self._heard.get(source, now)
                if silence > max(4 * proc["heartbeat_s"], MIN_SILENCE_S):
                    self._decide(
                        source, proc, "crashed", f"nothing heard from it for {silence:.0f} s"
                    )
            elif alive is False:
                where = f"pid {proc['pid']} on {proc['host']}"
                self._decide(source, proc, "crashed", f"its process ({where}) is gone")
        self.position = journal_position
        # Saved when something changed, and now and then anyway, so the journal read at the
        # next start stays short even through a long run where nothing changes.
        if self._dirty or self.position - self._saved_position > SAVE_EVERY_BYTES:
            self.save()

    def _alive(self, proc: dict[str, Any]) -> bool | None:
        """True/False for a process judged by its pid here; None where only silence can tell."""
        ident = proc.get("ident")
        if proc.get("pid") is None or not procinfo.local(ident):
            return None
        return procinfo.alive(proc["pid"], ident) if ident is not None else None

    def _decide(self, source: str, proc: dict[str, Any], status: str, reason: str) -> None:
        """Queues a run_status event for the ingest loop to journal; observed back from there."""
        body = {
            "status": status,
            "source": source,
            "reason": reason,
            "pid": proc.get("pid"),
            "host": proc.get("host"),
        }
        header = encode_header(proc["run_id"], proc["rank"], self.source, self._seq, 1)
        self._seq += 1
        self.out.put((header, encode_body([RUN_STATUS], [time.time_ns()], [None], [body])))
        self._pending[source] = time.monotonic()
        self._warning(f"run {proc['run_id']} rank {proc['rank']}: {status} ({reason})")

    def save(self) -> None:
        """Writes the state file (position: the journal this state has seen all of)."""
        state = {
            "version": STATE_VERSION,
            "position": self.position,
            "procs": self.procs,
            "ended": list(self.ended),
        }
        try:
            write_json_atomic(self.path, state)
        except OSError as exc:  # a full disk: keep it in memory and try again at the next tick
            if not self._save_failed:
                self._warning(f"liveness: cannot write {self.path} ({exc}); retrying")
            self._save_failed = True
            return
        self._save_failed = False
        self._dirty = False
        self._saved_position = self.position


def _info(text: str) -> None:
    logger.info("%s", text)


def _warning(text: str) -> None:
    logger.warning("%s", text)
