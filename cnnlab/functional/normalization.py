"""Batch normalisation, with the running statistics PyTorch keeps."""
from __future__ import annotations

import numpy as np

from .._errors import InputError
from ..autograd import Function, Tensor, as_tensor


class BatchNormFunction(Function):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta, per channel (axis 1).

    Training uses the batch's mean and biased variance, and backward accounts for both
    depending on x:  dx = (gamma / sigma) * (dy - mean(dy) - x_hat * mean(dy * x_hat)).
    Evaluation uses the running statistics, constants for backward."""

    @staticmethod
    def forward(ctx, x, gamma, beta, *, mean, var, eps, training):
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv_std = 1.0 / np.sqrt(var + x.dtype.type(eps))
        x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        out = x_hat if gamma is None else x_hat * gamma.reshape(shape)
        if beta is not None:
            out = out + beta.reshape(shape)
        ctx.save_for_backward(x_hat, inv_std, gamma)
        ctx.meta = (axes, shape, training)
        return out.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        x_hat, inv_std, gamma = ctx.saved_tensors
        axes, shape, training = ctx.meta
        dgamma = (g * x_hat).sum(axis=axes) if ctx.needs_input_grad[1] else None
        dbeta = g.sum(axis=axes) if ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            scale = inv_std if gamma is None else inv_std * gamma
            if training:
                m = g.mean(axis=axes, keepdims=True)
                mh = (g * x_hat).mean(axis=axes, keepdims=True)
                dx = (g - m - x_hat * mh) * scale.reshape(shape)
            else:
                dx = g * scale.reshape(shape)
        return dx, dgamma, dbeta


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalisation over axis 1 of (N, C), (N, C, L) or (N, C, H, W) input
    (``torch.nn.functional.batch_norm``).

    In training the batch statistics normalise, and the running statistics (if given) are
    updated in place: ``running = (1 - momentum) * running + momentum * batch``, with the
    *unbiased* batch variance for ``running_var``, as PyTorch does; ``momentum=None``
    gives their cumulative average only through the layer, which counts batches.
    In evaluation the running statistics normalise."""
    where = "batch_norm"
    x = as_tensor(input, "batch_norm", "input")
    if x.ndim < 2:
        raise InputError(f"{where}: expected input of shape (N, C, ...), got {x.shape}")
    c = x.shape[1]
    per_channel = {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias}
    for name, t in per_channel.items():
        if t is not None:
            t = per_channel[name] = as_tensor(t, where, name)
            if t.shape != (c,):
                raise InputError(f"{where}: {name} must have shape ({c},) for input with {c} channels, got {t.shape}")
    weight, bias = per_channel["weight"], per_channel["bias"]
    rm = None if running_mean is None else per_channel["running_mean"].data
    rv = None if running_var is None else per_channel["running_var"].data
    if training:
        axes = (0,) + tuple(range(2, x.ndim))
        count = x.data.size // c
        if count < 2:
            raise InputError(f"{where}: expected more than 1 value per channel when training, got input of shape {x.shape}")
        mean = x.data.mean(axis=axes)
        var = x.data.var(axis=axes)
        if rm is not None:
            m = rm.dtype.type(momentum)
            rm *= 1 - m
            rm += m * mean
        if rv is not None:
            m = rv.dtype.type(momentum)
            rv *= 1 - m
            rv += m * var * (count / (count - 1))
    else:
        if rm is None or rv is None:
            raise InputError(f"{where}: evaluation mode needs running_mean and running_var")
        mean, var = rm.astype(x.dtype, copy=False), rv.astype(x.dtype, copy=False)
    return BatchNormFunction.apply(x, weight, bias, mean=mean, var=var, eps=eps, training=training)
