"""Sliding windows as strided views (im2col without a copy) and their adjoint (col2im).

``windows`` returns a read-only view: reshaping it, or multiplying it, makes the one copy
that im2col needs. ``add_windows`` is the adjoint: it scatter-adds a gradient shaped like
that view back onto the (padded) input, one strided slice per kernel offset, so the loop
runs KH*KW times, never once per output position.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def out_size(n: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Output length of a window sliding over an (already padded) axis of length n:
    floor((n - dilation*(kernel-1) - 1) / stride) + 1."""
    return (n - dilation * (kernel - 1) - 1) // stride + 1


def windows(x: np.ndarray, kernel, stride, dilation=(1, 1), axes=(2, 3), writeable=False) -> np.ndarray:
    """View of every window of ``x``: the two spatial ``axes`` become the output grid
    (Ho, Wo) in place, and the window offsets (KH, KW) are appended as the last two axes.

    E.g. NCHW input, axes (2, 3) -> (N, C, Ho, Wo, KH, KW); NHWC, axes (1, 2) ->
    (N, Ho, Wo, C, KH, KW). ``writeable=True`` is for writing one window tap (one
    ``[..., i, j]`` slice, which has no repeated elements) at a time."""
    ha, wa = axes
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho = out_size(x.shape[ha], kh, sh, dh)
    wo = out_size(x.shape[wa], kw, sw, dw)
    shape = list(x.shape)
    strides = list(x.strides)
    shape[ha], shape[wa] = ho, wo
    strides[ha], strides[wa] = x.strides[ha] * sh, x.strides[wa] * sw
    shape += [kh, kw]
    strides += [x.strides[ha] * dh, x.strides[wa] * dw]
    if x.size and x.flags.c_contiguous:
        # the same view made over x's buffer: a quarter of as_strided's 2.4 us, felt by
        # batch-1 inference (NumPy checks that it stays inside the buffer)
        view = np.ndarray(tuple(shape), x.dtype, buffer=x, strides=tuple(strides))
        view.flags.writeable = writeable and x.flags.writeable
        return view
    return as_strided(x, tuple(shape), tuple(strides), writeable=writeable)


def add_windows(out: np.ndarray, dwin: np.ndarray, stride, dilation=(1, 1), axes=(2, 3)) -> np.ndarray:
    """Adjoint of :func:`windows`: ``out[window] += dwin[window]`` for every window,
    in place; ``dwin`` has the view's shape. Returns ``out``."""
    ha, wa = axes
    (sh, sw), (dh, dw) = stride, dilation
    kh, kw = dwin.shape[-2:]
    ho, wo = dwin.shape[ha], dwin.shape[wa]
    for i in range(kh):
        for j in range(kw):
            idx = [slice(None)] * out.ndim
            idx[ha] = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            idx[wa] = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            out[tuple(idx)] += dwin[..., i, j]
    return out
