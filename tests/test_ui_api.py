"""`traintape ui`'s API: downsampling in DuckDB (fast, in memory), then the real thing: a
collector, a two-rank trainer logging, and `traintape ui --port 0` asked over HTTP."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.conftest import REPO, CollectorProcess
from tests.workers.ui_trainer import IMAGE_STEPS, SPIKE_VALUE, TABLE_STEP, png
from traintape.errors import QueryError
from traintape.ui.api import check_where, jsonable
from traintape.ui.downsample import m4_sql, nonfinite_sql

TRAINER = REPO / "tests" / "workers" / "ui_trainer.py"
STEPS, SPIKE_STEP = 20_000, 12_345

# -- downsampling, in memory ---------------------------------------------------------------------


def _table(con: duckdb.DuckDBPyConnection, n: int, spike_at: int | None = None) -> str:
    con.execute(
        f"""CREATE OR REPLACE TABLE pts AS
            SELECT 0 AS g, i::DOUBLE AS x,
                   CASE WHEN i = {spike_at if spike_at is not None else -1} THEN 99.0
                        ELSE sin(i / 500.0) END AS y,
                   NULL::DOUBLE AS lo, NULL::DOUBLE AS hi
            FROM range({n}) r(i)"""
    )
    return "pts"


def test_m4_keeps_a_one_point_spike_within_two_points_per_pixel() -> None:
    """A million points bucketed for a 400 px panel come back as at most 800, ordered by x,
    and the single spike among them is one of them, at its own x."""
    con = duckdb.connect()
    found = con.execute(m4_sql(_table(con, 1_000_000, spike_at=777_777), 400)).fetchall()
    assert len(found) <= 800
    assert [r[1] for r in found] == sorted(r[1] for r in found)
    assert (777_777.0, 99.0) in [(r[1], r[2]) for r in found]
    assert max(r[2] for r in found) == 99.0
    assert min(r[2] for r in found) == pytest.approx(-1.0, abs=1e-5)  # the troughs survive too


def test_m4_returns_a_short_series_whole() -> None:
    """A series with no more than 2·width points is returned point for point."""
    con = duckdb.connect()
    found = con.execute(m4_sql(_table(con, 1600), 800)).fetchall()
    assert [r[1] for r in found] == [float(i) for i in range(1600)]


def test_m4_keeps_each_series_and_the_widest_band() -> None:
    """Two series are bucketed apart, and a bucket's band is its lowest low and highest high."""
    con = duckdb.connect()
    con.execute(
        """CREATE TABLE b AS SELECT i % 2 AS g, (i // 2)::DOUBLE AS x, 0.0 AS y,
                  CASE WHEN i = 5000 THEN -7.0 ELSE -1.0 END AS lo,
                  CASE WHEN i = 9001 THEN 7.0 ELSE 1.0 END AS hi
           FROM range(20000) r(i)"""
    )
    found = con.execute(m4_sql("b", 50)).fetchall()
    for g in (0, 1):
        assert 0 < len([r for r in found if r[0] == g]) <= 100
    assert min(r[3] for r in found if r[0] == 0) == -7.0  # i = 5000: g 0
    assert max(r[4] for r in found if r[0] == 1) == 7.0  # i = 9001: g 1
    assert max(r[4] for r in found if r[0] == 0) == 1.0


def test_nonfinite_values_are_listed_by_kind_and_bounded() -> None:
    """NaN, +Inf and -Inf are each reported at the first x of their bucket with a count, so a
    run that diverged for 100,000 steps gives one entry per bucket and kind, not 100,000."""
    con = duckdb.connect()
    con.execute(
        """CREATE TABLE n AS SELECT 3 AS g, i::DOUBLE AS x,
                  CASE WHEN i = 10 THEN 'inf'::DOUBLE WHEN i = 11 THEN '-inf'::DOUBLE
                       ELSE 'nan'::DOUBLE END AS value
           FROM range(100000) r(i)"""
    )
    found = con.execute(nonfinite_sql("n", 20)).fetchall()
    assert (3, 10.0, "inf", 1) in found and (3, 11.0, "-inf", 1) in found
    nans = [r for r in found if r[2] == "nan"]
    assert len(nans) == 20 and sum(r[3] for r in nans) == 99_998
    assert nans[0][1] == 0.0


def test_where_filter_is_one_select_expression() -> None:
    """A `where` filter that would run a second statement, or is not SQL, is refused."""
    assert check_where("status = 'running'") == "status = 'running'"
    for bad in ("1=1); COPY (SELECT 1) TO '/tmp/x.csv'; --", "1=1); DROP VIEW runs; --", "(("):
        with pytest.raises(QueryError):
            check_where(bad)


def test_json_keeps_nonfinite_values_as_text() -> None:
    """NaN and ±Inf become "nan", "inf", "-inf" (strict JSON has no such numbers), not null."""
    assert jsonable({"a": [math.nan, math.inf, -math.inf, 1.5]}) == {
        "a": ["nan", "inf", "-inf", 1.5]
    }


def test_folder_cache_lists_a_folder_again_when_it_changed(tmp_path: Path) -> None:
    """The dashboard's folder listings see a file added, and one removed, at once, also in a
    folder that had been still for long (served from the cache until then)."""
    from traintape.ui.listing import FolderCache

    cache, folder = FolderCache(), tmp_path / "run"
    assert cache.names(str(folder)) is None
    folder.mkdir()
    (folder / "a.parquet").write_bytes(b"")
    os.utime(folder, (1_000_000_000, 1_000_000_000))  # still since 2001
    assert cache.names(str(folder)) == {"a.parquet"}
    assert cache.names(str(folder)) == {"a.parquet"}  # from the cache
    (folder / "b.parquet").write_bytes(b"")
    assert cache.names(str(folder)) == {"a.parquet", "b.parquet"}
    (folder / "a.parquet").unlink()
    assert cache.names(str(folder)) == {"b.parquet"}


# -- the server, over HTTP -----------------------------------------------------------------------


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """(status, JSON body, response headers) of a GET."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def start_ui(store: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`traintape ui --port 0` on `store`: the process and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "traintape.cli", "ui", "--store", str(store), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=store.parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"(http://\S+)", line)
    if not found:
        proc.kill()
        raise AssertionError(f"traintape ui printed no URL: {line}{proc.stdout.read()}")
    return proc, found.group(1)


def stop_ui(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C the server; its remaining output (it must exit 0)."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def poll(fn: Any, timeout: float = 60.0) -> Any:
    """fn()'s first truthy answer, asked until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        answer = fn()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer in {timeout}s")
        time.sleep(0.1)


@dataclass
class Dashboard:
    store: Path
    url: str  # http://127.0.0.1:PORT/
    run_id: str

    def api(self, path: str) -> tuple[int, Any]:
        status, body, _ = get(self.url.rstrip("/") + path)
        return status, body


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """A collector, two ranks of tests/workers/ui_trainer.py logging (still running: `live`),
    and `traintape ui` over the store, once every rank's `loss` is visible through it."""
    root = tmp_path_factory.mktemp("ui")
    store, stop = root / "store", root / "stop"
    collector = CollectorProcess(store, "--system-interval", "0.2").start()
    ranks = [
        subprocess.Popen(
            [sys.executable, str(TRAINER), "--store", str(store), "--stop", str(stop)],
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "TRAINTAPE_RUN_ID": "uirun1"},
            cwd=root,
        )
        for r in range(2)
    ]
    ui, url = start_ui(store)
    try:
        board = Dashboard(store, url, "uirun1")
        poll(
            lambda: (
                board.api("/api/series?run=uirun1&key=loss&ranks=all")[1].get("total_points")
                == 2 * STEPS
            ),
            timeout=120,
        )
        yield board
    finally:  # every process ends, whatever failed
        stop.touch()
        try:
            for p in ranks:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            stop_ui(ui)
        finally:
            if ui.poll() is None:
                ui.kill()
                ui.wait()
            collector.close()


@pytest.mark.slow
def test_runs_table_lists_the_run_with_config_and_metrics(dashboard: Dashboard) -> None:
    """The runs table shows the live run with its project, tags, flat config and last/best of
    each metric, and its filters (project, text, SQL where) pick it or not."""
    status, body = dashboard.api("/api/runs")
    assert status == 200
    (run,) = [r for r in body["runs"] if r["run_id"] == "uirun1"]
    assert (run["name"], run["project"], run["status"], run["ranks"]) == (
        "dashboard",
        "uitest",
        "running",
        2,
    )
    assert run["tags"] == ["ui"] and run["config"] == {"lr": 0.1, "opt.name": "adam"}
    assert run["best"]["loss"] == pytest.approx(1.5)  # mean across ranks at step 0
    assert run["last"]["loss"] == pytest.approx(1.5 + 0.001 * (STEPS - 1))
    assert {"loss", "bad", "live"} <= set(body["metrics"]) and "opt.name" in body["config_keys"]
    assert isinstance(run["started"], str) and run["started"].startswith("20")
    for query, expected in (
        ("project=uitest", 1),
        ("project=other", 0),
        ("q=dashb", 1),
        ("q=zzz", 0),
        ("tag=ui", 1),
        ("where=status%20%3D%20'running'%20AND%20ranks%20%3D%202", 1),
        ("where=status%20%3D%20'completed'", 0),
        ("group=opt.name", 1),
    ):
        status, body = dashboard.api(f"/api/runs?{query}")
        assert status == 200 and len(body["runs"]) == expected, query
    assert body["runs"][0]["group"] == "adam"
    status, body = dashboard.api("/api/runs?where=1%3D1)%3B%20DROP%20VIEW%20runs%3B%20--")
    assert status == 400 and "where" in body["error"]
    assert dashboard.api("/api/runs")[0] == 200  # the views are still there


@pytest.mark.slow
def test_runs_table_computes_a_large_backlog_in_the_background(dashboard: Dashboard) -> None:
    """When more runs changed than a request computes itself, it answers at once naming them
    pending, and a background thread fills their last/best in."""
    from traintape.ui.api import SummaryCache, cursor, open_store

    base = open_store(dashboard.store)
    cache = SummaryCache(dashboard.store, lambda: cursor(base, dashboard.store))
    cache.INLINE = 0
    con = cursor(base, dashboard.store)
    try:
        ready, pending = cache.get(con, ["uirun1"])
        assert pending == ["uirun1"] or ready["uirun1"][0]["loss"] > 0  # or the thread was quick
        # The live run's folder keeps changing, so it may be pending again: its kept values
        # are served meanwhile.
        ready = poll(lambda: cache.get(con, ["uirun1"])[0])
        assert ready["uirun1"][1]["loss"] == pytest.approx(1.5)
    finally:
        cache.stop()
        poll(cache.idle)  # its thread's connection is a cursor of `base`
        con.close()
        base.close()


@pytest.mark.slow
def test_run_page_has_config_text_events_and_system_samples(dashboard: Dashboard) -> None:
    """The run page holds show()'s config and metric summary, both ranks' text events, and the
    system metrics sampled while it ran, each a series per host and device."""
    status, page = dashboard.api("/api/run/uirun1")
    assert status == 200
    assert page["config"] == {"lr": 0.1, "opt.name": "adam"}
    assert {m["key"] for m in page["metrics"]} >= {"loss", "bad"}
    assert sorted((t["rank"], t["key"]) for t in page["text"]) == [(0, "note"), (1, "note")]
    keys = poll(lambda: dashboard.api("/api/run/uirun1")[1]["system_series"])
    status, sysdata = dashboard.api(f"/api/system?run=uirun1&key={keys[0]}&width=100")
    assert status == 200 and sysdata["series"] and sysdata["x_kind"] == "time"
    assert {"host", "device", "x", "y"} <= set(sysdata["series"][0])
    assert dashboard.api("/api/run/nosuchrun")[0] == 404
    assert dashboard.api("/api/metrics?runs=uirun1")[1]["keys"][0] == {
        "key": "bad",
        "runs": ["uirun1"],
    }


@pytest.mark.slow
def test_series_keeps_the_spike_within_two_points_per_pixel(dashboard: Dashboard) -> None:
    """40,000 logged values of `loss` (2 ranks) asked for a 100 px panel come back as at most
    200 points per rank, and rank 0's one-step spike is among them at its step; the mean across
    ranks keeps it in its band."""
    status, s = dashboard.api("/api/series?run=uirun1&key=loss&ranks=all&width=100")
    assert status == 200 and s["downsampled"] and s["total_points"] == 2 * STEPS
    assert [x["rank"] for x in s["series"]] == [0, 1]
    for line in s["series"]:
        assert len(line["x"]) <= 200 and line["ymin"] is None
    zero = s["series"][0]
    assert zero["y"][zero["x"].index(SPIKE_STEP)] == SPIKE_VALUE
    status, m = dashboard.api("/api/series?run=uirun1&key=loss&width=100")
    (mean,) = m["series"]
    assert mean["rank"] is None and len(mean["x"]) <= 200 and max(mean["ymax"]) == SPIKE_VALUE


@pytest.mark.slow
def test_mean_across_ranks_with_its_band(dashboard: Dashboard) -> None:
    """Zoomed in to steps 100..200, the mean series is every step's mean of the two ranks, with
    the lower rank's value as ymin and the higher's as ymax."""
    status, s = dashboard.api("/api/series?run=uirun1&key=loss&x0=100&x1=200&width=800")
    assert status == 200 and not s["downsampled"]
    (line,) = s["series"]
    assert line["x"] == list(range(100, 201))
    for x, y, lo, hi in zip(line["x"], line["y"], line["ymin"], line["ymax"]):
        assert (lo, y, hi) == pytest.approx((1 + 0.001 * x, 1.5 + 0.001 * x, 2 + 0.001 * x))


@pytest.mark.slow
def test_x_axis_another_metric_joins_on_rank_and_step(dashboard: Dashboard) -> None:
    """Against another metric, each value is drawn at that metric's value at the same rank and
    step (`tokens` = 32·step + rank, the mean's x the ranks' mean), and the values at steps it
    was not logged at (the odd ones) are counted as unmatched, not drawn."""
    zoom = "x=metric&xkey=tokens&x0=3200&x1=6401&width=800"
    status, s = dashboard.api(f"/api/series?run=uirun1&key=loss&ranks=all&{zoom}")
    assert status == 200 and (s["x_kind"], s["x_key"]) == ("metric", "tokens")
    steps = range(100, 201, 2)
    assert [line["rank"] for line in s["series"]] == [0, 1]
    for line in s["series"]:
        r = line["rank"]
        assert line["x"] == [32.0 * st + r for st in steps]
        assert line["y"] == pytest.approx([1 + r + 0.001 * st for st in steps])
    status, m = dashboard.api(f"/api/series?run=uirun1&key=loss&{zoom}")
    (mean,) = m["series"]
    assert mean["x"] == [32.0 * st + 0.5 for st in steps]
    assert mean["y"] == pytest.approx([1.5 + 0.001 * st for st in steps])
    status, whole = dashboard.api("/api/series?run=uirun1&key=loss&x=metric&xkey=tokens&width=100")
    # The odd steps of both ranks but the last: the run still runs, so its steps past the last
    # `tokens` (19,998) are held back until `tokens` reaches them (the cursor).
    assert status == 200 and whole["unmatched"] == STEPS - 2 and whole["cursor"] == STEPS - 2
    assert whole["total_points"] == STEPS // 2 and len(whole["series"][0]["x"]) <= 200
    assert dashboard.api("/api/series?run=uirun1&key=loss&width=100")[1]["unmatched"] == 0
    status, body = dashboard.api("/api/series?run=uirun1&key=loss&x=metric")
    assert status == 400 and "xkey" in body["error"]


@pytest.mark.slow
def test_live_poll_against_another_metric_counts_steps(dashboard: Dashboard) -> None:
    """Polling a running metric drawn against a metric (`live` against itself) with
    `after=cursor` returns only the steps past the cursor, each once, in order."""
    query = "/api/series?run=uirun1&key=live&x=metric&xkey=live"
    status, s = dashboard.api(query)
    assert status == 200
    xs = list(s["series"][0]["x"]) if s["series"] else []
    cursor, polls = s["cursor"], 0
    while len(xs) < 30:
        status, s = dashboard.api(f"{query}&after={cursor}")
        assert status == 200 and s["unmatched"] == 0
        for line in s["series"]:
            assert all(x > cursor for x in line["x"]) and line["y"] == line["x"]
            xs += line["x"]
        cursor, polls = s["cursor"], polls + 1
        assert polls < 600, "the live run's points stopped coming"
        time.sleep(0.1)
    assert xs == [float(x) for x in range(len(xs))]


def _media(dashboard: Dashboard) -> dict[str, Any] | None:
    """The run's media once every image and table the trainer logs is listed."""
    status, body = dashboard.api("/api/media?run=uirun1")
    assert status == 200
    found = {m["name"]: m for m in body["media"]}
    images = found.get("samples", {}).get("items", [])
    tables = found.get("preds", {}).get("items", [])
    return found if len(images) == 2 * len(IMAGE_STEPS) and len(tables) == 2 else None


@pytest.mark.slow
def test_media_are_listed_and_served_by_their_run(dashboard: Dashboard) -> None:
    """The run's images are listed per step and rank with the contract's metadata and served as
    the PNG bytes logged; its table's rows are read back; a plain file artifact is no media."""
    found = poll(lambda: _media(dashboard))
    assert set(found) == {"samples", "preds"}  # notes.txt (kind "file") is not media
    images = found["samples"]
    assert images["kind"] == "image"
    got = sorted((i["step"], i["rank"]) for i in images["items"])
    assert got == [(st, r) for st in IMAGE_STEPS for r in (0, 1)]
    item = next(i for i in images["items"] if (i["step"], i["rank"]) == (10, 1))
    assert (item["width"], item["height"], item["caption"]) == (8, 8, "step 10")
    with urllib.request.urlopen(f"{dashboard.url}api/object/{item['sha256']}?run=uirun1") as r:
        assert r.read() == png(10, 1) and r.headers["content-type"] == "image/png"
    table = next(i for i in found["preds"]["items"] if i["rank"] == 1)
    assert table["step"] == TABLE_STEP and table["columns"] == ["id", "label", "score"]
    status, t = dashboard.api(f"/api/table?run=uirun1&sha256={table['sha256']}")
    assert status == 200 and t["columns"] == ["id", "label", "score"] and t["total_rows"] == 3
    assert t["rows"] == [[0, "cat", 0.5], [1, "dog", 0.25], [2, "rank1", 1.0]]


@pytest.mark.slow
def test_object_endpoint_serves_only_what_the_run_records(dashboard: Dashboard) -> None:
    """An object is served only to the run whose artifact event records its sha256, and only
    when its bytes still hash to it; a path, a non-hash, another run, or an object no event
    refers to is refused, and a plain artifact comes as an attachment."""
    import hashlib

    from traintape.layout import StoreLayout

    found = poll(lambda: _media(dashboard))
    sha = found["samples"]["items"][0]["sha256"]
    assert get(f"{dashboard.url}api/object/{sha}?run=nosuchrun")[0] == 404
    for bad in ("..%2F..%2F..%2Fetc%2Fpasswd", "..", sha.upper(), sha[:-1] + "g", sha[:40]):
        status, body, _ = get(f"{dashboard.url}api/object/{bad}?run=uirun1")
        assert status in (400, 404) and body["error"], bad
    layout = StoreLayout(dashboard.store)
    stray = b"an object no event refers to"
    stray_sha = hashlib.sha256(stray).hexdigest()
    layout.artifact_object(stray_sha).parent.mkdir(parents=True, exist_ok=True)
    layout.artifact_object(stray_sha).write_bytes(stray)
    status, body, _ = get(f"{dashboard.url}api/object/{stray_sha}?run=uirun1")
    assert status == 404 and "records no artifact" in body["error"]
    notes = hashlib.sha256(b"plain notes").hexdigest()
    with urllib.request.urlopen(f"{dashboard.url}api/object/{notes}?run=uirun1") as r:
        assert r.read() == b"plain notes"
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"] == 'attachment; filename="notes.txt"'
    path = layout.artifact_object(notes)  # changed behind the store's back: refused
    path.chmod(0o600)
    path.write_bytes(b"PLAIN NOTES")
    status, body, _ = get(f"{dashboard.url}api/object/{notes}?run=uirun1")
    assert status == 409 and "hash" in body["error"]


@pytest.mark.slow
def test_nan_and_inf_are_reported_where_they_happened(dashboard: Dashboard) -> None:
    """NaN, +Inf and -Inf of `bad` are listed at their steps and ranks, and left out of the
    lines, per rank and in the mean alike."""
    for ranks in ("all", "mean"):
        status, s = dashboard.api(f"/api/series?run=uirun1&key=bad&ranks={ranks}")
        assert status == 200
        found = sorted((n["x"], n["rank"], n["value"]) for n in s["nonfinite"])
        assert found == [
            (x, r, v) for x, v in ((5, "nan"), (7, "inf"), (9, "-inf")) for r in (0, 1)
        ]
        for line in s["series"]:
            assert 5 not in line["x"] and all(y == 2.0 for y in line["y"])


@pytest.mark.slow
def test_after_cursor_returns_only_new_points_while_the_trainer_logs(
    dashboard: Dashboard,
) -> None:
    """Polling `live` with `after=cursor` returns only points past the cursor; together they
    are every step exactly once, each the mean of both ranks' value (the step)."""
    status, s = dashboard.api("/api/series?run=uirun1&key=live&ranks=mean")
    assert status == 200
    xs = list(s["series"][0]["x"]) if s["series"] else []
    cursor, polls = s["cursor"], 0
    while len(xs) < 40:
        status, s = dashboard.api(f"/api/series?run=uirun1&key=live&after={cursor}")
        assert status == 200
        for line in s["series"]:
            assert all(x > cursor for x in line["x"]) and line["y"] == [float(x) for x in line["x"]]
            xs += line["x"]
        cursor, polls = s["cursor"], polls + 1
        assert polls < 600, "the live run's points stopped coming"
        time.sleep(0.1)
    assert xs == list(range(len(xs)))  # no gap, no point twice


@pytest.mark.slow
def test_bad_requests_get_json_errors(dashboard: Dashboard) -> None:
    """A width out of range, an unknown x axis or a missing parameter is a 400 with an error."""
    for path in (
        "/api/series?run=uirun1&key=loss&width=1",
        "/api/series?run=uirun1&key=loss&x=q",
        "/api/series?run=uirun1&key=loss&x=metric",
        "/api/media",
        "/api/table?run=uirun1",
        "/api/series?key=loss",
        "/api/metrics",
        "/api/nothing",
    ):
        status, body = dashboard.api(path)
        assert status in (400, 404) and body["error"], path


@pytest.mark.slow
def test_page_and_plotly_are_served_from_the_package(dashboard: Dashboard) -> None:
    """`/` is the page of traintape/ui/static and `/static/plotly.min.js` the charting library
    installed beside it (the vendored basic bundle, else the plotly package's), byte for byte:
    nothing comes from a CDN."""
    import plotly

    from traintape.ui.server import PLOTLY_BASIC, STATIC

    full = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    shipped = PLOTLY_BASIC if PLOTLY_BASIC.is_file() else full
    with urllib.request.urlopen(dashboard.url + "static/plotly.min.js", timeout=30) as r:
        assert r.read() == shipped.read_bytes()
        assert "javascript" in r.headers["content-type"]
    with urllib.request.urlopen(dashboard.url, timeout=30) as r:
        assert r.read() == (STATIC / "index.html").read_bytes()


@pytest.mark.slow
def test_sigterm_stops_the_server_cleanly(dashboard: Dashboard) -> None:
    """SIGTERM, as a service manager sends it, stops `traintape ui` with exit status 0."""
    proc, url = start_ui(dashboard.store)
    try:
        assert get(url + "api/runs")[0] == 200
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_loopback_server_refuses_a_foreign_host_header(dashboard: Dashboard) -> None:
    """Without a token the server answers only requests naming a loopback host, so a web page
    that points its own DNS name at 127.0.0.1 cannot read the store."""
    status, body, _ = get(dashboard.url + "api/runs", {"Host": "evil.example:8421"})
    assert status == 403 and "loopback" in body["error"]
    for host in ("localhost:8421", "127.0.0.2:8421", "[::1]:8421"):
        assert get(dashboard.url + "api/runs", {"Host": host})[0] == 200, host


@pytest.mark.slow
def test_remote_bind_needs_allow_remote_and_then_a_token(dashboard: Dashboard) -> None:
    """`--bind 0.0.0.0` is refused without --allow-remote; with it a token is printed and every
    request needs it: as ?token= (which sets a cookie), the cookie, or a Bearer header."""
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "traintape.cli",
            "ui",
            "--store",
            str(dashboard.store),
            "--port",
            "0",
            "--bind",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr
    proc, url = start_ui(dashboard.store, "--bind", "0.0.0.0", "--allow-remote")
    try:
        token = url.split("?token=", 1)[1]
        port = url.split(":")[2].split("/")[0]
        base = f"http://127.0.0.1:{port}"
        status, body, _ = get(base + "/api/runs")
        assert status == 401 and "token" in body["error"]
        assert get(base + "/api/runs?token=wrong")[0] == 401
        status, _, headers = get(f"{base}/api/runs?token={token}")
        assert status == 200
        cookie = headers["set-cookie"].split(";", 1)[0]
        assert get(base + "/api/runs", {"Cookie": cookie})[0] == 200
        assert get(base + "/api/runs", {"Authorization": f"Bearer {token}"})[0] == 200
    finally:
        assert "stopped" in stop_ui(proc)


def test_the_page_gets_the_basic_plotly_bundle_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`plotly_js()` serves the vendored scatter-only bundle `make install` puts in place, and
    the plotly package's full bundle when it is absent (pip users without npm)."""
    from traintape.ui import server

    basic = tmp_path / "plotly-basic.min.js"
    monkeypatch.setattr(server, "PLOTLY_BASIC", basic)
    full = server.plotly_js()
    assert full.name == "plotly.min.js" and full.parent.name == "package_data" and full.is_file()
    basic.write_text("/* basic */")
    assert server.plotly_js() == basic


def test_an_object_too_big_to_hold_is_checked_a_chunk_at_a_time_before_it_is_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object over WHOLE_MAX is hashed a chunk at a time and then streamed (not held whole):
    intact, it is sent chunk by chunk; changed behind the store's back, it is refused before a
    byte is sent; removed meanwhile, it is not found."""
    import hashlib

    from traintape.errors import ArtifactNotFoundError, ArtifactVerifyError
    from traintape.layout import StoreLayout
    from traintape.ui import media

    monkeypatch.setattr(media, "WHOLE_MAX", 1000)
    monkeypatch.setattr("traintape.read.artifacts._CHUNK", 4096)  # several chunks
    content = os.urandom(50_000)
    sha = hashlib.sha256(content).hexdigest()
    path = StoreLayout(tmp_path).artifact_object(sha)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    row = {"sha256": sha, "bytes": len(content), "name": "big.bin", "kind": None}
    monkeypatch.setattr(media, "_recorded", lambda con, run_id, sha256: row)
    found, where, data = media.object_bytes(None, tmp_path, "r", sha)  # type: ignore[arg-type]
    assert (found, where, data) == (row, path, None)
    assert b"".join(media.stream(where, chunk=4096)) == content
    path.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))  # same size, another hash
    with pytest.raises(ArtifactVerifyError, match="do not hash"):
        media.object_bytes(None, tmp_path, "r", sha)  # type: ignore[arg-type]
    path.unlink()
    with pytest.raises(ArtifactNotFoundError, match="gone"):
        media.object_bytes(None, tmp_path, "r", sha)  # type: ignore[arg-type]
