"""PyTorch twins of the cnnlab zoo models the benchmarks time.

Each twin has the same layers in the same order, the same hyperparameters and the same
attribute names as its cnnlab model, so the two ``state_dict``s have identical keys and
shapes: :func:`copy_weights` loads a cnnlab model's weights into its twin, and
:func:`check_twin` confirms that both compute the same function before anything is timed.
Only the input sizes the benchmarks use are covered (28x28 for LeNet-5 and the MNIST
CNN, 32x32 for ResNet-20).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def lenet5(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """Twin of ``cnnlab.models.lenet5`` for 28x28 inputs (the first convolution pads by 2)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def mnist_cnn(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """Twin of ``cnnlab.models.mnist_cnn`` for 28x28 inputs: conv32 - conv64 - pool -
    conv64 - pool - fc128 - fc classes, unpadded 3x3 convolutions."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


class PadChannelsShortcut(nn.Module):
    """Option A identity shortcut (He et al., 2016): subsample by ``stride`` and append
    zero channels, as ``cnnlab.nn.residual.PadChannelsShortcut`` does. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        if not self.extra:
            return x
        n, _, h, w = x.shape
        return torch.cat([x, x.new_zeros(n, self.extra, h, w)], dim=1)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), as ``cnnlab.nn.BasicBlock``
    with ``shortcut='identity'``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        same = stride == 1 and in_channels == out_channels
        self.shortcut = nn.Identity() if same else PadChannelsShortcut(in_channels, out_channels, stride)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """Twin of ``cnnlab.models.resnet20``: a conv-BN-ReLU stem, three stages of three
    basic blocks (16, 32, 64 channels; the first block of stages 2 and 3 has stride 2),
    global average pooling and a linear classifier."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, blocks_per_stage: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        stages, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            blocks = [BasicBlock(cin if j == 0 else width, width, 2 if (j == 0 and i > 0) else 1)
                      for j in range(blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(x.mean(dim=(2, 3)))


TWINS = {"lenet5": lenet5, "mnist_cnn": mnist_cnn, "resnet20": ResNet20}


def copy_weights(cnnlab_model, torch_model) -> None:
    """Load the cnnlab model's parameters and buffers into its twin (keys must match)."""
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in cnnlab_model.state_dict().items()}
    torch_model.load_state_dict(state, strict=True)


def check_twin(cnnlab_model, torch_model, in_shape, atol: float = 1e-4) -> float:
    """Copy the weights, run both models in eval mode on one random batch and raise if the
    logits differ by more than ``atol``. Returns the largest absolute difference."""
    import cnnlab

    copy_weights(cnnlab_model, torch_model)
    x = np.random.default_rng(0).standard_normal((4,) + tuple(in_shape)).astype(np.float32)
    cnnlab_model.eval()
    torch_model.eval()
    with cnnlab.no_grad():
        ours = cnnlab_model(cnnlab.Tensor(x)).data
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(x)).numpy()
    cnnlab_model.train()
    torch_model.train()
    diff = float(np.abs(ours - theirs).max())
    if not diff <= atol:
        raise AssertionError(f"torch twin of {type(cnnlab_model).__name__} disagrees: max |logit diff| {diff:.3g}")
    return diff
