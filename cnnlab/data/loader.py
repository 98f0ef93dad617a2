"""Batches of a dataset as cnnlab Tensors, shuffled and augmented reproducibly.

Everything random is a function of (seed, epoch) and the batch index, never of how many
batches were drawn before, so a run stopped in the middle of an epoch can resume with
``iter_epoch(epoch, start_batch=k)`` and get exactly the batches it would have got.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..autograd import Tensor



def _stream(seed, *key):
    """An independent random stream per (purpose, epoch, batch). The seed is the entropy and
    the rest a spawn key: packing them all into the entropy would make streams collide
    (``(seed, e)`` is padded to ``(seed, e, 0)``, and seeds of 2**32 or more spill into
    the next word)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class DataLoader:
    """Iterate over ``dataset`` in batches of (x, y) Tensors.

    Args:
        dataset: an :class:`ArrayDataset`, or anything with ``images`` (N, C, H, W) uint8
            or float and ``labels`` (N,) integer arrays.
        batch_size: images per batch (default 64).
        shuffle: visit the images in a new random order each epoch (default False).
        drop_last: leave out the last batch if it is smaller than ``batch_size``.
        transform: a batch transform ``t(x, rng) -> x`` (see :mod:`cnnlab.data.transforms`),
            applied after scaling to [0, 1].
        seed: a non-negative int. The order of epoch e is
            a permutation drawn from ``SeedSequence(seed, spawn_key=(1, e))``; batch b of
            epoch e is augmented with a generator from ``SeedSequence(seed, spawn_key=(0, e, b))``.

    Yields:
        x: float32 Tensor (B, C, H, W), uint8 pixels divided by 255 (float images as they
        are), then transformed; y: int64 Tensor (B,).

    ``len(loader)`` is the number of batches per epoch. ``for x, y in loader`` runs
    epoch ``loader.epoch`` and, once it has run to its end, advances ``loader.epoch``
    (stopping early leaves it, so the next loop repeats that epoch); ``set_epoch(e)``
    chooses the epoch, and ``iter_epoch(e, start_batch)`` runs any epoch from any batch
    without touching ``loader.epoch``.
    """

    def __init__(self, dataset, batch_size: int = 64, shuffle: bool = False, drop_last: bool = False,
                 transform=None, seed: int = 0):
        images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
        if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
            raise TypeError(f"DataLoader: dataset must have ndarray attributes images and labels "
                            f"(an ArrayDataset), got {type(dataset).__name__}")
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"DataLoader: expected images (N, C, H, W) and labels (N,), got "
                             f"{images.shape} and {labels.shape}")
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"DataLoader: seed must be a non-negative int, got {seed!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"DataLoader: transform must be callable (x, rng) -> x, got {type(transform).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.dataset.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make ``epoch`` the one the next ``for`` loop runs."""
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"DataLoader.set_epoch: epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The dataset indices in the order epoch ``epoch`` visits them."""
        n = len(self.dataset.labels)
        if not self.shuffle:
            return np.arange(n)
        return _stream(self.seed, 1, int(epoch)).permutation(n)

    def __iter__(self):
        epoch = self.epoch
        yield from self.iter_epoch(epoch)
        self.epoch = epoch + 1

    def iter_epoch(self, epoch: int, start_batch: int = 0):
        """The batches of epoch ``epoch`` from batch ``start_batch`` on: the same batches
        (order and augmentation) as batches ``start_batch, ...`` of an uninterrupted run."""
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"DataLoader.iter_epoch: epoch must be a non-negative int, got {epoch!r}")
        if not _is_int(start_batch) or not 0 <= start_batch <= len(self):
            raise ValueError(f"DataLoader.iter_epoch: start_batch must lie in 0..{len(self)}, got {start_batch!r}")
        return self._batches(int(epoch), int(start_batch))

    def _batches(self, epoch, start_batch):
        images, labels = self.dataset.images, self.dataset.labels
        order = self.order(epoch) if self.shuffle else None
        for b in range(start_batch, len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, len(labels))
            # a contiguous slice when not shuffling, one gather when shuffling
            index = slice(lo, hi) if order is None else order[lo:hi]
            x, y = images[index], labels[index]
            if x.dtype == np.uint8:
                x = x.astype(np.float32)
                x /= 255
            else:
                x = x.astype(np.float32, copy=order is None)  # a slice is a view: copy it
            if self.transform is not None:
                x = self.transform(x, _stream(self.seed, 0, epoch, b))
            yield Tensor(x), Tensor(y.astype(np.int64, copy=order is None))

    def __repr__(self):
        return (f"DataLoader({getattr(self.dataset, 'name', type(self.dataset).__name__)!r}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, drop_last={self.drop_last}, "
                f"transform={self.transform!r}, seed={self.seed})")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
