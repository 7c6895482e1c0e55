"""Run history: `traintape.read.history` and the CLI commands over it, on a store of five known runs.

One real collector serves the whole module; the runs are logged through real emitters, and every
expected value below is written out from the fixture's definition, then checked against the
store's own SQL where a second opinion is cheap.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, CollectorProcess, query, wait_for
from traintape import cli
from traintape.emitter import Emitter
from traintape.read import history
from traintape.schemas.events import CHECKPOINT

STEPS = 10

# run_id -> (name, project, ranks, config, tags, status, {(rank, step): val_loss})
RUNS: dict[str, dict[str, Any]] = {
    "aaa111": {
        "name": "alpha",
        "project": "vision",
        "ranks": 1,
        "config": {"lr": 0.1, "batch": 32, "opt": {"name": "sgd"}},
        "tags": ["baseline"],
        "status": "completed",
        "val_loss": {(0, 4): 0.5, (0, 9): 0.4},
    },
    "aab222": {
        "name": "beta",
        "project": "vision",
        "ranks": 1,
        "config": {"lr": 0.01, "batch": 32, "opt": {"name": "sgd"}},
        "tags": ["sweep"],
        "status": "completed",
        "val_loss": {(0, 4): 0.3, (0, 9): 0.35},
    },
    "bbb333": {
        "name": "gamma",
        "project": "vision",
        "ranks": 1,
        "config": {"lr": 0.001, "batch": 64, "opt": {"name": "adam"}},
        "tags": ["sweep"],
        "status": "failed",
        "val_loss": {(0, 4): 0.6, (0, 9): 0.2},
    },
    "ccc444": {
        "name": "delta",
        "project": "vision",
        "ranks": 2,
        "config": {"lr": 0.05, "batch": 64, "opt": {"name": "sgd"}},
        "tags": ["sweep", "ddp"],
        "status": "completed",
        # per step the mean across ranks: 0.45 at 4, 0.3 at 9 (and NaN on rank 1 at 7: ignored)
        "val_loss": {(0, 4): 0.4, (1, 4): 0.5, (0, 9): 0.25, (1, 9): 0.35},
    },
    "ddd555": {
        "name": "alpha",  # the same name as aaa111, in another project
        "project": "nlp",
        "ranks": 1,
        "config": {"lr": 0.2, "batch": 8},
        "tags": [],
        "status": "running",
        "val_loss": {(0, 4): 0.9},
    },
}
BEST_VAL = {"aaa111": (0.4, 9), "aab222": (0.3, 4), "bbb333": (0.2, 9), "ccc444": (0.3, 9)}


def loss(run_id: str, rank: int, step: int) -> float:
    return 1.0 / (step + 1) + 0.01 * rank + 0.001 * int(run_id[3])


def acc(step: int) -> float:
    return step / STEPS


def metric_rows() -> int:
    total = 0
    for spec in RUNS.values():
        total += spec["ranks"] * STEPS * 2 + len(spec["val_loss"])
    return total + 1  # the NaN of ccc444 rank 1


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Five runs: four finished in project `vision` (one over two ranks), one running in `nlp`."""
    store = tmp_path_factory.mktemp("history") / "store"
    proc = CollectorProcess(store).start()
    running: list[Emitter] = []
    try:
        for run_id, spec in RUNS.items():
            emitters = []
            for rank in range(spec["ranks"]):
                os.environ.update(RANK=str(rank), WORLD_SIZE=str(spec["ranks"]))
                try:
                    emitters.append(
                        Emitter(
                            spec["project"],
                            spec["name"],
                            spec["config"],
                            spec["tags"],
                            run_id=run_id,
                            store=store,
                        )
                    )
                finally:
                    del os.environ["RANK"], os.environ["WORLD_SIZE"]
            for rank, em in enumerate(emitters):
                for step in range(STEPS):
                    em.log({"loss": loss(run_id, rank, step), "acc": acc(step)}, step=step)
                    if (rank, step) in spec["val_loss"]:
                        em.log({"val_loss": spec["val_loss"][rank, step]}, step=step)
                if run_id == "ccc444" and rank == 1:
                    em.log({"val_loss": math.nan}, step=7)
            if run_id == "ccc444":
                emitters[0].log_params({"warmup": 100, "lr": 0.05})
                emitters[0]._emit(
                    CHECKPOINT,
                    9,
                    {
                        "path": "/ckpt/step9.pt",
                        "action": "saved",
                        "bytes": 1234,
                        "sha256": "ab" * 32,
                        "metrics": {"val_loss": 0.3},
                        "is_best": True,
                        "monitor": "val_loss",  # as the writer records it: best by val_loss
                        "mode": "min",
                    },
                )
            for em in emitters:
                if spec["status"] == "running":
                    em._flush(True)
                    running.append(em)
                else:
                    em.finish(spec["status"])
        wait_for(store, "SELECT count(*) FROM metrics", metric_rows())
        wait_for(store, "SELECT count(*) FROM events WHERE kind = 'run_end'", 5)
        wait_for(store, "SELECT count(*) FROM checkpoints", 1)
        yield store
    finally:
        for em in running:
            em.finish()
        proc.close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table(out: str) -> list[list[str]]:
    """The rows of a `print_rows` table (header first), split on runs of 2+ spaces."""
    import re

    lines = out.splitlines()
    sep = next(i for i, ln in enumerate(lines) if ln and set(ln.replace(" ", "")) == {"-"})
    body = [lines[sep - 1]]
    for ln in lines[sep + 1 :]:
        if not ln.strip() or "  " not in ln:  # a blank line or a sentence ends the table
            break
        body.append(ln)
    return [re.split(r"\s{2,}", ln.strip()) for ln in body]


# -- naming runs ---------------------------------------------------------------------------


def test_resolve_run_by_id_prefix_and_name(fleet: Path) -> None:
    """A full id, a unique id prefix and a unique name each name their run."""
    import traintape

    con = traintape.connect(fleet)
    assert history.resolve_run(con, "aab222") == "aab222"
    assert history.resolve_run(con, "aaa") == "aaa111"
    assert history.resolve_run(con, "beta") == "aab222"
    assert history.resolve_run(con, "ccc") == "ccc444"


def test_resolve_run_ambiguous_lists_candidates(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ambiguous prefix or name is an error that lists every candidate; an unknown one says so."""
    import traintape

    con = traintape.connect(fleet)
    with pytest.raises(history.AmbiguousRunError) as info:
        history.resolve_run(con, "aa")
    assert {c[0] for c in info.value.candidates} == {"aaa111", "aab222"}
    code, out, err = run_cli(capsys, "show", "alpha", "--store", str(fleet))
    assert code == 1 and out == ""
    assert "aaa111" in err and "ddd555" in err and "2 runs" in err
    code, _, err = run_cli(capsys, "show", "zzz", "--store", str(fleet))
    assert code == 1 and "no run" in err


# -- views ---------------------------------------------------------------------------------


def test_metrics_by_step_mean_min_max_count_across_ranks(fleet: Path) -> None:
    """metrics_by_step gives, per (run, step, key), the mean, min, max and count over ranks."""
    got = query(
        fleet,
        "SELECT step, mean, min, max, count FROM metrics_by_step "
        "WHERE run_id = 'ccc444' AND key = 'loss' ORDER BY step",
    )
    assert len(got) == STEPS
    for step, mean, lo, hi, count in got:
        values = [loss("ccc444", r, step) for r in range(2)]
        assert count == 2
        assert lo == min(values) and hi == max(values)
        assert mean == pytest.approx(sum(values) / 2, rel=1e-12)
    one = query(
        fleet,
        "SELECT count, mean FROM metrics_by_step WHERE run_id = 'aaa111' AND key = 'loss' AND step = 3",
    )
    assert one == [(1, loss("aaa111", 0, 3))]


def test_runs_command_filters_by_project_tag_status(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`traintape runs` lists every run, and --project, --tag and --status narrow it down."""

    def listed(*extra: str) -> set[str]:
        code, out, _ = run_cli(capsys, "runs", "--store", str(fleet), "--format", "json", *extra)
        assert code == 0
        return {r["run_id"] for r in json.loads(out)}

    assert listed() == set(RUNS)
    assert listed("--project", "nlp") == {"ddd555"}
    assert listed("--tag", "sweep") == {"aab222", "bbb333", "ccc444"}
    assert listed("--status", "failed") == {"bbb333"}
    assert listed("--status", "running") == {"ddd555"}
    assert listed("--project", "vision", "--tag", "ddp") == {"ccc444"}
    code, out, _ = run_cli(capsys, "runs", "--store", str(fleet))
    rows = table(out)
    assert rows[0][:4] == ["run_id", "project", "name", "status"]
    assert {r[0] for r in rows[1:]} == set(RUNS)
    code, out, _ = run_cli(capsys, "runs", "--store", str(fleet), "--format", "json")
    import socket

    for run in json.loads(out):  # the environment, at a glance
        assert run["host"] == socket.gethostname() and "commit" in run


# -- show ----------------------------------------------------------------------------------


def test_show_lists_config_params_environment_metrics_checkpoints(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`show` gives the run's config, later params, environment, last/best metrics and checkpoints."""
    code, out, _ = run_cli(capsys, "show", "ccc", "--store", str(fleet), "--format", "json")
    assert code == 0
    info = json.loads(out)
    assert info["run"]["run_id"] == "ccc444" and info["run"]["name"] == "delta"
    assert info["run"]["ranks"] == 2 and info["run"]["status"] == "completed"
    assert info["config"] == {"lr": 0.05, "batch": 64, "opt.name": "sgd"}
    assert info["params"] == {"warmup": 100}  # lr was logged again, unchanged
    assert (
        info["environment"]["host"]
        == query(fleet, "SELECT host FROM runs WHERE run_id = 'ccc444'")[0][0]
    )
    metrics = {m["key"]: m for m in info["metrics"]}
    assert set(metrics) == {"acc", "loss", "val_loss"}
    assert metrics["loss"]["last"] == pytest.approx(
        (loss("ccc444", 0, 9) + loss("ccc444", 1, 9)) / 2
    )
    assert metrics["loss"]["best"] == metrics["loss"]["last"] and metrics["loss"]["mode"] == "min"
    assert metrics["acc"]["mode"] == "max" and metrics["acc"]["best"] == acc(9)
    assert (
        metrics["val_loss"]["best"] == pytest.approx(0.3) and metrics["val_loss"]["best_step"] == 9
    )
    assert metrics["val_loss"]["steps"] == 3  # steps 4, 7 (NaN) and 9
    [ckpt] = info["checkpoints"]
    assert ckpt["path"] == "/ckpt/step9.pt" and ckpt["bytes"] == 1234 and ckpt["is_best"]

    code, out, _ = run_cli(capsys, "show", "delta", "--store", str(fleet))
    assert code == 0
    for text in (
        "config",
        "opt.name",
        "warmup",
        "environment",
        "metrics",
        "checkpoints",
        "/ckpt/step9.pt",
    ):
        assert text in out
    val = next(r for r in table(out.split("\nmetrics")[1]) if r[0] == "val_loss")
    assert val[1:] == ["3", "9", "0.3", "0.3", "9", "min"]


# -- compare -------------------------------------------------------------------------------


def test_compare_shows_params_that_differ_and_metrics_side_by_side(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`compare` lists only the params that differ, and each metric's last and best per run."""
    code, out, _ = run_cli(
        capsys, "compare", "aaa", "beta", "gamma", "--store", str(fleet), "--format", "json"
    )
    assert code == 0
    got = json.loads(out)
    assert got["runs"] == {"alpha": "aaa111", "beta": "aab222", "gamma": "bbb333"}
    assert got["params"] == {
        "lr": {"alpha": 0.1, "beta": 0.01, "gamma": 0.001},
        "batch": {"alpha": 32, "beta": 32, "gamma": 64},
        "opt.name": {"alpha": "sgd", "beta": "sgd", "gamma": "adam"},
    }
    assert got["metrics"]["val_loss best (min)"] == {"alpha": 0.4, "beta": 0.3, "gamma": 0.2}
    assert got["metrics"]["val_loss last"] == {"alpha": 0.4, "beta": 0.35, "gamma": 0.2}
    assert got["metrics"]["acc best (max)"] == {"alpha": 0.9, "beta": 0.9, "gamma": 0.9}

    code, out, _ = run_cli(capsys, "compare", "aaa", "beta", "--store", str(fleet))
    assert code == 0
    params = table(out.split("params that differ")[1])
    assert params == [["param", "alpha", "beta"], ["lr", "0.1", "0.01"]]
    assert "(1 of 3)" in out


# -- best and importance -------------------------------------------------------------------


def test_best_ranks_runs_and_names_the_best_last(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`best --metric val_loss --mode min` ranks runs by their best value; the last line names the best."""
    code, out, _ = run_cli(
        capsys,
        "best",
        "--metric",
        "val_loss",
        "--mode",
        "min",
        "--project",
        "vision",
        "--store",
        str(fleet),
    )
    assert code == 0
    last = out.strip().splitlines()[-1]
    assert "bbb333" in last and "gamma" in last and "val_loss=0.2" in last and "step 9" in last
    rows = table(out)
    assert rows[0][0] == "position"  # not `rank`, which reads as a distributed rank
    assert [r[1] for r in rows[1:]] == ["bbb333", "aab222", "ccc444", "aaa111"]
    for r in rows[1:]:
        value, step = BEST_VAL[r[1]]
        assert float(r[5]) == pytest.approx(value) and int(r[6]) == step

    code, out, _ = run_cli(
        capsys, "best", "--metric", "acc", "--mode", "max", "--tag", "ddp", "--store", str(fleet)
    )
    assert code == 0 and "ccc444" in out.strip().splitlines()[-1]
    # The store's own answer agrees (ccc444 by its rank mean).
    sql = """SELECT run_id FROM metrics_by_step WHERE key = 'val_loss' AND isfinite(mean)
             AND run_id != 'ddd555' GROUP BY run_id ORDER BY min(mean) LIMIT 1"""
    assert query(fleet, sql) == [("bbb333",)]


def test_best_unknown_metric_is_an_error(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`best` on a metric no run has fails and lists the metrics there are."""
    code, out, err = run_cli(capsys, "best", "--metric", "nope", "--store", str(fleet))
    assert code == 1 and "acc, loss, val_loss" in err


def test_plot_unknown_metric_lists_the_known_ones(
    fleet: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`plot` on a metric no run has fails and lists the metrics there are, as `best` does."""
    out = tmp_path / "none.png"
    code, _, err = run_cli(
        capsys, "plot", "aaa", "--metric", "nope", "-o", str(out), "--store", str(fleet)
    )
    assert code == 1 and "'nope'" in err and "acc, loss, val_loss" in err and not out.exists()


def _spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(v)
        return [sum(i + 1 for i, o in enumerate(order) if o == x) / order.count(x) for x in v]

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def test_importance_correlates_numeric_params_with_best_metric(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`importance` gives each numeric param's Pearson and Spearman correlation with the best value."""
    code, out, _ = run_cli(
        capsys,
        "importance",
        "--metric",
        "val_loss",
        "--project",
        "vision",
        "--store",
        str(fleet),
        "--format",
        "json",
    )
    assert code == 0
    got = {r["param"]: r for r in json.loads(out)}
    assert set(got) == {"lr", "batch"}  # opt.name is not a number; warmup is in one run only
    ids = ["aaa111", "aab222", "bbb333", "ccc444"]
    best = [BEST_VAL[r][0] for r in ids]
    lrs = [RUNS[r]["config"]["lr"] for r in ids]
    assert got["lr"]["runs"] == 4 and got["lr"]["values"] == 4
    assert got["lr"]["spearman"] == pytest.approx(_spearman(lrs, best))
    mx, my = sum(lrs) / 4, sum(best) / 4
    pearson = sum((a - mx) * (b - my) for a, b in zip(lrs, best)) / math.sqrt(
        sum((a - mx) ** 2 for a in lrs) * sum((b - my) ** 2 for b in best)
    )
    assert got["lr"]["pearson"] == pytest.approx(pearson)
    assert got["lr"]["better"] == "lower"  # lower lr went with lower val_loss here
    batches = [RUNS[r]["config"]["batch"] for r in ids]
    assert got["batch"]["spearman"] == pytest.approx(_spearman(batches, best))


# -- plot ----------------------------------------------------------------------------------


def test_plot_writes_png_of_the_size_with_one_line_per_run(
    fleet: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`plot` writes a PNG of the asked size; its figure has one line per run per metric panel."""
    import matplotlib.image

    from traintape.read import plot

    out = tmp_path / "curves.png"
    code, text, _ = run_cli(
        capsys,
        "plot",
        "aaa",
        "beta",
        "ccc",
        "--metric",
        "loss",
        "--metric",
        "acc",
        "--smooth",
        "3",
        "--size",
        "900x500",
        "-o",
        str(out),
        "--store",
        str(fleet),
    )
    assert code == 0 and "6 lines" in text
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (500, 900)

    import traintape

    con = traintape.connect(fleet)
    curves = history.curves(con, ["aaa111", "aab222", "ccc444"], ["loss", "acc"])
    fig = plot.figure(curves, size=(900, 500))
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["loss", "acc"]
    assert [len(ax.get_lines()) for ax in axes] == [3, 3]
    delta = next(ln for ln in axes[0].get_lines() if ln.get_label() == "delta")
    assert list(delta.get_xdata()) == list(range(STEPS))
    assert list(delta.get_ydata()) == pytest.approx(
        [(loss("ccc444", 0, s) + loss("ccc444", 1, s)) / 2 for s in range(STEPS)]
    )
    per_rank = plot.figure(history.curves(con, ["ccc444"], ["loss"], per_rank=True))
    assert [ln.get_label() for ln in per_rank.get_axes()[0].get_lines()] == [
        "delta rank 0",
        "delta rank 1",
    ]


def test_smooth_is_a_trailing_mean_that_skips_nan() -> None:
    """--smooth K averages the last K finite points; NaN points stay NaN and do not spread."""
    from traintape.read.plot import smooth

    got = smooth([1.0, 3.0, math.nan, 5.0, 7.0], 2)
    assert got[:2] == [1.0, 2.0] and math.isnan(got[2]) and got[3:] == [4.0, 6.0]


# -- export --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_writes_every_row_of_the_run(
    fleet: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, fmt: str
) -> None:
    """`export` writes the run's metrics, params, events, checkpoints and system rows, all of them."""
    out = tmp_path / "exp"
    code, text, _ = run_cli(
        capsys, "export", "delta", "--format", fmt, "-o", str(out), "--store", str(fleet)
    )
    assert code == 0
    for name in ("metrics", "params", "events", "checkpoints", "system"):
        assert (out / f"{name}.{fmt}").exists()
    if fmt == "parquet":
        metrics = pq.read_table(out / "metrics.parquet").to_pylist()
    else:
        with open(out / "metrics.csv") as f:
            metrics = list(csv.DictReader(f))
    assert len(metrics) == 2 * STEPS * 2 + 4 + 1
    stored = query(fleet, "SELECT count(*) FROM metrics WHERE run_id = 'ccc444'")[0][0]
    assert len(metrics) == stored
    first = metrics[0]
    assert str(first["rank"]) == "0" and str(first["step"]) == "0"
    assert {r["key"] for r in metrics} == {"loss", "acc", "val_loss"}
    loss_r1 = [float(r["value"]) for r in metrics if r["key"] == "loss" and str(r["rank"]) == "1"]
    assert loss_r1 == [loss("ccc444", 1, s) for s in range(STEPS)]
    run = json.loads((out / "run.json").read_text())
    assert run["run"]["run_id"] == "ccc444" and run["config"]["batch"] == 64
    counts = {r[0]: int(r[2]) for r in table(text)[1:]}
    assert counts["metrics"] == stored and counts["checkpoints"] == 1


# -- tail ----------------------------------------------------------------------------------


def test_tail_once_shows_the_latest_values(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tail --once` prints the run's latest value of each metric, then exits."""
    code, out, _ = run_cli(capsys, "tail", "aab", "--once", "--store", str(fleet))
    assert code == 0
    assert "aab222" in out and "beta" in out and "completed" in out
    rows = {r[0]: r for r in table(out)[1:]}
    assert rows["val_loss"][1:3] == ["9", "0.35"]
    assert rows["loss"][1:3] == ["9", f"{loss('aab222', 0, 9):.6g}"]


def test_tail_follows_a_live_run_and_exits_when_it_ends(
    store: Path, collector: CollectorProcess
) -> None:
    """`tail RUN` refreshes while the run trains and exits by itself once its run_end is stored."""
    from traintape import emitter

    run = emitter.init(project="live", name="live-run", store=store)
    emitter.log({"loss": 1.0}, step=0)
    wait_for(store, "SELECT count(*) FROM metrics", 1)
    shown = store.parent / "tail.out"
    with shown.open("w") as stream:  # each frame is flushed: the test reads them so far
        tail = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "traintape.cli",
                "tail",
                run.run_id,
                "--store",
                str(store),
                "--interval",
                "0.2",
                "--seconds",
                "120",
            ],
            cwd=REPO,
            stdout=stream,
            stderr=subprocess.PIPE,
            text=True,
        )

    def frames_shown(at_least: int) -> None:
        deadline = time.monotonic() + 30
        while shown.read_text().count(f"run {run.run_id}  live-run") < at_least:
            assert tail.poll() is None, tail.communicate()[1]
            assert time.monotonic() < deadline, f"tail showed fewer than {at_least} frames"
            time.sleep(0.05)

    try:
        frames_shown(1)  # following the run
        for step in range(1, 6):
            emitter.log({"loss": 1.0 / (step + 1)}, step=step)
        wait_for(store, "SELECT max(step) FROM metrics", 5)
        frames_shown(shown.read_text().count(f"run {run.run_id}  live-run") + 1)  # refreshed
        assert tail.poll() is None  # still following: the run has not ended
        emitter.finish()
        _, err = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tail.returncode == 0, err
    out = shown.read_text()
    frames = out.split(f"run {run.run_id}  live-run")
    assert len(frames) >= 3  # refreshed while running, and a final frame
    assert "running" in frames[1]
    assert out.rstrip().endswith(f"run {run.run_id} ended: completed")
    last = {r[0]: r for r in table(frames[-1])[1:]}
    assert last["loss"][1:3] == ["5", f"{1 / 6:.6g}"]


def test_history_commands_need_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every history command fails cleanly, naming the path, when there is no store."""
    missing = tmp_path / "nowhere"
    for argv in (
        ["show", "x"],
        ["compare", "x", "y"],
        ["best", "--metric", "m"],
        ["importance", "--metric", "m"],
        ["plot", "x", "--metric", "m"],
        ["export", "x"],
        ["tail", "--once"],
    ):
        code, _, err = run_cli(capsys, *argv, "--store", str(missing))
        assert code == 1 and "no traintape store" in err, argv


def test_store_defaults_to_the_environment(
    fleet: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --store the commands read $TRAINTAPE_STORE."""
    monkeypatch.setenv("TRAINTAPE_STORE", str(fleet))
    code, out, _ = run_cli(capsys, "best", "--metric", "val_loss", "--project", "vision")
    assert code == 0 and "bbb333" in out.strip().splitlines()[-1]


def test_answers_agree_on_a_plain_connection(fleet: Path) -> None:
    """On a DuckDB connection with the views but no store folder known, the per-run questions
    read the views instead of the run's folder, and give the same answers."""
    import duckdb

    import traintape
    from traintape.read.store import view_sql

    plain = duckdb.connect()
    for sql in view_sql(fleet.resolve()):
        plain.execute(sql)
    con = traintape.connect(fleet)
    ids = ["aaa111", "ccc444"]
    assert history.show(plain, "ccc444") == history.show(con, "ccc444")
    assert history.compare(plain, ids) == history.compare(con, ids)
    for per_rank in (False, True):
        got = history.curves(plain, ids, ["loss", "val_loss"], per_rank=per_rank)
        want = history.curves(con, ids, ["loss", "val_loss"], per_rank=per_rank)
        assert repr(got) == repr(want)  # repr: NaN equals NaN
    assert history.latest(plain, "aab222") == history.latest(con, "aab222")
    assert history.resolve_run(plain, "aab222") == "aab222"


def test_tail_once_on_an_empty_store_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tail --once` before any run has started exits 1 with a message; `--seconds` bounds the
    wait for one."""
    from traintape.collector.materializer import ensure_empty_tables

    ensure_empty_tables(tmp_path)
    code, out, err = run_cli(capsys, "tail", "--once", "--store", str(tmp_path))
    assert code == 1 and "no runs" in err
    code, out, err = run_cli(
        capsys, "tail", "--seconds", "0.3", "--interval", "0.1", "--store", str(tmp_path)
    )
    assert code == 0 and out == ""


def test_views_scoped_to_some_runs_answer_as_the_whole_store_does(fleet: Path) -> None:
    """`connect(store, runs=[...])` (what `show` uses, to open one run's files instead of every
    run's) holds those runs only, with the same rows the whole store's views give for them."""
    import traintape

    whole, scoped = traintape.connect(fleet), traintape.connect(fleet, runs=["ccc444", "aab222"])
    for view in ("runs", "checkpoints", "metrics", "params", "events", "attempts"):
        ids = {r[0] for r in scoped.execute(f"SELECT DISTINCT run_id FROM {view}").fetchall()}
        assert ids <= {"ccc444", "aab222"}, view
        for run_id in ("ccc444", "aab222"):
            sql = f"SELECT * FROM {view} WHERE run_id = ? ORDER BY ALL"
            got = scoped.execute(sql, [run_id]).fetchall()
            want = whole.execute(sql, [run_id]).fetchall()
            assert repr(got) == repr(want), (view, run_id)  # repr: NaN equals NaN
    assert history.show(whole, "ccc444")["checkpoints"]  # through the scoped views
