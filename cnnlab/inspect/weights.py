"""Filters: the learned weights of convolution layers, as arrays and as one image.

A trained network's first layer usually holds oriented edge and blob detectors (and, on
colour images, opposing-colour filters); :func:`filter_grid` lays them out for display.
:func:`filter_gradients` gives the weight gradient on a batch, which shows what a step of
training would change.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..autograd import Tensor, enable_grad
from ..nn import Conv2d, Module
from ._common import as_float_array, check_layout, check_model, inspecting, model_dtype, scale01, shape_errors, tile
from .layers import get_layer

CHANNELS = ("auto", "rgb", "mean", "all")


def _conv_names(model: Module) -> list:
    return [name or "(the model itself)" for name, m in model.named_modules() if isinstance(m, Conv2d)]


def _first_conv(model: Module, where: str):
    check_model(model, where)
    for name, m in model.named_modules():
        if isinstance(m, Conv2d):
            return name, m
    raise ValueError(f"{where}: {type(model).__name__} has no Conv2d layer")


def _conv_layer(model: Module, layer: str, where: str):
    if layer is None:
        return _first_conv(model, where)
    m = get_layer(model, layer)
    if not isinstance(m, Conv2d):
        raise ValueError(f"{where}: layer {layer!r} is {type(m).__name__}, not Conv2d; "
                         f"Conv2d layers: {', '.join(_conv_names(model)) or 'none'}")
    return layer, m


def first_layer_filters(model: Module) -> np.ndarray:
    """The weights (F, C, KH, KW) of the model's first Conv2d, a copy.

    "First" is the first Conv2d met walking ``model.named_modules()`` (definition order),
    which for the zoo models is the one that sees the input. The weights are returned as
    stored; a layer with ``flip_kernel=True`` applies them flipped.

    Raises:
        ValueError: the model has no Conv2d layer.
    """
    return _first_conv(model, "first_layer_filters")[1].weight.data.copy()


def layer_filters(model: Module, layer: str) -> np.ndarray:
    """The weights (F, C/groups, KH, KW) of the Conv2d called ``layer``, a copy; show them
    with ``filter_grid(w, channels='all')``, one tile per (filter, input channel).

    Raises:
        ValueError: no such layer, or it is not a Conv2d (the message lists the Conv2d layers).
    """
    return _conv_layer(model, layer, "layer_filters")[1].weight.data.copy()


def filter_grid(weights, normalize: str = "each", pad: int = 1, channels: str = "auto",
                ncols: int = None) -> np.ndarray:
    """Convolution filters (F, C, KH, KW) tiled into one image with values in [0, 1].

    Args:
        weights: (F, C, KH, KW) array (or Tensor), e.g. from :func:`first_layer_filters`.
        normalize: ``'each'`` (default) scales each filter, all its channels together, to
            its own min..max, the usual way to see every filter's pattern; ``'all'`` uses
            one scale for the whole array, so filter strengths compare. A constant filter
            shows as mid-grey (0.5).
        pad: pixels between tiles, at value 1 (white); none around the outside.
        channels: how the C input channels are shown.

            - ``'rgb'``: one colour tile per filter, channels as red, green, blue; needs
              C == 3. Result (H, W, 3).
            - ``'mean'``: one grayscale tile per filter, the mean over its channels.
            - ``'all'``: one grayscale tile per (filter, channel): row f holds filter f's
              C channels (with C == 1, a square grid of the F filters).
            - ``'auto'`` (default): ``'rgb'`` when C == 3, else ``'all'``.
        ncols: tiles per row for the square layouts (``'rgb'``, ``'mean'``, or ``'all'``
            with C == 1); default ceil(sqrt(F)). Ignored for ``'all'`` with C > 1.

    Returns:
        float64 array, (H, W) grayscale or (H, W, 3) RGB, where a grid of R rows and K
        columns of KH x KW tiles has H = R * (KH + pad) - pad and W = K * (KW + pad) - pad.
    """
    where = "filter_grid"
    w = as_float_array(weights, where, "weights").astype(np.float64)
    if w.ndim != 4:
        raise ValueError(f"{where}: weights must be 4-D (F, C, KH, KW), got shape {w.shape}")
    if channels not in CHANNELS:
        raise ValueError(f"{where}: channels must be one of {', '.join(map(repr, CHANNELS))}, got {channels!r}")
    check_layout(normalize, pad, ncols, where)
    n_filters, c = w.shape[:2]
    if channels == "auto":
        channels = "rgb" if c == 3 else "all"
    if channels == "rgb" and c != 3:
        raise ValueError(f"{where}: channels='rgb' needs 3 input channels, got weights of shape {w.shape}; "
                         f"use channels='mean' or 'all'")
    if channels == "mean":
        w = w.mean(axis=1, keepdims=True)
    w = scale01(w, (1, 2, 3) if normalize == "each" else None, 0.5)
    square = ncols or math.ceil(math.sqrt(n_filters))
    if channels == "rgb":
        return tile(w.transpose(0, 2, 3, 1), square, int(pad))
    if w.shape[1] == 1:
        return tile(w[:, 0], square, int(pad))
    return tile(w.reshape((-1,) + w.shape[2:]), w.shape[1], int(pad))


def filter_gradients(model: Module, images, labels, layer: str = None) -> np.ndarray:
    """d(loss)/d(weight) (F, C, KH, KW) of a Conv2d on one batch, where the loss is the mean
    cross-entropy of ``model(images)`` against ``labels``.

    The model runs in evaluation mode (batch norm uses its running statistics; each
    layer's mode is restored afterwards). Nothing of the model changes: the ``.grad`` of
    every parameter is put back as it was, and the weight's ``requires_grad`` too.

    Args:
        images: (N, C, H, W), as the model takes them (normalised).
        labels: (N,) class indices.
        layer: the Conv2d's name; default the first (see :func:`first_layer_filters`).
    """
    where = "filter_gradients"
    name, conv = _conv_layer(model, layer, where)
    x = as_float_array(images, where, "images").astype(model_dtype(model), copy=False)
    y = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
    if x.ndim != 4:
        raise ValueError(f"{where}: images must be a batch (N, C, H, W), got shape {x.shape}")
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be ({x.shape[0]},) integer class indices to match images "
                         f"{x.shape}, got shape {y.shape} dtype {y.dtype}")
    params = list(model.parameters())
    saved = [(p, p.grad, p.requires_grad) for p in params]
    try:
        for p in params:
            p.grad = None
        conv.weight.requires_grad = True
        with inspecting(model, where), enable_grad(), shape_errors(where, x.shape[1:]):
            loss = F.cross_entropy(model(Tensor(x)), Tensor(y.astype(np.int64)))
            loss.backward()
        grad = conv.weight.grad
        return np.zeros_like(conv.weight.data) if grad is None else grad.copy()
    finally:
        for p, g, rg in saved:
            p.grad, p.requires_grad = g, rg
