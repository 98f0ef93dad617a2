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
import weakref

import numpy as np

from .._errors import InputError
from ..autograd import Tensor
from ..functional.normalization import running_affine
from .module import Parameter, _name_layer


def _array(t):
    return None if t is None else t.data if isinstance(t, Tensor) else np.asarray(t)


def fuse_conv_bn_weights(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w=None, bn_b=None):
    """The weight and bias of one convolution equal to batch norm (in evaluation) after a
    convolution with ``conv_w`` (F, C/groups, KH, KW) and ``conv_b`` ((F,), untied
    (F, Ho, Wo), or None): ``W * s`` and ``b * s + t`` as NumPy arrays in the weight's
    dtype, with ``s`` and ``t`` worked out in float64 (as batch norm's evaluation does).
    ``bn_w``/``bn_b``: gamma and beta, None for a batch norm without affine parameters."""
    w, b = _array(conv_w), _array(conv_b)
    rm, rv, gamma, beta = _array(bn_rm), _array(bn_rv), _array(bn_w), _array(bn_b)
    f = w.shape[0]
    for name, a in (("running_mean", rm), ("running_var", rv), ("weight", gamma), ("bias", beta)):
        if (a is None and name.startswith("running")) or (a is not None and a.shape != (f,)):
            raise InputError(f"fuse_conv_bn_weights: batch norm {name} must have shape ({f},) for a convolution "
                             f"with {f} filters, got {None if a is None else a.shape}")
    scale, shift = running_affine(rm, rv, gamma, beta, bn_eps)
    # one row per filter: the multiply's inner loop runs along C*KH*KW values, not KW
    fused_w = (w.reshape(f, -1) * scale.astype(w.dtype)[:, None]).reshape(w.shape)
    if b is not None:   # tied (F,) or untied (F, Ho, Wo): one value per position
        per = (slice(None),) + (None,) * (b.ndim - 1)
        shift = b * scale[per] + shift[per]
    return fused_w, shift.astype(w.dtype)


# folds whose weight is at most this large are kept between calls (see folded)
KEEP_BYTES = 1 << 20
_kept = weakref.WeakKeyDictionary()      # conv -> (eps, snapshots of the sources, weight, bias)


def _snapshot(t):
    return None if t is None else (t.data.shape, t.data.dtype, t.data.tobytes())


def _unchanged(t, snap) -> bool:
    """Whether the Tensor ``t`` (or None) still holds exactly the bytes of ``snap``."""
    if t is None or snap is None:
        return t is snap
    a = t.data
    return a.shape == snap[0] and a.dtype == snap[1] and a.tobytes() == snap[2]


def folded(conv, bn):
    """The weight and bias of ``conv`` with ``bn`` folded in, as inference convolves with
    them (``Conv2d.forward(x, batch_norm=bn)``).

    Folding ResNet-20's 64-channel filters and laying them out as the convolution reads
    them (KH, KW, C, F) takes 35 us a call, a quarter of the layer at batch 1. So the
    last fold of each layer is kept, with a byte-for-byte copy of the arrays it came
    from, and reused while every one of them is unchanged (comparing costs about 5 us):
    weights changed in place by an optimizer, by ``load_state_dict`` or by hand are
    folded afresh at the next call, exactly as if nothing had been kept."""
    kept = _kept.get(conv)
    if kept is not None and kept[0] == bn.eps:
        s = kept[1]   # the small arrays first, the filters last
        if (_unchanged(bn.running_mean, s[2]) and _unchanged(bn.running_var, s[3]) and _unchanged(bn.weight, s[4])
                and _unchanged(bn.bias, s[5]) and _unchanged(conv.bias, s[1]) and _unchanged(conv.weight, s[0])):
            return kept[2], kept[3]
    sources = (conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias)
    try:
        w, b = fuse_conv_bn_weights(*sources[:4], bn.eps, *sources[4:])
    except InputError as e:   # a batch norm whose arrays do not fit: its own error, naming it
        _name_layer(bn, e)
        raise
    if conv.groups == 1:   # laid out (KH, KW, C, F), the order of the convolution's weight matrix
        w = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).transpose(3, 2, 0, 1)
    if w.nbytes <= KEEP_BYTES:
        _kept[conv] = (bn.eps, tuple(map(_snapshot, sources)), w, b)
    return w, b


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
    fused.weight = Parameter(w, requires_grad=conv.weight.requires_grad)
    fused.bias = Parameter(b, requires_grad=conv.weight.requires_grad if conv.bias is None
                           else conv.bias.requires_grad)
    return fused
