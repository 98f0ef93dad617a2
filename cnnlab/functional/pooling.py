"""Pooling: max and average over sliding windows, adaptive and global pooling.

The windows are strided views of the padded input (:func:`cnnlab.kernels.windows`).
Max and average pooling loop over the KH*KW window taps, each a strided view the size of
the output; their backward passes write (or, where windows overlap, add) each tap's
share of the gradient into the same views of a zero input gradient.
"""
from __future__ import annotations

import numbers

import numpy as np

from .._errors import InputError, check_float, check_rank, pair
from ..kernels import jit, out_size, pad2d, pad2d_backward, parallel, windows
from ..kernels.padding import axis_order, empty_in_order, in_order
from ..autograd import Function, Tensor, as_tensor, is_grad_enabled


def pool_output_size(n: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output length: floor (or ceil) of (n + 2p - d(k-1) - 1)/s, plus 1;
    in ceil mode the last window must start inside the input or the left padding."""
    span = n + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + pad:
        out -= 1
    return out


def check_pool_padding(padding, kernel, where: str) -> None:
    """The implicit padding of a pooling window may be at most half the window (PyTorch's rule)."""
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        limit = tuple(k // 2 for k in kernel)
        raise ValueError(f"{where}: padding should be at most half of kernel_size {kernel}, i.e. at most {limit}, "
                         f"got padding {padding}")


def _pool_setup(x, kernel_size, stride, padding, dilation, ceil_mode, where):
    x = as_tensor(x, where, "input")
    check_rank(x, (3, 4), where, "(N, C, H, W) or (C, H, W)")
    check_float(x, where)
    kernel = pair(kernel_size, "kernel_size", where)
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else pair(stride, "stride", where)
    padding = pair(padding, "padding", where, allow_zero=True)
    dilation = pair(dilation, "dilation", where)
    check_pool_padding(padding, kernel, where)
    hw = x.shape[-2:]
    out_hw = tuple(pool_output_size(n, k, s, p, d, ceil_mode) for n, k, s, p, d in zip(hw, kernel, stride, padding, dilation))
    if min(out_hw) < 1:
        raise InputError(f"{where}: input of spatial size {tuple(hw)} is too small for kernel_size {kernel} "
                         f"with padding {padding} and dilation {dilation} (output would be {out_hw})")
    # ceil mode may need windows that hang past the bottom/right padding: pad a little more
    extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - (n + 2 * p))
             for o, s, d, k, n, p in zip(out_hw, stride, dilation, kernel, hw, padding)]
    pads = (padding[0], padding[0] + extra[0], padding[1], padding[1] + extra[1])
    return x, kernel, stride, padding, dilation, pads, out_hw


def _batched(fn):
    """Run a pooling op on unbatched (C, H, W) input by adding and removing the batch axis."""
    def run(x, *args, **kwargs):
        if x.ndim == 3:
            out = fn(x.reshape((1,) + x.shape), *args, **kwargs)
            if isinstance(out, tuple):
                return tuple(o.reshape(o.shape[1:]) for o in out)
            return out.reshape(out.shape[1:])
        return fn(x, *args, **kwargs)
    return run


# ----- max pooling -----
class MaxPool2dFunction(Function):
    """Max over each window; the gradient goes to the first maximum of each window
    (as in PyTorch), accumulating where windows overlap.

    With a gradient to follow, both passes loop over the KH*KW window taps (or run
    compiled loops, along channels for channels-last memory, along rows for
    channels-first), each tap a strided view of the input the size of the output, instead
    of copying every window out (im2col) and arg-maxing it: no copy of the windows, and
    the input's memory layout (channels-last after a convolution) carries through. The
    arg-max (a byte per output) is only tracked then (``with_arg``); inference takes the
    maxima alone, down the windows' rows and then across (:func:`_separable_max`)."""

    @staticmethod
    def forward(ctx, x, *, kernel, stride, dilation, pads, with_arg):
        xp = pad2d(x, pads, "zeros", value=-np.inf, order="K")
        if not with_arg:
            return _separable_max(xp, kernel, stride, dilation)
        win = windows(xp, kernel, stride, dilation)                     # N C Ho Wo KH KW, a view
        k = _jit_kernels(x)
        # channels-first memory: compiled loops along the rows where windows overlap (for
        # tiles the tap loops below are as fast: 2x2 on 128x64x24x24, 6.9 against 7.3 ms)
        planes = k is None and _overlaps(kernel, stride, dilation) and _jit_planes(x) is not None
        if planes:
            k = jit.kernels()
            out = empty_in_order(win.shape[:4], (0, 1, 2, 3), x.dtype)   # N C Ho Wo, as x
            arg = empty_in_order(win.shape[:4], (0, 1, 2, 3), _arg_dtype(kernel))
            parallel.run(parallel.split(out), lambda lo, hi, acc: k.max_pool_forward_planes(
                xp[lo:hi], *kernel, *stride, *dilation, out[lo:hi], arg[lo:hi]), blas=False)
        elif k is not None:  # one compiled pass (kernels.jit), per block of the batch on cnnlab's threads
            n, c, ho, wo = win.shape[:4]
            out_l = np.empty((n, ho, wo, c), x.dtype)                   # channels-last, as x
            arg = np.empty((n, ho, wo, c), _arg_dtype(kernel))
            xl = xp.transpose(0, 2, 3, 1)
            parallel.run(parallel.split(out_l), lambda lo, hi, acc: k.max_pool_forward(
                xl[lo:hi], *kernel, *stride, *dilation, out_l[lo:hi], arg[lo:hi]), blas=False)
            out = out_l.transpose(0, 3, 1, 2)
            arg = arg.transpose(0, 3, 1, 2)
        else:  # NumPy tap loops, per block of the batch on cnnlab's threads
            has_nan = bool(x.size) and np.isnan(x.max())
            order = axis_order(xp)
            out = empty_in_order(win.shape[:4], order, x.dtype)                 # x's layout
            arg = empty_in_order(win.shape[:4], order, _arg_dtype(kernel))
            parallel.run(parallel.split(out), lambda lo, hi, acc: _max_and_argmax(
                win[lo:hi], has_nan, out[lo:hi], arg[lo:hi]), blas=False)
        _minus_inf_to_first_real(out, arg, kernel, stride, dilation, pads)
        ctx.save_for_backward(arg)
        ctx.meta = (x.shape, xp.shape, kernel, stride, dilation, pads, axis_order(x), k, planes)
        return out

    @staticmethod
    def backward(ctx, grad):
        (arg,) = ctx.saved_tensors
        x_shape, xp_shape, kernel, stride, dilation, pads, order, k, planes = ctx.meta
        kh, kw = kernel
        # the gradient in the input's layout (channels-last after a convolution), so the
        # ReLU backward that usually follows meets two arrays of one layout; arg has it too
        grad = in_order(grad, order)
        _, _, ho, wo = grad.shape
        # the windows cover the padded input exactly once: every element of dxp is written
        tiles = dilation == (1, 1) and stride == kernel and xp_shape[2:] == (ho * kh, wo * kw)
        if planes:
            dxp = empty_in_order(xp_shape, (0, 1, 2, 3), grad.dtype)    # N C Hp Wp, as x
            grad = np.ascontiguousarray(grad)
            parallel.run(parallel.split(grad), lambda lo, hi, acc: k.max_pool_backward_planes(
                grad[lo:hi], arg[lo:hi], kh, kw, *stride, *dilation, dxp[lo:hi]), blas=False)
            return (pad2d_backward(dxp, x_shape, pads),)
        if k is not None:
            dxp = empty_in_order(xp_shape, order, grad.dtype)
            gl, al, dl = grad.transpose(0, 2, 3, 1), arg.transpose(0, 2, 3, 1), dxp.transpose(0, 2, 3, 1)
            parallel.run(parallel.split(gl), lambda lo, hi, acc: k.max_pool_backward(
                gl[lo:hi], al[lo:hi], kh, kw, *stride, *dilation, tiles, dl[lo:hi]), blas=False)
            return (pad2d_backward(dxp, x_shape, pads),)
        dxp = empty_in_order(xp_shape, order, grad.dtype)
        dwin = windows(dxp, kernel, stride, dilation, writeable=True)
        overlap = _overlaps(kernel, stride, dilation)
        hit = np.empty_like(grad) if overlap else None
        is_t = np.empty_like(arg, dtype=bool)

        def block(lo, hi, acc):  # per block of the batch on cnnlab's threads
            if not tiles:        # then some elements are in no window, or in several
                dxp[lo:hi] = 0
            for t in range(kh * kw):
                np.equal(arg[lo:hi], t, out=is_t[lo:hi])
                target = dwin[lo:hi, ..., t // kw, t % kw]   # one tap's view never repeats an element
                if overlap:
                    np.multiply(grad[lo:hi], is_t[lo:hi], out=hit[lo:hi])
                    target += hit[lo:hi]
                else:
                    np.multiply(grad[lo:hi], is_t[lo:hi], out=target)

        parallel.run(parallel.split(grad), block, blas=False)
        return (pad2d_backward(dxp, x_shape, pads),)


def _separable_max(xp, kernel, stride, dilation):
    """Each window's maximum, without the arg-max (inference): the maximum over a KHxKW
    window is the maximum over its KW columns of the maxima down each column, so this takes
    KH passes over whole rows (the rows of each output row's windows), then KW passes over
    that, instead of KH*KW output-sized passes: LeNet-5's 2x2 pooling at batch 1, 10.5 ->
    4.8 us. ``np.maximum`` propagates NaN, as PyTorch's max pooling does. The values are
    those of the windows' maxima; only where a window ties +0.0 with -0.0 may the zero's
    sign differ from PyTorch's first maximum."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho, wo = out_size(xp.shape[2], kh, sh, dh), out_size(xp.shape[3], kw, sw, dw)
    rows = _combine(np.maximum, [xp[:, :, u * dh:u * dh + sh * (ho - 1) + 1:sh] for u in range(kh)])       # N C Ho Wp
    return _combine(np.maximum, [rows[..., v * dw:v * dw + sw * (wo - 1) + 1:sw] for v in range(kw)])     # N C Ho Wo


def _combine(ufunc, views):
    """``ufunc`` (np.maximum, np.add) folded over same-shaped views in order, as a new
    array in their memory layout."""
    out = ufunc(views[0], views[1]) if len(views) > 1 else views[0].copy(order="K")
    for v in views[2:]:
        ufunc(out, v, out=out)
    return out


def _minus_inf_to_first_real(out, arg, kernel, stride, dilation, pads) -> None:
    """PyTorch starts each window's search at its first real (unpadded) element, so a
    window whose real values are all -inf picks that element; searching the -inf-padded
    input leaves such a window on a padding tap, and its gradient (or index) would be lost.
    Moves those windows' arg-max (in place) to their first real tap."""
    top, left = pads[0], pads[2]
    if not (top or left):
        return                                  # then tap 0 is real, where the search left it
    lost = out == -np.inf
    if not lost.any():
        return
    ho, wo = out.shape[-2:]
    # first tap row u (column v) whose padded coordinate is past the top (left) padding
    u0 = np.maximum(0, -((np.arange(ho) * stride[0] - top) // dilation[0]))
    v0 = np.maximum(0, -((np.arange(wo) * stride[1] - left) // dilation[1]))
    first = (u0[:, None] * kernel[1] + v0[None, :]).astype(arg.dtype)
    np.copyto(arg, np.broadcast_to(first, arg.shape), where=lost)


# below this many channels the compiled loops' innermost run is too short to beat the
# NumPy tap loops (measured: 6 channels slower, 16 faster)
JIT_MIN_CHANNELS = 8
# the same bound for the rows of channels-first memory (not measured on its own)
JIT_MIN_WIDTH = 8


def _jit_kernels(x):
    """The Numba kernels (kernels.jit), where installed and x is float, batched and
    channels-last (their loops run along C); None otherwise."""
    if (x.dtype not in (np.float32, np.float64) or x.size == 0 or x.strides[1] != x.itemsize
            or x.shape[1] < JIT_MIN_CHANNELS):
        return None
    return jit.kernels()


def _overlaps(kernel, stride, dilation) -> bool:
    """Whether windows share inputs: a stride shorter than the (dilated) window."""
    return any(s < d * (k - 1) + 1 for k, s, d in zip(kernel, stride, dilation))


def _jit_planes(x):
    """The Numba kernels for channels-first memory (rows of at least JIT_MIN_WIDTH values
    contiguous, their loops run along W), where installed and x is float and batched;
    None otherwise. Max pooling 3x3/2 of an NCHW ResNet-50 stem output (16x64x112x112),
    forward and backward at 2 threads: NumPy's tap loops 121 ms, these 62 ms (PyTorch 60)."""
    if (x.dtype not in (np.float32, np.float64) or x.size == 0 or x.strides[3] != x.itemsize
            or x.shape[3] < JIT_MIN_WIDTH):
        return None
    return jit.kernels()


def _arg_dtype(kernel):
    return np.uint8 if kernel[0] * kernel[1] <= 256 else np.int32


def _max_and_argmax(win, has_nan, out=None, arg=None):
    """Each window's maximum and the tap PyTorch's max pooling picks: the first maximum,
    or, in a window holding NaN, the last NaN (its rule: take a value that is greater, or
    NaN). ``has_nan``: whether the input holds any NaN (one cheap check up front spares
    an isnan pass per tap). Written into ``out`` and ``arg`` where given."""
    kh, kw = win.shape[-2:]
    if out is None:
        out = np.empty_like(win[..., 0, 0], order="K")
        arg = np.empty_like(out, dtype=_arg_dtype((kh, kw)))
    np.copyto(out, win[..., 0, 0])
    arg.fill(0)
    take = np.empty_like(out, dtype=bool)
    step = np.empty_like(arg)
    for t in range(1, kh * kw):
        tap = win[..., t // kw, t % kw]
        np.greater(tap, out, out=take)                              # strictly greater: ties keep the first
        if has_nan:
            take |= np.isnan(tap)
            np.copyto(out, tap, where=take)                         # NaN must replace NaN too
        else:
            np.maximum(out, tap, out=out)
        # arg = where(take, t, arg) without a masked copy (slow): arg += take * (t - arg)
        np.subtract(arg.dtype.type(t), arg, out=step)
        step *= take
        arg += step
    return out, arg


@_batched
def _max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    x, kernel, stride, padding, dilation, pads, out_hw = _pool_setup(
        x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    out = MaxPool2dFunction.apply(x, kernel=kernel, stride=stride, dilation=dilation, pads=pads,
                                  with_arg=is_grad_enabled() and x.requires_grad)
    if not return_indices:
        return out
    # recompute the arg-max to report flat indices into the unpadded H*W plane
    win = windows(pad2d(x.data, pads, "zeros", value=-np.inf), kernel, stride, dilation)
    maxima, arg = _max_and_argmax(win, has_nan=bool(x.size) and np.isnan(x.data.max()))
    _minus_inf_to_first_real(maxima, arg, kernel, stride, dilation, pads)
    ki, kj = np.divmod(arg, kernel[1])
    rows = np.arange(out_hw[0])[:, None] * stride[0] - padding[0] + ki * dilation[0]
    cols = np.arange(out_hw[1])[None, :] * stride[1] - padding[1] + kj * dilation[1]
    return out, Tensor._wrap((rows * x.shape[3] + cols).astype(np.int64))


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling (``torch.nn.functional.max_pool2d``).

    Args:
        input: (N, C, H, W) or (C, H, W).
        kernel_size: int or pair. stride: defaults to ``kernel_size``; smaller values give
            overlapping windows. padding: implicit -inf padding, at most half the kernel.
        dilation: spacing between window taps. ceil_mode: round the output size up, so a
            last partial window is kept. return_indices: also return the flat (H*W) index
            of each maximum.

    Shape: Ho = floor((H + 2p - d(k-1) - 1) / s) + 1 (ceil with ``ceil_mode``).
    """
    x = as_tensor(input, "max_pool2d", "input")
    return _max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


# ----- average pooling -----
def _avg_divisors(n, kernel, stride, pad, out, count_include_pad):
    """Per output position, how many input positions the average divides by (PyTorch's rule:
    with count_include_pad the padding counts, but not a ceil-mode overhang past it)."""
    start = np.arange(out) * stride - pad
    end = np.minimum(start + kernel, n + pad)
    if count_include_pad:
        return end - start
    return np.minimum(end, n) - np.maximum(start, 0)


class AvgPool2dFunction(Function):
    """Mean over each window (divided by ``divisor``, one per output position); backward
    spreads each output's gradient evenly over its window.

    With Numba (``kernels.jit``), one compiled pass each way, per block of the batch on
    cnnlab's threads: along channels for channels-last memory, along rows for
    channels-first, reading the unpadded input (3x3/2, pad 1, on a 128x32x32x32 batch,
    forward + backward at 2 threads: NumPy's tap loops 25.9 ms, the separable passes
    below 22.0, these 10.9, PyTorch 10.1; on channels-last memory 2.9 ms, PyTorch 10-14).
    Otherwise separable, like max pooling's inference (:func:`_separable_max`): the
    window sums are sums over KW columns of sums down KH rows, KH + KW passes instead of
    KH*KW output-sized ones, and backward spreads across the columns, then down the
    rows. Strided views throughout keep the input's memory layout."""

    @staticmethod
    def forward(ctx, x, *, kernel, stride, pads, divisor):
        (kh, kw), (sh, sw), (top, left) = kernel, stride, (pads[0], pads[2])
        ho, wo = divisor.shape                                  # one divisor per output position
        k, planes = _avg_kernels(x)
        if k is not None:   # the unpadded input: the kernels skip taps in the padding
            order = (0, 1, 2, 3) if planes else (0, 2, 3, 1)
            out = empty_in_order((x.shape[0], x.shape[1], ho, wo), order, x.dtype)
            run = k.avg_pool_forward_planes if planes else k.avg_pool_forward
            xk, ok = (x, out) if planes else (x.transpose(0, 2, 3, 1), out.transpose(0, 2, 3, 1))
            parallel.run(parallel.split(ok), lambda lo, hi, acc: run(
                xk[lo:hi], kh, kw, sh, sw, top, left, divisor, ok[lo:hi]), blas=False)
            ctx.meta = (x.shape, None, kernel, stride, pads, divisor, axis_order(x), k, planes)
            return out
        xp = pad2d(x, pads, order="K")
        rows = _combine(np.add, [xp[:, :, u:u + sh * (ho - 1) + 1:sh] for u in range(kh)])          # N C Ho Wp
        out = _combine(np.add, [rows[..., v:v + sw * (wo - 1) + 1:sw] for v in range(kw)])          # N C Ho Wo
        out /= divisor
        ctx.meta = (x.shape, xp.shape, kernel, stride, pads, divisor, axis_order(x), k, planes)
        return out

    @staticmethod
    def backward(ctx, grad):
        x_shape, xp_shape, kernel, stride, pads, divisor, order, k, planes = ctx.meta
        (kh, kw), (sh, sw) = kernel, stride
        if k is not None:
            order = (0, 1, 2, 3) if planes else (0, 2, 3, 1)
            g = in_order(grad, order)
            dx = empty_in_order(x_shape, order, grad.dtype)
            run = k.avg_pool_backward_planes if planes else k.avg_pool_backward
            gk, dk = (g, dx) if planes else (g.transpose(0, 2, 3, 1), dx.transpose(0, 2, 3, 1))
            parallel.run(parallel.split(gk), lambda lo, hi, acc: run(
                gk[lo:hi], kh, kw, sh, sw, pads[0], pads[2], divisor, dk[lo:hi]), blas=False)
            return (dx,)
        share = in_order(grad / divisor, order)     # in the input's layout, as for max pooling
        n, c, ho, wo = share.shape
        cols = empty_in_order((n, c, ho, xp_shape[3]), order, grad.dtype, zeros=True)      # N C Ho Wp
        for v in range(kw):
            cols[..., v:v + sw * (wo - 1) + 1:sw] += share
        dxp = empty_in_order(xp_shape, order, grad.dtype, zeros=True)
        for u in range(kh):
            dxp[:, :, u:u + sh * (ho - 1) + 1:sh] += cols
        return (pad2d_backward(dxp, x_shape, pads),)


def _avg_kernels(x):
    """Average pooling's compiled kernels and whether they run channels-first: as for
    max pooling (:func:`_jit_kernels`, :func:`_jit_planes`); (None, False) for NumPy."""
    if _jit_kernels(x) is not None:
        return jit.kernels(), False
    if _jit_planes(x) is not None:
        return jit.kernels(), True
    return None, False


@_batched
def _avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    x, kernel, stride, padding, _, pads, out_hw = _pool_setup(
        x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    if divisor_override is not None:
        if divisor_override == 0:
            raise ValueError("avg_pool2d: divisor_override must be non-zero, got 0")
        divisor = np.full(out_hw, float(divisor_override))
    else:
        dh = _avg_divisors(x.shape[2], kernel[0], stride[0], padding[0], out_hw[0], count_include_pad)
        dw = _avg_divisors(x.shape[3], kernel[1], stride[1], padding[1], out_hw[1], count_include_pad)
        divisor = np.outer(dh, dw).astype(np.float64)
    return AvgPool2dFunction.apply(x, kernel=kernel, stride=stride, pads=pads, divisor=divisor.astype(x.dtype))


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling (``torch.nn.functional.avg_pool2d``).

    ``count_include_pad`` (default True) divides by the window size including zero
    padding; False divides by the number of real input pixels in the window.
    ``divisor_override`` divides every window by that number instead."""
    x = as_tensor(input, "avg_pool2d", "input")
    return _avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


# ----- adaptive and global pooling -----
def _adaptive_bins(n: int, out: int):
    """PyTorch's bins: output i averages input [floor(i*n/out), ceil((i+1)*n/out))."""
    i = np.arange(out)
    return (i * n) // out, -((-(i + 1) * n) // out)


def _averaging_matrix(n: int, out: int, dtype) -> np.ndarray:
    start, end = _adaptive_bins(n, out)
    a = np.zeros((out, n), dtype)
    for i, (s, e) in enumerate(zip(start, end)):
        a[i, s:e] = 1.0 / (e - s)
    return a


class AdaptiveAvgPool2dFunction(Function):
    """out = A_h @ x @ A_w^T with A the (out, in) bin-averaging matrices; backward is the
    transpose. Works for any input and output size, bins overlapping or not."""

    @staticmethod
    def forward(ctx, x, *, out_hw):
        ah = _averaging_matrix(x.shape[2], out_hw[0], x.dtype)
        aw = _averaging_matrix(x.shape[3], out_hw[1], x.dtype)
        ctx.save_for_backward(ah, aw)
        return np.matmul(np.matmul(ah, x), aw.T)

    @staticmethod
    def backward(ctx, grad):
        ah, aw = ctx.saved_tensors
        return (np.matmul(np.matmul(ah.T, grad), aw),)


def _adaptive_out(x, output_size, where):
    if isinstance(output_size, numbers.Integral) or output_size is None:
        output_size = (output_size, output_size)
    if (not isinstance(output_size, (tuple, list)) or len(output_size) != 2
            or not all(o is None or (isinstance(o, numbers.Integral) and not isinstance(o, bool)) for o in output_size)):
        raise TypeError(f"{where}: output_size must be an int or a pair of ints (or None), got {output_size!r}")
    out = tuple(x.shape[-2 + i] if o is None else o for i, o in enumerate(output_size))
    if min(out) < 1:
        raise ValueError(f"{where}: output_size must be positive, got {output_size!r}")
    return out


@_batched
def _adaptive_avg(x, output_size):
    out_hw = _adaptive_out(x, output_size, "adaptive_avg_pool2d")
    return AdaptiveAvgPool2dFunction.apply(x, out_hw=out_hw)


def adaptive_avg_pool2d(input, output_size):
    """Average pooling to a fixed output size, whatever the input size
    (``torch.nn.functional.adaptive_avg_pool2d``). ``None`` keeps that axis's size."""
    x = as_tensor(input, "adaptive_avg_pool2d", "input")
    check_rank(x, (3, 4), "adaptive_avg_pool2d", "(N, C, H, W) or (C, H, W)")
    check_float(x, "adaptive_avg_pool2d")
    return _adaptive_avg(x, output_size)


class AdaptiveMaxPool2dFunction(Function):
    @staticmethod
    def forward(ctx, x, *, out_hw):
        n, c, h, w = x.shape
        hs, he = _adaptive_bins(h, out_hw[0])
        ws, we = _adaptive_bins(w, out_hw[1])
        out = np.empty((n, c) + tuple(out_hw), x.dtype)
        args = np.empty((n, c) + tuple(out_hw), np.int64)  # flat index into H*W
        for i in range(out_hw[0]):
            for j in range(out_hw[1]):
                block = x[:, :, hs[i]:he[i], ws[j]:we[j]].reshape(n, c, -1)
                a = block.argmax(axis=-1)
                out[:, :, i, j] = np.take_along_axis(block, a[..., None], -1)[..., 0]
                bw = we[j] - ws[j]
                args[:, :, i, j] = (hs[i] + a // bw) * w + ws[j] + a % bw
        ctx.save_for_backward(args)
        ctx.x_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        (args,) = ctx.saved_tensors
        n, c, h, w = ctx.x_shape
        dx = np.zeros((n * c, h * w), grad.dtype)
        rows = np.repeat(np.arange(n * c), args[0, 0].size)
        np.add.at(dx, (rows, args.reshape(-1)), grad.reshape(-1))
        return (dx.reshape(ctx.x_shape),)


@_batched
def _adaptive_max(x, output_size):
    out_hw = _adaptive_out(x, output_size, "adaptive_max_pool2d")
    return AdaptiveMaxPool2dFunction.apply(x, out_hw=out_hw)


def adaptive_max_pool2d(input, output_size):
    """Max pooling to a fixed output size (``torch.nn.functional.adaptive_max_pool2d``)."""
    x = as_tensor(input, "adaptive_max_pool2d", "input")
    check_rank(x, (3, 4), "adaptive_max_pool2d", "(N, C, H, W) or (C, H, W)")
    check_float(x, "adaptive_max_pool2d")
    return _adaptive_max(x, output_size)


def global_avg_pool2d(input, keepdim: bool = False):
    """Mean over all spatial positions: (N, C, H, W) -> (N, C), or (N, C, 1, 1) with keepdim.
    With it a fully convolutional network accepts inputs of any size."""
    x = as_tensor(input, "global_avg_pool2d", "input")
    check_rank(x, (4,), "global_avg_pool2d", "(N, C, H, W)")
    return x.mean((2, 3), keepdim=keepdim)


def global_max_pool2d(input, keepdim: bool = False):
    """Max over all spatial positions: (N, C, H, W) -> (N, C), or (N, C, 1, 1) with keepdim."""
    x = as_tensor(input, "global_max_pool2d", "input")
    check_rank(x, (4,), "global_max_pool2d", "(N, C, H, W)")
    return x.max((2, 3), keepdim=keepdim)
