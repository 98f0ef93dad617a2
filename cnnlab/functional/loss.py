"""Losses. Cross-entropy is one fused op (log-softmax and the loss together), since its
gradient, softmax minus the target distribution, is both simpler and more accurate than
the chain of its parts."""
from __future__ import annotations

import numpy as np

from .._errors import InputError
from ..autograd import Function, as_tensor

_REDUCTIONS = ("mean", "sum", "none")


def _targets(x, target, weight, ignore_index, label_smoothing, where):
    """Build, for each row of class scores (the class axis moved last), the row's target distribution q, so that
    loss_i = -sum_c q_ic log p_ic. Returns (q, the denominator of 'mean', the per-row output shape).

    With class indices, q_i = (1 - eps) w_y onehot(y_i) + eps/C w, zero for ignored rows,
    and 'mean' divides by the sum of w[y_i] over the rows that count (PyTorch's rule).
    With class probabilities, q_i = w * ((1 - eps) t_i + eps/C) and 'mean' divides by the row count."""
    if x.ndim < 1:
        raise InputError(f"{where}: input must have a class dimension, got a scalar")
    unbatched = x.ndim == 1
    c = x.shape[0] if unbatched else x.shape[1]
    n_rows = int(np.prod(x.shape)) // c
    out_shape = () if unbatched else (x.shape[0],) + x.shape[2:]
    w = np.ones(c, x.dtype) if weight is None else np.asarray(as_tensor(weight, where, "weight").data, x.dtype)
    if w.shape != (c,):
        raise InputError(f"{where}: weight must have shape ({c},), one per class, got {w.shape}")
    t = target.data
    if t.dtype.kind == "f":
        if t.shape != x.shape:
            raise InputError(f"{where}: probability targets must have the input's shape {x.shape}, got {t.shape}")
        probs = t.reshape(1, c) if unbatched else np.moveaxis(t, 1, -1).reshape(-1, c)
        q = w * ((1 - label_smoothing) * probs + label_smoothing / c)
        return q.astype(x.dtype), float(n_rows), out_shape
    if t.dtype.kind not in "iu":
        raise InputError(f"{where}: target must hold class indices (integers) or probabilities (floats), got dtype {t.dtype}")
    if t.shape != out_shape:
        raise InputError(f"{where}: expected target of shape {out_shape} for input of shape {x.shape}, got {t.shape}")
    y = t.reshape(-1).astype(np.int64)
    keep = y != ignore_index
    bad = keep & ((y < 0) | (y >= c))
    if bad.any():
        raise InputError(f"{where}: target values must be in [0, {c - 1}] (or ignore_index={ignore_index}), "
                         f"got {int(y[bad][0])}")
    yk = np.where(keep, y, 0)
    q = np.zeros((n_rows, c), x.dtype)
    q[np.arange(len(y)), yk] = (1 - label_smoothing) * w[yk]
    if label_smoothing:
        q += (label_smoothing / c) * w
    q[~keep] = 0
    return q, float(w[yk][keep].sum()), out_shape


def _reduce(per_row, denom, reduction, out_shape):
    if reduction == "none":
        return per_row.reshape(out_shape)
    total = per_row.sum()
    return np.asarray(total / denom if reduction == "mean" else total, dtype=per_row.dtype)


def _upstream_per_row(g, denom, reduction):
    """The upstream gradient of :func:`_reduce`, as a column to scale each row by."""
    if reduction == "none":
        return g.reshape(-1, 1)
    return g / denom if reduction == "mean" else g


class CrossEntropyFunction(Function):
    """loss_i = -sum_c q_ic log softmax(z_i)_c; dloss_i/dz_i = softmax(z_i) * sum_c q_ic - q_i."""

    @staticmethod
    def forward(ctx, rows, q, *, denom, reduction, out_shape):
        shifted = rows - rows.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        ctx.save_for_backward(logp, q)
        ctx.meta = (denom, reduction)
        return _reduce(-(q * logp).sum(axis=1), denom, reduction, out_shape)

    @staticmethod
    def backward(ctx, g):
        logp, q = ctx.saved_tensors
        d = (np.exp(logp) * q.sum(axis=1, keepdims=True) - q) * _upstream_per_row(g, *ctx.meta)
        return d.astype(logp.dtype, copy=False), None


def _unrows(d, in_shape):
    if len(in_shape) == 1:
        return d.reshape(in_shape)
    moved = (in_shape[0],) + tuple(in_shape[2:]) + (in_shape[1],)
    return np.moveaxis(d.reshape(moved), -1, 1)


class _Rows(Function):
    """Moves the class axis last and flattens to (rows, C), keeping the tape intact."""

    @staticmethod
    def forward(ctx, x):
        ctx.in_shape = x.shape
        c = x.shape[0] if x.ndim == 1 else x.shape[1]
        return x.reshape(1, c) if x.ndim == 1 else np.moveaxis(x, 1, -1).reshape(-1, c)

    @staticmethod
    def backward(ctx, g):
        return (_unrows(g, ctx.in_shape),)


def _check_common(reduction, label_smoothing, where):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{where}: label_smoothing must be in [0, 1], got {label_smoothing!r}")


def cross_entropy(input, target, weight=None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0):
    """Cross-entropy between softmax(input) and the target (``torch.nn.functional.cross_entropy``).

    Args:
        input: raw scores (logits), (N, C), (N, C, d1, ...) or (C,).
        target: class indices, (N,) / (N, d1, ...), or class probabilities of input's shape.
        weight: optional (C,) rescaling per class.
        ignore_index: target value whose rows count neither in the loss nor in the mean.
        reduction: 'mean' (weighted mean over the rows that count), 'sum' or 'none'.
        label_smoothing: eps in [0, 1]; the target becomes (1 - eps) * target + eps / C.
    """
    where = "cross_entropy"
    x, t = as_tensor(input, "cross_entropy", "input"), as_tensor(target, "cross_entropy", "target")
    _check_common(reduction, label_smoothing, where)
    q, denom, out_shape = _targets(x, t, weight, ignore_index, label_smoothing, where)
    return CrossEntropyFunction.apply(_Rows.apply(x), q, denom=denom, reduction=reduction, out_shape=out_shape)


class NLLLossFunction(Function):
    """loss_i = -sum_c q_ic x_ic with q the weighted one-hot target; its gradient is -q."""

    @staticmethod
    def forward(ctx, rows, q, *, denom, reduction, out_shape):
        ctx.save_for_backward(q)
        ctx.meta = (denom, reduction)
        return _reduce(-(q * rows).sum(axis=1), denom, reduction, out_shape)

    @staticmethod
    def backward(ctx, g):
        (q,) = ctx.saved_tensors
        return (-q * _upstream_per_row(g, *ctx.meta)).astype(q.dtype, copy=False), None


def nll_loss(input, target, weight=None, ignore_index: int = -100, reduction: str = "mean"):
    """Negative log-likelihood of log-probabilities ``input`` (e.g. from :func:`log_softmax`)
    at the target classes (``torch.nn.functional.nll_loss``); arguments as for cross_entropy."""
    where = "nll_loss"
    x, t = as_tensor(input, "nll_loss", "input"), as_tensor(target, "nll_loss", "target")
    _check_common(reduction, 0.0, where)
    if t.dtype.kind == "f":
        raise InputError(f"{where}: target must hold class indices (integers), got dtype {t.dtype}")
    q, denom, out_shape = _targets(x, t, weight, ignore_index, 0.0, where)
    return NLLLossFunction.apply(_Rows.apply(x), q, denom=denom, reduction=reduction, out_shape=out_shape)


def mse_loss(input, target, reduction: str = "mean"):
    """Mean squared error (``torch.nn.functional.mse_loss``)."""
    x, t = as_tensor(input, "mse_loss", "input"), as_tensor(target, "mse_loss", "target")
    _check_common(reduction, 0.0, "mse_loss")
    if x.shape != t.shape:
        raise InputError(f"mse_loss: input shape {x.shape} and target shape {t.shape} differ")
    sq = (x - t) ** 2
    return sq.mean() if reduction == "mean" else sq.sum() if reduction == "sum" else sq
