"""Non-linearities and softmax, each with its own backward."""
from __future__ import annotations

import math

import numpy as np

from .._errors import InputError
from .. import ops
from ..autograd import Function, as_tensor


def relu(input):
    """max(x, 0)."""
    return ops.ReLU.apply(as_tensor(input, "relu", "input"))


def sigmoid(input):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""
    return ops.Sigmoid.apply(as_tensor(input, "sigmoid", "input"))


def tanh(input):
    return ops.Tanh.apply(as_tensor(input, "tanh", "input"))


class LeakyReLUFunction(Function):
    @staticmethod
    def forward(ctx, x, *, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return np.where(x > 0, x, x * x.dtype.type(slope))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (np.where(x > 0, g, g * g.dtype.type(ctx.slope)),)


def leaky_relu(input, negative_slope: float = 0.01):
    """x for x > 0, ``negative_slope * x`` otherwise (a small slope keeps units from dying)."""
    return LeakyReLUFunction.apply(as_tensor(input, "leaky_relu", "input"), slope=float(negative_slope))


class PReLUFunction(Function):
    @staticmethod
    def forward(ctx, x, a):
        shape = (1, -1) + (1,) * (x.ndim - 2) if x.ndim >= 2 else (-1,)
        ab = a.reshape(shape) if a.size > 1 else a.reshape(())
        ctx.save_for_backward(x, ab)
        ctx.a_shape = a.shape
        return np.where(x > 0, x, ab * x)

    @staticmethod
    def backward(ctx, g):
        x, ab = ctx.saved_tensors
        gx = np.where(x > 0, g, ab * g) if ctx.needs_input_grad[0] else None
        ga = None
        if ctx.needs_input_grad[1]:
            contrib = np.where(x > 0, 0, x * g)
            if ab.ndim == 0:
                ga = np.asarray(contrib.sum()).reshape(ctx.a_shape)
            else:
                axes = tuple(i for i in range(x.ndim) if i != (1 if x.ndim >= 2 else 0))
                ga = contrib.sum(axis=axes).reshape(ctx.a_shape)
        return gx, ga


def prelu(input, weight):
    """x for x > 0, ``a * x`` otherwise, with the slope ``a`` learned: ``weight`` holds one
    slope shared by all channels, or one per channel (dimension 1 of the input)."""
    x, a = as_tensor(input, "prelu", "input"), as_tensor(weight, "prelu", "weight")
    if a.numel() != 1:
        channels = x.shape[1] if x.ndim >= 2 else x.shape[0]
        if a.ndim != 1 or a.shape[0] != channels:
            raise InputError(f"prelu: weight must have 1 or {channels} (the input's channels) elements, got shape {a.shape}")
    return PReLUFunction.apply(x, a)


class ELUFunction(Function):
    @staticmethod
    def forward(ctx, x, *, alpha):
        neg = x.dtype.type(alpha) * np.expm1(np.minimum(x, 0))
        ctx.save_for_backward(x, neg)
        ctx.alpha = alpha
        return np.where(x > 0, x, neg)

    @staticmethod
    def backward(ctx, g):
        x, neg = ctx.saved_tensors
        return (np.where(x > 0, g, g * (neg + x.dtype.type(ctx.alpha))),)


def elu(input, alpha: float = 1.0):
    """x for x > 0, ``alpha * (exp(x) - 1)`` otherwise."""
    return ELUFunction.apply(as_tensor(input, "elu", "input"), alpha=float(alpha))


def _erf(x: np.ndarray) -> np.ndarray:
    """Error function. NumPy has none; SciPy's is used when installed (fast), else the
    standard library's, element by element (exact, slower)."""
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - exercised where SciPy is absent
        return np.vectorize(math.erf, otypes=[x.dtype])(x)
    return erf(x).astype(x.dtype, copy=False)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class GELUFunction(Function):
    @staticmethod
    def forward(ctx, x, *, approximate):
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        t = x.dtype.type
        if approximate == "tanh":
            inner = t(_SQRT_2_OVER_PI) * (x + t(0.044715) * x ** 3)
            return t(0.5) * x * (1 + np.tanh(inner))
        return t(0.5) * x * (1 + _erf(x / t(math.sqrt(2.0))))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        t = x.dtype.type
        if ctx.approximate == "tanh":
            inner = t(_SQRT_2_OVER_PI) * (x + t(0.044715) * x ** 3)
            th = np.tanh(inner)
            dinner = t(_SQRT_2_OVER_PI) * (1 + t(3 * 0.044715) * x * x)
            return (g * (t(0.5) * (1 + th) + t(0.5) * x * (1 - th * th) * dinner),)
        cdf = t(0.5) * (1 + _erf(x / t(math.sqrt(2.0))))
        pdf = np.exp(t(-0.5) * x * x) / t(math.sqrt(2 * math.pi))
        return (g * (cdf + x * pdf),)


def gelu(input, approximate: str = "none"):
    """x * Phi(x), Phi the standard normal CDF; ``approximate='tanh'`` uses the tanh formula."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELUFunction.apply(as_tensor(input, "gelu", "input"), approximate=approximate)


def _dim(x, dim, where):
    if dim is None:
        raise TypeError(f"{where}: dim must be given (an int)")
    if not -x.ndim <= dim < x.ndim:
        raise InputError(f"{where}: dim must be in [{-x.ndim}, {x.ndim - 1}] for a {x.ndim}-D input of shape "
                         f"{x.shape}, got {dim}")
    return dim % x.ndim


class SoftmaxFunction(Function):
    @staticmethod
    def forward(ctx, x, *, dim):
        e = np.exp(x - x.max(axis=dim, keepdims=True))
        out = e / e.sum(axis=dim, keepdims=True)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        return (p * (g - (g * p).sum(axis=ctx.dim, keepdims=True)),)


class LogSoftmaxFunction(Function):
    @staticmethod
    def forward(ctx, x, *, dim):
        shifted = x - x.max(axis=dim, keepdims=True)
        out = shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, g):
        (logp,) = ctx.saved_tensors
        return (g - np.exp(logp) * g.sum(axis=ctx.dim, keepdims=True),)


def softmax(input, dim=None):
    """exp(x_i) / sum_j exp(x_j) along ``dim``, shifted by the max so it never overflows."""
    x = as_tensor(input, "softmax", "input")
    return SoftmaxFunction.apply(x, dim=_dim(x, dim, "softmax"))


def log_softmax(input, dim=None):
    """log(softmax(x)) along ``dim``, computed as x - max - log(sum(exp(x - max)))."""
    x = as_tensor(input, "log_softmax", "input")
    return LogSoftmaxFunction.apply(x, dim=_dim(x, dim, "log_softmax"))
