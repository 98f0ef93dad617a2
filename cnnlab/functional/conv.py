"""Convolution: ``conv2d`` (cross-correlation, as in deep learning), ``true_conv2d``
(the kernel flipped, as in signal processing), ``locally_connected2d`` (no weight
sharing), and ``unfold``/``fold`` (im2col and col2im as ops).

How the convolution is computed (forward and backward are next to each other in
:class:`Conv2dFunction`):

1. The input is viewed channels-last (NHWC) and padded. Channels-last keeps each
   window's C values contiguous, so the im2col copy moves long runs of memory.
2. ``windows`` gives a strided view of every KHxKW window; copying it into ``cols`` of
   shape (N*Ho*Wo, KH*KW*C) is the one im2col copy.
3. One matrix multiply, ``cols @ W`` with W of shape (KH*KW*C, F), applies every filter at
   every position. Groups become a batch dimension of that multiply.
4. The result is (N, Ho, Wo, F) in memory and returned as an NCHW *view*, so the next
   convolution finds its input already channels-last.

Steps 2 and 3 run per block of a few images, so that ``cols`` stays in cache, with the
blocks spread over threads (:mod:`cnnlab.kernels.parallel`).

Few channels (a network's first layer, depthwise convolutions): channels-last windows are
then only KW*C values long (5 for a 5x5 kernel on a grey image), and the copy crawls.
There the input is padded channels-first instead and ``cols`` is built transposed, one
image plane per tap, shape (C*KH*KW, N*Ho*Wo), copied in runs of a whole output row
(Caffe's im2col); the multiply reads it transposed. :func:`_planes` picks whichever
layout copies the longer runs.

Small products: OpenBLAS multiplies matrices up to about 2^20 M*N*K without packing them,
about twice as fast per flop on these shapes. So a stride-1 convolution runs by kernel
rows (:func:`_conv_by_rows`): only one kernel row's columns are copied, (nb, H, Wo,
KW*C), and kernel row u reads them shifted down u rows, a view, in one product per image
and kernel row, summed over u. Few-channel layers (the planes layout) multiply image by
image. Larger products keep the full im2col and one multiply per block.

``relu=True`` (what ``nn.Sequential`` asks for a Conv2d followed by a ReLU) applies the
ReLU to each block while it is in cache, and masks the gradient inside backward's blocks.
``residual`` adds a residual block's shortcut before that ReLU.

Inference (no gradient to follow): a batch of one image runs through a kept
:class:`_InferencePlan` (buffers and views worked out once per shape, the bias summed
inside the first product); larger batches pad each block into a workspace instead of a
copy kept for backward.

Backward, for an upstream gradient G of shape (N*Ho*Wo, F):
    dW = cols^T @ G                          weight sharing: a sum over every position
    db = G summed over N, Ho, Wo
    dX = col2im(G @ W^T)                     each window's gradient added back where it came from,
                                              then the padding's adjoint.
col2im runs one tap at a time: the tap's product G @ W_tap^T (N*Ho*Wo, C) is added to the
strided view of the input that tap read; with Numba (and one group), one product G @ W^T
for every tap and one compiled scatter-add (``kernels.jit.col2im``) replace the taps'
strided adds; few-channel layers (the planes layout) take one product per image, plane
by plane, and ``kernels.jit.col2im_planes``, which adds along rows. For stride 1 when
channels do not expand (F <= C, as in ResNets), dX is instead the equivalent gather: G,
zero-padded, cross-correlated with the flipped kernel by kernel rows (or, without Numba,
by the full im2col). With Numba, a stride-1 layer too large to go by rows takes the
compiled col2im instead. (Where Winograd, below, applies, it goes first.)

Winograd (with Numba; 3x3, stride 1, no dilation, one group, channels-last columns (not
the few-channel planes layout); from 16 channels in and out; not the batch-1 inference
plan): F(4x4, 3x3) computes each 4x4 block of outputs from its 6x6 input tile with 36
multiplies per channel pair instead of 144. The tiles' transforms are sums,
differences and small multiples (``kernels.jit.winograd_input`` / ``_output`` /
``_gradient``, reading zero padding as zeros rather than building it); the multiplies
are 36 matrix products, one per tile entry. Forward, the input gradient (the same correlation of G
with the flipped kernel) and, for zero padding, the weight gradient (the tiles'
products summed, then transformed back) all go this way (:func:`_winograd_conv`,
:func:`_winograd_weight_grad`); a result that is not all finite is computed again by
the paths the layer takes without Winograd, so infinities and NaN land where those put
them (a tile's sums can make NaN of an infinity that a direct sum keeps).
"""
from __future__ import annotations

import math
import numbers
import threading

import numpy as np

from .._errors import InputError, check_float, check_rank, pair
from ..kernels import add_windows, jit, out_size, pad2d, pad2d_backward, parallel, windows
from ..kernels.padding import MODES as PADDING_MODES, axis_order, empty_in_order
from ..autograd import Function, as_tensor as _as_tensor, is_grad_enabled, unbroadcast


# ----- argument handling, shared with the layers and with summary/conv_matrix -----
def check_padding_mode(mode, where: str) -> str:
    if mode not in PADDING_MODES:
        raise ValueError(f"{where}: padding_mode must be one of {', '.join(map(repr, PADDING_MODES))}, got {mode!r}")
    return mode


def normalize_padding(padding, where: str):
    """An int, a pair, 'valid' or 'same' -> a pair of ints or the string 'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            return "same"
        raise ValueError(f"{where}: padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    return pair(padding, "padding", where, allow_zero=True)


def resolve_padding(padding, in_hw, kernel, stride, dilation):
    """(top, bottom, left, right) for a normalised ``padding``.

    'same' gives an output of ceil(H / stride) along each axis (for stride 1, the input's
    size), splitting the total padding with the odd pixel at the bottom/right, as PyTorch
    (stride 1) and TensorFlow (any stride) do."""
    if padding != "same":
        ph, pw = padding
        return (ph, ph, pw, pw)
    pads = []
    for n, k, s, d in zip(in_hw, kernel, stride, dilation):
        total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def conv_output_size(in_hw, kernel, stride=1, padding=0, dilation=1):
    """(Ho, Wo) of a convolution: floor((H + 2P - D*(K-1) - 1) / S) + 1 along each axis."""
    kernel, stride, dilation = (pair(v, n, "conv_output_size") for v, n in
                                ((kernel, "kernel_size"), (stride, "stride"), (dilation, "dilation")))
    padding = normalize_padding(padding, "conv_output_size")
    t, b, l, r = resolve_padding(padding, in_hw, kernel, stride, dilation)
    return (out_size(in_hw[0] + t + b, kernel[0], stride[0], dilation[0]),
            out_size(in_hw[1] + l + r, kernel[1], stride[1], dilation[1]))


def check_pads_fit(in_hw, pads, mode, where: str, padding_arg=None) -> None:
    """Each mode can only copy from so far into the image: reflect needs pad < size,
    circular and symmetric need pad <= size."""
    if mode in ("zeros", "replicate"):
        return
    for axis, n, (lo, hi) in (("height", in_hw[0], pads[:2]), ("width", in_hw[1], pads[2:])):
        limit = n - 1 if mode == "reflect" else n
        if max(lo, hi) > limit:
            how = f" (padding={padding_arg!r} needs {lo} and {hi})" if padding_arg == "same" else ""
            raise InputError(
                f"{where}: padding_mode={mode!r} needs padding {'<' if mode == 'reflect' else '<='} the input's "
                f"{axis} ({n}), got padding {max(lo, hi)}{how}"
            )


def _check_window_fits(padded_hw, kernel, dilation, where, in_hw, pads) -> None:
    for axis, n, k, d, p in (("height", padded_hw[0], kernel[0], dilation[0], pads[:2]),
                             ("width", padded_hw[1], kernel[1], dilation[1], pads[2:])):
        span = d * (k - 1) + 1
        if span > n:
            raise InputError(
                f"{where}: kernel {'(dilated) ' if d > 1 else ''}{axis} {span} is larger than the padded input "
                f"{axis} {n} (input {axis} {n - sum(p)} + padding {sum(p)})"
            )


def conv_geometry(in_shape, weight_shape, stride, padding, dilation, groups, padding_mode, where, shown_shape=None):
    """Check a convolution's settings against one input of shape (C, H, W) and a weight of
    shape (F, C/groups, KH, KW); return (stride, pads (top, bottom, left, right), dilation,
    (Ho, Wo)). Shared by :func:`conv2d` and :func:`cnnlab.conv_matrix`, so both accept
    exactly the same arguments. ``shown_shape`` is the input shape errors quote."""
    stride = pair(stride, "stride", where)
    dilation = pair(dilation, "dilation", where)
    padding = normalize_padding(padding, where)
    check_padding_mode(padding_mode, where)
    if type(groups) is not int and (not isinstance(groups, numbers.Integral) or isinstance(groups, bool)) or groups < 1:
        raise ValueError(f"{where}: groups must be a positive int, got {groups!r}")
    # the settings are now in canonical form (tuples of ints, a mode name): shapes and
    # settings that passed every check below once pass them again, with the same result
    key = (tuple(in_shape), tuple(weight_shape), stride, padding, dilation, int(groups), padding_mode)
    seen = _GEOMETRY.get(key)
    if seen is not None:
        return (stride,) + seen
    c, h, w = in_shape
    f, cg, kh, kw = weight_shape
    if f % groups:
        raise InputError(f"{where}: the number of filters ({f}) must be divisible by groups ({groups})")
    if c != cg * groups:
        shown = f"{tuple(shown_shape)}" if shown_shape is not None else f"{tuple(in_shape)} (C, H, W)"
        raise InputError(f"{where}: expected input with {cg * groups} channels (weight {tuple(weight_shape)}, "
                         f"groups={groups}), got {c} channels in input of shape {shown}")
    pads = resolve_padding(padding, (h, w), (kh, kw), stride, dilation)
    check_pads_fit((h, w), pads, padding_mode, where, padding)
    padded = (h + pads[0] + pads[1], w + pads[2] + pads[3])
    _check_window_fits(padded, (kh, kw), dilation, where, (h, w), pads)
    out_hw = (out_size(padded[0], kh, stride[0], dilation[0]), out_size(padded[1], kw, stride[1], dilation[1]))
    if len(_GEOMETRY) < 4096:
        _GEOMETRY[key] = (pads, dilation, out_hw)
    return stride, pads, dilation, out_hw


# conv_geometry's results for settings and shapes seen before: its checks and padding
# arithmetic cost about 5 us a call, felt by every layer of a batch-1 ResNet
_GEOMETRY: dict = {}


# ----- the convolution -----
class Conv2dFunction(Function):
    """Grouped 2-D cross-correlation of NCHW input with (F, C/groups, KH, KW) weights.

    Forward and backward run over blocks of a few images (``kernels.parallel``): each
    block's im2col matrix is built in a reused, cache-sized workspace and multiplied at
    once, and blocks are spread over cnnlab's threads. Only a copy of the input (padded,
    or unpadded where the convolution runs by kernel rows) is kept for backward, which
    rebuilds each block's columns: a copy into cache is cheaper than
    keeping the KH*KW times larger column matrix in memory. With ``relu=True`` the output
    is kept too, for the ReLU's gradient mask. ``residual`` (the output's shape) is added
    to each block before the ReLU; its gradient is the output's, through that mask.
    With no gradient to follow (``grad=False``), a batch of one image runs through a
    kept :class:`_InferencePlan` instead."""

    @staticmethod
    def forward(ctx, x, w, b, residual=None, *, stride, pads, dilation, groups, padding_mode, relu=False,
                grad=True):
        if not grad and x.shape[0] == 1 and groups == 1 and padding_mode == "zeros":
            plan = _InferencePlan.get(x.shape, w.shape, x.dtype, stride, pads, dilation)
            if plan is not None:
                return plan(x, w, b, residual, relu)
        n, c, h, wd = x.shape
        f, cg, kh, kw = w.shape
        g, fg = groups, f // groups
        top, bottom, left, right = pads
        hp, wp = h + top + bottom, wd + left + right
        ho, wo = out_size(hp, kh, stride[0], dilation[0]), out_size(wp, kw, stride[1], dilation[1])
        planes = _planes(kw, cg, wo)
        by_rows = _by_rows(stride, g, kh, planes, ho * wo * f * kw * c, n * ho * wo * kw * c)
        per_image = _per_image(planes, g, ho * wo * f * kh * kw * c)
        wino = _winograd((kh, kw), stride, dilation, g, planes, c, f, x.dtype)
        split = parallel.blocks(n, ho * wo, kh * kw * c * x.itemsize, 2 * ho * wo * kh * kw * cg * f)
        # the padded input, filled block by block below and kept for backward (a copy, never
        # the caller's memory, which could change before then): channels-last, or for the
        # planes layout channels-first. By kernel rows with zero padding, the copy kept is
        # unpadded and contiguous instead, each block padded into a workspace from it:
        # backward's weight gradient then reads it as it lies rather than copying it out
        # of the padded array (ResNet-20's layers at batch 128, 2 threads, backward: 16
        # channels 9.62 -> 9.42 ms, 32: 7.22 -> 6.87, 64: 6.59 -> 6.33; the forward pays
        # the extra copy into cache, 5.28 -> 5.45, 3.81 -> 3.91, 2.76 -> 2.86). With no
        # backward to follow, each block pads into its thread's workspace, and an unpadded
        # input lying channels-last in memory is read where it lies (the MNIST CNN's 32 ->
        # 64 layer, 11 MB: a pass saved); one lying NCHW is copied channels-last first, as
        # windows across its planes copy slowly (that layer, 15.3 -> 13.9 ms)
        padded = (n, c, hp, wp) if planes else (n, hp, wp, c)
        unpadded = grad and by_rows and padding_mode == "zeros"
        xp = (np.empty((n, h, wd, c) if unpadded else padded, x.dtype)) if grad else None
        xv = x.transpose(0, 2, 3, 1)                                                # N H W C view
        as_is = not grad and not planes and pads == (0, 0, 0, 0) and xv.flags.c_contiguous
        wmat = w.reshape(g, fg, cg, kh, kw).transpose(0, 3, 4, 2, 1).copy().reshape(g, kh * kw * cg, fg)  # one copy
        wcols = w.reshape(g, fg, cg * kh * kw).transpose(0, 2, 1) if planes else wmat  # rows ordered like cols
        uw = _winograd_weights(wmat[0].reshape(kh, kw, c, f)) if wino else None
        wino_unpadded = wino and padding_mode == "zeros" and (unpadded or not grad)
        bias = None if b is None else (b if b.ndim == 1 else b.transpose(1, 2, 0))  # tied (F,) or untied (Ho Wo F)
        out = np.empty((n, ho, wo, f), x.dtype)                                      # N Ho Wo F
        rv = None if residual is None else residual.transpose(0, 2, 3, 1)           # N Ho Wo F view

        def padded_block(lo, hi):
            """(src, xpb): the padded block as kept (channels-first for planes) or in the
            thread's workspace, and its N Hp Wp C view."""
            if as_is:
                return xv[lo:hi], xv[lo:hi]
            if unpadded and pads == (0, 0, 0, 0):   # the kept copy is the padded input
                np.copyto(xp[lo:hi], xv[lo:hi])
                return xp[lo:hi], xp[lo:hi]
            kept = grad and not unpadded
            src = xp[lo:hi] if kept else parallel.workspace(5, (hi - lo,) + padded[1:], x.dtype)
            xpb = src.transpose(0, 2, 3, 1) if planes else src
            if unpadded:                 # the kept copy, contiguous, then padded from cache
                np.copyto(xp[lo:hi], xv[lo:hi])
            if padding_mode == "zeros":  # padding on the block's thread, so im2col reads it from cache
                _pad_with_zeros(xpb, xp[lo:hi] if unpadded else xv[lo:hi], pads)
            else:
                xpb[...] = pad2d(xv[lo:hi], pads, padding_mode, axes=(1, 2))
            return src, xpb

        def unpadded_block(lo, hi):
            """The block channels-last and contiguous, unpadded: the kept copy by kernel
            rows, else the input itself where it lies so, else a copy in the workspace."""
            if unpadded:
                np.copyto(xp[lo:hi], xv[lo:hi])
                return xp[lo:hi]
            return _contiguous(xv[lo:hi], 5)

        def block(lo, hi, acc):
            out_b = out[lo:hi]
            # Winograd reads zero padding as it goes, from the unpadded block; other
            # padding modes, and an input kept padded for backward, it reads padded
            if not (wino_unpadded and _winograd_conv(unpadded_block(lo, hi), top, left, uw, out_b)):
                src, xpb = padded_block(lo, hi)
                if wino and not wino_unpadded and _winograd_conv(xpb, 0, 0, uw, out_b):
                    pass
                elif by_rows:
                    _conv_by_rows(xpb, wmat[0], (kh, kw), dilation, out_b)
                else:
                    cols = _im2col(src, (kh, kw), stride, dilation, g, slot=0, planes=planes)  # the one copy
                    if per_image:   # LeNet-5's first layer: 0.26 -> 0.15 ms a block of 32 images
                        np.matmul(_images(cols, hi - lo, ho * wo), wcols[0], out=out_b.reshape(hi - lo, ho * wo, f))
                    else:
                        np.matmul(cols, wcols, out=out_b.reshape(-1, g, fg).transpose(1, 0, 2))
            if bias is not None:
                _add_bias(out_b, bias)
            if rv is not None:
                out_b += rv[lo:hi]
            if relu:  # fused: the block is still in cache, a separate ReLU would stream it again
                np.maximum(out_b, 0, out=out_b)

        parallel.run(split, block, flops=2 * n * ho * wo * kh * kw * cg * f)
        ctx.save_for_backward(xp, wmat, out if relu else None)
        ctx.meta = (x.shape, w.shape, None if b is None else b.ndim, stride, pads, dilation, groups, padding_mode,
                    planes, by_rows, per_image, residual is not None, unpadded, axis_order(x))
        return out.transpose(0, 3, 1, 2)                                            # NCHW view of NHWC memory

    @staticmethod
    def backward(ctx, grad):
        xp, wmat, relu_out = ctx.saved_tensors
        (x_shape, w_shape, b_ndim, stride, pads, dilation, g, padding_mode, planes, by_rows, per_image,
         has_residual, unpadded, x_order) = ctx.meta
        n, c, h, wd = x_shape
        f, cg, kh, kw = w_shape
        fg = f // g
        hp, wp = h + pads[0] + pads[1], wd + pads[2] + pads[3]
        _, _, ho, wo = grad.shape
        need_dx, need_dw = ctx.needs_input_grad[:2]
        need_db = b_ndim is not None and ctx.needs_input_grad[2]
        dx = None    # N H W C, or for the compiled planes col2im N C H W in the input's layout (below)
        # the residual's gradient: the output's, through the ReLU's mask when there is one
        dres = None
        if has_residual and ctx.needs_input_grad[3]:
            dres = grad if relu_out is None else np.empty((n, ho, wo, f), grad.dtype)
        # the gather wins by kernel rows; with the full im2col, the compiled col2im wins
        # (MNIST CNN conv3, forward + backward: 18.4 -> 16.5 ms)
        gather = stride == (1, 1) and _gather_dx(c, f, g) and (by_rows or _col2im_kernels(grad.dtype, g) is None)
        # Winograd, where it applies (F channels in, C out), beats them all: each block tries
        # it first, for the input gradient and (zero padding) the weight gradient, and
        # leaves what it gives up on (a result not all finite) to the paths it replaced
        wino_dx = need_dx and _winograd((kh, kw), stride, dilation, g, planes, f, c, grad.dtype)
        wino_dw = wino_dx and need_dw and padding_mode == "zeros"
        k = _col2im_kernels(grad.dtype, g) if need_dx and not gather else None
        if gather:
            # the input gradient of a stride-1 convolution is a "full" cross-correlation of
            # the output gradient with the flipped kernel, in/out channels swapped: an
            # im2col gather instead of col2im's KH*KW strided scatter-adds
            reach_h, reach_w = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
            wflip = (wmat.reshape(g, kh, kw, cg, fg)[:, ::-1, ::-1]
                     .transpose(0, 1, 2, 4, 3).reshape(g, kh * kw * fg, cg))
            # zeros padding: only the unpadded part of the padded input's gradient is needed
            (r0, rows), (c0, cols_) = (((pads[0], h), (pads[2], wd)) if padding_mode == "zeros"
                                       else ((0, hp), (0, wp)))
        if wino_dx:
            # the same correlation by Winograd: the flipped kernel with channels swapped,
            # (KH, KW, F, C), transformed in the gradient's precision (a float64 gradient
            # keeps float64 accuracy); the output gradient lies at (2 - top, 2 - left) of
            # its zero padding for the unpadded input's gradient, at (2, 2) for the padded one's
            uflip = _winograd_weights(wmat[0].reshape(kh, kw, c, f)[::-1, ::-1].transpose(0, 1, 3, 2),
                                      np.result_type(wmat, grad))
            g_top, g_left = (2 - pads[0], 2 - pads[2]) if padding_mode == "zeros" else (2, 2)
        dx_planes = k is not None and planes
        if dx_planes:   # rows ordered (c, kh, kw), as the planes layout's columns
            wplanes = wmat[0].reshape(kh, kw, c, f).transpose(2, 0, 1, 3).reshape(c * kh * kw, f)
        elif k is not None:
            wall = np.ascontiguousarray(wmat[0].T)                                   # F, KH*KW*C
        if need_dx:
            dx = (empty_in_order((n, c, h, wd), x_order, grad.dtype) if dx_planes
                  else np.empty((n, h, wd, c), grad.dtype))

        def block(lo, hi, acc):
            nb = hi - lo
            gb = grad[lo:hi].transpose(0, 2, 3, 1)                                    # nb Ho Wo F
            if relu_out is not None:  # the fused ReLU's gradient: zero where it output 0
                masked = parallel.workspace(1, (nb, ho, wo, f), grad.dtype) if dres is None else dres[lo:hi]
                gb = np.multiply(gb, relu_out[lo:hi] > 0, out=masked)
            want_dw, want_dx = need_dw, need_dx
            if wino_dx:
                gb = _contiguous(gb, 1)                                               # channels-last
                if wino_dw:   # the input as kept: unpadded by kernel rows, else zero-padded
                    part = _winograd_weight_grad(xp[lo:hi], *((pads[0], pads[2]) if unpadded else (0, 0)), gb)
                    if part is not None:
                        parallel.add_to(acc, "dw_winograd", part)
                        want_dw = False
                dst = dx[lo:hi] if padding_mode == "zeros" else np.empty((nb, hp, wp, c), grad.dtype)
                if _winograd_conv(gb, g_top, g_left, uflip, dst):
                    if padding_mode != "zeros":
                        dx[lo:hi] = pad2d_backward(dst, (nb, h, wd, c), pads, padding_mode, axes=(1, 2))
                    want_dx = False
            direct_block(lo, hi, acc, gb, want_dw, want_dx)

        def direct_block(lo, hi, acc, gb, need_dw, need_dx):
            """The bias gradient, and the weight and input gradients asked for, without Winograd."""
            nb = hi - lo
            shared = _shares_gather_columns(gather, by_rows, padding_mode, need_dx)
            # few channels, image by image (planes): the products read each image's gradient
            # as it lies, NCHW or channels-last, where the rest wants a channels-last copy
            # (backward on an NCHW gradient, 2 threads: the ResNet-20 stem 4.5-4.7 -> 3.3 ms,
            # the MNIST CNN's first layer 2.9-3.1 -> 1.2-1.3 ms)
            images = gb.reshape(nb, ho * wo, f) if planes and (per_image or dx_planes) else None
            if (need_db or (need_dw and not shared and not per_image)
                    or (need_dx and not (gather or dx_planes))):
                gm = _contiguous(gb, 1)
                if need_db:  # tied: sum over N, Ho, Wo; untied (Ho Wo F): over N only
                    # the tied sum as ones @ (M, F): numpy's sum down the rows of a matrix
                    # only a few columns wide is ten times slower than this BLAS pass
                    parallel.add_to(acc, "db", np.ones(gm.size // f, gm.dtype) @ gm.reshape(-1, f)
                                    if b_ndim == 1 else gm.sum(axis=0))
                gm = gm.reshape(nb * ho * wo, g, fg).transpose(1, 0, 2)              # G M Fg
            if need_dw and shared:
                pass                        # below, from the gather's columns
            elif need_dw and by_rows:
                xpb = xp[lo:hi]
                if unpadded and pads != (0, 0, 0, 0):   # kept unpadded: padded here, into cache
                    xpb = parallel.workspace(5, (nb, hp, wp, c), grad.dtype)
                    _pad_with_zeros(xpb, xp[lo:hi], pads)
                parallel.add_to(acc, "dw", _weight_grad_by_rows(xpb, gm[0], ho, (kh, kw), dilation))
            elif need_dw:
                cols = _im2col(xp[lo:hi], (kh, kw), stride, dilation, g, slot=0, planes=planes)
                if per_image:  # LeNet-5's first layer: 0.30 -> 0.13 ms a block of 32 images
                    dwb = np.matmul(_images(cols, nb, ho * wo).transpose(0, 2, 1), images)
                    parallel.add_to(acc, "dw", dwb.sum(axis=0, keepdims=True))
                else:
                    parallel.add_to(acc, "dw", np.matmul(cols.transpose(0, 2, 1), gm))  # G K Fg
            if not need_dx:
                return
            if gather:
                gp = parallel.workspace(2, (nb, ho + 2 * reach_h, wo + 2 * reach_w, f), grad.dtype)
                _pad_with_zeros(gp, gb, (reach_h, reach_h, reach_w, reach_w))
                gp = gp[:, r0:r0 + rows + reach_h, c0:c0 + cols_ + reach_w]
                if shared:
                    gcols = _row_cols(gp, kw, dilation[1], slot=0)
                    _products_by_rows(gcols, wflip[0], kh, dilation[0], dx[lo:hi])
                    if need_dw:   # the input as kept: unpadded (by rows, zero padding), contiguous
                        parallel.add_to(acc, "dw", _weight_grad_from_gather(
                            xp[lo:hi].reshape(nb, h * wd, c), gcols, (kh, kw), dilation))
                    return
                if by_rows:  # (zero padding went the shared way above) the padded input's gradient
                    dxb = np.empty((nb, hp, wp, c), grad.dtype)
                    _conv_by_rows(gp, wflip[0], (kh, kw), dilation, dxb)
                    dx[lo:hi] = pad2d_backward(dxb, (nb, h, wd, c), pads, padding_mode, axes=(1, 2))
                    return
                gcols = _im2col(gp, (kh, kw), (1, 1), dilation, g, slot=0)          # G M' KH*KW*Fg
                if padding_mode == "zeros":
                    np.matmul(gcols, wflip, out=dx[lo:hi].reshape(-1, g, cg).transpose(1, 0, 2))
                    return
                dxp = np.matmul(gcols, wflip).transpose(1, 0, 2).reshape(nb, hp, wp, c)
            elif dx_planes:   # few channels: the same plane by plane, rows innermost
                # (the ResNet-20 stem's input gradient: 44 -> 25 us an image on one thread)
                dcols = parallel.workspace(3, (nb, c * kh * kw, ho * wo), grad.dtype)
                np.matmul(wplanes, images.transpose(0, 2, 1), out=dcols)
                dxp = parallel.workspace(2, (nb, c, hp, wp), grad.dtype)
                k.col2im_planes(dcols.reshape(nb, c, kh, kw, ho, wo), *stride, *dilation, dxp)
                dx[lo:hi] = pad2d_backward(dxp, (nb, c, h, wd), pads, padding_mode, axes=(2, 3))
                return
            elif k is not None:  # one product G @ W^T for every tap, then one compiled scatter-add
                dcols = parallel.workspace(3, (nb * ho * wo, kh * kw * c), grad.dtype)
                np.matmul(gm[0], wall, out=dcols)
                dxp = parallel.workspace(2, (nb, hp, wp, c), grad.dtype)
                k.col2im(dcols.reshape(nb, ho, wo, kh, kw, c), *stride, *dilation, dxp)
            else:  # col2im one tap at a time: each tap's product G @ W_tap^T, contiguous,
                # is added where that tap read from, a strided view of the padded input
                # (runs of whole output rows for stride 1, not of C values per window)
                dxp = parallel.workspace(2, (nb, hp, wp, g, cg), grad.dtype)
                dxp.fill(0)
                taps = windows(dxp, (kh, kw), stride, dilation, axes=(1, 2), writeable=True)  # nb Ho Wo G Cg KH KW
                wtap = wmat.reshape(g, kh, kw, cg, fg)
                part = parallel.workspace(3, (g, nb, ho, wo, cg), grad.dtype)
                for u in range(kh):
                    for v in range(kw):
                        np.matmul(gm, wtap[:, u, v].transpose(0, 2, 1), out=part.reshape(g, -1, cg))
                        taps[..., u, v] += part.transpose(1, 2, 3, 0, 4)
                dxp = dxp.reshape(nb, hp, wp, c)
            dx[lo:hi] = pad2d_backward(dxp, (nb, h, wd, c), pads, padding_mode, axes=(1, 2))

        # per image: the largest column matrix a block builds (the weight gradient's, or the
        # gather's for stride 1)
        item_bytes = max(ho * wo * kh * kw * c, rows * cols_ * kh * kw * f if gather and need_dx else 0) * grad.itemsize
        # blocks as large as forward's (by the forward product's flops, not backward's two)
        accs = parallel.run(parallel.blocks(n, 1, item_bytes, 2 * ho * wo * kh * kw * cg * f), block,
                            flops=4 * n * ho * wo * kh * kw * cg * f)
        dw = db = None
        if need_dw:
            dw = _present_total(accs, "dw")                                           # G K Fg, K as cols orders it
            by_winograd = _present_total(accs, "dw_winograd")
            if by_winograd is not None:   # blocks by Winograd: their share transformed back
                by_winograd = _winograd_weight_grad_total(by_winograd)
                dw = by_winograd if dw is None else dw + by_winograd
            dw = (dw.transpose(0, 2, 1) if planes else
                  dw.reshape(g, kh, kw, cg, fg).transpose(0, 4, 3, 1, 2)).reshape(w_shape)
        if need_db:
            db = parallel.total(accs, "db")
            db = db if b_ndim == 1 else db.transpose(2, 0, 1)                       # untied: back to (F, Ho, Wo)
        if dres is not None and relu_out is not None:
            dres = dres.transpose(0, 3, 1, 2)
        if dx is not None and not dx_planes:
            dx = dx.transpose(0, 3, 1, 2)                                             # NCHW view of NHWC
        return dx, dw, db, dres


def _contiguous(a, slot: int):
    """``a`` if C-contiguous, else a copy in the calling thread's workspace ``slot``: a
    channels-last view of an input or a gradient usually lies so already; one of NCHW
    memory is copied channels-last."""
    if a.flags.c_contiguous:
        return a
    out = parallel.workspace(slot, a.shape, a.dtype)
    np.copyto(out, a)
    return out


def _present_total(accs, key):
    """:func:`parallel.total` of ``key`` over the accumulators that hold it (a weight
    gradient's blocks may go different ways), None if none does."""
    held = [a for a in accs if key in a]
    return parallel.total(held, key) if held else None


class _InferencePlan:
    """One image's convolution, its shapes and settings fixed, in inference: the kernel
    path chosen, and its buffers and views. Nothing is kept for backward, so the padded
    input can live in a buffer whose zero border is written once, and the windows of its
    columns, their destination and each kernel row's share of them can be worked out
    once. A call is then the interior copy, the column copy, the products and the
    residual and ReLU: ResNet-20 at batch 1, 2.34 -> 1.79 ms (a batch-1 layer spent a
    quarter of its time on setting up blocks, padding borders, windows and workspaces).
    The output is the blocks' to an ulp or so: a tied bias is summed inside the first
    product, whose columns lie one column wider.

    Plans are kept per thread (their buffers are written on every call), for stride-1 by
    kernel rows, the full im2col and the planes layout, one group and zero padding, and
    only for buffers up to ``PLAN_BYTES``; anything else runs as blocks. A call finds its
    plan by shapes and settings alone, before any other work (the paths' choice is made
    once, when the plan is built)."""

    PLAN_BYTES = 4 << 20          # larger plans are not built (their layers are compute-bound)
    THREAD_BYTES = 32 << 20       # plans a thread keeps; the oldest go first
    KEEP = 256                    # and at most this many (shapes found too large count too)
    _local = threading.local()

    @classmethod
    def get(cls, x_shape, w_shape, dtype, stride, pads, dilation):
        """The plan for these shapes and settings, built on first use; None for one too large."""
        local = cls._local
        plans = getattr(local, "plans", None)
        if plans is None:
            plans = local.plans = {}
            local.held = 0
        key = (x_shape, w_shape, dtype, stride, pads, dilation)
        plan = plans.get(key)
        if plan is None and key not in plans:
            plan = cls(*key) if cls._bytes_at_most(*key) <= cls.PLAN_BYTES else None
            size = 0 if plan is None else plan.nbytes
            while plans and (local.held + size > cls.THREAD_BYTES or len(plans) >= cls.KEEP):
                old = plans.pop(next(iter(plans)))
                local.held -= 0 if old is None else old.nbytes
            plans[key] = plan      # None: remembered as too large, so not sized again
            local.held += size
        return plan

    @staticmethod
    def _bytes_at_most(x_shape, w_shape, dtype, stride, pads, dilation):
        """An upper bound of a plan's buffers, before building it: the padded input, the
        full im2col's columns and three output-sized arrays."""
        (n, c, h, wd), (f, _, kh, kw) = x_shape, w_shape
        hp, wp = h + pads[0] + pads[1], wd + pads[2] + pads[3]
        m = n * out_size(hp, kh, stride[0], dilation[0]) * out_size(wp, kw, stride[1], dilation[1])
        return np.dtype(dtype).itemsize * (n * hp * wp * c + m * (kh * kw * c + 1) + 3 * m * f + (kh * kw * c + 1) * f)

    def __init__(self, x_shape, w_shape, dtype, stride, pads, dilation):
        n, c, h, wd = x_shape
        f, _, kh, kw = w_shape
        top, bottom, left, right = pads
        hp, wp = h + top + bottom, wd + left + right
        ho, wo = out_size(hp, kh, stride[0], dilation[0]), out_size(wp, kw, stride[1], dilation[1])
        planes = _planes(kw, c, wo)       # as the blocks would choose (Conv2dFunction.forward)
        by_rows = _by_rows(stride, 1, kh, planes, ho * wo * f * kw * c, n * ho * wo * kw * c)
        self.out_shape, self.kernel, self.planes, self.by_rows = (n, ho, wo, f), (kh, kw), planes, by_rows
        self.flops = 2 * n * ho * wo * kh * kw * c * f
        if planes:   # channels-first, columns (C, KH, KW, N, Ho, Wo) in memory, read transposed
            xp = np.zeros((n, c, hp, wp), dtype)
            self.interior = xp[:, :, top:top + h, left:left + wd]
            self.win = _im2col_windows(xp, (kh, kw), stride, dilation, 1, planes=True)
        else:
            xp = np.zeros((n, hp, wp, c), dtype)
            self.interior = xp[:, top:top + h, left:left + wd].transpose(0, 3, 1, 2)       # seen as NCHW
            if by_rows:    # the row columns (nb, Hp, Wo, KW, C), as _row_cols builds them
                self.win = _row_windows(xp, kw, dilation[1])
            else:          # the full columns (nb, Ho, Wo, KH, KW, C), as _im2col builds them
                self.win = _im2col_windows(xp, (kh, kw), stride, dilation, 1, planes=False)[0]
        # the columns, with one more column of ones: a tied bias rides in the first
        # product as one more row of the weight matrix instead of a pass of its own
        # (ResNet-20 at batch 1, every layer biased by its folded batch norm: 4% faster)
        m, k = n * ho * wo, (kw * c if by_rows else kh * kw * c)
        if planes:         # (K + 1, M) in memory, the ones the last row
            buf = np.empty((k + 1, m), dtype)
            buf[k] = 1
            self.cols = buf[:k].reshape(self.win.shape)
            self.rows, self.first_with_ones = [buf[:k].T], buf.T
        else:              # (..., K + 1), the ones the last column
            buf = np.empty(self.win.shape[:3] + (k + 1,), dtype)
            buf[..., k] = 1
            self.cols = buf[..., :k].reshape(self.win.shape)
            if by_rows:
                dh = dilation[0]
                self.rows = [buf[:, u * dh:u * dh + ho, :, :k].reshape(m, k) for u in range(kh)]
                self.first_with_ones = buf[:, :ho].reshape(m, k + 1)
            else:
                self.rows, self.first_with_ones = [buf[..., :k].reshape(m, k)], buf.reshape(m, k + 1)
        self.with_bias = np.empty((k + 1, f), dtype)          # the first weight rows, then the bias
        self.part = np.empty((m, f), dtype) if by_rows else None
        # the ReLU takes max against zeros in an array: NumPy's maximum with a scalar 0
        # runs a loop twice as slow, to the same result bit for bit (-0.0 and NaN included)
        self.zeros = np.zeros(self.out_shape, dtype)
        self.nbytes = xp.nbytes + buf.nbytes + self.zeros.nbytes + (0 if self.part is None else self.part.nbytes)

    def __call__(self, x, w, b, residual, relu):
        out = np.empty(self.out_shape, x.dtype)
        parallel.inline(lambda: self._convolve(x, w, b, residual, relu, out), self.flops)
        return out.transpose(0, 3, 1, 2)

    def _convolve(self, x, w, b, residual, relu, out):
        np.copyto(self.interior, x)
        np.copyto(self.cols, self.win)
        f = w.shape[0]
        o = out.reshape(-1, f)
        if self.planes:    # rows of the weight matrix ordered (c, kh, kw), as w lies
            wrows = [w.reshape(f, -1).T]
        else:              # ordered (kh, kw, c): a copy unless w is laid out so already
            wmat = w.transpose(2, 3, 1, 0)
            if not wmat.flags.c_contiguous:
                wmat = np.ascontiguousarray(wmat)
            wrows = wmat.reshape(len(self.rows), -1, f)
        if b is not None and b.ndim == 1:
            wb = self.with_bias
            wb[:-1] = wrows[0]
            wb[-1] = b
            np.matmul(self.first_with_ones, wb, out=o)
        else:
            np.matmul(self.rows[0], wrows[0], out=o)
        for a, wr in zip(self.rows[1:], wrows[1:]):
            np.matmul(a, wr, out=self.part)
            o += self.part
        if b is not None and b.ndim > 1:   # untied: one value per position
            out += b.transpose(1, 2, 0)
        if residual is not None:
            out += residual.transpose(0, 2, 3, 1)
        if relu:
            np.maximum(out, self.zeros, out=out)


def _add_bias(out, bias) -> None:
    """``out += bias`` for a contiguous (..., F) block and a bias of shape (F,) or
    broadcastable to ``out``. With few filters NumPy's broadcast runs an inner loop only
    F long (LeNet-5's first layer: 6), five times slower than the same add with the bias
    repeated along rows of k*F values."""
    f = out.shape[-1]
    rows = out.size // max(f, 1)
    # small outputs (batch-1 inference) are not worth the repeated bias's few microseconds,
    # except for very few filters (LeNet-5's first layer at batch 1, 4704 values: 3.9 -> 2.0 us)
    k = math.gcd(rows, 64) if bias.ndim == 1 and f < 256 and out.size >= (1 << 12 if f < 16 else 1 << 14) else 1
    if k > 1:
        repeated = np.empty((k, f), out.dtype)
        repeated[...] = bias
        rows_of_k = out.reshape(-1, k * f)
        rows_of_k += repeated.reshape(-1)
    else:
        out += bias


def _col2im_kernels(dtype, groups: int):
    """The Numba kernels for col2im (``kernels.jit``), where installed, for one group of
    float channels; None to add tap by tap in NumPy."""
    if groups != 1 or dtype not in (np.float32, np.float64):
        return None
    return jit.kernels()


def _gather_dx(c: int, f: int, groups: int) -> bool:
    """Whether a stride-1 convolution's input gradient may be computed as a gather (a
    correlation of the output gradient with the flipped kernel) rather than by col2im.
    Measured on LeNet-5, the MNIST CNN and ResNet-20: the gather wins unless channels
    expand (F > C), and for groups, where a tap's product is no longer contiguous per
    position. ``Conv2dFunction.backward`` then also asks that the gather can run by kernel
    rows, or that there is no compiled col2im to beat it."""
    return f <= c or groups > 1


# OpenBLAS multiplies matrices with M*N*K up to about this without packing them first
ROW_PRODUCT_MNK = 1 << 20


# below this many values in the row columns of the whole batch, one product beats KH of them
ROW_PRODUCT_MIN_VALUES = 8192


def _by_rows(stride, groups: int, kh: int, planes: bool, mnk: int, row_values: int) -> bool:
    """Whether a convolution runs by rows of the kernel (:func:`_conv_by_rows`): for
    stride 1, one group, channels-last columns and kernels of more than one row, where one
    image's product per kernel row (``mnk`` = Ho*Wo * F * KW*C) is small enough for
    BLAS's unpacked kernels. Measured at 2 threads, forward + backward: ResNet-20's
    16/32/64-channel layers 20/19/6% faster; the MNIST CNN's 32->64 on 26x26 (3.5M)
    2% slower, so it keeps the full im2col. Tiny row columns (``row_values`` =
    N*Ho*Wo * KW*C, as at batch 1) keep it too: there KH products and their sums cost more
    calls than the smaller copy saves (LeNet-5's second layer at batch 1, 3000 values: 47
    against 38.5 us; ResNet-20's 64-channel layers at batch 1, 12288 values, gain: the
    model 1819 -> 1794 us)."""
    return (stride == (1, 1) and groups == 1 and kh > 1 and not planes and mnk <= ROW_PRODUCT_MNK
            and row_values >= ROW_PRODUCT_MIN_VALUES)


def _row_windows(src, kw: int, dw: int):
    """The view that :func:`_row_cols` copies: (nb, H, Wo, KW, C) of ``src`` (nb, H, W, C)."""
    return windows(src, (1, kw), (1, 1), (1, dw), axes=(1, 2))[..., 0, :].transpose(0, 1, 2, 4, 3)


def _row_cols(src, kw: int, dw: int, slot: int):
    """The columns of one kernel *row* at every position of every input row: ``src`` (nb,
    H, W, C) channels-last gives (nb, H, Wo, KW*C), ordered (kw, c). A third (for 3x3) of
    the full im2col's copy; kernel row u's columns are then rows u*dh.. of it, a view."""
    win = _row_windows(src, kw, dw)
    cols = parallel.workspace(slot, win.shape, src.dtype)
    np.copyto(cols, win)
    return cols.reshape(win.shape[:3] + (win.shape[3] * win.shape[4],))


def _conv_by_rows(src, wmat, kernel, dilation, out) -> None:
    """Stride-1 cross-correlation of ``src`` (nb, H, W, C) into ``out`` (nb, Ho, Wo, F),
    contiguous per image, with ``wmat`` (KH*KW*C, F) ordered (kh, kw, c): the sum over
    kernel rows u of (row columns shifted down by u*dh) @ (weight rows of u). Copying
    only each kernel row's columns, and multiplying per image in products small enough
    for BLAS's unpacked kernels, took under half the time of full im2col and one product
    (16 channels 3x3 on 32x32, blocks of three images)."""
    _products_by_rows(_row_cols(src, kernel[1], dilation[1], slot=0), wmat, kernel[0], dilation[0], out)


def _products_by_rows(cols, wmat, kh: int, dh: int, out) -> None:
    """:func:`_conv_by_rows` from the row columns :func:`_row_cols` built."""
    nb, ho, wo, f = out.shape
    k = cols.shape[-1]
    wrows = wmat.reshape(kh, k, f)
    o = out.reshape(nb, ho * wo, f)
    part = parallel.workspace(3, (nb, ho * wo, f), out.dtype)
    for u in range(kh):
        a = cols[:, u * dh:u * dh + ho].reshape(nb, ho * wo, k)
        if u == 0:
            np.matmul(a, wrows[0], out=o)
        else:
            np.matmul(a, wrows[u], out=part)
            o += part


# Winograd F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural
# Networks", 2016): each 4x4 block of outputs from its 6x6 input tile d as
# A^T [(G g G^T) * (B^T d B)] A, 36 multiplies per channel pair instead of 144. The 36
# entries' products over all tiles are 36 matrix products, (tiles, C) @ (C, F); the
# transforms are sums, differences and multiples by 2, 4, 5 and 8
# (kernels.jit.winograd_input/_output/_gradient). The results stay within float
# rounding of the direct sum, though a wider one: in float32, 2e-6 to 1e-5 of the
# largest value for the output and the input gradient, 3e-6 to 1.6e-5 for the weight
# gradient (16 to 128 channels, 8x8 to 32x32), 15 to 25 times the direct paths' 2-6e-7
# (F(2x2, 3x3), which this replaced: 2-9e-7); the parity tests' tolerances against
# PyTorch are unchanged, 1e-4. Against F(2x2, 3x3), at batch 128, 2
# threads, forward; backward: ResNet-20's 16-channel layers 4.4 -> 3.8 ms; 9.2 -> 7.5
# (F(2x2, 3x3) lost there to the direct paths, 8.9), its 32-channel ones 2.7 -> 2.4;
# 5.6 -> 4.8, its 64-channel ones 2.2 -> 1.9; 4.5 -> 4.0, the MNIST CNN's 32 -> 64 on
# 26x26 9.4 -> 7.3; 23.7 -> 17.6: per 16 outputs and channel pair, 36 multiplies and
# transformed values against its 64. G transforms the kernel:
_WINOGRAD_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])

# channels in and out from which Winograd beats the direct paths, forward and backward
# (see _winograd)
WINOGRAD_MIN_CHANNELS = 16

# the transformed tiles and their products of a chunk of images take at most about this
# much: a forward block's images all at once, as the products' calls cost (F(2x2, 3x3),
# 16 channels, forward: 2 MB chunks 5.14 ms, 4 MB 4.73; F(4x4, 3x3), 16 and 32
# channels: 4, 8 and 16 MB alike)
WINOGRAD_CHUNK_BYTES = 8 << 20


def _winograd(kernel, stride, dilation, groups: int, planes: bool, c: int, f: int, dtype) -> bool:
    """Whether a convolution (or, from backward, its gradients) runs as Winograd's
    F(4x4, 3x3) (:func:`_winograd_conv`): a 3x3 kernel, stride 1, no dilation, one
    group, channels-last, at least ``WINOGRAD_MIN_CHANNELS`` channels in and out, and
    Numba for the transforms. Measured at batch 128, 2 threads, against the paths it
    replaces (forward; backward): ResNet-20's 16-channel layers 4.8 -> 3.8 ms; 8.9 ->
    7.5, its 32-channel ones 3.4 -> 2.4; 6.7 -> 4.8, its 64-channel ones 3.1 -> 1.9; 6.2
    -> 3.9, the MNIST CNN's 32 -> 64 on 26x26 14.0 -> 7.3; 29.3 -> 17.4; 12 channels on
    16x16 ties (1.14 -> 1.06; 1.79 -> 1.82), 8 loses (1.13 -> 1.25; 1.69 -> 2.24): the
    transforms move the input through memory 2.25 times over, and with few channels
    that costs what the products save."""
    return (kernel == (3, 3) and stride == (1, 1) and dilation == (1, 1) and groups == 1 and not planes
            and min(c, f) >= WINOGRAD_MIN_CHANNELS and _col2im_kernels(dtype, groups) is not None)


def _winograd_weights(wk, dtype=None):
    """The transformed kernels (36, Cin, Cout), entry 6*a + b of G g G^T for every pair of
    channels, from ``wk`` (3, 3, Cin, Cout), computed in float64 (G's sixths are not
    exact in binary) and rounded once to ``dtype`` (default: wk's)."""
    gw = np.tensordot(_WINOGRAD_G, wk.astype(np.float64), axes=(1, 0))            # a, l, Cin, Cout
    u = np.tensordot(_WINOGRAD_G, gw, axes=(1, 1))                                # b, a, Cin, Cout
    # an infinite weight makes NaN here (0 * inf): the convolution's result is then not
    # finite and the direct path takes over, quietly (entries are at most max|w|, as no
    # row of |G| sums to more than 1, so finite weights cannot overflow)
    with np.errstate(over="ignore", invalid="ignore"):
        return u.transpose(1, 0, 2, 3).reshape(36, wk.shape[2], wk.shape[3]).astype(dtype or wk.dtype)


def _winograd_conv(x, top: int, left: int, u, out) -> bool:
    """out (nb, Ho, Wo, F) = the stride-1 3x3 cross-correlation, with the kernels ``u``
    transformed by :func:`_winograd_weights`, of the zero-padded image holding ``x`` (nb,
    H, W, C), channels-last and contiguous, at row ``top`` and column ``left`` (the
    padding is read as zeros, never built). Runs over chunks of images
    (:func:`_winograd_chunks`). Returns False when the output is not all finite,
    for the caller to compute it directly: an infinity in the input can make NaN of a
    tile's sums where the direct sum keeps it infinite."""
    k = jit.kernels()
    nb, ho, wo, f = out.shape
    th, tw = -(-ho // 4), -(-wo // 4)
    r = parallel.workspace(7, (6, (4 * tw + 2) * x.shape[3]), x.dtype)
    z = parallel.workspace(8, (24, tw * f), out.dtype)
    finite = True
    with np.errstate(invalid="ignore", over="ignore"):     # a non-finite result goes the direct way
        for lo, hi, v, m in _winograd_chunks(nb, th * tw, x, out):
            k.winograd_input(x[lo:hi], top, left, th, tw, r, v)
            np.matmul(v, u, out=m)
            finite &= k.winograd_output(m, th, tw, z, out[lo:hi])
    return finite


def _winograd_chunks(nb: int, tiles: int, x, y):
    """(lo, hi, v, m) for chunks of the nb images, ``tiles`` tiles each, whose transformed
    tiles (v: (36, (hi - lo)*tiles, C) like ``x``, (nb, H, W, C)) and second operand or
    products (m: (36, (hi - lo)*tiles, F) like ``y``, (nb, Ho, Wo, F)) take at most about
    WINOGRAD_CHUNK_BYTES: workspaces of the calling thread."""
    c, f = x.shape[3], y.shape[3]
    chunk = max(1, WINOGRAD_CHUNK_BYTES // (36 * tiles * (c * x.itemsize + f * y.itemsize)))
    for lo in range(0, nb, chunk):
        hi = min(nb, lo + chunk)
        yield (lo, hi, parallel.workspace(9, (36, (hi - lo) * tiles, c), x.dtype),
               parallel.workspace(10, (36, (hi - lo) * tiles, f), y.dtype))


def _winograd_weight_grad(x, top: int, left: int, gm):
    """The weight gradient's transform (36, C, F) of a stride-1 3x3 convolution by
    Winograd's F(4x4, 3x3), :func:`_winograd_weight_grad_total` turning it into the
    weight gradient: with V = B^T d B the input's tiles (as forward transforms them) and
    Y = A gy A^T the output gradient's, each transformed kernel entry's gradient is
    V_e^T @ Y_e summed over the tiles, 36 products (C, tiles) @ (tiles, F). ``x`` (nb,
    H, W, C), the input, and ``gm`` (nb, Ho, Wo, F), the output gradient, are
    channels-last and contiguous; x lies at (top, left) of the zero-padded input. None
    when the result is not all finite (an infinity in the input or gradient), for the
    caller to take the direct path."""
    k = jit.kernels()
    dtype = np.result_type(x, gm)
    if x.dtype != dtype or gm.dtype != dtype:   # a float64 gradient: the transforms in float64 too
        x, gm = x.astype(dtype), gm.astype(dtype)
    nb, ho, wo, f = gm.shape
    c = x.shape[3]
    th, tw = -(-ho // 4), -(-wo // 4)
    r = parallel.workspace(7, (6, (4 * tw + 2) * max(c, f)), dtype)
    total = np.zeros((36, c, f), dtype)                     # stays so for an empty batch
    with np.errstate(invalid="ignore", over="ignore"):     # a non-finite result goes the direct way
        for lo, hi, v, y in _winograd_chunks(nb, th * tw, x, gm):
            k.winograd_input(x[lo:hi], top, left, th, tw, r, v)
            k.winograd_gradient(gm[lo:hi], th, tw, r, y)
            total += np.matmul(v.transpose(0, 2, 1), y)                            # 36, C, F
    return total if k.all_finite(total) else None


def _winograd_weight_grad_total(total):
    """The weight gradient (1, 9*C, F), rows ordered (kh, kw, c), from the sum of
    :func:`_winograd_weight_grad`'s (36, C, F): G^T (that) G for every channel pair,
    in float64 (G's sixths are not exact in binary) and rounded once."""
    _, c, f = total.shape
    inner = np.tensordot(_WINOGRAD_G, total.reshape(6, 6, c, f), axes=(0, 1))     # kw, a, C, F
    dw = np.tensordot(_WINOGRAD_G, inner, axes=(0, 1))                            # kh, kw, C, F
    return dw.reshape(1, 9 * c, f).astype(total.dtype)


def _weight_grad_by_rows(src, gm, ho, kernel, dilation):
    """The weight gradient (1, KH*KW*C, F) of a stride-1 convolution of ``src`` (nb, H, W,
    C) whose output gradient is ``gm`` (nb*Ho*Wo, F), kernel row by kernel row as in
    :func:`_conv_by_rows`."""
    (kh, kw), (dh, dw) = kernel, dilation
    cols = _row_cols(src, kw, dw, slot=0)
    nb, _, wo, k = cols.shape
    f = gm.shape[-1]
    g3 = gm.reshape(nb, ho * wo, f)
    grad_w = np.empty((kh, k, f), gm.dtype)
    for u in range(kh):
        a = cols[:, u * dh:u * dh + ho].reshape(nb, ho * wo, k)
        np.sum(np.matmul(a.transpose(0, 2, 1), g3), axis=0, out=grad_w[u])
    return grad_w.reshape(1, kh * k, f)


def _shares_gather_columns(gather: bool, by_rows: bool, padding_mode: str, need_dx: bool) -> bool:
    """Whether backward takes the weight gradient from the columns of the input-gradient
    gather (:func:`_weight_grad_from_gather`): where the gather runs by kernel rows over a
    zero-padded input, and is needed at all."""
    return gather and by_rows and padding_mode == "zeros" and need_dx


def _weight_grad_from_gather(x, gcols, kernel, dilation):
    """The weight gradient (1, KH*KW*C, F) of a stride-1, zero-padded convolution from
    the row columns its input-gradient gather built: ``x`` (nb, H*W, C), the unpadded
    input, and ``gcols`` (nb, H + reach, W, KW*F), those of the padded output gradient.
    dW[u, v] = sum over positions of x (x) gp[p + u' dh, q + v' dw] with u' = KH-1-u,
    v' = KW-1-v (the gather's flipped taps), so one product x^T @ (kernel row u' of
    gcols) per kernel row, and the input's own row columns are never built: 16
    channels on 32x32, 21 -> 15 us per image and kernel row, and 11 us of copying saved."""
    (kh, kw), dh = kernel, dilation[0]
    nb, hw, c = x.shape
    h, wd = hw // gcols.shape[2], gcols.shape[2]
    f = gcols.shape[-1] // kw
    grad_w = np.empty((kh, kw, c, f), np.result_type(x, gcols))   # a float64 gradient stays so
    xt = x.transpose(0, 2, 1)
    for u in range(kh):                    # u is u', the flipped kernel row
        m = np.sum(np.matmul(xt, gcols[:, u * dh:u * dh + h].reshape(nb, h * wd, kw * f)), axis=0)   # C, KW*F
        grad_w[kh - 1 - u] = m.reshape(c, kw, f).transpose(1, 0, 2)[::-1]
    return grad_w.reshape(1, kh * kw * c, f)


def _per_image(planes: bool, groups: int, mnk: int) -> bool:
    """Whether a few-channel convolution (columns built plane by plane) multiplies image by
    image: one image's product (``mnk`` = Ho*Wo * F * KH*KW*C) small enough for BLAS's
    unpacked kernels beats one product over the block, whose K (forward) or N is tiny."""
    return planes and groups == 1 and mnk <= ROW_PRODUCT_MNK


def _images(cols, nb: int, positions: int):
    """The (1, nb*Ho*Wo, K) columns of one group as (nb, Ho*Wo, K), one matrix per image
    (a view, whichever layout :func:`_im2col` built); ``positions`` = Ho*Wo."""
    c2 = cols[0]
    k = c2.shape[1]
    if c2.flags.c_contiguous:
        return c2.reshape(nb, positions, k)
    return c2.T.reshape(k, nb, positions).transpose(1, 2, 0)                       # planes: (K, M) memory


def _planes(kw: int, cg: int, wo: int) -> bool:
    """Whether to build a convolution's columns plane by plane from a channels-first input
    (copy runs of Wo values) rather than window by window from a channels-last one (runs
    of KW*C/G values): whichever copies the longer runs, so the planes win for few channels."""
    return kw * cg < wo


def _im2col(src, kernel, stride, dilation, groups, slot, planes=False):
    """Columns of every window of ``src`` (nb, H, W, C), channels-last, copied into the
    calling thread's workspace ``slot``: shape (G, nb*Ho*Wo, KH*KW*C/G), each row one
    window, ordered (kh, kw, c) to match the weight matrix.

    ``planes``: ``src`` is channels-first (nb, C, H, W); the columns are built transposed,
    (G, C/G*KH*KW, nb*Ho*Wo) in memory with rows ordered (c, kh, kw), one output-sized
    plane per tap, and returned as the (G, nb*Ho*Wo, C/G*KH*KW) view."""
    win = _im2col_windows(src, kernel, stride, dilation, groups, planes)
    cols = parallel.workspace(slot, win.shape, src.dtype)
    np.copyto(cols, win)
    if planes:          # (C, KH, KW, nb, Ho, Wo)
        return cols.reshape(groups, math.prod(win.shape[:3]) // groups, math.prod(win.shape[3:])).transpose(0, 2, 1)
    return cols.reshape(groups, math.prod(win.shape[1:4]), math.prod(win.shape[4:]))   # (G, nb, Ho, Wo, KH, KW, Cg)


def _im2col_windows(src, kernel, stride, dilation, groups, planes):
    """The view that :func:`_im2col` copies: (G, nb, Ho, Wo, KH, KW, C/G) of a
    channels-last ``src``, or (C, KH, KW, nb, Ho, Wo) of a channels-first one (``planes``)."""
    if planes:
        return windows(src, kernel, stride, dilation, axes=(2, 3)).transpose(1, 4, 5, 0, 2, 3)
    cg = src.shape[3] // groups
    win = windows(src.reshape(src.shape[:3] + (groups, cg)), kernel, stride, dilation, axes=(1, 2))
    return win.transpose(3, 0, 1, 2, 5, 6, 4)                                       # from nb Ho Wo G Cg KH KW


def _pad_with_zeros(a, src, pads):
    """Fill the (nb, H, W, C) array ``a`` with ``src`` zero-padded by (top, bottom, left,
    right): the border zeroed, ``src`` copied inside (a reused buffer: no full fill)."""
    top, bottom, left, right = pads
    if top:
        a[:, :top] = 0
    if bottom:
        a[:, a.shape[1] - bottom:] = 0
    if left:
        a[:, :, :left] = 0
    if right:
        a[:, :, a.shape[2] - right:] = 0
    a[:, top:a.shape[1] - bottom, left:a.shape[2] - right] = src


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           padding_mode="zeros", flip_kernel=False, relu=False, residual=None):
    r"""2-D cross-correlation, the "convolution" of deep learning (``torch.nn.functional.conv2d``).

    .. math:: out[n, f, i, j] = b[f] + \sum_{c, u, v} w[f, c, u, v]\, x_p[n, c, s_h i + d_h u, s_w j + d_w v]

    Args:
        input: (N, C, H, W) or unbatched (C, H, W).
        weight: (F, C / groups, KH, KW).
        bias: (F,) — one per filter — or (F, Ho, Wo), an *untied* bias with its own value
            at every output position (so a filter can learn how to behave near the border).
        stride: int or (sh, sw). Default 1.
        padding: int, (ph, pw), ``'valid'`` (no padding) or ``'same'`` (output ceil(H / stride),
            for any stride; the odd pixel of padding goes bottom/right). Default 0.
        dilation: int or (dh, dw): spacing between kernel taps. Default 1.
        groups: input and output channels split into this many independent groups;
            ``groups == C`` is a depthwise convolution. Default 1.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'``, ``'circular'`` (wrap-around)
            or ``'symmetric'`` (mirror repeating the edge). Default ``'zeros'``.
        flip_kernel: flip the kernel along both spatial axes first, which turns the
            cross-correlation into a true convolution (see :func:`true_conv2d`).
        relu: apply ReLU to the output in the same pass: ``relu(conv2d(...))``, with the
            same values and gradients, without a second trip through memory
            (``nn.Sequential`` does this for a ``Conv2d`` followed by a ``ReLU``).
        residual: an array of the output's shape, added to each block of output before the
            ReLU, in the same pass: ``relu(conv2d(...) + residual)`` (the end of a residual
            block whose batch norm is folded into the convolution, see
            :func:`cnnlab.nn.conv_bn`).

    Shape:
        out: (N, F, Ho, Wo) with Ho = floor((H + pad_top + pad_bottom - dh*(KH-1) - 1) / sh) + 1.
    """
    x, w, bias, residual, unbatched, geometry = _conv2d_arguments(input, weight, bias, stride, padding, dilation,
                                                                  groups, padding_mode, residual)
    return _conv2d(x, w, bias, residual, geometry, groups, padding_mode, flip_kernel, relu, unbatched)


def _conv2d_arguments(input, weight, bias, stride, padding, dilation, groups, padding_mode, residual):
    """conv2d's checks, raising an error that names what is wrong: the arrays as Tensors
    (a batch of one for an unbatched input), whether it was unbatched, and the geometry
    (stride, pads, dilation)."""
    where = "conv2d"
    x, w = _as_tensor(input, "conv2d", "input"), _as_tensor(weight, "conv2d", "weight")
    check_rank(x, (3, 4), where, "(N, C, H, W) or (C, H, W)")
    check_float(x, where)
    if w.ndim != 4:
        raise InputError(f"{where}: weight must be 4-D (F, C/groups, KH, KW), got shape {w.shape}")
    if x.dtype != w.dtype:
        raise InputError(f"{where}: input dtype {x.dtype} and weight dtype {w.dtype} differ")
    unbatched = x.ndim == 3
    if unbatched:
        x = x.reshape((1,) + x.shape)
    stride, pads, dilation, out_hw = conv_geometry(x.shape[1:], w.shape, stride, padding, dilation, groups,
                                                   padding_mode, where, shown_shape=input.shape)
    f = w.shape[0]
    if bias is not None:
        bias = _as_tensor(bias, "conv2d", "bias")
        if bias.shape not in ((f,), (f,) + out_hw):
            raise InputError(
                f"{where}: bias must have shape ({f},) or, untied, {(f,) + out_hw}, got {bias.shape}"
            )
        if bias.dtype != x.dtype:
            raise InputError(f"{where}: input dtype {x.dtype} and bias dtype {bias.dtype} differ")
    if residual is not None:
        residual = _as_tensor(residual, "conv2d", "residual")
        expected = (x.shape[0], f) + out_hw
        if residual.shape != expected[int(unbatched):] or residual.dtype != x.dtype:
            raise InputError(f"{where}: residual must have the output's shape {expected[int(unbatched):]} and dtype "
                             f"{x.dtype}, got {residual.shape} {residual.dtype}")
        if unbatched:
            residual = residual.reshape((1,) + residual.shape)
    return x, w, bias, residual, unbatched, (stride, pads, dilation)


def _conv2d(x, w, bias, residual, geometry, groups, padding_mode, flip_kernel, relu, unbatched):
    """conv2d on arguments :func:`_conv2d_arguments` checked (Tensors or arrays; x and
    residual batched)."""
    stride, pads, dilation = geometry
    if flip_kernel:
        w = w[:, :, ::-1, ::-1]
    grad = is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in (x, w, bias, residual))
    out = Conv2dFunction.apply(x, w, bias, residual, stride=stride, pads=pads, dilation=dilation,
                               groups=groups, padding_mode=padding_mode, relu=bool(relu), grad=grad)
    return out.reshape(out.shape[1:]) if unbatched else out


def true_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros"):
    """True (signal-processing) convolution: the kernel is flipped in both spatial axes
    before it slides, ``out[i, j] = sum_{u,v} w[u, v] x[i - u, j - v]`` (up to the offset
    of the flipped window). Deep-learning "convolution" (:func:`conv2d`) does not flip;
    since the kernel is learned, the two learn the same thing with mirrored weights, but
    they differ for a fixed kernel (compare an asymmetric edge filter under both)."""
    return conv2d(input, weight, bias, stride, padding, dilation, groups,
                  padding_mode=padding_mode, flip_kernel=True)


# ----- locally connected: a convolution without weight sharing -----
class LocallyConnected2dFunction(Function):
    """Like a convolution, but every output position (i, j) has its own filters:
    weight (Ho, Wo, F, C, KH, KW). Computed as one batched matmul over positions."""

    @staticmethod
    def forward(ctx, x, w, b, *, stride, pads, dilation, padding_mode):
        n, c, h, wd = x.shape
        ho, wo, f, _, kh, kw = w.shape
        xp = pad2d(x.transpose(0, 2, 3, 1), pads, padding_mode, axes=(1, 2))        # N Hp Wp C
        win = windows(xp, (kh, kw), stride, dilation, axes=(1, 2))                  # N Ho Wo C KH KW
        cols = win.transpose(1, 2, 0, 4, 5, 3).reshape(ho * wo, n, kh * kw * c)     # L N KH*KW*C
        wmat = w.transpose(0, 1, 4, 5, 3, 2).reshape(ho * wo, kh * kw * c, f)       # L KH*KW*C F
        out = np.matmul(cols, wmat).reshape(ho, wo, n, f).transpose(2, 3, 0, 1)    # N F Ho Wo
        if b is not None:
            out = out + b
        ctx.save_for_backward(cols, wmat)
        ctx.meta = (x.shape, w.shape, xp.shape, None if b is None else b.shape, stride, pads, dilation, padding_mode)
        return out

    @staticmethod
    def backward(ctx, grad):
        cols, wmat = ctx.saved_tensors
        x_shape, w_shape, xp_shape, b_shape, stride, pads, dilation, padding_mode = ctx.meta
        n, c, h, wd = x_shape
        ho, wo, f, _, kh, kw = w_shape
        gm = grad.transpose(2, 3, 0, 1).reshape(ho * wo, n, f)                      # L N F
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dcols = np.matmul(gm, wmat.transpose(0, 2, 1))                          # L N KH*KW*C
            dwin = dcols.reshape(ho, wo, n, kh, kw, c).transpose(2, 0, 1, 5, 3, 4)   # N Ho Wo C KH KW
            dxp = add_windows(np.zeros(xp_shape, grad.dtype), dwin, stride, dilation, axes=(1, 2))
            dx = pad2d_backward(dxp, (n, h, wd, c), pads, padding_mode, axes=(1, 2)).transpose(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            dwmat = np.matmul(cols.transpose(0, 2, 1), gm)                          # L KH*KW*C F
            dw = dwmat.reshape(ho, wo, kh, kw, c, f).transpose(0, 1, 5, 4, 2, 3)
        if b_shape is not None and ctx.needs_input_grad[2]:
            db = unbroadcast(grad.sum(axis=0), b_shape)   # (F, Ho, Wo), or (F, 1, 1) for a shared bias
        return dx, dw, db


def locally_connected2d(input, weight, bias=None, stride=1, padding=0, dilation=1, *, padding_mode="zeros"):
    """A convolution without weight sharing: one filter bank per output position.

    Args:
        input: (N, C, H, W) or (C, H, W).
        weight: (Ho, Wo, F, C, KH, KW): the filters of output position (i, j) are
            ``weight[i, j]``, laid out like a Conv2d weight.
        bias: (F, Ho, Wo) (one per filter per position) or (F,).
        stride, padding, dilation, padding_mode: as for :func:`conv2d`; ``padding='same'``
            is allowed, and (Ho, Wo) must agree with the weight.
    """
    where = "locally_connected2d"
    x, w = _as_tensor(input, "locally_connected2d", "input"), _as_tensor(weight, "locally_connected2d", "weight")
    check_rank(x, (3, 4), where, "(N, C, H, W) or (C, H, W)")
    check_float(x, where)
    if w.ndim != 6:
        raise InputError(f"{where}: weight must be 6-D (Ho, Wo, F, C, KH, KW), got shape {w.shape}")
    if x.dtype != w.dtype:
        raise InputError(f"{where}: input dtype {x.dtype} and weight dtype {w.dtype} differ")
    stride = pair(stride, "stride", where)
    dilation = pair(dilation, "dilation", where)
    padding = normalize_padding(padding, where)
    check_padding_mode(padding_mode, where)
    unbatched = x.ndim == 3
    if unbatched:
        x = x.reshape((1,) + x.shape)
    ho, wo, f, cw, kh, kw = w.shape
    if x.shape[1] != cw:
        raise InputError(f"{where}: expected input with {cw} channels (weight {w.shape}), got shape {tuple(input.shape)}")
    in_hw = x.shape[2:]
    pads = resolve_padding(padding, in_hw, (kh, kw), stride, dilation)
    check_pads_fit(in_hw, pads, padding_mode, where, padding)
    padded = (in_hw[0] + pads[0] + pads[1], in_hw[1] + pads[2] + pads[3])
    _check_window_fits(padded, (kh, kw), dilation, where, in_hw, pads)
    out_hw = (out_size(padded[0], kh, stride[0], dilation[0]), out_size(padded[1], kw, stride[1], dilation[1]))
    if out_hw != (ho, wo):
        raise InputError(
            f"{where}: weight has {ho}x{wo} output positions, but an input of spatial size "
            f"{tuple(in_hw)} gives {out_hw[0]}x{out_hw[1]}"
        )
    if bias is not None:
        bias = _as_tensor(bias, "locally_connected2d", "bias")
        if bias.shape == (f,):
            bias = bias.reshape(f, 1, 1)
        elif bias.shape != (f, ho, wo):
            raise InputError(f"{where}: bias must have shape {(f, ho, wo)} or ({f},), got {bias.shape}")
    out = LocallyConnected2dFunction.apply(x, w, bias, stride=stride, pads=pads, dilation=dilation,
                                           padding_mode=padding_mode)
    return out.reshape(out.shape[1:]) if unbatched else out


# ----- im2col and col2im as ops -----
def _im2col_nchw(x, kernel, stride, dilation, pads):
    n, c = x.shape[:2]
    win = windows(pad2d(x, pads), kernel, stride, dilation)                         # N C Ho Wo KH KW
    ho, wo = win.shape[2:4]
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kernel[0] * kernel[1], ho * wo)


def _col2im_nchw(cols, out_hw, kernel, stride, dilation, pads):
    n, ckk, _ = cols.shape
    c = ckk // (kernel[0] * kernel[1])
    hp, wp = out_hw[0] + pads[0] + pads[1], out_hw[1] + pads[2] + pads[3]
    ho, wo = out_size(hp, kernel[0], stride[0], dilation[0]), out_size(wp, kernel[1], stride[1], dilation[1])
    dwin = cols.reshape(n, c, kernel[0], kernel[1], ho, wo).transpose(0, 1, 4, 5, 2, 3)
    xp = add_windows(np.zeros((n, c, hp, wp), cols.dtype), dwin, stride, dilation)
    return pad2d_backward(xp, (n, c) + tuple(out_hw), pads)


class Unfold(Function):
    @staticmethod
    def forward(ctx, x, *, kernel, stride, dilation, pads):
        ctx.args = (x.shape[2:], kernel, stride, dilation, pads)
        return _im2col_nchw(x, kernel, stride, dilation, pads)

    @staticmethod
    def backward(ctx, grad):
        return (_col2im_nchw(grad, *ctx.args),)


class Fold(Function):
    @staticmethod
    def forward(ctx, cols, *, out_hw, kernel, stride, dilation, pads):
        ctx.args = (kernel, stride, dilation, pads)
        return _col2im_nchw(cols, out_hw, kernel, stride, dilation, pads)

    @staticmethod
    def backward(ctx, grad):
        return (_im2col_nchw(grad, *ctx.args),)


def _window_args(kernel_size, dilation, padding, stride, where):
    return (pair(kernel_size, "kernel_size", where), pair(stride, "stride", where),
            pair(dilation, "dilation", where), pair(padding, "padding", where, allow_zero=True))


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    """im2col (``torch.nn.functional.unfold``): (N, C, H, W) -> (N, C*KH*KW, L), one column
    per window position, L = Ho*Wo. A convolution is then ``weight.reshape(F, -1) @ cols``."""
    where = "unfold"
    x = _as_tensor(input, "unfold", "input")
    check_rank(x, (4,), where, "(N, C, H, W)")
    kernel, stride, dilation, (ph, pw) = _window_args(kernel_size, dilation, padding, stride, where)
    pads = (ph, ph, pw, pw)
    _check_window_fits((x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), kernel, dilation, where, x.shape[2:], pads)
    return Unfold.apply(x, kernel=kernel, stride=stride, dilation=dilation, pads=pads)


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """col2im (``torch.nn.functional.fold``): (N, C*KH*KW, L) -> (N, C, H, W), summing the
    values that overlapping windows put on the same pixel. The adjoint of :func:`unfold`."""
    where = "fold"
    cols = _as_tensor(input, "fold", "input")
    check_rank(cols, (3,), where, "(N, C*KH*KW, L)")
    kernel, stride, dilation, (ph, pw) = _window_args(kernel_size, dilation, padding, stride, where)
    out_hw = pair(output_size, "output_size", where)
    kk = kernel[0] * kernel[1]
    blocks = (out_size(out_hw[0] + 2 * ph, kernel[0], stride[0], dilation[0])
              * out_size(out_hw[1] + 2 * pw, kernel[1], stride[1], dilation[1]))
    if cols.shape[1] % kk or cols.shape[2] != blocks:
        raise InputError(
            f"{where}: expected input of shape (N, C*{kk}, {blocks}) for output_size={out_hw}, "
            f"kernel_size={kernel}, got {cols.shape}"
        )
    return Fold.apply(cols, out_hw=out_hw, kernel=kernel, stride=stride, dilation=dilation, pads=(ph, ph, pw, pw))
