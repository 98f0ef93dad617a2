"""Stateless ops, named, ordered and defaulted as in ``torch.nn.functional``.

Each op checks its arguments where they enter and raises ``ValueError``/``TypeError``
naming the op, what it expected and what it received."""
from .activation import elu, gelu, leaky_relu, log_softmax, prelu, relu, sigmoid, softmax, tanh
from .conv import (conv2d, conv_output_size, fold, locally_connected2d, true_conv2d, unfold)
from .loss import cross_entropy, mse_loss, nll_loss
from .misc import dropout, flatten, linear, pad
from .normalization import batch_norm
from .pooling import (adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, global_avg_pool2d,
                      global_max_pool2d, max_pool2d)

__all__ = [
    "conv2d", "true_conv2d", "locally_connected2d", "unfold", "fold", "conv_output_size",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "global_avg_pool2d", "global_max_pool2d",
    "linear", "relu", "leaky_relu", "prelu", "elu", "gelu", "sigmoid", "tanh", "softmax", "log_softmax",
    "cross_entropy", "nll_loss", "mse_loss", "dropout", "batch_norm", "pad", "flatten",
]
