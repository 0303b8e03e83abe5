"""Data for the examples: scikit-learn's bundled digits (no download) and random synthetic batches.

Batches are cut from in-memory tensors by a per-epoch permutation seeded by (seed, epoch) and sharded by
rank, so any rank can reproduce any epoch's order exactly, and a resumed run can skip to a batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["Dataset", "batches", "digits", "steps_per_epoch", "synthetic"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split held in memory."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Return the 8x8 digits (1797 images), pixels scaled to 0..1, split stratified with ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype("float32") / 16.0
    y = bunch.target.astype("int64")
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset(
        torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x), torch.from_numpy(test_y)
    )


def synthetic(samples: int = 4096, in_features: int = 256, classes: int = 10, seed: int = 0) -> Dataset:
    """Return random inputs with labels from a fixed random linear teacher (learnable, not meaningful)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, in_features, generator=generator)
    teacher = torch.randn(in_features, classes, generator=generator)
    y = (x @ teacher).argmax(dim=1)
    split = samples * 4 // 5
    return Dataset(x[:split], y[:split], x[split:], y[split:])


def steps_per_epoch(samples: int, batch_size: int, world_size: int) -> int:
    """Return the number of batches each rank runs per epoch (the shard is padded to equal length)."""
    per_rank = -(-samples // world_size)
    return -(-per_rank // batch_size)


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    epoch: int,
    rank: int,
    world_size: int,
    seed: int = 0,
    skip: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield this rank's batches of ``epoch`` (shuffled), skipping the first ``skip`` batches."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    per_rank = -(-len(x) // world_size)
    padded = torch.cat([order, order[: per_rank * world_size - len(order)]])
    shard = padded[rank::world_size]
    for start in range(skip * batch_size, len(shard), batch_size):
        index = shard[start : start + batch_size]
        yield x[index], y[index]
