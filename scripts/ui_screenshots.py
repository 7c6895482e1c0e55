"""The README's dashboard screenshots: docs/img/ui-runs.png (the runs table),
docs/img/ui-chart.png (runs compared) and docs/img/ui-media.png (a run's images with their step
slider, and a table), taken by headless Chromium on `traintape ui`.

    .venv/bin/python scripts/ui_screenshots.py                 # makes a demo store first
    .venv/bin/python scripts/ui_screenshots.py --store DIR     # an existing store

Uses the system's Chromium (`make install` puts Debian's `chromium` there) through Playwright's
Python package; a page error or a console error while taking them fails the script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


DEMO_RUNS = (("3e-3", "64"), ("1e-2", "64"), ("1e-3", "128"))
"""(lr, hidden) of the demo runs: examples/ddp_train.py, 2 CPU ranks each, as `make demo` runs it."""


MEDIA_RUN = """
import io
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from traintape import emitter

emitter.init(project="demo", name="samples")
yy, xx = np.mgrid[0:96, 0:96] / 95.0
for step in range(0, 50, 10):
    t = step / 40
    rgb = np.stack([xx * (1 - t) + t * yy, np.abs(np.sin(6 * (xx + t))) * yy, 1 - xx * yy], -1)
    out = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(out, format="PNG")
    emitter.log({"loss": 1 / (1 + step)}, step=step)
    meta = {"media": "image", "format": "png", "width": 96, "height": 96, "channels": 3,
            "caption": f"prediction at step {step}"}
    emitter.log_artifact(out.getvalue(), name="predictions", kind="image", metadata=meta, step=step)
rows = {"id": [3, 17, 42], "label": ["cat", "dog", "ship"], "predicted": ["dog", "cat", "plane"],
        "loss": [2.31, 1.87, 1.52]}
out = io.BytesIO()
pq.write_table(pa.table(rows), out)
meta = {"media": "table", "format": "parquet", "rows": 3, "columns": list(rows)}
emitter.log_artifact(out.getvalue(), name="worst", kind="table", metadata=meta, step=40)
emitter.finish()
"""
"""A run logging images and a table as the media contract has them (issue 18)."""


def demo_store(folder: Path) -> Path:
    """A store with a few finished 2-rank runs of examples/ddp_train.py under one collector."""
    from traintape.layout import StoreLayout

    store = folder / "store"
    env = {**os.environ, "TRAINTAPE_STORE": str(store), "OMP_NUM_THREADS": "1"}
    collector = subprocess.Popen(
        [sys.executable, "-m", "traintape.collector", "serve", "--store", str(store)], env=env
    )
    try:
        layout = StoreLayout(store)
        deadline = time.monotonic() + 30
        while not layout.collector_status.exists():
            if collector.poll() is not None or time.monotonic() > deadline:
                msg = "the collector did not start"
                raise SystemExit(msg)
            time.sleep(0.05)
        subprocess.run([sys.executable, "-c", MEDIA_RUN], env=env, check=True)
        for lr, hidden in DEMO_RUNS:
            subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc-per-node", "2", str(REPO / "examples" / "ddp_train.py"),
                 "--lr", lr, "--hidden", hidden],
                env=env, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
    finally:
        collector.send_signal(signal.SIGTERM)  # it flushes everything to the store first
        collector.wait(60)
    return store


def start_ui(store: Path) -> tuple[subprocess.Popen[str], str]:
    """`traintape ui --port 0` on `store`, and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "traintape", "ui", "--store", str(store), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"https?://\S+", line)
        if found:
            return proc, found.group(0).rstrip("/")
    msg = f"traintape ui exited {proc.wait()} without printing its URL"
    raise SystemExit(msg)


def shoot(url: str, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with urllib.request.urlopen(f"{url}/api/runs") as answer:
        runs = json.load(answer)["runs"]
    if not runs:
        msg = "the store has no runs to show"
        raise SystemExit(msg)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 340}, device_scale_factor=1)
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None,
        )
        page.goto(f"{url}/#/runs?cols=lr,model.hidden&metrics=val_loss")
        page.locator("tr.run").first.wait_for()
        page.screenshot(path=out / "ui-runs.png")

        page.set_viewport_size({"width": 1280, "height": 820})
        ids = ",".join(r["run_id"] for r in runs[:3])
        page.goto(f"{url}/#/compare?runs={ids}&smooth=0.6")
        page.locator(".chart[data-key]").first.wait_for()
        drawn = "[...document.querySelectorAll('.chart[data-key]')].filter(c => c.data).length"
        deadline = time.monotonic() + 30
        while page.evaluate(drawn) < min(4, page.locator(".chart[data-key]").count()):
            if time.monotonic() > deadline:
                msg = "the charts did not draw within 30 s"
                raise SystemExit(msg)
            time.sleep(0.1)
        page.wait_for_timeout(300)  # Plotly's WebGL layer paints on the next frames
        page.screenshot(path=out / "ui-chart.png")
        media_shot(page, url, runs, out)
        browser.close()
    if errors:
        msg = "the page reported errors:\n" + "\n".join(errors)
        raise SystemExit(msg)


def media_shot(page: object, url: str, runs: list[dict[str, object]], out: Path) -> None:
    """The media section of the run that logged images (none in a store without one)."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    with_media = [r for r in runs if r.get("name") == "samples"]
    if not with_media:
        return
    page.set_viewport_size({"width": 1280, "height": 560})
    page.goto(f"{url}/#/run/{with_media[0]['run_id']}")
    section = page.locator(".media-section")
    section.locator("img").first.wait_for()
    section.locator("table").first.wait_for()
    page.evaluate(
        "() => [...document.images].every(i => i.complete) || new Promise(r => setTimeout(r, 500))"
    )
    page.evaluate("() => document.querySelector('.media-section').scrollIntoView()")
    page.screenshot(path=out / "ui-media.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a store to show (default: a new demo store)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="traintape-shots-") as tmp:
        store = args.store or demo_store(Path(tmp))
        proc, url = start_ui(store)
        try:
            shoot(url, args.out, args.chromium)
        finally:
            proc.terminate()
            proc.wait(30)
    for name in ("ui-runs.png", "ui-chart.png", "ui-media.png"):
        path = args.out / name
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
