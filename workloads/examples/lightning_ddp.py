"""A PyTorch Lightning job with the harness as a callback: a small MLP LightningModule on scikit-learn's digits.

Nothing is downloaded: the digits (8x8 images, 10 classes) come with scikit-learn. Under torchrun, one process
per rank (Lightning joins torchrun's world, :func:`~etj_workload.integrations.lightning.trainer_options`):

    torchrun --nproc-per-node 2 workloads/examples/lightning_ddp.py --epochs 6

workloads/examples/lightning-ddp.yaml runs it as an EfficientTrainingJob (the script in a ConfigMap): the
harness then follows the operator (power policy, cap, compression stages, checkpoint requests, stop) and
reports the progress in the job's status. docs/bring-your-own-training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from etj_workload.integrations.lightning import EtjLightningCallback, trainer_options


class DigitsClassifier(pl.LightningModule):
    """64 -> 128 -> 64 -> 10, Adam."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits)."""
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy on one batch (Lightning does the backward and the step)."""
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        """Adam at ``lr``."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def digits(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """The digits, scaled to [0, 1], split 80/20 (stratified)."""
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    train, test = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=data.target)
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def make_evaluate(test: TensorDataset):
    """The job-wide accuracy on ``test``: each rank scores its shard, the counts are summed over ranks."""

    def evaluate(module: nn.Module) -> float:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        x, y = test.tensors[0][rank::world], test.tensors[1][rank::world]
        device = next(module.parameters()).device
        right = (module(x.to(device)).argmax(dim=1).cpu() == y).sum().item()
        counts = torch.tensor([right, len(y)], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(counts)
        return float(counts[0] / counts[1])

    return evaluate


def main() -> int:
    """Train under the harness; return the exit code (0, or 143 after SIGTERM)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-after-steps", type=int, help="checkpoint and stop after this many steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    pl.seed_everything(args.seed, verbose=False)
    train, test = digits(args.seed)
    etj = EtjLightningCallback(evaluate=make_evaluate(test), stop_after_steps=args.stop_after_steps)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[etj],
        logger=False,
        enable_checkpointing=False,  # the harness saves (epoch ends, the operator's requests, stops)
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_options(),
    )
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    trainer.fit(DigitsClassifier(args.lr), loader, ckpt_path=etj.ckpt_path, weights_only=True)
    return etj.exit_code


if __name__ == "__main__":
    sys.exit(main())
