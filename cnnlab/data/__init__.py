"""Datasets, batches and augmentation.

- :class:`ArrayDataset`: images (N, C, H, W) and labels (N,) in memory;
  :func:`load_dataset` and one loader per dataset (:func:`mnist`, :func:`fashion_mnist`,
  :func:`cifar10`, :func:`digits`) read the original files, checking their checksums,
  and download missing ones (:mod:`cnnlab.data.download` says where they are looked for).
- :class:`DataLoader`: seeded, resumable batches as cnnlab Tensors.
- batch transforms: :class:`Normalize`, :class:`RandomCrop`, :class:`RandomTranslate`,
  :class:`RandomHorizontalFlip`, :class:`Compose`.
"""
from .dataset import ArrayDataset, DatasetError, DownloadError
from .catalog import DATASETS, cifar10, digits, fashion_mnist, load_dataset, mnist
from .formats import read_idx
from .download import cache_dir
from .loader import DataLoader
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip, RandomTranslate

__all__ = [
    "ArrayDataset", "DatasetError", "DownloadError", "DATASETS", "load_dataset", "mnist", "fashion_mnist",
    "cifar10", "digits", "read_idx", "cache_dir", "DataLoader", "Normalize", "RandomCrop",
    "RandomTranslate", "RandomHorizontalFlip", "Compose",
]
