"""W&B's documentation of `run.log`: `commit=False` to build one step across calls, explicit
steps (a repeated step merges, a lower one is dropped with a warning), nested dicts and text.
Runs unchanged under `import traintape.wandb as wandb`."""

import wandb

run = wandb.init(project="log_example")
for step in range(5):
    run.log({"loss": 0.2 * (5 - step)}, commit=False)
    # Somewhere else when I'm ready to report this step:
    run.log({"accuracy": 0.1 * step})

run.log({"eval": {"loss": 0.3, "acc": 0.8}}, step=10)
run.log({"eval/f1": 0.7}, step=10)
run.log({"late": 1.0}, step=7)  # below the current step: W&B drops it
run.log({"phase": "fine-tune", "lr": 0.01}, step=12)
run.log({"grad_norm": 2.5})  # joins step 12 and commits it
run.log({"loss": 0.05}, commit=False)  # written at finish
run.finish()
