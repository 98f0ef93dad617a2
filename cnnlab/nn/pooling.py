"""Pooling layers."""
from __future__ import annotations

from .._errors import pair
from .. import functional as F
from ..functional.pooling import check_pool_padding
from .module import Module


class MaxPool2d(Module):
    """Max over KxK windows (see :func:`cnnlab.functional.max_pool2d`); stride defaults to
    the kernel size. Shape: Ho = floor((H + 2p - d(k-1) - 1) / s) + 1 (ceil with ceil_mode)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        where = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", where)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", where)
        self.padding = pair(padding, "padding", where, allow_zero=True)
        self.dilation = pair(dilation, "dilation", where)
        check_pool_padding(self.padding, self.kernel_size, where)
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """Average over KxK windows (see :func:`cnnlab.functional.avg_pool2d`)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        where = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", where)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", where)
        self.padding = pair(padding, "padding", where, allow_zero=True)
        check_pool_padding(self.padding, self.kernel_size, where)
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}")


class _Adaptive(Module):
    def __init__(self, output_size):
        self.output_size = output_size

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(_Adaptive):
    """Average pooling to a fixed (Ho, Wo) whatever the input size."""

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)


class AdaptiveMaxPool2d(_Adaptive):
    """Max pooling to a fixed (Ho, Wo) whatever the input size."""

    def forward(self, x):
        return F.adaptive_max_pool2d(x, self.output_size)


class _Global(Module):
    def __init__(self, keepdim: bool = False):
        self.keepdim = keepdim

    def extra_repr(self):
        return "keepdim=True" if self.keepdim else ""


class GlobalAvgPool2d(_Global):
    """Mean over all positions: (N, C, H, W) -> (N, C) (or (N, C, 1, 1) with keepdim)."""

    def forward(self, x):
        return F.global_avg_pool2d(x, self.keepdim)


class GlobalMaxPool2d(_Global):
    """Max over all positions: (N, C, H, W) -> (N, C) (or (N, C, 1, 1) with keepdim)."""

    def forward(self, x):
        return F.global_max_pool2d(x, self.keepdim)
