"""Convolution written as a (sparse) matrix.

Unroll one input image (C, H, W) into a vector x of length C*H*W and the output (F, Ho, Wo)
into a vector of length F*Ho*Wo: a convolution is then y = M x for a sparse matrix M,
whose row for output (f, i, j) holds the weights w[f, c, u, v] in the columns of the input
pixels that window covers. Its transpose maps an output gradient to the input gradient,
which is exactly what the backward pass of a convolution computes. With circular
padding M is block-circulant: each row is the row above it, shifted.
"""
from __future__ import annotations

import numpy as np

from .functional.conv import conv_geometry
from .kernels import padded_index


def conv_matrix(weight, input_shape, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                flip_kernel=False):
    """The matrix M with ``M @ x.ravel() == conv2d(x, weight, ...).ravel()`` for one image.

    Args:
        weight: (F, C/groups, KH, KW) Tensor or array.
        input_shape: (C, H, W) of one image.
        stride, padding, dilation, groups, padding_mode, flip_kernel: as for
            :func:`cnnlab.functional.conv2d` (the bias is not part of M: y = M x + b).

    Returns:
        ``scipy.sparse.csr_matrix`` of shape (F*Ho*Wo, C*H*W). Where padding copies a pixel
        more than once into a window (reflect, symmetric...), its weights are summed.
    """
    try:
        import scipy.sparse as sparse
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("conv_matrix needs SciPy: pip install 'cnnlab[sparse]'") from e
    where = "conv_matrix"
    w = np.asarray(getattr(weight, "data", weight))
    if w.ndim != 4:
        raise ValueError(f"{where}: weight must be 4-D (F, C/groups, KH, KW), got shape {w.shape}")
    if len(input_shape) != 3:
        raise ValueError(f"{where}: input_shape must be (C, H, W), got {tuple(input_shape)}")
    if flip_kernel:
        w = w[:, :, ::-1, ::-1]
    c, h, wd = (int(v) for v in input_shape)
    f, cg, kh, kw = w.shape
    stride, (top, bottom, left, right), dilation, (ho, wo) = conv_geometry(
        (c, h, wd), w.shape, stride, padding, dilation, groups, padding_mode, where)
    rows_src = padded_index(h, top, bottom, padding_mode)
    cols_src = padded_index(wd, left, right, padding_mode)

    fi, ci, u, v, i, j = np.ix_(np.arange(f), np.arange(cg), np.arange(kh), np.arange(kw), np.arange(ho), np.arange(wo))
    src_h = rows_src[i * stride[0] + u * dilation[0]]
    src_w = cols_src[j * stride[1] + v * dilation[1]]
    channel = (fi // (f // groups)) * cg + ci
    shape = (f, cg, kh, kw, ho, wo)
    row = np.broadcast_to((fi * ho + i) * wo + j, shape)
    col = np.broadcast_to((channel * h + src_h) * wd + src_w, shape)
    val = np.broadcast_to(w[fi, ci, u, v], shape)
    keep = np.broadcast_to((src_h >= 0) & (src_w >= 0), shape)  # zero padding contributes nothing
    m = sparse.coo_matrix((val[keep], (row[keep], col[keep])), shape=(f * ho * wo, c * h * wd))
    return m.tocsr()  # sums duplicate entries
