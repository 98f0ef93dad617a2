"""Primitive differentiable ops: arithmetic, reductions and shape ops.

Each op is a :class:`~cnnlab.autograd.Function` with forward and backward side by side.
CNN ops (convolution, pooling, normalisation, losses) live in :mod:`cnnlab.functional`.
"""
from __future__ import annotations

import numpy as np

from .autograd import Function, Tensor, unbroadcast
from .kernels import gemm, parallel
from .kernels.padding import axis_order, empty_in_order, empty_like_layout


# ----- elementwise arithmetic -----
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        if a.shape != b.shape or not isinstance(a, np.ndarray):
            return a + b
        # same shape (a residual sum): in a's layout, which NumPy does not keep when b's
        # differs, and over cnnlab's threads
        return parallel.elementwise(np.add, a, b, out=empty_like_layout(a.shape, a, dtype=np.result_type(a, b)))

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(g, sb)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(-g, sb)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return (-g,)


class Pow(Function):
    @staticmethod
    def forward(ctx, a, *, exponent):
        ctx.save_for_backward(a)
        ctx.exponent = exponent
        return a ** a.dtype.type(exponent)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        p = a.dtype.type(ctx.exponent)
        return (g * p * a ** (p - 1),)


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return (g * out,)


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return (g / a,)


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.abs(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return (g * np.sign(a),)


class ReLU(Function):
    """max(a, 0). Large arrays are split over cnnlab's threads: memory-bound passes like
    these are a tenth of a ResNet training step when they run on one core."""

    @staticmethod
    def forward(ctx, a):
        out = parallel.elementwise(np.maximum, a, 0, out=np.empty_like(a))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return (relu_grad(g, out),)


def relu_grad(g, out):
    """``g * (out > 0)``: the gradient of a ReLU whose output was ``out``, also where the
    ReLU is fused into another op (a linear layer, batch norm). Large arrays are split over
    cnnlab's threads."""
    blocks = parallel.split(g)
    if len(blocks) == 1:
        return g * (out > 0)
    dx = np.empty_like(g)
    parallel.run(blocks, lambda lo, hi, acc: np.multiply(g[lo:hi], out[lo:hi] > 0, out=dx[lo:hi]), blas=False)
    return dx


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return (g * (1 - out * out),)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        # exp of a non-positive number only, so large |a| never overflows
        e = np.exp(-np.abs(a))
        out = np.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return (g * out * (1 - out),)


class Clamp(Function):
    @staticmethod
    def forward(ctx, a, *, low=None, high=None):
        ctx.save_for_backward(a)
        ctx.bounds = (low, high)
        return np.clip(a, low, high)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        low, high = ctx.bounds
        keep = np.ones(a.shape, dtype=bool)
        if low is not None:
            keep &= a >= low
        if high is not None:
            keep &= a <= high
        return (g * keep,)


class MatMul(Function):
    """``a @ b`` with NumPy's broadcasting rules. Products of two matrices run on cnnlab's
    threads with BLAS held to one thread, as a linear layer's do (kernels.gemm says why)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return gemm.matmul(a, b) if a.ndim == b.ndim == 2 else a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        if a.ndim == b.ndim == 2:
            return (gemm.matmul(g, b.T) if ctx.needs_input_grad[0] else None,
                    gemm.matmul_tn(a, g) if ctx.needs_input_grad[1] else None)
        # 1-D operands are promoted to matrices as np.matmul does, then squeezed back
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        # give the gradient back the axes that 1-D operands dropped from the product
        g2 = g
        if a.ndim == 1:
            g2 = np.expand_dims(g2, g2.ndim - (0 if b.ndim == 1 else 1))
        if b.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb


# ----- reductions -----
def _expand_reduced(g, shape, axis, keepdims):
    """Give a reduced gradient back its reduced axes (as size 1) so it broadcasts."""
    if axis is None:
        return np.reshape(g, (1,) * len(shape))
    if not keepdims:
        axes = (axis,) if isinstance(axis, int) else axis
        g = np.expand_dims(g, tuple(a % len(shape) for a in axes))
    return g


class Sum(Function):
    @staticmethod
    def forward(ctx, a, *, axis=None, keepdims=False):
        ctx.args = (a.shape, axis, keepdims, axis_order(a))
        return np.asarray(a.sum(axis=axis, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        shape, axis, keepdims, order = ctx.args
        out = empty_in_order(shape, order, g.dtype)   # in a's layout, as Mean's
        out[...] = _expand_reduced(g, shape, axis, keepdims)
        return (out,)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, *, axis=None, keepdims=False):
        if a.dtype.kind == "f" and a.itemsize >= 4:   # np.mean's own steps, bit for bit, without its Python layer
            # (half precision: np.mean adds up in float32, a sum would overflow)
            # (ResNet-20's global pool at batch 1, caches cold after the convolutions: 44 -> 16 us)
            out = np.asarray(a.sum(axis=axis, keepdims=keepdims))
            count = a.size // max(out.size, 1)
            out = np.true_divide(out, count, out=out, casting="unsafe") if out.ndim else np.asarray(out / count)
        else:
            out = np.asarray(a.mean(axis=axis, keepdims=keepdims))
            count = a.size // max(out.size, 1)
        ctx.args = (a.shape, axis, keepdims, count, axis_order(a))
        return out

    @staticmethod
    def backward(ctx, g):
        shape, axis, keepdims, count, order = ctx.args
        g = _expand_reduced(g, shape, axis, keepdims) / g.dtype.type(count)
        out = empty_in_order(shape, order, g.dtype)   # in a's layout (channels-last under a global pool)
        out[...] = g
        return (out,)


class Max(Function):
    """Max over axes; the gradient is shared equally among tied maxima (like torch.amax)."""

    @staticmethod
    def forward(ctx, a, *, axis=None, keepdims=False):
        out = np.asarray(a.max(axis=axis, keepdims=True))
        ctx.save_for_backward(a, out)
        ctx.args = (axis, keepdims)
        return out if keepdims else (out.reshape(()) if axis is None else np.squeeze(out, axis))

    @staticmethod
    def backward(ctx, g):
        a, out = ctx.saved_tensors
        axis, keepdims = ctx.args
        g = _expand_reduced(g, a.shape, axis, keepdims)
        mask = a == out
        count = mask.sum(axis=axis, keepdims=True).astype(a.dtype)
        return (mask * (g / count),)


# ----- shape ops -----
class Reshape(Function):
    @staticmethod
    def forward(ctx, a, *, shape):
        ctx.in_shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.in_shape),)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, *, dims):
        ctx.dims = dims
        return a.transpose(dims)

    @staticmethod
    def backward(ctx, g):
        return (g.transpose(np.argsort(ctx.dims)),)


class BroadcastTo(Function):
    @staticmethod
    def forward(ctx, a, *, shape):
        ctx.in_shape = a.shape
        return np.broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, g):
        return (unbroadcast(g, ctx.in_shape),)


class Index(Function):
    """Basic and advanced indexing; the backward scatters (adding repeats) into zeros."""

    @staticmethod
    def forward(ctx, a, *, index):
        ctx.args = (a.shape, a.dtype, index, axis_order(a))
        return a[index]

    @staticmethod
    def backward(ctx, g):
        shape, dtype, index, order = ctx.args
        # in the input's layout (channels-last after a convolution), as the gradient it
        # will be added to (ResNet-20 step, with its subsampling shortcuts: 300 -> 295 ms)
        out = empty_in_order(shape, order, dtype, zeros=True)
        if _is_basic_index(index):
            out[index] = g  # a view selects each element at most once: no need to add
        else:
            np.add.at(out, index, g)
        return (out,)


def _is_basic_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, np.integer, slice)) for i in items)


class Clone(Function):
    @staticmethod
    def forward(ctx, a):
        return a.copy(order="K")                        # keeps the layout, as torch.clone does

    @staticmethod
    def backward(ctx, g):
        return (g,)


class Cast(Function):
    @staticmethod
    def forward(ctx, a, *, dtype):
        ctx.in_dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return (g.astype(ctx.in_dtype),)


class Concat(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        ctx.sizes = [a.shape[axis] for a in arrays]
        shape = list(arrays[0].shape)
        shape[axis] = sum(ctx.sizes)
        # in the first array's layout (channels-last stays channels-last: a ResNet's
        # zero-padded shortcut), where NumPy's own result would be C-contiguous
        out = empty_like_layout(shape, arrays[0], dtype=np.result_type(*arrays))
        return np.concatenate(arrays, axis=axis, out=out)

    @staticmethod
    def backward(ctx, g):
        cuts = np.cumsum(ctx.sizes)[:-1]
        return tuple(np.split(g, cuts, axis=ctx.axis))


class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        return np.stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        return tuple(np.moveaxis(g, ctx.axis, 0))


def cat(tensors, dim: int = 0) -> Tensor:
    """Concatenate tensors along ``dim`` (``torch.cat``)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty sequence of tensors")
    return Concat.apply(*[t if isinstance(t, Tensor) else Tensor(t) for t in tensors], axis=dim)


def stack(tensors, dim: int = 0) -> Tensor:
    """Stack tensors along a new axis ``dim`` (``torch.stack``)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty sequence of tensors")
    return Stack.apply(*[t if isinstance(t, Tensor) else Tensor(t) for t in tensors], axis=dim)
