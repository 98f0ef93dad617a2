"""Residual building blocks: out = F(x) + shortcut(x).

Deep plain networks train worse than shallow ones; learning the residual F(x) and adding
the input back fixes it (He et al., 2016). The shortcut is the identity when shapes
match; when the block changes the number of channels or the resolution, it is either a
1x1 projection convolution (option B of the paper) or a parameter-free identity that
subsamples and pads channels with zeros (option A, used for the CIFAR ResNets)."""
from __future__ import annotations

from .._errors import InputError
from ..autograd import Function, as_tensor
from ..kernels.padding import empty_in_order
from .conv import Conv2d
from .layers import Identity, ReLU
from .module import Module, Sequential, conv_bn
from .normalization import BatchNorm2d


class Residual(Module):
    """out = body(x) + shortcut(x), for any ``body`` and ``shortcut`` (default identity)."""

    def __init__(self, body: Module, shortcut: Module = None):
        self.body = body
        self.shortcut = Identity() if shortcut is None else shortcut

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class _SubsamplePadChannels(Function):
    """x[:, :, ::s, ::s] followed by zero channels up to ``channels``, in one pass (an
    index and a concatenation with zeros were two ops and three passes; ResNet-20 at
    batch 1 felt their calls). Channels-last memory, as convolutions leave it, stays
    channels-last and is copied as such, in runs of C values: NumPy's copy through the
    NCHW views took twice as long (47 us of ResNet-20 at batch 1)."""

    @staticmethod
    def forward(ctx, x, *, stride, channels):
        n, c, h, w = x.shape
        last = x.transpose(0, 2, 3, 1).flags.c_contiguous
        out = empty_in_order((n, channels, -(-h // stride), -(-w // stride)), _order(last), x.dtype, zeros=True)
        if last:
            _nhwc(out)[..., :c] = _nhwc(x)[:, ::stride, ::stride]
        else:
            out[:, :c] = x[:, :, ::stride, ::stride]
        ctx.meta = (x.shape, stride, last)
        return out

    @staticmethod
    def backward(ctx, g):
        shape, stride, last = ctx.meta
        dx = empty_in_order(shape, _order(last), g.dtype, zeros=True)
        if last:
            _nhwc(dx)[:, ::stride, ::stride] = _nhwc(g)[..., :shape[1]]
        else:
            dx[:, :, ::stride, ::stride] = g[:, :shape[1]]
        return (dx,)


def _nhwc(a):
    return a.transpose(0, 2, 3, 1)


def _order(channels_last: bool):
    return (0, 2, 3, 1) if channels_last else (0, 1, 2, 3)


class PadChannelsShortcut(Module):
    """Option A identity shortcut: subsample by ``stride`` and append zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        if out_channels < in_channels:
            raise ValueError(f"PadChannelsShortcut: out_channels ({out_channels}) must be >= in_channels ({in_channels})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x):
        x = as_tensor(x, type(self).__name__, "input")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"expected input of shape (N, {self.in_channels}, H, W), got {x.shape}")
        return _SubsamplePadChannels.apply(x, stride=self.stride, channels=self.out_channels)

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _shortcut(in_channels, out_channels, stride, kind, where):
    if kind not in ("auto", "identity", "projection"):
        raise ValueError(f"{where}: shortcut must be 'auto', 'identity' or 'projection', got {kind!r}")
    same = stride == 1 and in_channels == out_channels
    if kind == "projection" or (kind == "auto" and not same):
        return Sequential(Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), BatchNorm2d(out_channels))
    return Identity() if same else PadChannelsShortcut(in_channels, out_channels, stride)


class BasicBlock(Module):
    """Two 3x3 convolutions with batch norm: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    Args:
        in_channels, out_channels, stride: the first convolution's stride (2 halves H and W).
        shortcut: 'auto' (identity when shapes match, else projection), 'identity'
            (zero-padding option A when shapes differ) or 'projection' (1x1 conv + BN).
    """
    expansion = 1

    def __init__(self, in_channels, out_channels, stride=1, shortcut="auto"):
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride, shortcut, type(self).__name__)
        self.relu = ReLU()

    def forward(self, x):
        out = conv_bn(self.conv1, self.bn1, x, self.relu)
        return conv_bn(self.conv2, self.bn2, out, self.relu, shortcut=lambda: self.shortcut(x))


class Bottleneck(Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), as in ResNet-50/101/152:
    relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)).
    ``width`` is the inner channel count; the block outputs ``4 * width`` channels."""
    expansion = 4

    def __init__(self, in_channels, width, stride=1, shortcut="auto"):
        out_channels = width * self.expansion
        self.conv1 = Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = BatchNorm2d(width)
        self.conv2 = Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = BatchNorm2d(width)
        self.conv3 = Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride, shortcut, type(self).__name__)
        self.relu = ReLU()

    def forward(self, x):
        out = conv_bn(self.conv1, self.bn1, x, self.relu)
        out = conv_bn(self.conv2, self.bn2, out, self.relu)
        return conv_bn(self.conv3, self.bn3, out, self.relu, shortcut=lambda: self.shortcut(x))
