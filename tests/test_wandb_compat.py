"""`import traintape.wandb as wandb`: W&B 0.31's step, commit, config, summary and define_metric
semantics (fast tests, against a recording stand-in for the Emitter), and W&B's documentation
examples run unchanged but for the import, compared with what W&B itself records offline (slow
tests, a real collector and W&B's offline file)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import traintape.wandb as wandb
from tests.conftest import REPO, CollectorProcess
from traintape.errors import ConfigError, NoRunError, RunFinishedError, UnsupportedMediaError
from traintape.wandb.config import Config
from traintape.wandb.run import Run

EXAMPLES = REPO / "tests" / "wandb_examples"


class Recorder:
    """Stands in for an Emitter in the fast tests: records each call of its public API."""

    def __init__(self) -> None:
        self.summary: dict[str, Any] = {}
        self.metrics: dict[int, dict[str, Any]] = {}
        self.texts: dict[int | None, dict[str, str]] = {}
        self.params: list[dict[str, Any]] = []
        self.histograms: list[tuple[int | None, dict[str, Any]]] = []
        self.status: str | None = None
        self.watched: list[tuple[Any, int, bool]] = []
        self.removed: list[Any] = []

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        assert step is not None and step not in self.metrics, "one metrics event per step"
        self.metrics[step] = dict(metrics)

    def log_text(self, key: str, text: str, step: int | None = None) -> None:
        self.texts.setdefault(step, {})[key] = text

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.append(dict(params))

    def log_histogram(
        self, key: str, counts: list[float], low: float, high: float, step: int | None = None
    ) -> None:
        self.histograms.append((step, {"key": key, "min": low, "max": high, "counts": counts}))

    def finish(self, status: str = "completed") -> None:
        self.status = status

    def watch(self, model: Any, every: int = 1, histograms: bool = False) -> Any:
        self.watched.append((model, every, histograms))
        return Watcher(self.watched[-1], self.removed)


class Watcher:
    """What Recorder.watch returns: `remove()` is recorded."""

    def __init__(self, what: Any, removed: list[Any]) -> None:
        self.what, self.removed = what, removed

    def remove(self) -> None:
        self.removed.append(self.what)


@pytest.fixture(autouse=True)
def _no_current_wandb_run() -> Any:
    """No traintape.wandb run leaks from one test into the next."""
    yield
    if wandb.run is not None:
        wandb._forget(wandb.run)


@pytest.fixture
def rec() -> Any:
    """A current traintape.wandb run over a Recorder; finished (and forgotten) afterwards."""
    recorder = Recorder()
    run = Run(recorder, "p", "n", "run1", Config({"lr": 0.1}, on_change=recorder.log_params))
    wandb._make_current(run)
    yield recorder
    run.finish()


def test_steps_and_commits_make_the_rows_wandb_makes(rec: Recorder, caplog: Any) -> None:
    """Rows and steps as W&B 0.31 makes them: commit=False merges into the next commit, an
    explicit step stays open until a later step or a commit, a lower step is dropped with a
    warning, nested dicts are flattened with "/", str values are text at their row's step."""
    wandb.log({"a": 1})
    wandb.log({"b": 2}, commit=False)
    wandb.log({"c": 3})
    wandb.log({"d": 4}, step=5)
    wandb.log({"e": 5}, step=5)
    with caplog.at_level(logging.WARNING, "traintape.wandb"):
        wandb.log({"f": 6}, step=3)
    assert "step 3" in caplog.text and "current step 5" in caplog.text
    wandb.log({"g": 7})
    wandb.log({"n": {"x": 1, "y": {"z": 2}}})
    wandb.log({"h": 8}, step=10, commit=False)
    wandb.log({"i": 9}, step=10, commit=True)
    wandb.log({"j": 10}, step=10)  # below the current step (11) after the commit: dropped
    wandb.log({"s": "hello"})
    wandb.log({}, commit=True)  # an empty row still takes a step
    wandb.log({"l": 12}, commit=False)
    assert wandb.run is not None and wandb.run.step == 13
    wandb.log({"m": 13}, step=20)
    assert wandb.run.step == 20
    wandb.finish()
    assert rec.metrics == {
        0: {"a": 1},
        1: {"b": 2, "c": 3},
        5: {"d": 4, "e": 5, "g": 7},
        6: {"n/x": 1, "n/y/z": 2},
        10: {"h": 8, "i": 9},
        13: {"l": 12},
        20: {"m": 13},
    }
    assert rec.texts == {11: {"s": "hello"}}
    assert rec.status == "completed" and wandb.run is None


def test_a_bad_value_refuses_the_whole_call(rec: Recorder) -> None:
    """A value traintape cannot store raises and nothing of that call joins the row; media it
    does not store raise UnsupportedMediaError (never silently dropped), as do W&B's own media
    objects; an Image of a missing file raises when made."""
    wandb.log({"ok": 1.0}, commit=False)
    with pytest.raises(TypeError, match="'bad'"):
        wandb.log({"good": 2.0, "bad": [1, 2]})
    with pytest.raises(FileNotFoundError, match="x.png"):
        wandb.Image("x.png")  # stored since issue 18: see tests/test_media.py
    with pytest.raises(UnsupportedMediaError, match="does not store media"):
        wandb.Audio("x.wav")
    with pytest.raises(UnsupportedMediaError):
        wandb.Video("x.mp4")
    with pytest.raises(UnsupportedMediaError, match="artifacts"):
        wandb.run.log_artifact("model.pt")  # type: ignore[union-attr]
    real = pytest.importorskip("wandb")
    with pytest.raises(UnsupportedMediaError, match="Html"):
        wandb.log({"page": real.Html("<p>hi</p>")})
    wandb.log({"more": 3.0})
    assert rec.metrics == {0: {"ok": 1.0, "more": 3.0}}


def test_a_histogram_image_or_table_of_wandb_itself_is_stored_as_ours(rec: Recorder) -> None:
    """A script that makes media with `import wandb` and logs with traintape.wandb stores them:
    W&B's Image as the PNG W&B wrote for it (its caption kept), W&B's Table as its columns and
    rows, W&B's Histogram as its counts over its bins, at the row's step; W&B's other types stay
    refused."""
    real = pytest.importorskip("wandb")
    import numpy as np

    import traintape

    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    image = real.Image(pixels, caption="theirs")
    table = real.Table(columns=["id", "label"], data=[[1, "cat"], [2, "dog"]])
    hist = real.Histogram([0.0, 1.0, 1.0, 4.0], num_bins=4)
    wandb.log({"img": image, "t": table, "h": hist, "loss": 0.5})
    wandb.log({"next": 1.0})
    assert rec.histograms == [
        (0, {"key": "h", "min": 0.0, "max": 4.0, "counts": list(hist.histogram)})
    ]
    row = rec.metrics[0]
    assert isinstance(row["img"], traintape.Image) and isinstance(row["t"], traintape.Table)
    png, meta = row["img"].encode()
    assert png == Path(image._path).read_bytes() and meta["caption"] == "theirs"
    assert (row["t"].columns, row["t"].arrow.to_pylist()) == (
        ["id", "label"],
        [{"id": 1, "label": "cat"}, {"id": 2, "label": "dog"}],
    )
    with pytest.raises(UnsupportedMediaError, match="Html"):
        wandb.log({"page": real.Html("<p>hi</p>")})


def test_a_list_of_images_under_a_key_is_logged_as_a_list_of_ours(rec: Recorder) -> None:
    """W&B's way to log a batch of samples, `log({"examples": [wandb.Image(...), ...]})`, with
    traintape.wandb's Images and Tables and W&B's own: the emitter gets a list of traintape
    media under the key (stored as examples/0, examples/1, ...); a list mixing in a number is
    refused whole."""
    import numpy as np

    import traintape

    pixels = [np.full((4, 4, 3), i, np.uint8) for i in range(3)]
    listed = [wandb.Image(p, caption=f"c{i}") for i, p in enumerate(pixels[:2])]
    listed.append(wandb.Table(columns=["a"], data=[[1]]))
    with pytest.raises(TypeError, match="lists of Images and Tables"):
        wandb.log({"examples": [listed[0], 1.0]})
    wandb.log({"examples": listed, "loss": 0.5})
    real = pytest.importorskip("wandb")
    wandb.log({"theirs": [real.Image(pixels[2], caption="w")]})
    first, second = rec.metrics[0], rec.metrics[1]
    assert first["loss"] == 0.5 and [type(v) for v in first["examples"]] == [
        traintape.wandb.Image,
        traintape.wandb.Image,
        traintape.Table,
    ]
    assert [v.caption for v in first["examples"][:2]] == ["c0", "c1"]
    (theirs,) = second["theirs"]
    assert isinstance(theirs, traintape.Image) and theirs.encode()[1]["caption"] == "w"


def test_wandb_plot_charts_build_wandbs_tables_and_log_them_as_wandb_names_them(
    rec: Recorder,
) -> None:
    """Each of wandb.plot's preset charts holds the table W&B's own builds (columns and rows,
    compared with W&B itself), with its spec and fields; logged under a key, its table is stored
    as `<key>_table` (W&B's history name), split_table's under "Custom Chart Tables/". Bad
    arguments raise as in W&B; pr_curve and roc_curve are refused, not dropped."""
    real = pytest.importorskip("wandb")
    import numpy as np

    import traintape

    rows = [[1, 2.0, "a"], [2, 3.5, "b"], [3, 1.0, "a"]]
    cases = [
        (
            "line",
            lambda w: w.plot.line(
                w.Table(columns=["x", "y", "s"], data=rows), "x", "y", stroke="s", title="t"
            ),
        ),
        (
            "scatter",
            lambda w: w.plot.scatter(w.Table(columns=["x", "y", "s"], data=rows), "x", "y"),
        ),
        (
            "bar",
            lambda w: w.plot.bar(w.Table(columns=["x", "y", "s"], data=rows), "s", "y", title="b"),
        ),
        ("histogram", lambda w: w.plot.histogram(w.Table(columns=["x", "y", "s"], data=rows), "y")),
        (
            "series",
            lambda w: w.plot.line_series(
                [0, 1, 2], [[1, 2, 3], [3, 2, 1]], keys=["up", "down"], xname="ep"
            ),
        ),
        ("series2", lambda w: w.plot.line_series([[0, 1], [5, 6, 7]], [[1, 2], [3, 2, 1]])),
        (
            "cm",
            lambda w: w.plot.confusion_matrix(
                y_true=[0, 1, 2, 2, 1], preds=[0, 2, 2, 1, 1], class_names=["a", "b", "c"]
            ),
        ),
        (
            "cm_probs",
            lambda w: w.plot.confusion_matrix(
                probs=np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), y_true=np.array([0, 1, 1])
            ),
        ),
        (
            "cm_labels",
            lambda w: w.plot.confusion_matrix(y_true=[3, 7, 7], preds=[7, 7, 3], split_table=True),
        ),
    ]
    for key, make in cases:
        theirs, ours = make(real), make(wandb)
        assert ours.table.columns == theirs.table.columns, key
        assert [[_plain(v) for v in r] for r in ours.table.data] == [
            [_plain(v) for v in r] for r in theirs.table.data
        ], key
        assert (ours.spec_name, ours.fields, ours.string_fields) == (
            theirs.spec.spec_name,
            theirs.spec.fields,
            theirs.spec.string_fields,
        ), key
        wandb.log({key: ours})
    logged = {k: v for row in rec.metrics.values() for k, v in row.items()}
    assert set(logged) == {f"{k}_table" for k, _ in cases if k != "cm_labels"} | {
        "Custom Chart Tables/cm_labels_table"
    }
    cm = logged["cm_table"]
    assert isinstance(cm, traintape.Table) and cm.rows == 9 and cm.columns[0] == "Actual"
    with pytest.raises(ValueError, match="not one of the 2 classes"):
        wandb.plot.confusion_matrix(y_true=[0, 5], preds=[0, 1], class_names=["a", "b"])
    with pytest.raises(ValueError, match="Only one of"):
        wandb.plot.confusion_matrix(probs=[[1.0]], preds=[0], y_true=[0])
    with pytest.raises(UnsupportedMediaError, match="roc_curve"):
        wandb.plot.roc_curve([0, 1], [[0.2, 0.8], [0.7, 0.3]])


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def test_config_behaves_as_wandb_and_records_changes_as_params(rec: Recorder) -> None:
    """Attribute and item access, update (an argparse Namespace too, "--" stripped), a changed
    value refused without allow_val_change, setdefaults, as_dict/keys/items/get/in; each change
    after init is one params event holding only the change."""
    config = wandb.config
    assert config.lr == 0.1 and config["lr"] == 0.1
    config.bs = 32
    config["--epochs"] = 3
    config.update({"opt": {"name": "adam"}})
    with pytest.raises(ConfigError, match="allow_val_change"):
        config.lr = 0.2
    with pytest.raises(ConfigError):
        config.update({"lr": 0.3, "new": 1})
    assert "new" not in config  # nothing of a refused update is applied
    config.update(argparse.Namespace(lr=0.5), allow_val_change=True)
    config.setdefaults({"lr": 9, "warmup": 10})
    config.update({"bs": 32})  # the same value: no error
    assert config.as_dict() == {
        "lr": 0.5,
        "bs": 32,
        "epochs": 3,
        "opt": {"name": "adam"},
        "warmup": 10,
    }
    assert config.keys() == ["lr", "bs", "epochs", "opt", "warmup"]
    assert config.get("missing", 7) == 7 and "warmup" in config and len(config) == 5
    assert ("epochs", 3) in config.items()
    with pytest.raises(AttributeError):
        _ = config.missing
    assert rec.params == [
        {"bs": 32},
        {"epochs": 3},
        {"opt": {"name": "adam"}},
        {"lr": 0.5},
        {"warmup": 10},
        {"bs": 32},
    ]


def test_summary_follows_wandb_last_values_define_metric_and_explicit_sets(rec: Recorder) -> None:
    """The summary holds each key's last value; define_metric summaries hold their statistics
    (merged over calls for one name, "none" leaves the key out, "best" with a goal); a key set
    by hand keeps its value until logged again, then holds the last value, as W&B 0.31 does."""
    wandb.define_metric("loss", summary="min")
    wandb.define_metric("loss", summary="mean")
    wandb.define_metric("val/*", summary="max,last")
    wandb.define_metric("hidden", summary="none")
    wandb.define_metric("acc", summary="best", goal="maximize")
    for i, (loss, val, acc) in enumerate([(3, 0.5, 0.2), (1, 0.9, 0.8), (2, 0.7, 0.6)]):
        wandb.log({"loss": loss, "val/acc": val, "acc": acc, "hidden": i, "text": f"t{i}"})
    wandb.summary["best"] = 0.9
    wandb.summary.explicit = "by attribute"
    assert wandb.summary["loss"] == {"min": 1, "mean": 2.0}
    assert wandb.summary["val/acc"] == {"max": 0.9, "last": 0.7}
    assert wandb.summary.acc == {"best": 0.8}
    assert "hidden" not in wandb.summary and wandb.summary["text"] == "t2"
    wandb.summary["loss"] = 42
    assert wandb.summary.get("loss") == 42
    wandb.log({"loss": 5})
    assert wandb.summary["loss"] == 5  # W&B: after a set by hand, the last value
    wandb.summary.update({"model": "cnn"})
    assert set(wandb.summary) == {"loss", "val/acc", "acc", "text", "best", "explicit", "model"}
    assert rec.summary["best"] == 0.9  # the Emitter's summary: stored with run_end
    with pytest.raises(ValueError, match="goal"):
        wandb.define_metric("x", summary="best")
    with pytest.raises(ValueError, match="unknown summary op"):
        wandb.define_metric("x", summary="median")
    with pytest.raises(ValueError, match="trailing"):
        wandb.define_metric("a*b")


def test_define_metric_syncs_the_x_axis_and_is_stored_as_params(rec: Recorder) -> None:
    """A row holding a metric but not its x-axis gets the x-axis's last value (step_sync, W&B's
    default with step_metric); not before the x-axis was logged, not with step_sync=False; each
    definition is stored as params wandb.metric.<name>.<field>."""
    wandb.define_metric("epoch")
    wandb.define_metric("val/*", step_metric="epoch")
    wandb.define_metric("test/acc", step_metric="epoch", step_sync=False)
    wandb.log({"val/loss": 1.0})  # no epoch yet
    wandb.log({"epoch": 0})
    wandb.log({"val/loss": 0.5, "test/acc": 0.1})
    wandb.log({"epoch": 1, "val/loss": 0.4})
    assert rec.metrics == {
        0: {"val/loss": 1.0},
        1: {"epoch": 0},
        2: {"val/loss": 0.5, "test/acc": 0.1, "epoch": 0},
        3: {"epoch": 1, "val/loss": 0.4},
    }
    assert rec.params[1] == {
        "wandb.metric.val/*.step_metric": "epoch",
        "wandb.metric.val/*.step_sync": None,
        "wandb.metric.val/*.hidden": None,
        "wandb.metric.val/*.summary": None,
        "wandb.metric.val/*.goal": None,
    }


class CheckingRecorder(Recorder):
    """A Recorder that refuses what the Emitter's `log` refuses (same checks, same errors)."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        from traintape.emitter.values import coerce_metrics

        coerce_metrics(metrics)
        super().log(metrics, step)


class DictSubclass(dict):  # type: ignore[type-arg]
    """The same data, which `Run.log`'s fast path leaves to its general path."""


def _random_call(
    rnd: Any, np: Any, step: int, numbers_only: bool
) -> tuple[dict[str, Any], Any, Any]:
    """One `log(data, step, commit)` of the kinds W&B scripts make, bad ones included."""
    keys = ["a", "b", "c", "d"]
    values = [
        lambda: rnd.random(),
        lambda: rnd.randint(-3, 3),
        lambda: rnd.random() < 0.5,
        lambda: np.float32(rnd.random()),
        lambda: {"x": rnd.random(), "y": {"z": 1}},
        lambda: "text",
        lambda: [1, 2],
    ]
    weights = [30, 5, 3, 0, 0, 0, 0] if numbers_only else [30, 5, 3, 3, 3, 2, 1]
    data: dict[Any, Any] = {}
    for key in rnd.sample(keys, rnd.randint(0, 4)):
        data[key] = rnd.choices(values, weights)[0]()
    if rnd.random() < 0.03:
        data[rnd.choice([5, ""])] = 1.0  # a name the emitter refuses
    steps = [None, None, None, step, step + 1, step + rnd.randint(2, 5), max(step - 1, 0), True]
    return data, rnd.choice(steps), rnd.choice([None, None, None, True, False])


def run_differential(seed: int, emitters: tuple[Any, Any], by_hand: bool = True) -> None:
    """Seed `seed`'s 60 random calls (every kind: _random_call), a define_metric with an x-axis
    midway on some seeds, summary values set or deleted by hand when `by_hand`, through two Runs
    on `emitters`, the second given each row as a dict subclass (so the general path): the same
    errors, step and summary after each call, and the same error when each finishes."""
    import random

    np = pytest.importorskip("numpy")
    rnd = random.Random(seed)
    runs = [Run(e, "p", "n", f"run{seed}", Config({})) for e in emitters]
    define_at = rnd.randint(0, 80) if seed % 4 < 2 else -1
    for i in range(60):
        data, step, commit = _random_call(rnd, np, runs[0].step, seed % 2 == 1)
        if i == define_at:
            for run in runs:
                run.define_metric("b", step_metric="a", summary="max")
        hand = rnd.choice(["a", "b"]) if by_hand and rnd.random() < 0.2 else None
        for run in runs:  # a summary value set by hand, or deleted
            if hand == "a":
                run.summary["a"] = -1.0
            elif hand == "b" and "b" in run.summary:
                del run.summary["b"]
        outcomes = []
        for run, as_given in zip(runs, (data, DictSubclass(data))):
            try:
                run.log(as_given, step, commit)
                outcomes.append(None)
            except (TypeError, ValueError) as exc:
                outcomes.append((type(exc), str(exc)))
        assert outcomes[0] == outcomes[1], (seed, i, data, step, commit)
        assert runs[0].step == runs[1].step
        assert runs[0].summary.as_dict() == runs[1].summary.as_dict()
    ends = []
    for run in runs:  # the row still open is written: it may hold a name refused
        try:
            run.finish()
            ends.append(None)
        except ValueError as exc:
            ends.append(str(exc))
    assert ends[0] == ends[1], seed


def test_the_fast_path_of_log_stores_what_the_general_path_stores() -> None:
    """Random calls of every kind (numbers, numpy scalars, bools, nested dicts, text, bad
    values and names, steps equal, above, below the current one, commit=False merges, summary
    values set or deleted by hand, a define_metric with an x-axis midway, with an emitter or
    disabled) leave the same rows, texts, summary, step and errors whether `Run.log` takes its
    fast path or its general path."""
    for seed in range(60):
        fast, slow = CheckingRecorder(), CheckingRecorder()
        run_differential(seed, (fast, slow) if seed % 5 else (None, None))  # None: disabled
        assert fast.metrics == slow.metrics and fast.texts == slow.texts, seed
        assert fast.summary == slow.summary and fast.status == slow.status, seed


def test_an_x_axis_syncs_its_last_value_logged_not_one_set_by_hand(rec: Recorder) -> None:
    """A row missing its x-axis gets the x-axis's last value logged, also when the summary
    holds another value set by hand since (the fast path's summary is its last values until
    then)."""
    wandb.log({"epoch": 1, "loss": 0.5})
    wandb.log({"loss": 0.4})
    wandb.summary["epoch"] = 99
    wandb.define_metric("val/*", step_metric="epoch")
    wandb.log({"val/acc": 0.7})
    del wandb.summary["loss"]
    wandb.log({"loss": 0.3})
    assert rec.metrics == {
        0: {"epoch": 1, "loss": 0.5},
        1: {"loss": 0.4},
        2: {"val/acc": 0.7, "epoch": 1},
        3: {"loss": 0.3},
    }
    assert wandb.summary["epoch"] == 1 and wandb.summary["loss"] == 0.3


def test_histograms_become_histogram_events(rec: Recorder) -> None:
    """wandb.Histogram (from a sequence, or np_histogram with bins of equal width) is stored as
    a histogram event (key, min, max, counts) at its row's step; uneven bins are refused."""
    np = pytest.importorskip("numpy")
    wandb.log({"w": wandb.Histogram([0.0, 1.0, 1.0, 4.0], num_bins=4)})
    wandb.log({"g": wandb.Histogram(np_histogram=np.histogram([1, 2, 2, 3], bins=2))})
    assert rec.histograms == [
        (0, {"key": "w", "min": 0.0, "max": 4.0, "counts": [1, 2, 0, 1]}),
        (1, {"key": "g", "min": 1.0, "max": 3.0, "counts": [1, 3]}),
    ]
    assert wandb.summary["w"]["_type"] == "histogram"
    with pytest.raises(ValueError, match="equal width"):
        wandb.Histogram(np_histogram=([1, 2], [0.0, 1.0, 5.0]))


def test_finish_with_an_exit_code_fails_the_run(rec: Recorder) -> None:
    """finish(exit_code=1) marks the run failed, writes the row still open, and wandb.run,
    wandb.config and wandb.summary go back to their state before init."""
    wandb.log({"loss": 1.0}, commit=False)
    wandb.finish(exit_code=1)
    assert rec.status == "failed" and rec.metrics == {0: {"loss": 1.0}}
    assert wandb.run is None
    with pytest.raises(NoRunError, match="init"):
        wandb.log({"x": 1})
    with pytest.raises(wandb.Error):  # W&B's name for the root of what it raises
        wandb.define_metric("x")
    with pytest.raises(NoRunError):
        _ = wandb.config.lr
    with pytest.raises(NoRunError):
        wandb.summary["x"] = 1


def test_watch_maps_to_the_emitters_watch(rec: Recorder, caplog: Any) -> None:
    """watch(model, log_freq=N) is emitter.watch(model, every=N), with histograms unless
    log=None; a list of models is each watched; unwatch removes them; arguments traintape has
    no use for are said once."""
    a, b = object(), object()
    with caplog.at_level(logging.WARNING, "traintape.wandb"):
        wandb.watch([a, b], log_freq=10, log_graph=True)
        wandb.watch(a, log=None, log_graph=True)
    assert rec.watched == [(a, 10, True), (b, 10, True), (a, 1000, False)]
    assert caplog.text.count("no effect") == 1
    wandb.unwatch(b)
    assert rec.removed == [(b, 10, True)]
    wandb.unwatch()
    assert len(rec.removed) == 3


def test_save_and_alert_are_recorded_as_text(rec: Recorder, caplog: Any) -> None:
    """save() and alert() are text events at the current step, each said once to copy no file
    and send no notification."""
    with caplog.at_level(logging.WARNING, "traintape.wandb"):
        assert wandb.save("*.pt") is True
        wandb.save("*.ckpt")
        wandb.alert("diverged", "loss is NaN", level="WARN")
    assert rec.texts == {0: {"wandb/save": "*.ckpt", "wandb/alert": "[WARN] diverged: loss is NaN"}}
    assert caplog.text.count("not copied") == 1 and caplog.text.count("no notification") == 1


def test_reinit_finishes_or_keeps_the_current_run() -> None:
    """init() while a run is active returns it (W&B in a script); reinit="finish_previous"
    finishes it first; reinit="create_new" makes a second run that is not wandb.run."""
    first = wandb.init(project="p", mode="disabled")
    assert wandb.init(project="p", mode="disabled") is first
    second = wandb.init(project="p", mode="disabled", reinit="finish_previous")
    assert second is not first and wandb.run is second
    with pytest.raises(RunFinishedError):
        first.log({"x": 1})
    third = wandb.init(project="p", mode="disabled", reinit="create_new")
    assert wandb.run is second and third is not second
    third.finish()
    assert wandb.run is second


def test_disabled_mode_records_nothing_and_extras_warn_once(caplog: Any) -> None:
    """mode="disabled" starts no Emitter (no collector needed) yet config, summary and log work;
    init arguments with no effect are named in one warning; login() is True."""
    from traintape import emitter

    assert wandb.login(key="abc") is True
    with caplog.at_level(logging.WARNING, "traintape.wandb"):
        run = wandb.init(
            project="p",
            mode="disabled",
            config={"lr": 1},
            resume="allow",
            save_code=True,
            group="g",
        )
    warnings = [r.getMessage() for r in caplog.records if "no effect" in r.getMessage()]
    assert len(warnings) == 1 and "resume" in warnings[0] and "save_code" in warnings[0]
    assert "group" not in warnings[0]  # stored as a param, not without effect
    assert run.disabled and emitter.current() is None and wandb.run is run
    assert wandb.init(project="other") is run  # a second init returns the active run, as W&B
    wandb.log({"loss": 2.0})
    assert wandb.summary["loss"] == 2.0 and wandb.config.lr == 1 and run.group == "g"
    with pytest.raises(TypeError, match="unexpected"):
        wandb.init(project="p", no_such_argument=1)
    wandb.finish()
    assert wandb.run is None


@pytest.mark.slow
def test_importing_traintape_leaves_wandb_alone() -> None:
    """`import traintape` imports neither traintape.wandb nor W&B; after `import
    traintape.wandb`, `import wandb` (and traintape's W&B sink) still get W&B itself."""
    code = (
        "import sys, traintape\n"
        "from traintape import emitter\n"
        "assert 'traintape.wandb' not in sys.modules and 'wandb' not in sys.modules\n"
        "import traintape.wandb as tw\n"
        "assert 'wandb' not in sys.modules, 'traintape.wandb must not import W&B'\n"
        "import wandb\n"
        "assert wandb is not tw and hasattr(wandb, 'Api')\n"
        "from traintape.sinks import wandb as sink\n"
        "assert sink.__name__ == 'traintape.sinks.wandb'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# -- W&B's documentation examples, W&B offline against traintape ---------------------------


def _wandb_offline(folder: Path) -> dict[str, Any]:
    """History rows, config and summary of the one offline run under `folder`, from its file."""
    from tests.test_sink_wandb import wandb_records

    [path] = folder.glob("wandb/offline-run-*/run-*.wandb")
    out: dict[str, Any] = {"history": {}, "config": {}, "summary": {}, "exit": None}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["config"].update(
                {u.key: json.loads(u.value_json) for u in record.run.config.update}
            )
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            row = {
                (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                for i in record.history.item
            }
            out["history"][row.pop("_step")] = row
        elif kind == "summary":
            for u in record.summary.update:
                out["summary"][u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
        elif kind == "exit":
            out["exit"] = record.exit.exit_code
    return out


def _traintape_run(store: Path, run_id: str) -> dict[str, Any]:
    import traintape
    from traintape.read import history

    con = traintape.connect(store)
    rows: dict[int, dict[str, Any]] = {}
    sql = "SELECT step, key, value FROM metrics WHERE run_id = ? AND rank = 0"
    for step, key, value in con.execute(sql, [run_id]).fetchall():
        rows.setdefault(step, {})[key] = value
    sql = "SELECT step, body FROM events WHERE run_id = ? AND kind = 'text'"
    for step, body in con.execute(sql, [run_id]).fetchall():
        text = json.loads(body)
        rows.setdefault(step, {})[text["key"]] = text["text"]
    params = {
        key: history.decode_param(value)
        for _, key, value in history.latest_params(con, [run_id])
        if not key.startswith("wandb.")  # define_metric's and init's extras, not W&B config
    }
    info = history.show(con, run_id)
    return {
        "history": rows,
        "params": params,
        "summary": info["summary"],
        "status": info["run"]["status"],
    }


def _user_rows(history: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """W&B's rows without its own keys (_timestamp, _runtime), empty rows left out, numbers as
    floats (the store keeps float64)."""
    out = {}
    for step, row in history.items():
        user = {k: float(v) if isinstance(v, (int, float)) else v for k, v in row.items()}
        user = {k: v for k, v in user.items() if not k.startswith("_")}
        if user:
            out[step] = user
    return out


def _run_script(script: Path, cwd: Path, env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_documentation_example_stores_what_wandb_records(
    example: str, tmp_path: Path, capsys: Any
) -> None:
    """A W&B documentation example run unchanged but for its import line: W&B offline and
    traintape (a real collector) hold the same history rows (step -> values, text included),
    the same config (as params) and the same summary, which `traintape show` prints."""
    from traintape.cli.main import main as cli_main
    from traintape.schemas.values import flatten

    source = (EXAMPLES / f"{example}.py").read_text()
    assert source.count("\nimport wandb\n") == 1
    (tmp_path / "wb").mkdir()
    (tmp_path / "tt").mkdir()
    (tmp_path / "wb" / "script.py").write_text(source)
    tt_source = source.replace("\nimport wandb\n", "\nimport traintape.wandb as wandb\n")
    (tmp_path / "tt" / "script.py").write_text(tt_source)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRAINTAPE_"))}
    wb_env = {
        **base,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wb"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wb" / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wb" / "cache"),
        "WANDB_SILENT": "true",
    }
    _run_script(tmp_path / "wb" / "script.py", tmp_path / "wb", wb_env)
    store = tmp_path / "store"
    run_id = f"doc-{example.replace('_', '-')}"
    collector = CollectorProcess(store, "--system-interval", "0").start()
    try:
        tt_env = {**base, "TRAINTAPE_STORE": str(store), "TRAINTAPE_RUN_ID": run_id}
        _run_script(tmp_path / "tt" / "script.py", tmp_path / "tt", tt_env)
    finally:
        assert collector.stop() == 0
        collector.close()

    wb = _wandb_offline(tmp_path / "wb")
    tt = _traintape_run(store, run_id)
    assert wb["exit"] == 0 and tt["status"] == "completed"
    assert tt["history"] == _user_rows(wb["history"])
    config = flatten({k: v for k, v in wb["config"].items() if k != "_wandb"})
    assert tt["params"] == config
    summary = {k: v for k, v in wb["summary"].items() if not k.startswith("_")}
    assert tt["summary"] == summary
    assert cli_main(["show", run_id, "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "\nsummary\n" in shown or not summary


CRASHING_SCRIPT = """
import traintape.wandb as wandb

wandb.init(project="crash", group="sweep-1", job_type="train", config={"lr": 0.1})
wandb.define_metric("val/*", step_metric="epoch", summary="max")
wandb.log({"epoch": 0, "val/acc": 0.5, "w": wandb.Histogram([0.0, 1.0, 1.0, 3.0], num_bins=3)})
wandb.summary["note"] = "before the crash"
wandb.log({"loss": 0.25}, commit=False)
raise RuntimeError("boom")
"""


@pytest.mark.slow
def test_a_script_that_dies_keeps_its_open_row_summary_and_histograms(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    """A W&B-style script that raises before finish(): the run is failed, the row still open
    (commit=False) is stored, as are the summary, a histogram event, init's group and job_type
    and define_metric's definition as params."""
    import traintape
    from traintape.read import history

    script = tmp_path / "crash.py"
    script.write_text(CRASHING_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRAINTAPE_"))}
    env.update(TRAINTAPE_STORE=str(collector.store), TRAINTAPE_RUN_ID="crashrun")
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 1 and "boom" in out.stderr

    con = traintape.connect(collector.store)
    info = history.show(con, "crashrun")
    assert info["run"]["status"] == "failed"
    rows = con.execute(
        "SELECT step, key, value FROM metrics WHERE run_id = 'crashrun' ORDER BY step, key"
    ).fetchall()
    assert rows == [(0, "epoch", 0.0), (0, "val/acc", 0.5), (1, "loss", 0.25)]
    assert info["summary"] == {
        "epoch": 0,
        "val/acc": {"max": 0.5},
        "note": "before the crash",
        "w": {"_type": "histogram", "values": [1, 2, 1], "bins": [0.0, 1.0, 2.0, 3.0]},
        "loss": 0.25,
    }
    [(step, body)] = con.execute(
        "SELECT step, body FROM events WHERE run_id = 'crashrun' AND kind = 'histogram'"
    ).fetchall()
    assert step == 0 and json.loads(body) == {
        "key": "w",
        "min": 0.0,
        "max": 3.0,
        "counts": [1, 2, 1],
    }
    params = dict(con.execute("SELECT key, value FROM params WHERE run_id = 'crashrun'").fetchall())
    assert json.loads(params["wandb.group"]) == "sweep-1"
    assert json.loads(params["wandb.job_type"]) == "train"
    assert json.loads(params["wandb.metric.val/*.step_metric"]) == "epoch"
    assert json.loads(params["wandb.metric.val/*.summary"]) == "max"
    assert json.loads(params["lr"]) == 0.1
