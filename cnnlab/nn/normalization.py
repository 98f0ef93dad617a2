"""Batch normalisation layers."""
from __future__ import annotations

import numpy as np

from .._errors import InputError
from .. import functional as F
from ..autograd import Tensor
from .._errors import positive_int
from .module import Module, Parameter


class _BatchNorm(Module):
    """Normalises each channel by batch statistics in training and by running statistics
    in evaluation, then scales by ``weight`` (gamma) and shifts by ``bias`` (beta).

    Args:
        num_features: C. eps: added to the variance. Default 1e-5.
        momentum: running = (1 - momentum) * running + momentum * batch. Default 0.1;
            None gives a cumulative average over all batches seen.
        affine: learn gamma and beta. track_running_stats: keep running statistics
            (else batch statistics are used in evaluation too).

    Buffers: running_mean (zeros), running_var (ones; updated with the unbiased batch
    variance), num_batches_tracked."""

    _ranks = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 dtype=np.float32):
        self.num_features = positive_int(num_features, "num_features", type(self).__name__)
        self.eps, self.momentum = eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        if track_running_stats:
            self.running_mean = Tensor(np.zeros(num_features, dtype))
            self.running_var = Tensor(np.ones(num_features, dtype))
            self.num_batches_tracked = Tensor(np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x, *, relu: bool = False, residual=None):
        if x.ndim not in self._ranks:
            raise InputError(f"expected a {' or '.join(f'{r}-D' for r in self._ranks)} input, got shape {x.shape}")
        momentum = self.momentum
        counting = self.training and self.track_running_stats
        if counting and momentum is None:  # cumulative average: this batch weighs 1/(batches so far)
            momentum = 1.0 / float(self.num_batches_tracked.data + 1)
        # without running statistics, batch statistics normalise in evaluation too
        use_batch_stats = self.training or not self.track_running_stats
        out = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                           use_batch_stats, momentum, self.eps, relu=relu, residual=residual)
        if counting:  # only batches that were actually used
            self.num_batches_tracked.data += 1
        return out

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) input."""
    _ranks = (2, 3)
    _fuses_relu = True   # Sequential calls forward(x, relu=True) for a BatchNorm followed by a ReLU
    _takes_residual = True   # and the residual blocks forward(x, relu=True, residual=shortcut)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input, per channel over N, H and W."""
    _ranks = (4,)
    _fuses_relu = True
    _takes_residual = True
    _folds_into_conv = True   # inference folds it into a Conv2d before it (nn.module.conv_bn)
