"""Reference architectures."""
from __future__ import annotations

from . import nn


def lenet5(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 (LeCun et al., 1998) for 28x28 inputs, with ReLU and max pooling:
    conv 6@5x5 (padding 2) - pool - conv 16@5x5 - pool - fc 120 - fc 84 - fc classes."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )
