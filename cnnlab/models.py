"""The model zoo: reference architectures, each a function returning a fresh model.

Every builder takes ``in_shape`` (C, H, W) and ``num_classes``, so one name works for
MNIST (1, 28, 28), CIFAR-10 (3, 32, 32) or the embedded 8x8 digits. ``create(name, ...)``
builds one by name (the command line uses it); ``MODELS`` lists them.
"""
from __future__ import annotations

from . import nn


def mlp(in_shape=(1, 28, 28), num_classes: int = 10, hidden=(512, 256), dropout: float = 0.2) -> nn.Sequential:
    """The fully connected baseline: flatten, then Linear-ReLU-Dropout per hidden layer."""
    layers, width = [nn.Flatten()], int(in_shape[0] * in_shape[1] * in_shape[2])
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = h
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def lenet5(in_shape=(1, 28, 28), num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling:
    conv 6@5x5 - pool 2 - conv 16@5x5 - pool 2 - fc 120 - fc 84 - fc classes.

    The first convolution pads by 2, so 28x28 MNIST is treated like the original 32x32
    input. Inputs under 16 pixels a side (the embedded 8x8 digits) cannot afford halving
    before the second 5x5 convolution: for them the first pooling is left out and the
    second convolution is padded by 2 as well (on the digits this gains about a point of
    test accuracy over keeping the pooling)."""
    c, h, w = in_shape
    if min(h, w) >= 16:
        first_pool, pad2, h2, w2 = [nn.MaxPool2d(2)], 0, (h // 2 - 4) // 2, (w // 2 - 4) // 2
    else:
        first_pool, pad2, h2, w2 = [], 2, h // 2, w // 2
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), *first_pool,
        nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * h2 * w2, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def mnist_cnn(in_shape=(1, 28, 28), num_classes: int = 10) -> nn.Sequential:
    """A common MNIST CNN: conv32 - conv64 - pool - conv64 - pool - fc128 - fc classes (3x3 convs)."""
    c, h, w = in_shape
    h2, w2 = ((h - 4) // 2 - 2) // 2, ((w - 4) // 2 - 2) // 2  # two valid convs, pool, valid conv, pool
    if min(h2, w2) < 1:
        raise ValueError(f"mnist_cnn: needs inputs of at least 10x10 pixels, got {h}x{w}")
    return nn.Sequential(
        nn.Conv2d(c, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * h2 * w2, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _conv_bn_relu(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def vgg_small(in_shape=(1, 28, 28), num_classes: int = 10, widths=(32, 64, 128), dropout: float = 0.3) -> nn.Sequential:
    """A small VGG-style network: per stage two 3x3 conv-BN-ReLU and a 2x2 max pool, then
    global average pooling, dropout and one linear layer. Any input size of at least
    2**len(widths) pixels works."""
    if min(in_shape[1:]) < 2 ** len(widths):
        raise ValueError(f"vgg_small: {len(widths)} poolings need inputs of at least {2 ** len(widths)} pixels a side, "
                         f"got {in_shape[1]}x{in_shape[2]}")
    layers, cin = [], in_shape[0]
    for cout in widths:
        layers += _conv_bn_relu(cin, cout) + _conv_bn_relu(cout, cout) + [nn.MaxPool2d(2)]
        cin = cout
    layers += [nn.GlobalAvgPool2d()] + ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def allconv(in_shape=(3, 32, 32), num_classes: int = 10, width: int = 96) -> nn.Sequential:
    """All-convolutional net (Springenberg et al., 2015): strided convolutions instead of
    pooling, 1x1 convolutions down to one map per class, and global average pooling, so it
    accepts inputs of any size (at least 8x8)."""
    c, w2 = in_shape[0], 2 * width
    return nn.Sequential(
        *_conv_bn_relu(c, width), *_conv_bn_relu(width, width),
        nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        *_conv_bn_relu(width, w2), *_conv_bn_relu(w2, w2),
        nn.Conv2d(w2, w2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(),
        *_conv_bn_relu(w2, w2),
        nn.Conv2d(w2, w2, 1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(),
        nn.Conv2d(w2, num_classes, 1), nn.GlobalAvgPool2d(),
    )


class ResNet(nn.Module):
    """A residual network: a stem, stages of residual blocks (the first block of each
    stage after the first halves the resolution and widens), global average pooling and a
    linear classifier. Built by :func:`resnet20` ... :func:`resnet152`."""

    def __init__(self, block, stage_blocks, widths, stem, num_classes, shortcut="auto"):
        self.stem = stem
        cin = widths[0]  # both stems output the first stage's width (16 for CIFAR, 64 for ImageNet)
        self.stages = []
        for i, (n, width) in enumerate(zip(stage_blocks, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(block(cin, width, stride, shortcut))
                cin = width * block.expansion
            self.stages.append(nn.Sequential(*blocks))
        self.pool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.pool(x))


def _cifar_resnet(depth, in_shape, num_classes, shortcut):
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    stem = nn.Sequential(*_conv_bn_relu(in_shape[0], 16))
    return ResNet(nn.BasicBlock, (n, n, n), (16, 32, 64), stem, num_classes, shortcut)


def resnet20(in_shape=(3, 32, 32), num_classes: int = 10, shortcut: str = "identity") -> ResNet:
    """ResNet-20 for CIFAR (He et al., 2016, section 4.2): 3 stages of 3 basic blocks,
    16/32/64 channels, 0.27M parameters. ``shortcut``: 'identity' (the paper's option A:
    zero-padded identity where the shape changes) or 'projection' (1x1 conv + BN)."""
    return _cifar_resnet(20, in_shape, num_classes, shortcut)


def resnet32(in_shape=(3, 32, 32), num_classes: int = 10, shortcut: str = "identity") -> ResNet:
    """ResNet-32 for CIFAR: 3 stages of 5 basic blocks."""
    return _cifar_resnet(32, in_shape, num_classes, shortcut)


def resnet56(in_shape=(3, 32, 32), num_classes: int = 10, shortcut: str = "identity") -> ResNet:
    """ResNet-56 for CIFAR: 3 stages of 9 basic blocks."""
    return _cifar_resnet(56, in_shape, num_classes, shortcut)


def _imagenet_resnet(stage_blocks, in_shape, num_classes):
    stem = nn.Sequential(nn.Conv2d(in_shape[0], 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
    return ResNet(nn.Bottleneck, stage_blocks, (64, 128, 256, 512), stem, num_classes, "auto")


def resnet50(in_shape=(3, 224, 224), num_classes: int = 1000) -> ResNet:
    """ResNet-50 (ImageNet style): 7x7 stem, bottleneck stages of 3, 4, 6, 3 blocks; 25.6M parameters."""
    return _imagenet_resnet((3, 4, 6, 3), in_shape, num_classes)


def resnet101(in_shape=(3, 224, 224), num_classes: int = 1000) -> ResNet:
    """ResNet-101: bottleneck stages of 3, 4, 23, 3 blocks; 44.5M parameters."""
    return _imagenet_resnet((3, 4, 23, 3), in_shape, num_classes)


def resnet152(in_shape=(3, 224, 224), num_classes: int = 1000) -> ResNet:
    """ResNet-152: bottleneck stages of 3, 8, 36, 3 blocks; 60.2M parameters."""
    return _imagenet_resnet((3, 8, 36, 3), in_shape, num_classes)


MODELS = {f.__name__: f for f in (mlp, lenet5, mnist_cnn, vgg_small, allconv, resnet20, resnet32, resnet56,
                                  resnet50, resnet101, resnet152)}


def create(name: str, in_shape, num_classes: int, **kwargs) -> nn.Module:
    """Build the zoo model ``name`` for inputs of ``in_shape`` (C, H, W)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if len(tuple(in_shape)) != 3 or min(in_shape) < 1:
        raise ValueError(f"{name}: in_shape must be (C, H, W) of positive sizes, got {tuple(in_shape)}")
    return MODELS[name](in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)
