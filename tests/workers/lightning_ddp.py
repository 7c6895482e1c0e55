"""A Lightning DDP job on CPU (gloo) logging through `TraintapeLogger`, run under torchrun or
alone (Lightning then starts rank 1 itself): `Trainer(strategy="ddp", devices=2,
accelerator="cpu")`, 2 epochs of 4 optimizer steps per rank, validation after each epoch, and a
`ModelCheckpoint` saving every 2 steps and keeping the 2 latest (monitor "step", mode "max"), so
2 of its 4 files are removed during the run; after each validation, sample images and a table
through WandbLogger's `log_image`/`log_table`. `--fail-at N` makes `training_step` raise at global
step N on every rank.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from traintape.integrations.lightning import TraintapeLogger


class Tiny(L.LightningModule):
    def __init__(
        self, lr: float = 0.05, hidden: int = 8, optimizer: dict | None = None, fail_at: int = -1
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.global_step == self.hparams.fail_at:
            raise RuntimeError("training_step fails on purpose")
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # WandbLogger's media calls: two sample images per rank (a CHW tensor, an HWC array) and
        # a table, at the optimizer step (4, then 8).
        step, rank = self.global_step, self.global_rank
        chw = torch.full((3, 4, 6), step * 10 + rank, dtype=torch.uint8)
        hwc = (255 - chw).permute(1, 2, 0).numpy()
        self.logger.log_image("samples", [chw, hwc], step=step, caption=[f"rank {rank}", "hwc"])
        self.logger.log_table("preds", columns=["step", "rank"], data=[[step, rank]], step=step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--fail-at", type=int, default=-1)
    args = p.parse_args()

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    model = Tiny(optimizer={"name": "sgd", "momentum": 0.0}, fail_at=args.fail_at)
    checkpoints = ModelCheckpoint(
        dirpath=f"{args.root}/checkpoints",
        monitor="step",
        mode="max",
        save_top_k=2,
        every_n_train_steps=2,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=TraintapeLogger(project="lightning-ddp", store=args.store),
        callbacks=[checkpoints],
        log_every_n_steps=1,
        default_root_dir=args.root,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))


if __name__ == "__main__":
    main()
