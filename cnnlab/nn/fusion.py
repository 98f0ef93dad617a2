"""Folding an evaluation-mode batch norm into the convolution before it, as
``torch.nn.utils.fusion`` does (``fuse_conv_bn_weights``, ``fuse_conv_bn_eval``).

On its running statistics batch norm is an affine map per channel,
``y = x * s + t`` with ``s = gamma / sqrt(running_var + eps)`` and
``t = beta - running_mean * s``. After a convolution, ``x = W * input + b``, so
``y = (W * s) * input + (b * s + t)``: one convolution with scaled filters and a new
bias, and no batch norm pass at all. Inference does this by itself (see
:func:`cnnlab.nn.module.conv_bn`: ResNet-20 at batch 1 spent a fifth of its time in
batch norm); the functions here are for exporting a model with the two layers merged.
The results equal the separate layers' up to float rounding (the filters are scaled
before the products are summed, not after)."""
from __future__ import annotations

import copy

import numpy as np

from .._errors import InputError
from ..autograd import Tensor
from .module import Parameter


def _array(t):
    return None if t is None else t.data if isinstance(t, Tensor) else np.asarray(t)


def fuse_conv_bn_weights(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w=None, bn_b=None):
    """The weight and bias of one convolution equal to batch norm (in evaluation) after a
    convolution with ``conv_w`` (F, C/groups, KH, KW) and ``conv_b`` ((F,), untied
    (F, Ho, Wo), or None): ``W * s`` and ``b * s + t`` as NumPy arrays in the weight's
    dtype, with ``s`` and ``t`` worked out in float64 (as batch norm's evaluation does).
    ``bn_w``/``bn_b``: gamma and beta, None for a batch norm without affine parameters."""
    where = "fuse_conv_bn_weights"
    w, b = _array(conv_w), _array(conv_b)
    f = w.shape[0]
    for name, a in (("running_mean", bn_rm), ("running_var", bn_rv), ("weight", bn_w), ("bias", bn_b)):
        a = _array(a)
        if (a is None and name.startswith("running")) or (a is not None and a.shape != (f,)):
            raise InputError(f"{where}: batch norm {name} must have shape ({f},) for a convolution with {f} "
                             f"filters, got {None if a is None else a.shape}")
    scale = 1 / np.sqrt(_array(bn_rv).astype(np.float64) + bn_eps)
    if bn_w is not None:
        scale *= _array(bn_w)
    shift = -_array(bn_rm) * scale
    if bn_b is not None:
        shift += _array(bn_b)
    fused_w = w * scale.astype(w.dtype).reshape((f,) + (1,) * (w.ndim - 1))
    per = (f,) + (1,) * (0 if b is None else b.ndim - 1)          # untied: one value per position
    fused_b = shift.reshape(per) if b is None else b * scale.reshape(per) + shift.reshape(per)
    return fused_w, fused_b.astype(w.dtype)


def fuse_conv_bn_eval(conv, bn):
    """A new ``Conv2d`` that computes ``bn(conv(x))`` for a ``Conv2d`` and a batch norm
    in evaluation mode (``torch.nn.utils.fusion.fuse_conv_bn_eval``): the filters scaled
    and a bias added (see :func:`fuse_conv_bn_weights`). The layers are not changed."""
    if conv.training or bn.training:
        raise ValueError("fuse_conv_bn_eval: both layers must be in evaluation mode (call .eval() first), got "
                         f"conv.training={conv.training}, bn.training={bn.training}")
    if bn.running_mean is None:
        raise ValueError("fuse_conv_bn_eval: the batch norm keeps no running statistics "
                         "(track_running_stats=False), so it normalises by each batch and cannot be folded")
    fused = copy.deepcopy(conv)
    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    fused.weight, fused.bias = Parameter(w), Parameter(b)
    return fused
