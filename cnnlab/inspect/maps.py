"""Feature maps: what every convolutional layer outputs for one input image.

:func:`feature_maps` runs the model once and returns each layer's (C, H, W) output;
:func:`maps_grid` tiles one layer's channels into a single image for display. Because
convolution is equivariant, shifting the input shifts every map the same way (away from
the borders); pooling with stride s turns a shift of s pixels into a shift of one.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from ..autograd import Tensor
from ..nn import Module
from ._common import (NORMALIZE, as_float_array, check_layout, image_batch, inspecting, positive_int, scale01,
                      shape_errors, tile)
from .layers import capture, layer_names

__all__ = ["NORMALIZE", "feature_maps", "maps_grid"]


def feature_maps(model: Module, image, layers=None) -> "OrderedDict[str, np.ndarray]":
    """The activations of every layer with a 4-D (N, C, H, W) output, for one image.

    The model runs once, in evaluation mode and without the tape (each layer's own mode is
    restored afterwards), through :func:`cnnlab.inspect.layers.capture`.

    Args:
        model: any :class:`cnnlab.nn.Module`.
        image: (C, H, W) or (1, C, H, W), as the model takes it (normalised the same way
            as in training). uint8 pixels are divided by 255.
        layers: a layer name or a list of names (dotted, as in ``model.named_modules()``;
            containers allowed); default every leaf layer whose output is 4-D. A model
            with no sub-layers gives its own output, under ``"output"``.

    Returns:
        ``OrderedDict`` name -> (C, H, W) array, in the order the layers ran. A layer used
        more than once in the forward pass appears once per call: ``name``, then
        ``name (call 2)``, ...

    Raises:
        ValueError: a layer that does not exist or whose output is not 4-D (the message
        lists the valid names), or an image of a shape the model cannot take.
    """
    where = "feature_maps"
    x, _ = image_batch(model, image, where, one=True)
    chosen = layers is not None
    if chosen:
        layers = [layers] if isinstance(layers, str) else list(layers)
    elif not layer_names(model):
        layers = []
    with inspecting(model, where), shape_errors(where, x.shape[1:]):
        caught = capture(model, Tensor(x), layers)
    out = caught.pop("output")
    if not chosen and not layer_names(model):
        caught["output"] = out
    maps = OrderedDict((name, t.data[0]) for name, t in caught.items() if t.ndim == 4)
    if chosen:
        flat = [name for name, t in caught.items() if t.ndim != 4]
        if flat:
            with inspecting(model, where):
                every = capture(model, Tensor(x))
            valid = [n for n, t in every.items() if t.ndim == 4 and n != "output"]
            raise ValueError(f"{where}: layer {flat[0]!r} outputs shape {caught[flat[0]].shape}, not a 4-D "
                             f"(N, C, H, W) feature map; layers with feature maps: {', '.join(valid)}")
    return maps


def maps_grid(maps, max_channels: int = 64, normalize: str = "each", pad: int = 1, ncols: int = None) -> np.ndarray:
    """One layer's feature maps (C, H, W) tiled into one grayscale image in [0, 1].

    Args:
        maps: (C, H, W), e.g. ``feature_maps(model, image)[name]``.
        max_channels: show the first this many channels (default 64).
        normalize: ``'each'`` (default) scales each map to its own min..max, so weak
            maps are visible too; ``'all'`` uses one scale for the shown maps, so their
            strengths compare. A constant map (a dead ReLU channel) shows as 0.
        pad: pixels between neighbouring tiles, at value 1 (white).
        ncols: tiles per row; default ceil(sqrt(number shown)).

    Returns:
        a 2-D float64 array of shape (rows * (H + pad) - pad, ncols * (W + pad) - pad).
    """
    where = "maps_grid"
    a = as_float_array(maps, where, "maps").astype(np.float64)
    if a.ndim != 3:
        raise ValueError(f"maps_grid: maps must be one layer's (C, H, W) feature maps, got shape {a.shape}")
    positive_int(max_channels, "max_channels", where)
    check_layout(normalize, pad, ncols, where)
    a = a[:max_channels]
    a = scale01(a, (1, 2) if normalize == "each" else None, 0.0)
    return tile(a, ncols or math.ceil(math.sqrt(len(a))), int(pad))
