"""`make demo`: start a collector, train 2 CPU ranks under torchrun, stop it, summarize with SQL."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import traintape
from traintape.layout import StoreLayout
from traintape.paths import resolve_store

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default=None, help="store folder (default ./traintape-store)")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    store = resolve_store(args.store)
    env = {**os.environ, "TRAINTAPE_STORE": str(store), "OMP_NUM_THREADS": "1"}

    print(f"[demo] starting the collector on {store}", flush=True)
    collector = subprocess.Popen(
        [sys.executable, "-m", "traintape.collector", "serve", "--store", str(store)], env=env
    )
    try:
        layout = StoreLayout(store)
        deadline = time.monotonic() + 30
        while not layout.pid.exists() or not layout.collector_status.exists():
            if collector.poll() is not None or time.monotonic() > deadline:
                print("[demo] the collector did not start; see its output above", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print("[demo] training 2 CPU ranks under torchrun (gloo)", flush=True)
        train = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(HERE / "ddp_train.py"),
            "--steps",
            str(args.steps),
        ]
        subprocess.run(train, env=env, check=True)
    finally:
        print("[demo] stopping the collector (SIGTERM: it flushes everything first)", flush=True)
        collector.send_signal(signal.SIGINT if os.name == "nt" else signal.SIGTERM)
        collector.wait(60)

    con = traintape.connect(store)
    run_id, name, status_, ranks, duration = con.execute(
        "SELECT run_id, name, status, ranks, duration_s FROM runs ORDER BY started DESC LIMIT 1"
    ).fetchone()
    print(f"\n[demo] run {run_id} ({name}): {status_}, {ranks} ranks, {duration:.1f}s")
    summary_sql = """
        SELECT key, count(*) AS values_logged, count(DISTINCT rank) AS ranks, max(step) AS last_step,
               round(arg_max(value, step), 5) AS last_value, round(min(value), 5) AS min_value,
               round(max(value), 5) AS max_value
        FROM metrics WHERE run_id = ? GROUP BY key ORDER BY key"""
    print(f"[demo] SQL: {' '.join(summary_sql.split())}\n")
    cur = con.execute(summary_sql, [run_id])
    from traintape.cli.output import print_rows

    print_rows([d[0] for d in cur.description], cur.fetchall())
    print(f"\n[demo] explore it: .venv/bin/traintape runs --store {store}")
    print(
        f"[demo] dashboard: .venv/bin/traintape ui --store {store}, then open "
        f"http://127.0.0.1:8421/#/run/{run_id}"
    )
    print(
        f'[demo]             .venv/bin/traintape query "SELECT * FROM metrics LIMIT 5" --store {store}'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
