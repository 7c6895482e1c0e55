"""A Hugging Face `Trainer` job on CPU logging through `TraintapeCallback`: run under torchrun
with 2 ranks (gloo). A tiny BERT built from a config (nothing downloaded) learns random labels
for 6 steps, evaluating and saving every 3 with `save_total_limit=1`, so the Trainer rotates
`checkpoint-3` away when it saves `checkpoint-6`. `--fail-at N` makes the loss raise at step N.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from traintape.integrations.transformers import TraintapeCallback


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 50, (n, 8), generator=gen)
        self.labels = torch.randint(0, 2, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class FailingTrainer(Trainer):
    fail_at = -1

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if self.state.global_step == self.fail_at:
            raise RuntimeError("compute_loss fails on purpose")
        return super().compute_loss(model, inputs, *args, **kwargs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--fail-at", type=int, default=-1)
    args = p.parse_args()

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    training = TrainingArguments(
        output_dir=args.root,
        max_steps=6,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="steps",
        save_steps=3,
        save_total_limit=1,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = FailingTrainer(
        model=BertForSequenceClassification(config),
        args=training,
        train_dataset=RandomTokens(64, 1),
        eval_dataset=RandomTokens(16, 2),
        callbacks=[TraintapeCallback(project="hf-trainer", store=args.store)],
    )
    trainer.fail_at = args.fail_at
    trainer.train()


if __name__ == "__main__":
    main()
