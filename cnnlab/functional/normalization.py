"""Batch normalisation, with the running statistics PyTorch keeps."""
from __future__ import annotations

import numpy as np

from .._errors import InputError
from ..autograd import Function, as_tensor, is_grad_enabled
from ..ops import relu_grad
from ..kernels import jit, parallel
from ..kernels.padding import axis_order, in_order


def _channel_specs(ndim):
    """einsum subscripts that reduce every axis but the channel axis (axis 1). einsum is
    3-4x faster than ``sum(axis=(0, 2, 3))`` on channels-last memory, and as accurate."""
    spec = "nc" + "hwl"[:ndim - 2]
    return f"{spec}->c", f"{spec},{spec}->c"


class BatchNormFunction(Function):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta, per channel (axis 1).

    Training normalises by the batch's mean and biased variance (and updates the running
    statistics in place), and backward accounts for both depending on x:
        dx = (gamma / sigma) * (dy - mean(dy) - x_hat * mean(dy * x_hat)).
    Evaluation normalises by the running statistics, constants for backward.

    Large inputs run every pass over blocks of the batch on cnnlab's threads
    (``kernels.parallel.split``); per-channel sums are added up per thread and then in
    thread order. Three paths, each tested against PyTorch: training on channels-last
    memory with Numba installed runs compiled loops (``_forward_jit``/``_backward_jit``);
    otherwise NumPy passes; evaluation with no gradient to follow folds the statistics
    into one scale and shift (``_evaluate``)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, residual, *, running_mean, running_var, momentum, eps, training, grad=True,
                relu=False):
        total, dot = _channel_specs(x.ndim)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        count = x.size // x.shape[1]
        blocks = parallel.split(x)
        if residual is not None:
            residual = in_order(residual, axis_order(x))   # laid out as x (a copy only if it is not)
        if not training and not grad:
            return _evaluate(x, gamma, beta, running_mean, running_var, eps, shape, blocks, relu, residual)
        x_hat = np.empty_like(x)                     # keeps x's memory layout (channels-last after a conv)
        k = _jit_kernels(x) if training else None
        if k is not None:
            return _forward_jit(ctx, k, x, x_hat, gamma, beta, running_mean, running_var, momentum, eps, blocks,
                                shape, count, relu, residual)
        if training:
            def channel_sums(lo, hi, acc):
                parallel.add_to(acc, "s", np.einsum(total, x[lo:hi]))

            mean = parallel.total(parallel.run(blocks, channel_sums, blas=False), "s") / count

            def center(lo, hi, acc):
                np.subtract(x[lo:hi], mean.reshape(shape), out=x_hat[lo:hi])
                parallel.add_to(acc, "s", np.einsum(dot, x_hat[lo:hi], x_hat[lo:hi]))

            var = parallel.total(parallel.run(blocks, center, blas=False), "s") / count
            _update_running(running_mean, running_var, mean, var, count, momentum)
        else:
            mean, var = running_mean.astype(x.dtype, copy=False), running_var.astype(x.dtype, copy=False)
        inv_std = (1 / np.sqrt(var + x.dtype.type(eps))).astype(x.dtype, copy=False)
        out = np.empty_like(x)

        def normalize(lo, hi, acc):
            xh = x_hat[lo:hi]
            if not training:
                np.subtract(x[lo:hi], mean.reshape(shape), out=xh)
            xh *= inv_std.reshape(shape)
            if gamma is not None:
                np.multiply(xh, gamma.reshape(shape), out=out[lo:hi])
            else:
                out[lo:hi] = xh
            if beta is not None:
                out[lo:hi] += beta.reshape(shape)
            if residual is not None:
                out[lo:hi] += residual[lo:hi]
            if relu:
                np.maximum(out[lo:hi], 0, out=out[lo:hi])

        parallel.run(blocks, normalize, blas=False)
        ctx.save_for_backward(x_hat, inv_std, gamma, out if relu else None)
        ctx.meta = (shape, count, training, None, residual is not None)
        return out

    @staticmethod
    def backward(ctx, g):
        x_hat, inv_std, gamma, relu_saved = ctx.saved_tensors
        shape, count, training, k, has_residual = ctx.meta
        if isinstance(relu_saved, np.ndarray):   # the fused ReLU's output: its gradient, in x's layout
            g = relu_grad(in_order(g, axis_order(relu_saved)), relu_saved)
            relu_saved = None
        if k is not None:  # the compiled loops, as forward ran them (relu_saved: their gamma and beta)
            g = in_order(g, axis_order(x_hat))   # g laid out otherwise (or broadcast): one copy into x's
            return _backward_jit(ctx, k, g, x_hat, inv_std, gamma, count, relu_saved) + (
                g if has_residual and ctx.needs_input_grad[3] else None,)
        total, dot = _channel_specs(g.ndim)
        blocks = parallel.split(g)

        def sums(lo, hi, acc):
            parallel.add_to(acc, "g", np.einsum(total, g[lo:hi]))
            parallel.add_to(acc, "gx", np.einsum(dot, g[lo:hi], x_hat[lo:hi]))

        accs = parallel.run(blocks, sums, blas=False)
        sum_g, sum_gx = parallel.total(accs, "g"), parallel.total(accs, "gx")
        dx = None
        if ctx.needs_input_grad[0]:
            scale = inv_std if gamma is None else inv_std * gamma
            dx = np.empty_like(g)
            if training:  # the batch mean and variance depend on x too
                a, b = (scale * sum_gx / count).reshape(shape), (scale * sum_g / count).reshape(shape)

            def input_grad(lo, hi, acc):
                d = dx[lo:hi]
                np.multiply(g[lo:hi], scale.reshape(shape), out=d)
                if training:
                    d -= x_hat[lo:hi] * a
                    d -= b

            parallel.run(blocks, input_grad, blas=False)
        return (dx, sum_gx if ctx.needs_input_grad[1] else None, sum_g if ctx.needs_input_grad[2] else None,
                g if has_residual and ctx.needs_input_grad[3] else None)


def running_affine(running_mean, running_var, gamma, beta, eps):
    """Batch norm in evaluation as one scale and one shift per channel, in float64:
    ``scale = gamma / sqrt(running_var + eps)``, ``shift = beta - running_mean * scale``
    (gamma and beta None: 1 and 0). Shared with the fold into a convolution
    (:func:`cnnlab.nn.fusion.fuse_conv_bn_weights`)."""
    scale = 1 / np.sqrt(running_var.astype(np.float64) + eps)
    if gamma is not None:
        scale = scale * gamma
    shift = -running_mean * scale if beta is None else beta - running_mean * scale
    return scale, shift


def _evaluate(x, gamma, beta, running_mean, running_var, eps, shape, blocks, relu=False, residual=None):
    """Evaluation with no gradient to follow (inference): the running statistics and the
    affine parameters folded into one scale and one shift per channel, as PyTorch folds
    them, so two passes over x instead of four, and no x_hat kept."""
    dt = x.dtype
    scale, shift = running_affine(running_mean, running_var, gamma, beta, eps)
    scale, shift = scale.astype(dt).reshape(shape), shift.astype(dt).reshape(shape)
    out = np.empty_like(x)

    def affine(lo, hi, acc):
        np.multiply(x[lo:hi], scale, out=out[lo:hi])
        out[lo:hi] += shift
        if residual is not None:
            out[lo:hi] += residual[lo:hi]
        if relu:
            np.maximum(out[lo:hi], 0, out=out[lo:hi])

    parallel.run(blocks, affine, blas=False)
    return out


# ----- the same passes as Numba loops (kernels.jit), for channels-last memory -----
def _rows(a):
    """(positions, C) view of a channels-last array (channels on axis 1, but contiguous in
    memory), or None if a is laid out otherwise."""
    t = a.transpose((0,) + tuple(range(2, a.ndim)) + (1,))
    return t.reshape(-1, a.shape[1]) if t.flags.c_contiguous else None


def _jit_kernels(x):
    """The Numba kernels, where they are installed and x is float and channels-last."""
    if x.dtype not in (np.float32, np.float64) or x.size == 0 or _rows(x) is None:
        return None
    return jit.kernels()


def _update_running(running_mean, running_var, mean, var, count, momentum):
    for run, batch in ((running_mean, mean), (running_var, var * (count / (count - 1)))):
        if run is not None:
            run *= 1 - run.dtype.type(momentum)
            run += run.dtype.type(momentum) * batch


def _forward_jit(ctx, k, x, x_hat, gamma, beta, running_mean, running_var, momentum, eps, blocks, shape, count,
                 relu, residual=None):
    """Training forward in three passes over x (sum, centred square sum, normalise), per
    block of the batch on cnnlab's threads; partial sums are added in thread order."""
    c, dt = x.shape[1], x.dtype
    per = count // x.shape[0]                       # rows (positions) per sample
    xr, hr = _rows(x), _rows(x_hat)
    out = np.empty_like(x)
    outr = _rows(out)

    def sums(lo, hi, acc):
        parallel.add_to(acc, "s", k.channel_sums(xr[lo * per:hi * per]))

    mean64 = parallel.total(parallel.run(blocks, sums, blas=False), "s") / count
    mean = mean64.astype(dt)

    def squares(lo, hi, acc):
        parallel.add_to(acc, "s", k.centered_square_sums(xr[lo * per:hi * per], mean))

    var = (parallel.total(parallel.run(blocks, squares, blas=False), "s") / count).astype(dt)
    _update_running(running_mean, running_var, mean, var, count, momentum)
    inv_std = (1 / np.sqrt(var + dt.type(eps))).astype(dt, copy=False)
    # in x's precision, as the NumPy passes round (a float64 gamma with float32 x would
    # otherwise leave products unrounded that the separate layers round)
    gam = np.ones(c, dt) if gamma is None else gamma.astype(dt, copy=False)
    bet = np.zeros(c, dt) if beta is None else beta.astype(dt, copy=False)

    rr = None if residual is None else _rows(residual)   # laid out as x by forward, so never None

    def normalize(lo, hi, acc):
        r = slice(lo * per, hi * per)
        k.normalize(xr[r], mean, inv_std, gam, bet, None if residual is None else rr[r], hr[r], outr[r], relu)

    parallel.run(blocks, normalize, blas=False)
    # through a fused ReLU, backward recomputes where the output was positive from x_hat,
    # gamma and beta (the same float operations as normalize): one array fewer to keep and
    # to read back (ResNet-20's 16-channel layers: 8 MiB each); with a residual added
    # before the ReLU it cannot, and keeps the output
    relu_saved = None if not relu else (out if residual is not None else (gam.copy(), bet.copy()))
    ctx.save_for_backward(x_hat, inv_std, gamma, relu_saved)
    ctx.meta = (shape, count, True, k, residual is not None)
    return out


def _backward_jit(ctx, k, g, x_hat, inv_std, gamma, count, relu_affine):
    """Training backward in two passes: the sums of g and g * x_hat, then the input
    gradient; through a fused ReLU (``relu_affine``: the gamma and beta the forward pass
    used), g counts only where the output x_hat * gamma + beta was positive."""
    dt = g.dtype
    per = count // g.shape[0]
    gr, hr = _rows(g), _rows(x_hat)
    blocks = parallel.split(g)

    def sums(lo, hi, acc):
        r = slice(lo * per, hi * per)
        sg, sgx = k.grad_sums(gr[r], hr[r], *(relu_affine or (None, None)))
        parallel.add_to(acc, "g", sg)
        parallel.add_to(acc, "gx", sgx)

    accs = parallel.run(blocks, sums, blas=False)
    sum_g, sum_gx = parallel.total(accs, "g").astype(dt), parallel.total(accs, "gx").astype(dt)
    dx = None
    if ctx.needs_input_grad[0]:
        scale = inv_std if gamma is None else inv_std * gamma
        a, b = scale * sum_gx / count, scale * sum_g / count
        dx = np.empty_like(g)
        dr = _rows(dx)

        def input_grad(lo, hi, acc):
            r = slice(lo * per, hi * per)
            k.input_grad(gr[r], hr[r], *(relu_affine or (None, None)), scale, a, b, dr[r])

        parallel.run(blocks, input_grad, blas=False)
    return dx, sum_gx if ctx.needs_input_grad[1] else None, sum_g if ctx.needs_input_grad[2] else None


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, relu=False, residual=None):
    """Batch normalisation over axis 1 of (N, C), (N, C, L) or (N, C, H, W) input
    (``torch.nn.functional.batch_norm``).

    In training the batch statistics normalise, and the running statistics (if given) are
    updated in place: ``running = (1 - momentum) * running + momentum * batch``, with the
    *unbiased* batch variance for ``running_var``, as PyTorch does; ``momentum=None``
    gives their cumulative average only through the layer, which counts batches.
    In evaluation the running statistics normalise. ``relu=True`` applies ReLU to the
    output in the same pass (``nn.Sequential`` and the residual blocks do this for a
    batch norm followed by a ReLU), with exactly the values and gradients of
    ``relu(batch_norm(...))``. ``residual``, an array of the input's shape, is added to
    the output in the same pass, before the ReLU: ``relu(batch_norm(...) + residual)``
    exactly, as a residual block ends (the residual blocks ask for it)."""
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
    if training and x.data.size // c < 2:
        raise InputError(f"{where}: expected more than 1 value per channel when training, got input of shape {x.shape}")
    if not training and (rm is None or rv is None):
        raise InputError(f"{where}: evaluation mode needs running_mean and running_var")
    if residual is not None:
        residual = as_tensor(residual, where, "residual")
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise InputError(f"{where}: residual must have the input's shape {x.shape} and dtype {x.dtype}, "
                             f"got {residual.shape} {residual.dtype}")
    grad = is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, residual))
    return BatchNormFunction.apply(x, weight, bias, residual, running_mean=rm, running_var=rv, momentum=momentum,
                                   eps=eps, training=training, grad=grad, relu=bool(relu))
