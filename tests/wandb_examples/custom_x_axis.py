"""W&B's documentation, "Customize log axes": `define_metric` with a custom x-axis, and a glob
("val/*") synced to an epoch counter logged in an earlier row (step_sync). Runs unchanged
under `import traintape.wandb as wandb`."""

import wandb

wandb.init(project="custom_x_axis")
# define our custom x axis metric
wandb.define_metric("custom_step")
# define which metrics will be plotted against it
wandb.define_metric("validation_loss", step_metric="custom_step")
for i in range(10):
    log_dict = {
        "train_loss": 1 / (i + 1),
        "custom_step": i**2,
        "validation_loss": 1 / (i + 1),
    }
    wandb.log(log_dict)

wandb.define_metric("epoch")
wandb.define_metric("val/*", step_metric="epoch")
for epoch in range(3):
    for batch in range(4):
        wandb.log({"train/loss": 1.0 / (1 + epoch * 4 + batch)})
    wandb.log({"epoch": epoch})
    # logged without the epoch: W&B adds the epoch's last value to this row
    wandb.log({"val/loss": 0.5 / (epoch + 1), "val/acc": 0.6 + 0.1 * epoch})
wandb.finish()
