"""Tensor values and training health: CPU paths here; CUDA paths skip without a GPU."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import traintape
from tests.conftest import REPO, CollectorProcess, query, torchrun_argv, wait_for
from traintape import emitter
from traintape.emitter.deferred import DeferredValues, _Pending, _Slot
from traintape.schemas.events import METRICS, TEXT

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
pytestmark = pytest.mark.share_collector  # each test reads back only its own run


def test_cpu_tensors_numpy_scalars_and_numbers_land_with_values_and_steps(
    store: Path, collector: CollectorProcess
) -> None:
    """Mixed value types in one call arrive with the right values and steps."""
    run = emitter.init(project="t", store=store)
    for step in range(3):
        emitter.log(
            {
                "t32": torch.tensor(0.5 + step, dtype=torch.float32),
                "t64": torch.tensor([1.25 * step], dtype=torch.float64),
                "bf16": torch.tensor(2.0, dtype=torch.bfloat16),
                "grad": torch.tensor(3.0, requires_grad=True) * 2,
                "np": np.float32(step),
                "i64": torch.tensor(step, dtype=torch.int64),
                "n": step,
            },
            step=10 + step,
        )
    with pytest.raises(TypeError, match="'vec'"):
        emitter.log({"vec": torch.ones(3), "ok": 1.0})
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 21)
    rows = query(
        store,
        "SELECT step, key, value FROM metrics WHERE run_id = ? ORDER BY step, key",
        run.run_id,
    )
    expected = sorted(
        (10 + s, k, v)
        for s in range(3)
        for k, v in {
            "t32": 0.5 + s,
            "t64": 1.25 * s,
            "bf16": 2.0,
            "grad": 6.0,
            "np": float(s),
            "i64": float(s),
            "n": float(s),
        }.items()
    )
    assert rows == expected


class _FakeEvent:
    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True


def test_deferred_values_emit_in_order_once_ready_with_their_step_and_time() -> None:
    """Entries wait for their event, are emitted in order with the log call's step and ts."""
    emitted: list[tuple[int, int | None, dict[str, float], int]] = []
    dv = DeferredValues(lambda kind, step, body, ts: emitted.append((kind, step, body, ts)))
    events = [_FakeEvent() for _ in range(3)]
    key = (1, torch.float32, torch.device("cpu"))
    for i, ev in enumerate(events):
        host = torch.tensor([float(i)], dtype=torch.float32)
        slot = _Slot(host, ev, key)
        dv._queue.append(_Pending(100 + i, i, METRICS, lambda v: {"x": v[0]}, slot, host))
    assert dv.poll() == 0
    events[1].done = True
    assert dv.poll() == 0  # the head is not ready: order is kept
    events[0].done = True
    assert dv.poll() == 2
    assert emitted == [(METRICS, 0, {"x": 0.0}, 100), (METRICS, 1, {"x": 1.0}, 101)]
    assert dv.poll(wait=True) == 1 and emitted[-1] == (METRICS, 2, {"x": 2.0}, 102)
    assert len(dv) == 0
    assert len(dv._free[key]) == 3  # each buffer and event is reused once read


def test_values_logged_after_a_gpu_value_wait_behind_it(
    store: Path, collector: CollectorProcess
) -> None:
    """Events leave in the order of the log() calls: plain values logged while a GPU value is
    on its way are emitted after it (W&B drops a row below its last step)."""
    run = emitter.init(project="t", store=store)
    dv = run._deferred
    event = _FakeEvent()
    host = torch.tensor([0.25], dtype=torch.float32)
    slot = _Slot(host, event, (1, torch.float32, torch.device("cpu")))
    now = time.time_ns()
    dv._queue.append(_Pending(now, 4, METRICS, lambda v: {"loss": v[0]}, slot, host))
    emitter.log({"lr": 0.1}, step=5)
    emitter.log_text("note", "warmup done", step=5)
    emitter.log({"lr": 0.2, "tokens": np.int64(7)}, step=6)  # the slow path too
    assert not [e for e in run._pending if e[0] in (METRICS, TEXT)] and len(dv) == 4
    event.done = True
    emitter.log({"lr": 0.3}, step=7)
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 5)
    rows = query(
        store, "SELECT step, key FROM metrics WHERE run_id = ? ORDER BY seq, key", run.run_id
    )
    assert rows == [(4, "loss"), (5, "lr"), (6, "lr"), (6, "tokens"), (7, "lr")]
    text_seq = query(store, "SELECT seq FROM events WHERE run_id = ? AND kind = 'text'", run.run_id)
    seqs = dict(
        query(
            store,
            "SELECT key, max(seq) FROM metrics WHERE run_id = ? AND step <= 5 GROUP BY key",
            run.run_id,
        )
    )
    assert seqs["loss"] < seqs["lr"] < text_seq[0][0]  # in call order: loss, lr, text


def test_values_stop_waiting_behind_a_gpu_value_that_is_overdue(
    store: Path, collector: CollectorProcess
) -> None:
    """A GPU value pending longer than HOLD_S (a hung device) no longer holds back what is
    logged after it: those go out, in their own order; the GPU value follows when it lands."""
    from traintape.emitter import deferred

    run = emitter.init(project="t", store=store)
    dv = run._deferred
    event = _FakeEvent()
    host = torch.tensor([0.5], dtype=torch.float32)
    slot = _Slot(host, event, (1, torch.float32, torch.device("cpu")))
    then = time.time_ns() - int(deferred.HOLD_S * 1e9) + int(0.3e9)  # overdue in 0.3 s
    dv._queue.append(_Pending(then, 1, METRICS, lambda v: {"loss": v[0]}, slot, host))
    emitter.log({"lr": 0.1}, step=2)  # not overdue yet: waits behind it
    assert len([e for e in run._pending if e[0] == METRICS]) == 0
    time.sleep(0.4)  # the scenario: time passes until the GPU value is overdue
    run._deferred.poll()  # as the keeper thread does
    emitter.log({"lr": 0.2}, step=3)  # overdue now: straight out, after step 2's
    assert dv._queue[0].slot is slot  # only the GPU value still waits; step 2 went out
    assert [p.done for p in dv._queue] == [False] + [True] * (len(dv) - 1)
    event.done = True
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 3)
    rows = query(store, "SELECT step, key FROM metrics WHERE run_id = ? ORDER BY seq", run.run_id)
    assert rows == [(2, "lr"), (3, "lr"), (1, "loss")]


class _BrokenEvent:
    """An event of a device that hit a CUDA error: every call raises, as CUDA's errors stick."""

    def query(self) -> bool:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    synchronize = query


def test_a_device_error_loses_only_the_values_on_the_gpu(
    store: Path, collector: CollectorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """After a CUDA error the values still on the GPU are dropped (said once, counted in the
    report); plain values, the run's end and its failed status are still recorded."""
    run = emitter.init(project="t", store=store)
    dv = run._deferred
    host = torch.tensor([1.0])
    for step in (0, 1):
        slot = _Slot(host, _BrokenEvent(), (1, torch.float32, torch.device("cpu")))
        ts = time.time_ns()
        dv._queue.append(_Pending(ts, step, METRICS, lambda v: {"loss": v[0]}, slot, host))
    emitter.log({"lr": 0.1}, step=2)  # queued behind them, kept
    run.log({"lr": 0.2}, step=3)
    report = emitter.finish(status="failed")
    assert report.unreadable == 2 and not report.complete
    assert caplog.text.count("values still on the GPU cannot be read") == 1
    wait_for(
        store, f"SELECT count(*) FROM runs WHERE run_id = '{run.run_id}' AND ended IS NOT NULL", 1
    )
    assert query(
        store, "SELECT step, key FROM metrics WHERE run_id = ? ORDER BY step", run.run_id
    ) == [(2, "lr"), (3, "lr")]
    assert query(store, "SELECT status FROM runs WHERE run_id = ?", run.run_id) == [("failed",)]


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def test_watch_logs_global_norm_and_nonfinite_counts(
    store: Path, collector: CollectorProcess
) -> None:
    """watch() logs the same global gradient norm torch computes, and counts NaN/Inf."""
    run = emitter.init(project="t", store=store)
    model = _tiny_model()
    emitter.watch(model, every=2, per_layer=True, histograms=True)
    x = torch.randn(16, 4)
    expected = {}
    for step in range(4):
        model.zero_grad()
        loss = model(x).pow(2).mean()
        if step == 3:
            loss = loss * torch.tensor(math.nan)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        expected[step] = torch.linalg.vector_norm(
            torch.stack([g.double().norm() for g in grads])
        ).item()
        emitter.log({"loss": loss.detach()}, step=step)
    emitter.finish()
    wait_for(
        store,
        f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}' AND key LIKE 'grad%'",
        2 * (2 + 4),
    )
    rows = query(
        store,
        "SELECT step, key, value FROM metrics WHERE run_id = ? AND key IN ('grad/global_norm', 'grad/nonfinite') ORDER BY step, key",
        run.run_id,
    )
    assert [r[:2] for r in rows] == [  # every=2: the 2nd and 4th backward passes
        (1, "grad/global_norm"),
        (1, "grad/nonfinite"),
        (3, "grad/global_norm"),
        (3, "grad/nonfinite"),
    ]
    assert rows[0][2] == pytest.approx(expected[1], rel=1e-6)  # norms in the grads dtype
    assert rows[1][2] == 0.0
    assert math.isnan(rows[2][2])
    assert rows[3][2] == sum(p.numel() for p in model.parameters())
    per_layer = query(
        store,
        "SELECT count(DISTINCT key) FROM metrics WHERE run_id = ? AND key LIKE 'grad_norm/%'",
        run.run_id,
    )
    assert per_layer == [(4,)]
    hist = query(
        store,
        "SELECT count(*), min(json_array_length(body->'counts')) FROM events WHERE run_id = ? AND kind = 'histogram'",
        run.run_id,
    )
    assert hist == [(2 * 8, 64)]


def test_watch_keeps_logging_after_a_backward_pass_that_raised(
    store: Path, collector: CollectorProcess
) -> None:
    """A backward pass that fails midway runs no callbacks; the next passes are still watched."""
    run = emitter.init(project="t", store=store)
    model = _tiny_model()
    emitter.watch(model, every=1)
    x = torch.randn(16, 4)
    hidden = model[1](model[0](x))
    hidden.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        model[2](hidden).pow(2).mean().backward()  # the last layer's grads came first
    for step in range(2):
        model.zero_grad()
        model(x).pow(2).mean().backward()
        emitter.log({"loss": 0.0}, step=step)
    emitter.finish()
    wait_for(
        store,
        "SELECT list(step ORDER BY step) FROM metrics "
        f"WHERE run_id = '{run.run_id}' AND key = 'grad/global_norm'",
        [0, 1],
    )


def test_a_failing_watcher_stops_itself_and_training_goes_on(
    store: Path,
    collector: CollectorProcess,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception in watch()'s statistics is reported once, not raised from backward()."""
    emitter.init(project="t", store=store)
    model = _tiny_model()
    watcher = emitter.watch(model, every=1)

    def broken() -> None:
        raise RuntimeError("no norms today")

    monkeypatch.setattr(watcher, "log_stats", broken)
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()  # raises nothing
    emitter.finish()
    assert isinstance(watcher.error, RuntimeError) and watcher.backward_passes == 1
    assert caplog.text.count("watch() stopped: RuntimeError: no norms today") == 1


def test_watch_under_ddp_reads_gradients_after_the_all_reduce(
    store: Path, collector: CollectorProcess
) -> None:
    """2 ranks, different data: watch()'s norms are those of the averaged gradients, equal on
    both ranks and to what the training code reads after backward()."""
    subprocess.run(
        torchrun_argv(REPO / "tests" / "workers" / "ddp_watch.py", "--store", store),
        cwd=REPO,
        env={**os.environ, "TRAINTAPE_RUN_ID": "ddp-watch", "OMP_NUM_THREADS": "1"},
        check=True,
        timeout=300,
        capture_output=True,
    )
    wait_for(
        store,
        "SELECT count(*) FROM metrics WHERE run_id = 'ddp-watch' AND key IN "
        "('grad/global_norm', 'expected/global_norm')",
        2 * 2 * 4,
    )
    rows = query(
        store,
        "SELECT rank, step, max(value) FILTER (key = 'grad/global_norm'), "
        "max(value) FILTER (key = 'expected/global_norm') FROM metrics "
        "WHERE run_id = 'ddp-watch' GROUP BY ALL ORDER BY step, rank",
    )
    assert [r[:2] for r in rows] == [(rank, step) for step in range(4) for rank in range(2)]
    for rank, step, watched, expected in rows:
        assert watched == pytest.approx(expected, rel=1e-6), (rank, step)  # float32 norms
    for step in range(4):
        assert rows[2 * step][2] == pytest.approx(rows[2 * step + 1][2], rel=1e-9)


@cuda
def test_cuda_loss_every_step_never_synchronises(store: Path, collector: CollectorProcess) -> None:
    """With torch's sync debug mode set to error, logging a CUDA loss every step raises nothing."""
    run = emitter.init(project="t", store=store)
    model = _tiny_model().cuda()
    emitter.watch(model, every=1, histograms=True)
    x = torch.randn(64, 4, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(200):
            loss = model(x).pow(2).mean()
            loss.backward()
            emitter.log({"loss": loss.detach()}, step=step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    emitter.finish()
    wait_for(
        store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}' AND key = 'loss'", 200
    )


@cuda
def test_cuda_images_are_logged_without_a_sync_and_stored_as_they_were_at_the_call(
    store: Path, collector: CollectorProcess
) -> None:
    """With torch's sync debug mode set to error, `log()` of a CUDA image (uint8, float, a
    strided view) every step raises nothing; a write queued after the call does not reach what
    is stored; a float image out of [0, 1] is refused on the artifact thread, not at the call."""
    from PIL import Image as PILImage

    run = emitter.init(project="t", store=store)
    frames = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(20):
            frames.add_(1)  # in place, queued on the stream after the copy of the last call
            emitter.log(
                {
                    "u8": traintape.Image(frames),
                    "float": traintape.Image(frames.float() / 255.0),
                    "view": traintape.Image(frames[:, ::2, ::3]),
                    "loss": float(step),
                },
                step=step,
            )
        emitter.log({"bad": traintape.Image(torch.full((3, 4, 4), 2.0, device="cuda"))}, step=20)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    start = frames.cpu().numpy().astype(np.int64) - 20
    expected = [((start + 1 + s) % 256).astype(np.uint8) for s in range(20)]
    emitter.finish()
    mine = f"run_id = '{run.run_id}'"
    wait_for(store, f"SELECT count(*) FROM media WHERE {mine}", 60)
    assert query(store, f"SELECT count(*) FROM media WHERE {mine} AND name = 'bad'") == [(0,)]
    paths = dict(query(store, f"SELECT step, path FROM media WHERE {mine} AND name = 'u8'"))
    for step, chw in enumerate(expected):
        with PILImage.open(store / paths[step]) as stored:
            assert np.array_equal(np.array(stored), chw.transpose(1, 2, 0)), step


@pytest.mark.slow
def test_collector_samples_cpu_and_ram_without_a_driver_and_joins_runs(tmp_path: Path) -> None:
    """No NVIDIA driver here: the collector still serves, and stores CPU/RAM samples for the run."""
    store = tmp_path / "store"
    coll = CollectorProcess(store, "--system-interval", "0.2").start()
    try:
        run = emitter.init(project="sys", store=store)
        mine = f"run_id = '{run.run_id}' AND device = 'cpu'"
        wait_for(store, f"SELECT count(DISTINCT key) > 2 FROM system WHERE {mine}", True)
        emitter.log({"x": 1.0}, step=0)
        emitter.finish()
        wait_for(
            store,
            f"SELECT count(DISTINCT key) > 2 FROM system WHERE run_id = '{run.run_id}' AND device = 'cpu'",
            True,
        )
        keys = {k for (k,) in query(store, "SELECT DISTINCT key FROM system WHERE device = 'cpu'")}
        assert {"cpu_percent", "ram_used_bytes", "ram_total_bytes", "ram_percent"} <= keys
        ram = query(store, "SELECT max(value) FROM system WHERE key = 'ram_total_bytes'")[0][0]
        assert ram > 1e8
        if not torch.cuda.is_available():
            assert query(store, "SELECT count(*) FROM system WHERE device LIKE 'gpu%'") == [(0,)]
            assert (
                "no NVIDIA driver" in coll.log.read_text()
                or "nvidia-ml-py is missing" in coll.log.read_text()
            )
    finally:
        coll.close()


@pytest.mark.slow
def test_nvml_samples_per_gpu_and_per_rank_process_memory(tmp_path: Path) -> None:
    """Through a stand-in pynvml (tests/fakes) in a real collector: GPU readings land in the
    system view, and a process's GPU memory is joined to the rank whose pid it is."""
    store = tmp_path / "store"
    fakes = str(REPO / "tests" / "fakes")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([fakes, os.environ.get("PYTHONPATH", "")]),
        "FAKE_NVML_PIDS": f"{os.getpid()},4194300",  # this process (rank 0) and a stranger
    }
    coll = CollectorProcess(store, "--system-interval", "0.2", env=env).start()
    try:
        run = emitter.init(project="nvml", store=store)
        wait_for(
            store,
            f"SELECT count(*) > 0 FROM system WHERE device = 'pid{os.getpid()}' "
            f"AND run_id = '{run.run_id}' AND key = 'gpu_mem_bytes'",
            True,
        )
        emitter.finish()
        gpu = dict(
            query(store, "SELECT key, max(value) FROM system WHERE device = 'gpu0' GROUP BY key")
        )
        assert gpu == {
            "util_percent": 87.0,
            "mem_used_bytes": 30.0 * 2**30,
            "mem_total_bytes": 80.0 * 2**30,
            "temperature_c": 61.0,
            "sm_clock_mhz": 1980.0,
            "mem_clock_mhz": 2619.0,
        }  # no power_w: this board reports none, and that is no error
        ours = query(
            store,
            "SELECT DISTINCT run_id, rank, key, value FROM system "
            "WHERE device = ? AND run_id IS NOT NULL ORDER BY key",  # NULL: sampled before init
            f"pid{os.getpid()}",
        )
        assert ours == [
            (run.run_id, 0, "gpu_index", 0.0),
            (run.run_id, 0, "gpu_mem_bytes", float(2**30)),
        ]
        stranger = query(
            store, "SELECT DISTINCT run_id, rank FROM system WHERE device = 'pid4194300'"
        )
        assert stranger == [(None, None)]
        assert "sampling failed" not in coll.log.read_text()
        from traintape import connect
        from traintape.read import history

        system = {
            (s["device"], s["rank"], s["key"]): s
            for s in history.show(connect(store), run.run_id)["system"]
        }
        assert system["gpu0", None, "util_percent"]["mean"] == 87.0
        assert system[f"pid{os.getpid()}", 0, "gpu_mem_bytes"]["max"] == float(2**30)
        assert ("cpu", None, "ram_total_bytes") in system
    finally:
        coll.close()


def test_environment_is_recorded_at_init(store: Path, collector: CollectorProcess) -> None:
    """host, pid, argv, Python, torch versions, git state and a config hash are in the run."""
    run = emitter.init(project="env", config={"lr": 0.1}, store=store)
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM runs WHERE run_id = '{run.run_id}'", 1)
    env = query(
        store,
        "SELECT environment->>'host', environment->>'python', environment->>'torch', "
        "CAST(environment->>'pid' AS INT), environment->>'config_sha1' FROM runs WHERE run_id = ?",
        run.run_id,
    )[0]
    import hashlib
    import json
    import os
    import platform
    import socket

    assert env[0] == socket.gethostname() and env[1] == platform.python_version()
    assert env[2] == torch.__version__ and env[3] == os.getpid()
    assert env[4] == hashlib.sha1(json.dumps({"lr": 0.1}, sort_keys=True).encode()).hexdigest()


def test_gpu_names_come_from_nvml_without_initialising_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment names the GPUs through NVML (here the stand-in) and leaves CUDA alone."""
    import importlib.util

    from traintape.emitter.environment import torch_state

    spec = importlib.util.spec_from_file_location("pynvml", REPO / "tests" / "fakes" / "pynvml.py")
    assert spec is not None and spec.loader is not None
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    state = torch_state()
    assert state["gpus"] == ["NVIDIA H100 80GB HBM3"]
    assert state["cuda_visible_devices"] == "0"
    assert state["torch"] == torch.__version__
    if not torch.cuda.is_available():
        assert not torch.cuda.is_initialized()


def test_nonfinite_count_across_buckets_and_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN/Inf elements are counted exactly however the tensors fall into buckets."""
    from traintape.emitter import gradients

    tensors = [
        torch.tensor([1.0, math.nan, math.inf]),
        torch.tensor([-math.inf, 2.0], dtype=torch.bfloat16),
        torch.ones(40),
        torch.full((5,), math.nan, dtype=torch.float16),
        torch.tensor([math.nan, 0.0, -0.0]),
    ]
    for bucket_bytes in (1, 64, 1 << 20):
        monkeypatch.setattr(gradients, "_BUCKET_BYTES", bucket_bytes)
        count = gradients._nonfinite_count(torch, tensors, torch.device("cpu"))
        assert count.dtype == torch.float64 and count.item() == 2 + 1 + 0 + 5 + 1
    assert gradients._nonfinite_count(torch, [], torch.device("cpu")).item() == 0


def test_git_state_is_in_the_run_and_in_traintape_runs(
    store: Path,
    collector: CollectorProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    """A run started in a git checkout with changes records commit, branch, dirty and the diff's
    hash; `traintape runs` shows the commit with a `+`."""
    import hashlib
    import json

    from traintape.cli import main

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q", "-b", "trunk"], check=True)
    (repo / "train.py").write_text("lr = 0.1\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    (repo / "train.py").write_text("lr = 0.2\n")
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    diff = subprocess.run([*git, "diff", "HEAD"], capture_output=True, text=True).stdout
    monkeypatch.chdir(repo)
    run = emitter.init(project="git", store=store)
    emitter.finish()
    wait_for(store, f"SELECT count(*) FROM runs WHERE run_id = '{run.run_id}'", 1)
    env = json.loads(
        query(store, "SELECT environment FROM runs WHERE run_id = ?", run.run_id)[0][0]
    )
    assert env["git_commit"] == head.strip() and env["git_branch"] == "trunk"
    assert env["git_dirty"] is True
    assert env["git_diff_sha1"] == hashlib.sha1(diff.strip().encode()).hexdigest()
    capsys.readouterr()
    assert main(["runs", "--store", str(store), "--format", "json"]) == 0
    [row] = [r for r in json.loads(capsys.readouterr().out) if r["run_id"] == run.run_id]
    assert row["commit"] == head.strip()[:8] + "+"


def test_histograms_are_the_same_in_chunks_and_count_only_finite_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Binning in chunks (as for huge tensors) gives the counts of binning at once, which are
    numpy's over the finite values; bf16 and an all-NaN tensor too."""
    from traintape.emitter import gradients

    torch.manual_seed(0)
    x = torch.randn(10_000, dtype=torch.float32)
    x[::97] = math.nan
    x[::101] = math.inf
    whole = gradients.histogram_values(torch, x)
    monkeypatch.setattr(gradients, "HIST_CHUNK", 333)
    chunked = gradients.histogram_values(torch, x)
    assert torch.equal(whole, chunked)
    finite = x[torch.isfinite(x)].double().numpy()
    lo, hi = finite.min(), finite.max()
    assert whole[0].item() == lo and whole[1].item() == hi
    assert whole[2:].sum().item() == finite.size
    ref, _ = np.histogram(finite, bins=64, range=(lo, hi))
    assert np.abs(whole[2:].numpy() - ref).sum() <= 2  # values on a bin edge may fall either way
    half = gradients.histogram_values(torch, x.bfloat16())
    assert half[2:].sum().item() == finite.size
    nan = gradients.histogram_values(torch, torch.full((5,), math.nan))
    assert nan[0].item() == math.inf and nan[2:].sum().item() == 0
    assert gradients.histogram_values(torch, torch.empty(0)) is None
