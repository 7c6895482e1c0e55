"""W&B's documentation, "Log summary metrics": the best accuracy set in the summary by hand,
min/max summaries with `define_metric`, and a test accuracy after training. Runs unchanged
under `import traintape.wandb as wandb`."""

import wandb

wandb.init(project="summary_example", config={"epochs": 5})
wandb.define_metric("loss", summary="min")
wandb.define_metric("acc", summary="max")
wandb.define_metric("lr", summary="first,last,mean")

accuracies = [0.61, 0.72, 0.70, 0.81, 0.79]
best_accuracy = 0.0
for epoch in range(1, wandb.config.epochs + 1):
    test_loss, test_accuracy = 1.0 / epoch, accuracies[epoch - 1]
    wandb.log({"loss": test_loss, "acc": test_accuracy, "lr": 0.1 / epoch, "epoch": epoch})
    if test_accuracy > best_accuracy:
        wandb.run.summary["best_accuracy"] = test_accuracy
        best_accuracy = test_accuracy

wandb.summary["test_accuracy"] = 0.77
wandb.summary.update({"model": "cnn", "params_m": 1.5})
wandb.finish()
