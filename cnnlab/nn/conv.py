"""Convolution layers: Conv2d (shared weights) and LocallyConnected2d (none shared)."""
from __future__ import annotations

import math
import weakref

import numpy as np

from .._errors import pair, positive_int
from .. import functional as F
from ..autograd import Tensor, is_grad_enabled
from ..functional.conv import (_conv2d, _conv2d_arguments, check_padding_mode, conv_output_size,
                               normalize_padding)
from . import init
from .fusion import folded
from .module import Module, Parameter


class Conv2d(Module):
    r"""2-D convolution layer (cross-correlation, as in PyTorch).

    A layer of F filters, each KH x KW over C/groups input channels, has
    F * (KH * KW * C/groups + 1) parameters (one bias per filter) and applies the same
    filters at every position (weight sharing). See :func:`cnnlab.functional.conv2d`.

    Args:
        in_channels (C), out_channels (F): channels in and out.
        kernel_size: int or (KH, KW). stride: default 1. padding: int, pair, 'valid' or
            'same'. dilation: default 1. groups: default 1 (C for depthwise).
        bias: learn a bias per filter. Default True.
        padding_mode: 'zeros', 'reflect', 'replicate', 'circular' or 'symmetric'.
        untied_bias: one bias per filter *and output position*, (F, Ho, Wo), so a filter
            can behave differently near the border; needs ``input_size``.
        input_size: (H, W) of the input; required with ``untied_bias``.
        flip_kernel: flip the kernel, making this a true convolution.
        dtype: of the parameters. Default float32.

    Shape:
        input (N, C, H, W) -> output (N, F, Ho, Wo),
        Ho = floor((H + 2 * padding - dilation * (KH - 1) - 1) / stride) + 1.

    Attributes:
        weight: (F, C/groups, KH, KW), initialised U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
            fan_in = C/groups * KH * KW (PyTorch's kaiming_uniform_ with a = sqrt(5)).
        bias: (F,) or (F, Ho, Wo), initialised from the same range; None without bias.

    Example:
        >>> conv = Conv2d(3, 96, 11, stride=4)       # AlexNet's first layer
        >>> conv(cnnlab.zeros(1, 3, 227, 227)).shape
        (1, 96, 55, 55)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", *, untied_bias=False, input_size=None, flip_kernel=False,
                 dtype=np.float32):
        where = type(self).__name__
        self.in_channels = positive_int(in_channels, "in_channels", where)
        self.out_channels = positive_int(out_channels, "out_channels", where)
        self.groups = positive_int(groups, "groups", where)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{where}: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        self.kernel_size = pair(kernel_size, "kernel_size", where)
        self.stride = pair(stride, "stride", where)
        self.padding = normalize_padding(padding, where)
        self.dilation = pair(dilation, "dilation", where)
        self.padding_mode = check_padding_mode(padding_mode, where)
        self.flip_kernel = bool(flip_kernel)
        self.untied_bias = bool(untied_bias)
        self.input_size = None if input_size is None else pair(input_size, "input_size", where)
        self.weight = Parameter(np.empty((out_channels, in_channels // groups) + self.kernel_size, dtype))
        bias_shape = (out_channels,)
        if untied_bias:
            if not bias:
                raise ValueError(f"{where}: untied_bias=True needs bias=True")
            if self.input_size is None:
                raise ValueError(f"{where}: untied_bias=True needs input_size=(H, W) to size the per-position bias")
            bias_shape += conv_output_size(self.input_size, self.kernel_size, self.stride, padding, self.dilation)
        self.bias = Parameter(np.empty(bias_shape, dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    _fuses_relu = True   # Sequential calls forward(x, relu=True) for a Conv2d followed by a ReLU
    _folds_batch_norm = True   # and, in inference, forward(x, batch_norm=bn) for one followed by a BatchNorm2d

    def forward(self, x, *, relu: bool = False, residual=None, batch_norm=None):
        """``relu``: apply ReLU in the same pass. ``residual``: added before the ReLU (see
        :func:`cnnlab.functional.conv2d`). ``batch_norm``: a batch norm in evaluation mode,
        folded into this layer's filters and bias (:func:`cnnlab.nn.fusion.folded`):
        ``bn(conv(x))`` in one convolution, as inference runs it: only with no gradient
        recorded (the folded filters are constants)."""
        weight, bias = self.weight, self.bias
        if batch_norm is not None:
            if batch_norm.training or not batch_norm.track_running_stats or batch_norm.running_mean is None:
                raise ValueError(f"{type(self).__name__}: only a batch norm in evaluation mode, on running "
                                 f"statistics, can be folded into the convolution, got {batch_norm!r}")
            if is_grad_enabled():   # the folded filters are constants: no gradient would reach the layers
                raise ValueError(f"{type(self).__name__}: folding a batch norm is for inference; call it "
                                 "under cnnlab.no_grad()")
            weight, bias = folded(self, batch_norm)
        # conv2d's checks pass again for the settings, shapes and dtypes they passed last
        # time: only something new is checked, which saves a tenth of ResNet-20's time at
        # batch 1
        key = _shapes(x, weight, bias, residual)
        if key is not None and x.dtype == weight.dtype:    # (float16 input is converted by the checks)
            key += tuple(tuple(v) if isinstance(v, list) else v for v in
                         (self.stride, self.padding, self.dilation, self.groups, self.padding_mode))
        else:
            key = None
        seen = _checked.get(self)
        if key is None or seen is None or seen[0] != key:
            x, weight, bias, residual, unbatched, geometry = _conv2d_arguments(
                x, weight, bias, self.stride, self.padding, self.dilation, self.groups, self.padding_mode, residual)
            if key is not None and not unbatched:
                _checked[self] = (key, geometry)
        else:
            unbatched, geometry = False, seen[1]
        return _conv2d(x, weight, bias, residual, geometry, self.groups, self.padding_mode, self.flip_kernel, relu,
                       unbatched)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.untied_bias:
            s += ", untied_bias=True"
        if self.flip_kernel:
            s += ", flip_kernel=True"
        return s


_checked = weakref.WeakKeyDictionary()    # layer -> (what conv2d last checked for it, its geometry)


def _shapes(*arrays):
    """The shapes and dtypes of Tensors or arrays (None for None), or None if any argument
    is something else, which conv2d's checks then name."""
    key = []
    for a in arrays:
        if a is None:
            key.append(None)
        elif isinstance(a, (Tensor, np.ndarray)):
            key.append((a.shape, a.dtype))
        else:
            return None
    return tuple(key)


class LocallyConnected2d(Module):
    """A convolution without weight sharing: each output position has its own filters.

    Same arguments as :class:`Conv2d` (no groups), plus the input's ``input_size`` (H, W),
    which fixes the number of output positions. Parameters: Ho * Wo * F * (KH * KW * C + 1)
    with the default per-position bias, versus F * (KH * KW * C + 1) for Conv2d.

    Attributes:
        weight: (Ho, Wo, F, C, KH, KW): ``weight[i, j]`` is a Conv2d weight for position (i, j).
        bias: (F, Ho, Wo), one per filter per position; None without bias.
    """

    def __init__(self, in_channels, out_channels, kernel_size, input_size, stride=1, padding=0, dilation=1,
                 bias=True, padding_mode="zeros", *, dtype=np.float32):
        where = type(self).__name__
        self.in_channels = positive_int(in_channels, "in_channels", where)
        self.out_channels = positive_int(out_channels, "out_channels", where)
        self.kernel_size = pair(kernel_size, "kernel_size", where)
        self.input_size = pair(input_size, "input_size", where)
        self.stride = pair(stride, "stride", where)
        self.padding = normalize_padding(padding, where)
        self.dilation = pair(dilation, "dilation", where)
        self.padding_mode = check_padding_mode(padding_mode, where)
        out_hw = conv_output_size(self.input_size, self.kernel_size, self.stride, padding, self.dilation)
        if min(out_hw) < 1:
            raise ValueError(f"{where}: kernel_size {self.kernel_size} does not fit input_size {self.input_size} "
                             f"with padding {self.padding} (output would be {out_hw})")
        self.output_size = out_hw
        self.weight = Parameter(np.empty(out_hw + (out_channels, in_channels) + self.kernel_size, dtype))
        self.bias = Parameter(np.empty((out_channels,) + out_hw, dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # each position's filters are initialised as a Conv2d's would be
        bound = 1 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return F.locally_connected2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     padding_mode=self.padding_mode)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"input_size={self.input_size}, stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s
