"""Hugging Face Trainer: `Trainer(..., callbacks=[TraintapeCallback()])`.

Every rank logs into the same run (the W&B callback logs from the main process only):

- `on_train_begin` starts the run (or joins the current `traintape.emitter` run, whose end then
  stays the script's) with the `TrainingArguments` (`to_dict()`), the model's config and
  `model/num_parameters` as its config and params, as the W&B callback stores them;
- `on_log` logs at `state.global_step`, with the W&B callback's names: `eval_x` as `eval/x`,
  `test_x` as `test/x`, anything else as `train/x`; the one-off totals (`train_runtime`,
  `train_loss`, ...) also go to the run's summary;
- `on_save` records the `checkpoint-<step>` folder as a checkpoint event (bytes, sha256 of its
  files, the latest eval metrics, monitored as `metric_for_best_model`); folders the Trainer
  rotates away (`save_total_limit`) are recorded as deleted;
- `on_train_end` ends the run `completed`. When `train()` raises, `on_train_end` never comes: the
  run ends `failed` when the process exits (or as the next `train()` begins), `killed` on Ctrl-C
  or SIGTERM, with everything logged delivered.
"""

from __future__ import annotations

import os
from typing import Any

from traintape.emitter import Emitter, run_end
from traintape.integrations._run import is_live, join_or_start, missing_framework, split_values

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as exc:
    raise missing_framework("transformers", "transformers", exc) from exc

__all__ = ["TraintapeCallback", "rewrite_logs"]

SUMMARY_KEYS = frozenset(
    (
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "total_flos",
    )
)
"""What the Trainer logs once, at the end: also the run's summary (as W&B's callback has it)."""


def rewrite_logs(logs: dict[str, Any]) -> dict[str, Any]:
    """The W&B callback's names: `eval_loss` -> `eval/loss`, `test_x` -> `test/x`, else `train/`."""
    out: dict[str, Any] = {}
    for key, value in logs.items():
        if key.startswith("eval_"):
            out["eval/" + key[5:]] = value
        elif key.startswith("test_"):
            out["test/" + key[5:]] = value
        else:
            out["train/" + key] = value
    return out


class TraintapeCallback(TrainerCallback):
    """Logs a Trainer's training to traintape from every rank.

    `project` (default: `TrainingArguments.project` where it has one, else "huggingface"),
    `name` (default: `run_name` unless it is the output folder), `tags`, `run_id`, `store`,
    `address` and any other keyword are those of `traintape.emitter.init`.
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        *,
        tags: tuple[str, ...] | list[str] = (),
        run_id: str | None = None,
        store: str | os.PathLike[str] | None = None,
        address: str | None = None,
        **options: Any,
    ) -> None:
        self._project = project
        self._name = name
        self._options: dict[str, Any] = {
            "tags": tags,
            "run_id": run_id,
            "store": store,
            "address": address,
            **options,
        }
        self.run: Emitter | None = None
        self._owned = False
        self._eval: dict[str, Any] = {}  # the latest eval metrics, for the next checkpoint

    # -- the Trainer's events ----------------------------------------------------------------

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        if self._owned and is_live(self.run):  # the previous train() raised, or a new trial
            assert self.run is not None
            self.run.finish(run_end(self.run).status or "completed")
        project = self._project or getattr(args, "project", None) or "huggingface"
        options = {**self._options, "name": self._name or _run_name(args)}
        options["config"] = _config(args, model)
        self.run, self._owned = join_or_start(project, options)
        if not self._owned:
            self.run.log_params(options["config"])
        else:
            # Until on_train_end says otherwise, an exit means train() raised (the emitter's
            # excepthook and SIGTERM handler still say "killed" where that is what happened).
            run_end(self.run).status = "failed"
        self._eval = {}

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        run = self.run
        if not logs or run is None or not is_live(run):
            return
        values, texts = split_values(rewrite_logs(logs))
        step = state.global_step
        run.log(values, step)
        for key, text in texts.items():
            run.log_text(key, text, step)
        for key, value in logs.items():
            if key in SUMMARY_KEYS:
                run.summary[key] = value
        evals = {k: v for k, v in values.items() if k.startswith("eval/")}
        if evals:
            self._eval = evals

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        run = self.run
        if run is None or not is_live(run) or not args.should_save:
            return  # the process that writes the checkpoint records it
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):  # a hyperparameter search trial's folder: not ours
            return
        monitor = args.metric_for_best_model
        if monitor:
            monitor = "eval/" + monitor.removeprefix("eval_")
        run.record_checkpoint(
            folder,
            state.global_step,
            self._eval,
            monitor=monitor,
            mode="max" if args.greater_is_better else "min",
            origin="transformers.Trainer",
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        run = self.run
        if run is None or not self._owned or not is_live(run):
            return
        run_end(run).status = None
        run.finish("completed")


def _run_name(args: Any) -> str | None:
    name = getattr(args, "run_name", None)
    return name if name and name != args.output_dir else None


def _config(args: Any, model: Any) -> dict[str, Any]:
    """What the W&B callback stores as config: the model's config under the arguments."""
    config: dict[str, Any] = {}
    model_config = getattr(model, "config", None)
    if model_config is not None:
        config.update(model_config if isinstance(model_config, dict) else model_config.to_dict())
    config.update(args.to_dict())
    num_parameters = getattr(model, "num_parameters", None)
    if callable(num_parameters):
        config["model/num_parameters"] = num_parameters()
    return config
