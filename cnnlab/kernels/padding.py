"""Padding of two spatial axes in the five modes cnnlab supports, and its adjoint.

Modes (PyTorch's names, plus ``symmetric``):
    zeros      0 0 | a b c d | 0 0      (a constant ``value``)
    reflect    c b | a b c d | c b      mirror without repeating the edge
    symmetric  b a | a b c d | d c      mirror repeating the edge
    replicate  a a | a b c d | d d
    circular   c d | a b c d | a b      wrap-around
"""
from __future__ import annotations

import numpy as np

_NUMPY_MODE = {"reflect": "reflect", "symmetric": "symmetric", "replicate": "edge", "circular": "wrap"}
MODES = ("zeros",) + tuple(_NUMPY_MODE)


def padded_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each position of a padded axis of length ``before + n + after``, the index of
    the input element it copies (-1 for a constant pad). Padding is a gather with it."""
    if mode == "zeros":
        return np.concatenate([np.full(before, -1), np.arange(n), np.full(after, -1)])
    return np.pad(np.arange(n), (before, after), mode=_NUMPY_MODE[mode])


def axis_order(a: np.ndarray) -> tuple:
    """The order in which ``a``'s axes lie in memory, outermost first: (0, 2, 3, 1) for a
    channels-last array viewed as NCHW."""
    return tuple(sorted(range(a.ndim), key=lambda ax: -a.strides[ax]))


def empty_in_order(shape, order, dtype, zeros: bool = False) -> np.ndarray:
    """An empty (or zero) array of ``shape`` whose axes lie in memory in ``order``."""
    out = (np.zeros if zeros else np.empty)([shape[a] for a in order], dtype=dtype)
    inverse = [0] * len(order)   # the inverse permutation, in Python: np.argsort costs more than the rest
    for i, a in enumerate(order):
        inverse[a] = i
    return out.transpose(inverse)


def empty_like_layout(shape, like: np.ndarray, zeros: bool = False, dtype=None) -> np.ndarray:
    """An empty (or zero) array of ``shape`` (default dtype: ``like``'s) whose axes lie in
    memory in the same order as those of ``like`` (same number of axes): a channels-last
    array viewed as NCHW gives a channels-last result, so padding, pooling gradients and
    residual sums keep the layout convolutions produce."""
    return empty_in_order(shape, axis_order(like), like.dtype if dtype is None else dtype, zeros)


def in_order(a: np.ndarray, order) -> np.ndarray:
    """``a`` itself if it is contiguous with its axes in memory in ``order``, else a copy
    that is. Elementwise passes over arrays of different layouts crawl; a gradient can be
    brought to its input's layout once, where it is smallest."""
    if a.transpose(order).flags.c_contiguous:
        return a
    out = empty_in_order(a.shape, order, a.dtype)
    out[...] = a
    return out


def pad2d(x: np.ndarray, pads, mode: str = "zeros", value: float = 0.0, axes=(2, 3), order: str = "C") -> np.ndarray:
    """Pad ``x`` on ``axes`` (height, width) by ``pads = (top, bottom, left, right)``.

    ``order`` (constant modes): ``'C'`` lays the result out C-contiguous in the axis order
    ``x`` is given in; ``'K'`` keeps ``x``'s memory order (a channels-last array viewed as
    NCHW stays channels-last)."""
    top, bottom, left, right = pads
    ha, wa = axes
    if not any(pads):
        return x
    if mode == "zeros":
        shape = list(x.shape)
        shape[ha] += top + bottom
        shape[wa] += left + right
        out = empty_like_layout(shape, x) if order == "K" else np.empty(shape, x.dtype)
        out.fill(value)
        inner = [slice(None)] * x.ndim
        inner[ha] = slice(top, top + x.shape[ha])
        inner[wa] = slice(left, left + x.shape[wa])
        out[tuple(inner)] = x
        return out
    out = np.take(x, padded_index(x.shape[ha], top, bottom, mode), axis=ha)
    return np.take(out, padded_index(x.shape[wa], left, right, mode), axis=wa)


def _adjoint_axis(g: np.ndarray, n: int, before: int, after: int, mode: str, axis: int) -> np.ndarray:
    """Sum the gradient of each padded copy back into the element it was copied from."""
    inner = [slice(None)] * g.ndim
    inner[axis] = slice(before, before + n)
    out = g[tuple(inner)].copy(order="K")       # in g's memory layout: no transposing copy
    src = padded_index(n, before, after, mode)
    for r in list(range(before)) + list(range(before + n, before + n + after)):
        dst = [slice(None)] * g.ndim
        dst[axis] = src[r]
        take = [slice(None)] * g.ndim
        take[axis] = r
        out[tuple(dst)] += g[tuple(take)]
    return out


def pad2d_backward(g: np.ndarray, in_shape, pads, mode: str = "zeros", axes=(2, 3)) -> np.ndarray:
    """The gradient with respect to the input of :func:`pad2d`."""
    if not any(pads):
        return g
    top, bottom, left, right = pads
    ha, wa = axes
    if mode == "zeros":  # padding got constants: its gradient is dropped, in one copy
        inner = [slice(None)] * g.ndim
        inner[ha] = slice(top, top + in_shape[ha])
        inner[wa] = slice(left, left + in_shape[wa])
        return g[tuple(inner)].copy(order="K")
    g = _adjoint_axis(g, in_shape[wa], left, right, mode, wa)
    return _adjoint_axis(g, in_shape[ha], top, bottom, mode, ha)
