"""Plumbing every inspection tool shares: running a model in evaluation mode and putting
it back exactly as it was, checking arguments, turning images and datasets into batches
in the model's dtype, re-raising a shape error with the input that caused it, and
tiling small images into one."""
from __future__ import annotations

import contextlib

import numpy as np

from .._errors import InputError, positive_int  # noqa: F401  (shared by the inspection tools)
from ..autograd import Tensor
from ..nn import Conv2d, LocallyConnected2d, Module
from ..nn.module import eval_mode, model_dtype  # noqa: F401

NORMALIZE = ("each", "all")


def check_model(model, where: str) -> Module:
    if not isinstance(model, Module):
        raise TypeError(f"{where}: model must be a cnnlab.nn.Module, got {type(model).__name__}")
    return model


@contextlib.contextmanager
def inspecting(model: Module, where: str = "inspect", freeze: bool = False):
    """Evaluation mode (dropout off, batch norm on its running statistics) inside the
    block; afterwards every layer gets back its own mode, so a model that was training
    with one frozen BatchNorm layer comes back exactly like that (a layer that had no
    ``training`` attribute of its own goes back to the class default).

    With ``freeze=True`` the parameters also stop requiring gradients inside the block, so
    a backward pass computes only the input's gradient; each one's ``requires_grad`` is
    restored afterwards."""
    check_model(model, where)
    params = list(model.parameters()) if freeze else []
    wanted = [p.requires_grad for p in params]
    with eval_mode(model):
        for p in params:
            p.requires_grad = False
        try:
            yield model
        finally:
            for p, rg in zip(params, wanted):
                p.requires_grad = rg


@contextlib.contextmanager
def shape_errors(where: str, shape):
    """A layer that cannot take the input raises InputError; say which image shape that was."""
    try:
        yield
    except InputError as e:
        s = tuple(shape)
        raise ValueError(f"{where}: the model does not accept images of shape {s} (C, H, W) "
                         f"(it cannot take input of shape {s}): {e}") from None


def as_float_array(x, where: str, name: str) -> np.ndarray:
    """A Tensor or array-like as a floating-point ndarray (uint8 pixels become 0-1)."""
    a = x.data if isinstance(x, Tensor) else np.asarray(x)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    if a.dtype.kind in "iub":
        return a.astype(np.float32)
    if a.dtype.kind != "f":
        raise TypeError(f"{where}: {name} must hold numbers, got dtype {a.dtype}")
    return a


def image_batch(model: Module, image, where: str, one: bool = False):
    """(x, single): the image (C, H, W) or batch (N, C, H, W) as a contiguous
    (N, C, H, W) array in the model's dtype, and whether a single image was given. With
    ``one=True`` a batch must hold one image."""
    check_model(model, where)
    x = as_float_array(image, where, "image")
    single = x.ndim == 3
    if not single and (x.ndim != 4 or (one and x.shape[0] != 1)):
        wanted = ("one image (C, H, W) or a batch of one (1, C, H, W)" if one else
                  "an image (C, H, W) or a batch of images (N, C, H, W)")
        raise ValueError(f"{where}: expected {wanted}, got shape {x.shape}")
    return np.ascontiguousarray(x[None] if single else x, dtype=model_dtype(model)), single


def check_channels(model: Module, x: np.ndarray, where: str) -> None:
    """Refuse a batch whose channel count is not what the model's first convolution takes,
    before any forward pass, naming that convolution."""
    first = next((m for m in model.modules() if isinstance(m, (Conv2d, LocallyConnected2d))), None)
    if first is not None and first.in_channels != x.shape[1]:
        name = next(n for n, m in model.named_modules() if m is first) or type(model).__name__
        raise ValueError(f"{where}: the model expects images with {first.in_channels} channels (its first "
                         f"convolution {name!r} is {first._short_repr()}), got {x.shape[1]} channels in an "
                         f"image of shape {x.shape[1:]}")


# ----- datasets -----

def dataset_arrays(data, transform, where: str):
    """(images (N, C, H, W), labels (N,) or None, transform) from what the caller has:

    - a :class:`cnnlab.data.DataLoader`: its dataset, and its transform unless one is given
      (its order, shuffling and batch size are not used: images are read in dataset order,
      so indices refer to the dataset);
    - a dataset with ``images`` and ``labels`` arrays (an :class:`ArrayDataset`);
    - a pair ``(images, labels)``, or an images array alone.
    """
    loader_transform = None
    if hasattr(data, "dataset") and hasattr(data, "transform"):
        loader_transform, data = data.transform, data.dataset
    if hasattr(data, "images"):
        images, labels = data.images, getattr(data, "labels", None)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
    elif isinstance(data, (np.ndarray, Tensor)):
        images, labels = data, None
    else:
        raise TypeError(f"{where}: expected a DataLoader, a dataset with images and labels, a pair "
                        f"(images, labels) or an images array, got {type(data).__name__}")
    images = images.data if isinstance(images, Tensor) else np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{where}: images must be 4-D (N, C, H, W), got shape {images.shape}")
    if labels is not None:
        labels = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{where}: labels must have shape ({images.shape[0]},) to match images "
                             f"{images.shape}, got {labels.shape}")
    transform = loader_transform if transform is None else transform
    if transform is not None and not callable(transform):
        raise TypeError(f"{where}: transform must be callable (x, rng) -> x, got {type(transform).__name__}")
    return images, labels, transform


def iter_batches(model: Module, images: np.ndarray, batch_size: int, transform, where: str, limit: int = None):
    """(start index, batch) over ``images`` in order: uint8 pixels divided by 255 (as the
    DataLoader does), then ``transform(x, rng)``, then cast to the model's dtype."""
    n = len(images) if limit is None else min(limit, len(images))
    dtype = model_dtype(model)
    for b, lo in enumerate(range(0, n, batch_size)):
        x = as_float_array(images[lo:min(lo + batch_size, n)], where, "images").astype(np.float32, copy=False)
        if transform is not None:
            x = transform(x, np.random.default_rng((0, 0, b)))
        yield lo, np.asarray(x).astype(dtype, copy=False)


# ----- grids of small images -----

def scale01(x: np.ndarray, axes, constant: float) -> np.ndarray:
    """Min-max scale ``x`` to [0, 1] over ``axes``; where the values are all equal (a dead
    channel, a zero filter) the result is ``constant``."""
    lo = x.min(axis=axes, keepdims=True)
    span = x.max(axis=axes, keepdims=True) - lo
    ok = span > 0
    return np.where(ok, (x - lo) / np.where(ok, span, 1), constant)


def tile(tiles: np.ndarray, ncols: int, pad: int, pad_value: float = 1.0) -> np.ndarray:
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


def check_layout(normalize: str, pad, ncols, where: str) -> None:
    if normalize not in NORMALIZE:
        raise ValueError(f"{where}: normalize must be one of {', '.join(map(repr, NORMALIZE))}, got {normalize!r}")
    if not isinstance(pad, (int, np.integer)) or isinstance(pad, bool) or pad < 0:
        raise ValueError(f"{where}: pad must be a non-negative int, got {pad!r}")
    if ncols is not None and (not isinstance(ncols, (int, np.integer)) or isinstance(ncols, bool) or ncols < 1):
        raise ValueError(f"{where}: ncols must be a positive int or None, got {ncols!r}")
