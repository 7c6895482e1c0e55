"""W&B's documentation, "Configure experiments": a config dict at init, argparse flags, update,
setdefaults, attribute and item access. Runs unchanged under `import traintape.wandb as wandb`."""

import argparse

import wandb

config = {
    "epochs": 4,
    "batch_size": 32,
    "learning_rate": 0.001,
    "architecture": "CNN",
    "dataset": {"name": "mnist", "classes": 10},
}
run = wandb.init(project="config_example", config=config)

parser = argparse.ArgumentParser()
parser.add_argument("-b", "--batch-size", type=int, default=8, metavar="N")
parser.add_argument("--dropout", type=float, default=0.25)
args = parser.parse_args([])
wandb.config.update(args, allow_val_change=True)  # batch_size 32 -> 8
wandb.config.optimizer = "adam"
wandb.config["momentum"] = 0.9
wandb.config.setdefaults({"momentum": 0.5, "warmup": 100})

for epoch in range(wandb.config.epochs):
    loss = wandb.config["learning_rate"] * 1000 / (epoch + 1)
    wandb.log({"epoch": epoch, "loss": loss, "lr": run.config.learning_rate})
wandb.finish()
