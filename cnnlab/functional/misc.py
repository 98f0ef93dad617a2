"""Linear layers, dropout, padding and flattening."""
from __future__ import annotations

import numpy as np

from .._errors import InputError, check_rank
from ..kernels import gemm, pad2d, pad2d_backward
from ..kernels.padding import MODES as PADDING_MODES
from ..random import generator
from ..autograd import Function, as_tensor
from ..ops import relu_grad


class LinearFunction(Function):
    """y = x W^T + b over the last axis of x (any number of leading axes), as one op: one
    tape entry instead of three (transpose, matmul, add), which matters for small nets.
    With ``relu=True``, relu(y) in the same op; its output is then kept for the mask."""

    @staticmethod
    def forward(ctx, x, w, b, *, relu=False):
        # the leading axes flattened into rows; products on cnnlab's threads (kernels.gemm)
        out = gemm.matmul(x, w.T) if x.ndim == 2 else \
            gemm.matmul(x.reshape(-1, x.shape[-1]), w.T).reshape(x.shape[:-1] + (w.shape[0],))
        if b is not None:
            out += b
        if relu:
            np.maximum(out, 0, out=out)
        ctx.save_for_backward(x, w, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, g):
        x, w, relu_out = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        if relu_out is not None:   # the fused ReLU's gradient, exactly the separate ReLU's
            g = relu_grad(g, relu_out)
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        dx = gemm.matmul(g2, w).reshape(x.shape) if need_x else None
        # weight sharing over the leading axes: sum their outer products
        dw = gemm.matmul_tn(g2, x2) if need_w else None
        db = g2.sum(axis=0) if need_b else None
        return dx, dw, db


def linear(input, weight, bias=None, *, relu=False):
    """y = x W^T + b, with W of shape (out_features, in_features) (``torch.nn.functional.linear``).

    ``relu=True`` gives relu(y) as one op, the same values and gradients (``nn.Sequential``
    asks for it for a ``Linear`` followed by a ``ReLU``)."""
    x, w = as_tensor(input, "linear", "input"), as_tensor(weight, "linear", "weight")
    if w.ndim != 2:
        raise InputError(f"linear: weight must be 2-D (out_features, in_features), got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise InputError(f"linear: expected input with last dimension {w.shape[1]} (in_features), got shape {x.shape}")
    if bias is not None:
        bias = as_tensor(bias, "linear", "bias")
        if bias.shape != (w.shape[0],):
            raise InputError(f"linear: bias must have shape ({w.shape[0]},) (out_features), got {bias.shape}")
    if x.dtype != w.dtype or (bias is not None and bias.dtype != w.dtype):
        raise InputError(f"linear: input dtype {x.dtype}, weight dtype {w.dtype}"
                         + ("" if bias is None else f" and bias dtype {bias.dtype}") + " differ")
    return LinearFunction.apply(x, w, bias, relu=bool(relu))


class DropoutFunction(Function):
    @staticmethod
    def forward(ctx, x, *, p):
        keep = generator().random(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32) >= p
        scale = x.dtype.type(0.0 if p == 1 else 1.0 / (1.0 - p))
        mask = keep * scale
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return (g * mask,)


def dropout(input, p: float = 0.5, training: bool = True):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p), in training;
    the identity in evaluation, so expected activations match between the two."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    x = as_tensor(input, "dropout", "input")
    if not training or p == 0:
        return x
    return DropoutFunction.apply(x, p=float(p))


class PadFunction(Function):
    @staticmethod
    def forward(ctx, x, *, pads, mode, value):
        ctx.meta = (x.shape, pads, mode)
        return pad2d(x, pads, mode, value, axes=(x.ndim - 2, x.ndim - 1))

    @staticmethod
    def backward(ctx, g):
        shape, pads, mode = ctx.meta
        return (pad2d_backward(g, shape, pads, mode, axes=(g.ndim - 2, g.ndim - 1)),)


_TORCH_MODE = {"constant": "zeros", "zeros": "zeros", "reflect": "reflect", "replicate": "replicate",
               "circular": "circular", "symmetric": "symmetric"}


def pad(input, pad, mode: str = "constant", value: float = 0.0):
    """Pad the last two axes (``torch.nn.functional.pad`` with a 2- or 4-tuple):
    ``pad = (left, right)`` or ``(left, right, top, bottom)``. Modes: 'constant'
    ('zeros'), 'reflect', 'replicate', 'circular', 'symmetric'."""
    x = as_tensor(input, "pad", "input")
    if mode not in _TORCH_MODE:
        raise ValueError(f"pad: mode must be one of {', '.join(map(repr, _TORCH_MODE))}, got {mode!r}")
    if len(pad) not in (2, 4) or any(int(p) != p or p < 0 for p in pad):
        raise ValueError(f"pad: pad must be 2 or 4 non-negative ints (left, right[, top, bottom]), got {pad!r}")
    check_rank(x, (2, 3, 4), "pad", "with at least 2 axes")
    left, right = pad[:2]
    top, bottom = pad[2:] if len(pad) == 4 else (0, 0)
    m = _TORCH_MODE[mode]
    if m != "zeros" and value:
        raise ValueError(f"pad: value applies only to mode='constant', got value={value!r} with mode={mode!r}")
    for n, lo, hi, axis in ((x.shape[-2], top, bottom, "height"), (x.shape[-1], left, right, "width")):
        limit = n - 1 if m == "reflect" else n
        if m in ("reflect", "circular", "symmetric") and max(lo, hi) > limit:
            raise InputError(f"pad: mode={mode!r} needs padding {'<' if m == 'reflect' else '<='} the input's "
                             f"{axis} ({n}), got {max(lo, hi)}")
    return PadFunction.apply(x, pads=(top, bottom, left, right), mode=m, value=value)


def flatten(input, start_dim: int = 1, end_dim: int = -1):
    """Merge axes ``start_dim`` to ``end_dim`` into one (default: all but the batch axis)."""
    return as_tensor(input, "flatten", "input").flatten(start_dim, end_dim)


assert set(_TORCH_MODE.values()) == set(PADDING_MODES)
