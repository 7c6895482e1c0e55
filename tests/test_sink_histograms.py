"""watch(histograms=True) reaches TensorBoard's HISTOGRAMS tab and W&B's histogram panels: a
real collector feeds both sinks; TensorBoard's reader and W&B's offline file are read back and
compared with the histogram events in the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import CollectorProcess, query
from tests.test_sink_wandb import offline_run
from traintape import emitter
from traintape.schemas.events import HISTOGRAM
from traintape.sinks._base import Event, histogram_bins

STEPS = 3


@pytest.mark.slow
def test_histograms_in_tensorboard_and_wandb(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    store = tmp_path / "store"
    collector = CollectorProcess(
        store, "--sink", "tensorboard", "--sink", "wandb=offline", "--system-interval", "0"
    ).start()
    try:
        run = emitter.init(project="hist", name="h", store=store, run_id="histrun")
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        emitter.watch(model, every=1, histograms=True)
        for step in range(STEPS):
            model.zero_grad()
            model(torch.randn(32, 4)).pow(2).mean().backward()
            emitter.log({"loss": float(step)}, step=step)
        emitter.finish()
        assert collector.stop() == 0
    finally:
        collector.close()

    stored = {
        (step, body["key"]): body
        for step, body in (
            (s, json.loads(b))
            for s, b in query(
                store,
                "SELECT step, body FROM events WHERE run_id = ? AND kind = 'histogram'",
                run.run_id,
            )
        )
    }
    names = [n for n, _ in model.named_parameters()]
    tags = {f"{kind}/{n}" for kind in ("weights", "grads") for n in names}
    assert {key for _, key in stored} == tags and len(stored) == STEPS * len(tags)

    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(store / "tensorboard" / "hist" / "h"), size_guidance={"tensors": 0})
    acc.Reload()
    assert set(acc.PluginTagToContent("histograms")) == tags
    for tag in tags:
        events = acc.Tensors(tag)
        assert [e.step for e in events] == list(range(STEPS))
        for e in events:
            buckets = tensor_util.make_ndarray(e.tensor_proto)  # [left, right, count] rows
            body = stored[e.step, tag]
            assert buckets.shape == (64, 3)
            assert buckets[:, 2].tolist() == body["counts"]
            assert buckets[0, 0] == body["min"] and buckets[-1, 1] == body["max"]

    history = offline_run(store, "histrun")["history"]
    assert sorted(history) == list(range(STEPS))
    for step, row in history.items():
        for tag in tags:
            # W&B stores a histogram as nested keys: <tag>/_type, <tag>/values, <tag>/bins.
            got = {k[len(tag) + 1 :]: v for k, v in row.items() if k.startswith(tag + "/")}
            assert got["_type"] == "histogram" and len(got["bins"]) == 65, sorted(got)
            assert got["values"] == pytest.approx(stored[step, tag]["counts"])


def test_histograms_without_finite_values_are_left_out() -> None:
    """All-NaN weights give min +inf / max -inf: nothing to draw, and no error."""
    body = {"key": "weights/w", "min": float("inf"), "max": float("-inf"), "counts": [0.0] * 64}
    assert histogram_bins(Event(HISTOGRAM, 0, 1, 0, body)) is None
    ok = Event(HISTOGRAM, 2, 1, 0, {"key": "grads/w", "min": -1.0, "max": 1.0, "counts": [1, 3]})
    assert histogram_bins(ok) == ("grads/w/rank2", [1.0, 3.0], [-1.0, 0.0, 1.0])
