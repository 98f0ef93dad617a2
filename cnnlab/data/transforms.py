"""Batch transforms: each works on a whole batch at once, with no Python loop over images.

A transform is any callable ``t(x, rng) -> ndarray`` taking a floating-point batch x of
shape (B, C, H, W) (pixels on the 0-1 scale) and a ``numpy.random.Generator``; random
transforms draw one value (offset, flip) per image from ``rng``, so the same batch and the
same generator state give the same result. The :class:`~cnnlab.data.DataLoader` passes a
generator seeded with (seed, epoch, batch index). Transforms never modify their input.
"""
from __future__ import annotations

import numpy as np

from .._errors import pair
from ..kernels import pad2d, windows
from ..random import generator

PADDING_MODES = ("zeros", "reflect")


def _check_batch(x, where: str) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        got = f"shape {x.shape} dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{where}: expected a floating-point ndarray batch (B, C, H, W), got {got}")


def crop(x: np.ndarray, top: np.ndarray, left: np.ndarray, size) -> np.ndarray:
    """Cut an (h, w) window from each image of x (B, C, H, W), image b's at
    (top[b], left[b]): one gather from a strided view of every window, one copy."""
    h, w = size
    every = windows(x, (h, w), (1, 1))  # (B, C, H-h+1, W-w+1, h, w), no copy
    # the two index arrays are apart (the channel slice sits between), so their axis
    # comes first: the result is (B, C, h, w)
    return every[np.arange(x.shape[0]), :, top, left]


class Normalize:
    """``(x - mean) / std`` per channel. ``mean`` and ``std`` are numbers or sequences of
    C numbers, on the 0-1 scale (e.g. ``dataset.mean_std()``)."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.size == 0 or self.mean.shape != self.std.shape:
            raise ValueError(f"Normalize: mean and std must have the same, non-zero length, "
                             f"got {self.mean.size} and {self.std.size}")
        if not np.all(self.std > 0):
            raise ValueError(f"Normalize: std must be positive, got {self.std.tolist()}")

    def __call__(self, x: np.ndarray, rng=None) -> np.ndarray:
        _check_batch(x, "Normalize")
        if self.mean.size not in (1, x.shape[1]):
            raise ValueError(f"Normalize: {self.mean.size} means and stds for input with {x.shape[1]} "
                             f"channels (shape {x.shape})")
        mean = self.mean.astype(x.dtype).reshape(-1, 1, 1)
        std = self.std.astype(x.dtype).reshape(-1, 1, 1)
        return (x - mean) / std

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop:
    """Pad each image by ``padding`` pixels (``'zeros'`` or ``'reflect'``), then cut a
    random ``size`` window, each image its own offset.

    Args:
        size: output (h, w), an int or a pair.
        padding: pixels added on each side, an int or a pair (vertical, horizontal).
        padding_mode: ``'zeros'`` or ``'reflect'`` (mirror without repeating the edge).

    Shape: (B, C, H, W) -> (B, C, h, w); needs h <= H + 2 * padding, w likewise.
    """

    def __init__(self, size, padding=0, padding_mode: str = "zeros"):
        self.size = pair(size, "size", "RandomCrop")
        self.padding = pair(padding, "padding", "RandomCrop", allow_zero=True)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"RandomCrop: padding_mode must be one of {', '.join(PADDING_MODES)}, "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode

    def __call__(self, x: np.ndarray, rng=None) -> np.ndarray:
        _check_batch(x, "RandomCrop")
        (ph, pw), (h, w) = self.padding, self.size
        if self.padding_mode == "reflect" and (ph >= x.shape[2] or pw >= x.shape[3]):
            raise ValueError(f"RandomCrop: reflect padding {self.padding} must be smaller than the "
                             f"image, got input of shape {x.shape}")
        x = pad2d(x, (ph, ph, pw, pw), self.padding_mode)
        H, W = x.shape[2:]
        if h > H or w > W:
            raise ValueError(f"RandomCrop: crop size {self.size} is larger than the padded image "
                             f"{(H, W)} (input {x.shape[2] - 2 * ph}x{x.shape[3] - 2 * pw}, padding {self.padding})")
        rng = generator() if rng is None else rng
        top = rng.integers(0, H - h + 1, x.shape[0])
        left = rng.integers(0, W - w + 1, x.shape[0])
        return crop(x, top, left, (h, w))

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding}, padding_mode={self.padding_mode!r})"


class RandomTranslate:
    """Shift each image by its own random (dy, dx), each uniform in
    ``-max_shift .. max_shift`` pixels (an int or a pair), filling with zeros. The size
    is kept: it is a :class:`RandomCrop` of the image's own size after zero padding."""

    def __init__(self, max_shift):
        self.max_shift = pair(max_shift, "max_shift", "RandomTranslate", allow_zero=True)

    def __call__(self, x: np.ndarray, rng=None) -> np.ndarray:
        _check_batch(x, "RandomTranslate")
        sy, sx = self.max_shift
        rng = generator() if rng is None else rng
        top = rng.integers(0, 2 * sy + 1, x.shape[0])  # window at top = sy - dy: shifted down by dy
        left = rng.integers(0, 2 * sx + 1, x.shape[0])
        return crop(pad2d(x, (sy, sy, sx, sx)), top, left, x.shape[2:])

    def __repr__(self):
        return f"RandomTranslate(max_shift={self.max_shift})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip: p must lie in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x: np.ndarray, rng=None) -> np.ndarray:
        _check_batch(x, "RandomHorizontalFlip")
        rng = generator() if rng is None else rng
        flip = rng.random(x.shape[0]) < self.p
        out = x.copy()  # then rewrite only the flipped images: faster than np.where over all
        out[flip] = x[flip, ..., ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply ``transforms`` in order, all drawing from the same generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: every transform must be callable, got {type(t).__name__}")

    def __call__(self, x: np.ndarray, rng=None) -> np.ndarray:
        rng = generator() if rng is None else rng
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"
