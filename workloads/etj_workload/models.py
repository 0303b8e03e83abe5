"""Example models: an MLP and a small CNN for the digits data, and a larger synthetic-data MLP."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MODEL_NAMES", "DigitsCnn", "DigitsMlp", "SyntheticMlp", "build_model"]


class DigitsMlp(nn.Module):
    """Two hidden layers over the 64 pixels of an 8x8 digit."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.net(x)  # type: ignore[no-any-return]


class DigitsCnn(nn.Module):
    """Two 3x3 convolutions, a max-pool and two linear layers over a 1x8x8 digit."""

    def __init__(self, channels: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * 16, hidden),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.head(self.features(x.view(-1, 1, 8, 8)))  # type: ignore[no-any-return]


class SyntheticMlp(nn.Module):
    """A deep, wide MLP on random data: a throughput and power workload with a tunable size."""

    def __init__(self, width: int = 1024, depth: int = 4, in_features: int = 256, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_features, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.net(x)  # type: ignore[no-any-return]


MODEL_NAMES = ("digits-mlp", "digits-cnn", "synthetic-mlp")


def build_model(name: str, *, width: int = 1024, depth: int = 4) -> nn.Module:
    """Build a model by its CLI name."""
    if name == "digits-mlp":
        return DigitsMlp()
    if name == "digits-cnn":
        return DigitsCnn()
    if name == "synthetic-mlp":
        return SyntheticMlp(width=width, depth=depth)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
