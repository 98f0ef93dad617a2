"""The datasets cnnlab knows: where their files come from, the checksums they must have,
and one loader per dataset returning an :class:`ArrayDataset`.

- ``mnist``: 60,000 train / 10,000 test images (1, 28, 28) uint8, four gzip IDX files;
- ``fashion-mnist``: the same sizes and format;
- ``cifar10``: 50,000 / 10,000 images (3, 32, 32) uint8, the binary or the Python
  version, as the .tar.gz archive or the unpacked folder;
- ``digits``: 1,438 / 359 images (1, 8, 8) float32 in [0, 1], no files: they ship with
  scikit-learn.

Files are looked up and downloaded as described in :mod:`cnnlab.data.download`. The
checksum tables below are module-level so that a test (or a user with a private copy in
another packing) can replace entries.
"""
from __future__ import annotations

import functools

import numpy as np

from .dataset import ArrayDataset, DatasetError
from .download import check_sha256, data_roots, download_dir, fetch, find_file, mirror_urls, search_dirs
from .formats import (IDX_IMAGES, IDX_LABELS, parse_cifar_binary, parse_cifar_pickle, read_idx,
                      read_members)

SPLITS = ("train", "test")

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# SHA256 of the original distribution files, as published (the MD5s published with them
# match the same bytes). Keyed by dataset, then file name.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

# CIFAR-10 is checked file by file inside the archive, so the official archives and any
# repacking of the same files (such as a rebuilt archive made with a different gzip) are
# all accepted. MD5 as published for the binary version and as used by torchvision for
# the Python version.
CIFAR10_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
# A downloaded archive must be one of these: the official archives' published SHA256,
# and the lossless rebuild of the binary archive whose members are the original files.
CIFAR10_ARCHIVE_SHA256 = {
    "cifar-10-binary.tar.gz": ("c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                               "0cd3e5f1fbbf479ecbe41c8ccf2fa33e13c6bdab0216702d2b7f0adbad1706f0"),
    "cifar-10-python.tar.gz": ("6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",),
}
# Where each version lies, in the order they are looked for in each folder: an unpacked
# folder first (no decompression), the binary version before the Python one.
CIFAR10_SOURCES = (
    ("cifar-10-batches-bin", "binary"),
    ("cifar-10-binary.tar.gz", "binary"),
    ("cifar-10-batches-py", "python"),
    ("cifar-10-python.tar.gz", "python"),
)

MIRRORS = {
    # the mirror PyTorch uses first, then the original site
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}
FOLDERS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar-10"}

# the embedded digits: a stratified split, the same on every machine
DIGITS_TEST_FRACTION = 0.2
DIGITS_SEED = 0


def mnist(split: str = "train", data_dir=None, download: bool = True, *, mirror=None,
          progress=None) -> ArrayDataset:
    """MNIST handwritten digits: 60,000 train / 10,000 test images (1, 28, 28) uint8,
    classes '0'-'9'.

    Args:
        split: ``'train'`` or ``'test'``.
        data_dir: a folder holding ``mnist/`` or the four ``.gz`` files; searched before
            ``$CNNLAB_DATA`` and ``~/.cache/cnnlab``.
        download: fetch missing files (into the first writable of those folders).
        mirror: base URL, or list of them, replacing the official mirrors.
        progress: download progress bar: ``True``, ``False``, or ``None`` (when tqdm is
            installed and stderr is a terminal).
    """
    return _idx_dataset("mnist", MNIST_CLASSES, split, data_dir, download, mirror, progress)


def fashion_mnist(split: str = "train", data_dir=None, download: bool = True, *, mirror=None,
                  progress=None) -> ArrayDataset:
    """Fashion-MNIST (Zalando): 60,000 train / 10,000 test images (1, 28, 28) uint8 in 10
    clothing classes. Arguments as :func:`mnist`; the files live in ``fashion-mnist/``."""
    return _idx_dataset("fashion-mnist", FASHION_MNIST_CLASSES, split, data_dir, download, mirror, progress)


def cifar10(split: str = "train", data_dir=None, download: bool = True, *, mirror=None,
            progress=None) -> ArrayDataset:
    """CIFAR-10: 50,000 train / 10,000 test colour images (3, 32, 32) uint8 in 10 classes.

    Reads the binary version (``cifar-10-binary.tar.gz`` or ``cifar-10-batches-bin/``) or
    the Python version (``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``), archives
    straight from the .tar.gz without extracting. Every batch file is checked against its
    MD5 before it is parsed (pickles are unpickled only then). A download fetches the
    binary archive. Arguments as :func:`mnist`; the files live in ``cifar-10/``.
    """
    _check_split(split, "cifar10")
    roots = data_roots(data_dir)
    source, kind = _find_cifar10(roots)
    if source is None:
        name = "cifar-10-binary.tar.gz"
        if not download:
            raise _not_found("cifar10", " or ".join(n for n, _ in CIFAR10_SOURCES), roots)
        urls = mirror_urls(name, FOLDERS["cifar10"], mirror, MIRRORS["cifar10"])
        dest = download_dir(roots, FOLDERS["cifar10"]) / name
        source, kind = fetch(urls, dest, CIFAR10_ARCHIVE_SHA256[name], progress), "binary"
    batches = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    names = [b + ".bin" for b in batches] if kind == "binary" else batches
    parse = parse_cifar_binary if kind == "binary" else parse_cifar_pickle
    members = read_members(source, names, CIFAR10_MD5)
    parts = [parse(members.pop(n), f"{source}: {n}") for n in names]
    images = np.concatenate([p[0] for p in parts])  # also makes the record views contiguous
    labels = np.concatenate([p[1] for p in parts])
    _check_labels(labels, len(CIFAR10_CLASSES), f"{source}: {', '.join(names)}")
    return ArrayDataset(images, labels, CIFAR10_CLASSES, name=f"cifar10/{split}")


def digits(split: str = "train", data_dir=None, download: bool = True, *, mirror=None, progress=None) -> ArrayDataset:
    """scikit-learn's handwritten digits (UCI optdigits test set): 1,797 images (1, 8, 8)
    float32 in [0, 1] (the original 0-16 counts divided by 16), classes '0'-'9'.

    Needs no files and no network. The split is stratified and fixed: from each class,
    ``round(0.2 * n)`` images chosen by ``np.random.default_rng(0)`` form the test split,
    giving 1,438 train and 359 test images; both keep the original order.
    ``data_dir`` and ``download`` are accepted for a signature like the other loaders'
    and ignored."""
    _check_split(split, "digits")
    images, labels, is_test = _digits_arrays()
    keep = is_test if split == "test" else ~is_test
    return ArrayDataset(images[keep], labels[keep], MNIST_CLASSES, name=f"digits/{split}")


_LOADERS = {"mnist": mnist, "fashion-mnist": fashion_mnist, "cifar10": cifar10, "digits": digits}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10"}
DATASETS = tuple(_LOADERS)


def load_dataset(name: str, split: str = "train", data_dir=None, download: bool = True, **kwargs) -> ArrayDataset:
    """Load a dataset by name: ``'mnist'``, ``'fashion-mnist'``, ``'cifar10'`` or
    ``'digits'`` (``fashion_mnist`` and ``cifar-10`` are accepted too). Other keyword
    arguments (``mirror``, ``progress``) go to the dataset's loader."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _LOADERS:
        raise ValueError(f"load_dataset: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return _LOADERS[key](split, data_dir=data_dir, download=download, **kwargs)


# ----- helpers -----
def _check_split(split, where) -> None:
    if split not in SPLITS:
        raise ValueError(f"{where}: split must be 'train' or 'test', got {split!r}")


def _check_labels(labels, num_classes, where) -> None:
    if labels.size and labels.max() >= num_classes:
        raise DatasetError(f"{where}: labels must lie in 0..{num_classes - 1}, found {int(labels.max())}")


def _not_found(key, what, roots) -> DatasetError:
    looked = ", ".join(str(d) for d in search_dirs(roots, FOLDERS[key]))
    return DatasetError(f"{key}: {what} not found; looked in {looked}; "
                        "allow downloads (download=True; on the command line, without --no-download) "
                        "or point the data folder at a copy")


def _idx_dataset(key, classes, split, data_dir, download, mirror, progress) -> ArrayDataset:
    _check_split(split, key)
    prefix = "train" if split == "train" else "t10k"
    roots = data_roots(data_dir)
    image_path, label_path = (_locate(key, f"{prefix}-{kind}-ubyte.gz", roots, download, mirror, progress)
                              for kind in ("images-idx3", "labels-idx1"))
    images = read_idx(image_path, IDX_IMAGES, (None, 28, 28))
    labels = read_idx(label_path, IDX_LABELS).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(f"{key}/{split}: {image_path} holds {len(images)} images but "
                           f"{label_path} holds {len(labels)} labels; expected the same count")
    _check_labels(labels, len(classes), label_path)
    return ArrayDataset(images[:, None], labels, classes, name=f"{key}/{split}")


def _locate(key, name, roots, download, mirror, progress):
    """The verified local path of one file, downloading it if allowed and needed."""
    folder, accepted = FOLDERS[key], (SHA256[key][name],)
    path = find_file(roots, folder, name)
    if path is not None:
        known = {sha: f"{other}'s {n}" for other, table in SHA256.items() for n, sha in table.items()}
        check_sha256(path, accepted, known)
        return path
    if not download:
        raise _not_found(key, name, roots)
    urls = mirror_urls(name, folder, mirror, MIRRORS[key])
    return fetch(urls, download_dir(roots, folder) / name, accepted, progress)


def _find_cifar10(roots) -> tuple:
    for d in search_dirs(roots, FOLDERS["cifar10"]):
        for name, kind in CIFAR10_SOURCES:
            if (d / name).exists():
                return d / name, kind
    return None, None


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("cnnlab.data.digits needs scikit-learn, which ships the digits; "
                          "install it with pip install 'cnnlab[data]'") from None
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(DIGITS_SEED)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        is_test[rng.permutation(members)[:round(DIGITS_TEST_FRACTION * len(members))]] = True
    images.flags.writeable = labels.flags.writeable = is_test.flags.writeable = False
    return images, labels, is_test
