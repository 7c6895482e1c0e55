"""No host reads of device values, checked on a CPU machine through the meta device.

A meta tensor has a shape and a dtype but no values, so every op that reads a value back to the
host (`.item()`, `.tolist()`, `bool()`, masking, `nonzero`: on CUDA each is a device sync)
raises on it. `log()` of device tensors and `watch()`'s statistics run here on meta tensors,
with the deferred queue replaced by a recorder of what it would copy to the host. This guards
the property the CUDA path rests on in every CI run; it does not replace the CUDA test (sync
debug mode "error", tests/test_tensors.py), which also covers syncs meta does not flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import CollectorProcess, query, wait_for
from traintape import emitter
from traintape.schemas.events import HISTOGRAM, METRICS


class RecordingDeferred:
    """Stands in for DeferredValues: keeps what would be copied, reads none of it."""

    def __init__(self) -> None:
        self.added: list[tuple[int | None, int, Any, Any]] = []
        self.queue: tuple[()] = ()  # nothing is ever on its way: log() never waits behind it
        self.unreadable = 0

    def add(self, ts: int, step: int | None, kind: int, values: Any, build: Any) -> None:
        assert values.device.type == "meta" and values.dim() == 1
        self.added.append((step, kind, values, build))

    def add_ready(self, ts: int, step: int | None, kind: int, body: Any) -> bool:
        return False  # nothing is really on its way: plain values go out at once

    def poll(self, wait: bool = False) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.added)


@pytest.fixture
def recorder(store: Path, collector: CollectorProcess) -> RecordingDeferred:
    recording = RecordingDeferred()
    emitter.init(project="meta", store=store, deferred=lambda emit: recording)
    return recording


def test_log_of_device_tensors_reads_no_value(store: Path, recorder: RecordingDeferred) -> None:
    """One loss, then mixed dtypes, beside plain numbers: the tensors are queued as they are."""
    meta = torch.device("meta")
    emitter.log({"loss": torch.tensor(1.5, device=meta)}, step=3)
    emitter.log(
        {
            "loss": torch.tensor(1.5, device=meta, dtype=torch.bfloat16),
            "tokens": torch.tensor(4096, device=meta, dtype=torch.int64),
            "lr": 0.1,
        },
        step=4,
    )
    run_id = emitter.current().run_id  # type: ignore[union-attr]
    emitter.finish()
    assert [(step, kind, tuple(v.shape)) for step, kind, v, _ in recorder.added] == [
        (3, METRICS, (1,)),
        (4, METRICS, (2,)),
    ]
    assert recorder.added[0][2].dtype == torch.float32  # one tensor: no cast kernel
    assert recorder.added[1][2].dtype == torch.float64  # mixed: cast so no value is lost
    assert recorder.added[1][3]([1.0, 2.0]) == {"loss": 1.0, "tokens": 2.0}
    wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run_id}'", 1)
    assert query(store, "SELECT step, key FROM metrics WHERE run_id = ?", run_id) == [(4, "lr")]


def test_watch_statistics_read_no_value(recorder: RecordingDeferred) -> None:
    """Global norm, NaN/Inf counts, per-layer norms and histograms of a model on the meta device."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    model = model.to("meta")
    watcher = emitter.watch(model, every=1, per_layer=True, histograms=True)
    emitter.log({"x": 0.0}, step=5)  # the watcher logs at the step after the last one logged
    model(torch.randn(16, 4, device="meta")).pow(2).mean().backward()
    emitter.finish()
    assert watcher.error is None  # a value read back to the host raises on meta and stops it
    kinds = [(step, kind, tuple(v.shape)) for step, kind, v, _ in recorder.added]
    assert kinds[0] == (6, METRICS, (3 + 4,))
    assert kinds[1:] == [(6, HISTOGRAM, (2 + 64,))] * 8  # 4 weights, 4 gradients
    keys = list(recorder.added[0][3]([0.0] * 7))
    assert keys[:3] == ["grad/global_norm", "grad/nonfinite", "param/nonfinite"]
    assert keys[3:] == [f"grad_norm/{n}" for n, _ in model.named_parameters()]
