"""Feature maps: what every convolutional layer outputs for one input image.

:func:`feature_maps` runs the model once and returns each layer's (C, H, W) output;
:func:`maps_grid` tiles one layer's channels into a single image for display. Because
convolution is equivariant, shifting the input shifts every map the same way (away from
the borders); pooling with stride s turns a shift of s pixels into a shift of one.

This module also holds the small helpers the other inspection tools share: running a
model in evaluation mode and restoring each layer's own mode afterwards, turning an image
into a batch of one, re-raising a shape error with the input that caused it, and tiling.
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

import numpy as np

from .._errors import InputError
from ..autograd import Tensor
from ..nn import Module
from .layers import capture, layer_names

NORMALIZE = ("each", "all")


@contextlib.contextmanager
def _eval_mode(model: Module):
    """Evaluation mode (dropout off, batch norm on its running statistics) inside the
    block; afterwards every layer gets back its own mode, so a model that was training
    with one frozen BatchNorm layer comes back exactly like that."""
    if not isinstance(model, Module):
        raise TypeError(f"expected a cnnlab.nn.Module, got {type(model).__name__}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _shape_errors(where: str, shape):
    """A layer that cannot take the input raises InputError; say which input that was."""
    try:
        yield
    except InputError as e:
        raise ValueError(f"{where}: the model cannot take input of shape {tuple(shape)}: {e}") from None


def _as_float_array(x, where: str, name: str) -> np.ndarray:
    """A Tensor or array-like as a floating-point ndarray (uint8 pixels become 0-1)."""
    a = x.data if isinstance(x, Tensor) else np.asarray(x)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    if a.dtype.kind in "iub":
        return a.astype(np.float32)
    if a.dtype.kind != "f":
        raise TypeError(f"{where}: {name} must hold numbers, got dtype {a.dtype}")
    return a


def _model_dtype(model: Module):
    """The floating dtype of the model's parameters (float32 if it has none), which its
    inputs are cast to: the ops do not mix float32 and float64."""
    for p in model.parameters():
        if p.data.dtype.kind == "f":
            return p.data.dtype
    return np.dtype(np.float32)


def _image_batch(model: Module, image, where: str) -> np.ndarray:
    """One image (C, H, W), or a batch of one (1, C, H, W), as a (1, C, H, W) array in
    the model's dtype."""
    x = _as_float_array(image, where, "image")
    if x.ndim == 3:
        x = x[None]
    elif x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"{where}: image must be one image (C, H, W) or a batch of one (1, C, H, W), "
                         f"got shape {x.shape}")
    return x.astype(_model_dtype(model), copy=False)


def _scale01(x: np.ndarray, axes, constant: float) -> np.ndarray:
    """Min-max scale ``x`` to [0, 1] over ``axes``; where the values are all equal (a dead
    channel, a zero filter) the result is ``constant``."""
    lo = x.min(axis=axes, keepdims=True)
    span = x.max(axis=axes, keepdims=True) - lo
    ok = span > 0
    return np.where(ok, (x - lo) / np.where(ok, span, 1), constant)


def _tile(tiles: np.ndarray, ncols: int, pad: int, pad_value: float = 1.0) -> np.ndarray:
    """Lay ``tiles`` (n, h, w) or (n, h, w, 3) out in rows of ``ncols``, ``pad`` pixels of
    ``pad_value`` between neighbours (none around the outside); empty slots are
    ``pad_value`` too. Shape: (rows * (h + pad) - pad, ncols * (w + pad) - pad[, 3])."""
    n, h, w = tiles.shape[:3]
    rows = -(-n // ncols)
    extra = tiles.shape[3:]
    # pad every tile at its bottom and right, add the empty slots, then one reshape lays
    # the (rows, ncols) grid of tiles out as an image; the last row and column of padding go
    padded = np.full((rows * ncols, h + pad, w + pad) + extra, pad_value, dtype=np.float64)
    padded[:n, :h, :w] = tiles
    grid = padded.reshape((rows, ncols, h + pad, w + pad) + extra).swapaxes(1, 2)
    grid = grid.reshape((rows * (h + pad), ncols * (w + pad)) + extra)
    return grid[:rows * (h + pad) - pad, :ncols * (w + pad) - pad]


def _check_layout(normalize: str, pad, ncols, where: str) -> None:
    if normalize not in NORMALIZE:
        raise ValueError(f"{where}: normalize must be one of {', '.join(map(repr, NORMALIZE))}, got {normalize!r}")
    if not isinstance(pad, (int, np.integer)) or isinstance(pad, bool) or pad < 0:
        raise ValueError(f"{where}: pad must be a non-negative int, got {pad!r}")
    if ncols is not None and (not isinstance(ncols, (int, np.integer)) or isinstance(ncols, bool) or ncols < 1):
        raise ValueError(f"{where}: ncols must be a positive int or None, got {ncols!r}")


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
    x = _image_batch(model, image, where)
    chosen = layers is not None
    if chosen:
        layers = [layers] if isinstance(layers, str) else list(layers)
    elif not layer_names(model):
        layers = []
    with _eval_mode(model), _shape_errors(where, x.shape[1:]):
        caught = capture(model, Tensor(x), layers)
    out = caught.pop("output")
    if not chosen and not layer_names(model):
        caught["output"] = out
    maps = OrderedDict((name, t.data[0]) for name, t in caught.items() if t.ndim == 4)
    if chosen:
        flat = [name for name, t in caught.items() if t.ndim != 4]
        if flat:
            with _eval_mode(model):
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
    a = _as_float_array(maps, where, "maps").astype(np.float64)
    if a.ndim != 3:
        raise ValueError(f"maps_grid: maps must be one layer's (C, H, W) feature maps, got shape {a.shape}")
    if not isinstance(max_channels, (int, np.integer)) or isinstance(max_channels, bool) or max_channels < 1:
        raise ValueError(f"{where}: max_channels must be a positive int, got {max_channels!r}")
    _check_layout(normalize, pad, ncols, where)
    a = a[:max_channels]
    a = _scale01(a, (1, 2) if normalize == "each" else None, 0.0)
    return _tile(a, ncols or math.ceil(math.sqrt(len(a))), int(pad))
