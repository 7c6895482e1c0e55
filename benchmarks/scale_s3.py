"""Tables on object storage: collectors publishing to an S3-compatible server, read back over S3.

    .venv/bin/python benchmarks/scale_s3.py            # 1 and 2 collectors, 100,000 events each
    .venv/bin/python benchmarks/scale_s3.py --quick    # 1 collector, 10,000 events, < 1 minute
    .venv/bin/python benchmarks/scale_s3.py --collectors 1,2,4 --steps 50000

The S3 configuration of benchmarks/scale.py (which runs the ranks: one run whose ranks span the
collectors, EMITTERS_PER_COLLECTOR per collector): every collector `serve --tables
s3://bench/scale`, against moto's standalone S3 server on 127.0.0.1 (the one S3-compatible
server the registries here provide; started and ended by this script). Measured:

values/s acked      all ranks' metric values / seconds from the first timed `log` to the last
                    `finish()` (fsync'd in a journal): publishing never sits in that path
values/s visible    the same until `traintape.connect(store)` counts every row locally, and until
                    `traintape.connect("s3://...")` counts every row in the bucket (exact: zero
                    lost, zero twice, checked); `bucket lag s`: the second minus the first
query ms            a fresh connection then the question (median of 5 after a warm-up), on the
                    local store and over S3 (the manifests, then the objects through s3fs)
objects             data objects the manifests list after the collectors stopped, those in the
                    bucket (replaced ones wait `tables_grace`, 300 s, to be deleted) and their MiB

moto keeps objects in memory and answers from one Python process on this 2-core machine, which
the collectors and emitters share: the S3 figures are a floor, far below what a real object store
serves, and say what publishing costs beside ingest rather than what S3 can take.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector_process import Collector
from result_table import print_table
from scale import EMITTERS_PER_COLLECTOR, QUESTIONS, WARM_UP_STEPS, run_ranks

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench"


class S3Server:
    """moto's S3 server on a free port of 127.0.0.1; its variables set in this process (the
    collectors started after inherit them)."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench-secret",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=self.endpoint,
        )
        with open(log, "wb") as out:
            argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        import boto3

        self.client = boto3.client("s3")
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.create_bucket(Bucket=BUCKET)
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def objects(self, prefix: str) -> list[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o for page in pages for o in page.get("Contents", ())]

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Result:
    collectors: int
    emitters: int
    values: int
    acked_s: float
    local_s: float | None = None
    bucket_s: float | None = None
    extra_rows: dict[str, int] = field(default_factory=dict)
    query_ms: dict[str, tuple[float, float]] = field(default_factory=dict)  # (local, S3)
    objects: int = 0
    listed: int = 0
    object_bytes: int = 0


def measure(root: Path, s3: S3Server, n: int, args: Any) -> Result:
    import traintape

    store = root / f"store-{n}"
    url = f"s3://{BUCKET}/scale-{n}"
    ids: list[str | None] = [f"node-{i}" for i in range(n)]
    extra = ("--system-interval", "0", "--tables", url)
    procs = [Collector(store, *extra, cwd=REPO, collector_id=c) for c in ids]
    try:
        reports = run_ranks(store, f"scale-s3-{n}", ids, args)
        emitters = n * EMITTERS_PER_COLLECTOR
        t0 = min(r["t0"] for r in reports)
        t_done = max(r["t_done"] for r in reports)
        result = Result(n, emitters, emitters * args.steps * args.metrics, (t_done - t0) / 1e9)
        expected = emitters * (args.steps + WARM_UP_STEPS) * args.metrics
        _wait_visible(traintape, str(store), url, expected, result, t0)
        for name, sql in QUESTIONS.items():
            local = _median_ms(traintape, str(store), sql)
            result.query_ms[name] = (local, _median_ms(traintape, url, sql))
    finally:
        for proc in procs:  # all stop at once
            proc.proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.stop()
    data = [o for o in s3.objects(f"scale-{n}/tables/") if not o["Key"].endswith("/")]
    result.objects = len(data)
    result.object_bytes = sum(int(o["Size"]) for o in data)
    from traintape.read.remote import filesystem, read_manifests
    from traintape.schemas.objectstore import Bucket

    manifests = read_manifests(filesystem(), Bucket.parse(url))
    result.listed = sum(len(files) for files in manifests.values())
    return result


def _count(traintape: Any, store: str) -> int:
    try:
        con = traintape.connect(store)
    except Exception:  # no manifest yet
        return -1
    try:
        return int(con.execute("SELECT count(*) FROM metrics").fetchone()[0])
    except Exception:  # a file merged away, an object deleted, between listing and reading
        return -1
    finally:
        con.close()


def _wait_visible(
    traintape: Any, store: str, url: str, expected: int, result: Result, t0: int
) -> None:
    """Local first, then the bucket (published only after the local files are committed, so
    never sooner): polling both at once would add a slow S3 connection to the local figure."""
    deadline = time.monotonic() + 600
    for where, target in (("local", store), ("bucket", url)):
        rows = -1
        while time.monotonic() < deadline:
            rows = _count(traintape, target)
            if rows >= expected:
                setattr(result, f"{where}_s", (time.perf_counter_ns() - t0) / 1e9)
                break
            time.sleep(0.05)
        result.extra_rows[where] = rows - expected


def _median_ms(traintape: Any, store: str, sql: str, repeat: int = 5) -> float:
    times = []
    for i in range(repeat + 1):  # the first: a warm-up
        t = time.perf_counter_ns()
        con = traintape.connect(store)
        con.execute(sql).fetchall()
        con.close()
        if i:
            times.append((time.perf_counter_ns() - t) / 1e6)
    return statistics.median(times)


def report(results: list[Result], metrics: int) -> None:
    rows = []
    for r in results:
        rate = r.values / r.acked_s
        local = r.values / r.local_s if r.local_s else None
        bucket = r.values / r.bucket_s if r.bucket_s else None
        lag = r.bucket_s - r.local_s if r.bucket_s and r.local_s else None
        extra = " / ".join("0" if v == 0 else f"{v:+,}" for v in r.extra_rows.values())
        rows.append(
            [
                str(r.collectors),
                str(r.emitters),
                f"{r.values:,}",
                f"{rate:,.0f}",
                f"{local:,.0f}" if local else "no",
                f"{bucket:,.0f}" if bucket else "no",
                f"{bucket / local:.2f}" if bucket and local else "–",
                f"{lag:.1f}" if lag is not None else "–",
                extra,
                " / ".join(f"{r.query_ms[q][0]:.0f}" for q in QUESTIONS),
                " / ".join(f"{r.query_ms[q][1]:.0f}" for q in QUESTIONS),
                f"{r.query_ms['count'][1] / r.query_ms['count'][0]:.1f}",
                f"{r.listed} / {r.objects} ({r.object_bytes / 2**20:.1f} MiB)",
            ]
        )
    print(f"\n### Tables on S3 (moto on 127.0.0.1), {metrics} floats per event\n")
    print_table(
        [
            "collectors",
            "emitters",
            "metric values",
            "values/s acked",
            "visible local",
            "visible in bucket",
            "× local",
            "bucket lag s",
            "lost/extra rows (local / bucket)",
            f"query ms local ({' / '.join(QUESTIONS)})",
            "query ms S3",
            "S3 × local (count)",
            "objects listed / in bucket",
        ],
        rows,
    )
    print(
        "\nAcked: first timed `log` to the last `finish()`; visible: until a fresh connection "
        "counted every row, on the local store and over S3 (`× local`: the bucket's values/s "
        "over the local one's, same run). Query: a fresh connection and the question, median of "
        "5: " + "; ".join(f"`{k}`: {v}" for k, v in QUESTIONS.items()) + "."
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--collectors", default="1,2", help="collector counts (default 1,2)")
    p.add_argument("--steps", type=int, default=100_000, help="events per emitter")
    p.add_argument("--metrics", type=int, default=10, help="floats per event")
    p.add_argument("--quick", action="store_true", help="1 collector, 10,000 events per emitter")
    args = p.parse_args()
    if args.quick:
        args.steps, args.collectors = 10_000, "1"
    root = Path(tempfile.mkdtemp(prefix="traintape-scale-s3-"))
    s3 = S3Server(root / "moto.log")
    results = []
    try:
        for n in [int(c) for c in args.collectors.split(",")]:
            print(f"{n} collector(s) publishing to S3", file=sys.stderr)
            results.append(measure(root, s3, n, args))
        report(results, args.metrics)
    finally:
        s3.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
