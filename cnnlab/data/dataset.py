"""The in-memory dataset every loader returns, and the error they raise."""
from __future__ import annotations

import numpy as np


class DatasetError(ValueError):
    """A dataset file that is missing, corrupt, of the wrong format or fails its checksum,
    or a download that failed. The message names the file (or URL), what was expected
    and what was found."""


class DownloadError(DatasetError):
    """A download that failed: HTTP or network error, short or corrupt file."""


class ArrayDataset:
    """Images and labels held in memory as NumPy arrays.

    Args:
        images: (N, C, H, W) array, ``uint8`` (0-255) or floating point (0-1, stored as
            ``float32``).
        labels: (N,) integer class indices in ``0 .. len(classes) - 1``, stored as ``int64``.
        classes: the class names; default ``['0', '1', ...]`` up to the largest label.
        name: a short name for messages, e.g. ``'mnist/train'``.

    Indexing gives ``(image, label)``: ``ds[i]`` is a (C, H, W) array and an ``int``;
    ``ds[a:b]`` or ``ds[index_array]`` give the (B, C, H, W) images and (B,) labels.
    """

    def __init__(self, images, labels, classes=None, name: str = "dataset"):
        images = np.asarray(images)
        labels = np.asarray(labels)
        where = f"ArrayDataset({name!r})"
        if images.ndim != 4:
            raise ValueError(f"{where}: images must be 4-D (N, C, H, W), got shape {images.shape}")
        if images.dtype.kind == "f":
            images = images.astype(np.float32, copy=False)
            if images.size and (images.min() < 0 or images.max() > 1):
                raise ValueError(f"{where}: float images must lie in [0, 1], got values in "
                                 f"[{images.min():g}, {images.max():g}]")
        elif images.dtype != np.uint8:
            raise TypeError(f"{where}: images must be uint8 (0-255) or floating point (0-1), got dtype {images.dtype}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"{where}: labels must have shape ({images.shape[0]},) to match images "
                             f"{images.shape}, got {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{where}: labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64, copy=False)
        if classes is None:
            classes = [str(k) for k in range(int(labels.max()) + 1 if labels.size else 0)]
        classes = [str(c) for c in classes]
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"{where}: labels must lie in 0..{len(classes) - 1} ({len(classes)} classes), "
                             f"got values in {labels.min()}..{labels.max()}")
        self.images = images
        self.labels = labels
        self.classes = classes
        self.name = name
        self._mean_std = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.images[index], int(self.labels[index])
        return self.images[index], self.labels[index]

    @property
    def shape(self) -> tuple:
        """The shape (C, H, W) of one image."""
        return self.images.shape[1:]

    def mean_std(self) -> tuple:
        """Per-channel mean and standard deviation over every pixel, on the 0-1 scale.

        Returns two float64 arrays of shape (C,), ready for ``Normalize(mean, std)``.
        The standard deviation is the population one (divided by the number of pixels).
        Computed once, then remembered."""
        if self._mean_std is None:
            N, C = self.images.shape[:2]
            scale = 255.0 if self.images.dtype == np.uint8 else 1.0
            per_image = int(np.prod(self.images.shape[2:]))
            step = max(1, (1 << 20) // max(per_image, 1))  # about a million pixels at a time
            sums, squares = np.zeros(C), np.zeros(C)
            for lo in range(0, N, step):
                for c in range(C):
                    # float64 holds sums of 0-255 integers exactly; a dot product is the fast sum of squares
                    block = self.images[lo:lo + step, c].astype(np.float64).ravel()
                    sums[c] += block.sum()
                    squares[c] += block @ block
            n = max(N * per_image, 1)
            mean = sums / n
            std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
            self._mean_std = (mean / scale, std / scale)
        return self._mean_std[0].copy(), self._mean_std[1].copy()

    def __repr__(self):
        return (f"ArrayDataset({self.name!r}, {len(self)} images of {self.shape} {self.images.dtype}, "
                f"{len(self.classes)} classes)")
