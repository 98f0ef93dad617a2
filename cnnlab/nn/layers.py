"""Fully connected, shape, activation, dropout and loss layers."""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .._errors import positive_int
from . import init
from .module import Module, Parameter


class Linear(Module):
    """y = x W^T + b (a fully connected layer).

    Attributes: weight (out_features, in_features) and bias (out_features,), both
    initialised U(-1/sqrt(in_features), 1/sqrt(in_features)) as in PyTorch."""
    _fuses_relu = True   # Sequential calls forward(x, relu=True) for a Linear followed by a ReLU

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32):
        where = type(self).__name__
        self.in_features = positive_int(in_features, "in_features", where)
        self.out_features = positive_int(out_features, "out_features", where)
        self.weight = Parameter(np.empty((out_features, in_features), dtype))
        self.bias = Parameter(np.empty((out_features,), dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x, *, relu: bool = False):
        return F.linear(x, self.weight, self.bias, relu=relu)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Merges axes start_dim..end_dim: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input (a placeholder, e.g. an identity shortcut)."""

    def forward(self, x):
        return x


class ReLU(Module):
    _is_relu = True   # a Conv2d, BatchNorm or Linear before it applies it fused (see Sequential)

    def forward(self, x):
        return F.relu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class PReLU(Module):
    """Leaky ReLU whose negative slope is learned: one slope for all channels
    (num_parameters=1) or one per channel (num_parameters=C). Initial slope 0.25."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, *, dtype=np.float32):
        self.num_parameters = positive_int(num_parameters, "num_parameters", type(self).__name__)
        self.weight = Parameter(np.full((num_parameters,), init, dtype))

    def forward(self, x):
        return F.prelu(x, self.weight)

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class ELU(Module):
    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def forward(self, x):
        return F.elu(x, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class GELU(Module):
    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class _AlongDim(Module):
    def __init__(self, dim: int = -1):
        self.dim = dim

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_AlongDim):
    """exp(x_i) / sum_j exp(x_j) along ``dim``."""

    def forward(self, x):
        return F.softmax(x, self.dim)


class LogSoftmax(_AlongDim):
    """log(softmax(x)) along ``dim``, computed stably."""

    def forward(self, x):
        return F.log_softmax(x, self.dim)


class Dropout(Module):
    """Zeroes each element with probability p in training (scaling the rest by 1/(1-p));
    the identity in evaluation mode."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class CrossEntropyLoss(Module):
    """See :func:`cnnlab.functional.cross_entropy`."""

    # keyword-only after weight: torch's second positional argument is the deprecated size_average
    def __init__(self, weight=None, *, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0):
        self.weight, self.ignore_index = weight, ignore_index
        self.reduction, self.label_smoothing = reduction, label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing)


class NLLLoss(Module):
    def __init__(self, weight=None, *, ignore_index: int = -100, reduction: str = "mean"):
        self.weight, self.ignore_index, self.reduction = weight, ignore_index, reduction

    def forward(self, input, target):
        return F.nll_loss(input, target, self.weight, self.ignore_index, self.reduction)


class MSELoss(Module):
    def __init__(self, *, reduction: str = "mean"):
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)
