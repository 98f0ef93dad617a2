"""Readers for the datasets' original file formats: gzip IDX (MNIST, Fashion-MNIST) and
the CIFAR-10 batches (binary records or Python pickles), from a folder or straight from
the .tar.gz archive.

Every reader checks what it reads and raises :class:`DatasetError` naming the file, what
was expected and what was found. The CIFAR-10 batch files are checked against their MD5
here, where their bytes are read (often from inside an archive), before any is parsed;
whole files such as the IDX ones are checked by the caller before they are opened.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import posixpath
import struct
import tarfile
import zlib

import numpy as np

from .dataset import DatasetError

IDX_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, columns)
IDX_LABELS = 0x00000801  # unsigned bytes, 1 dimension (N,)
_IDX_KIND = {IDX_IMAGES: "images (unsigned bytes, 3-D)", IDX_LABELS: "labels (unsigned bytes, 1-D)"}


def gunzip(path) -> bytes:
    """The decompressed contents of a gzip file, or a DatasetError saying what is wrong."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise DatasetError(f"{path}: truncated gzip file: the compressed stream of {len(raw)} bytes "
                           f"ends before its end marker ({exc}); delete the file and download it again") from None
    except (OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: not a valid gzip file ({exc})") from None


def read_idx(path, magic: int, shape=None) -> np.ndarray:
    """Read one gzip-compressed IDX file of unsigned bytes.

    Args:
        path: the ``.gz`` file.
        magic: the expected magic number, ``IDX_IMAGES`` (0x00000803) or ``IDX_LABELS``
            (0x00000801); its low byte is the number of dimensions.
        shape: optional expected dimensions, ``None`` where any size is allowed, e.g.
            ``(None, 28, 28)``.

    Returns:
        a ``uint8`` array with the dimensions written in the header.
    """
    data = gunzip(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    # the magic number first: a file of the other kind may be shorter than this header
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found is not None and found != magic:
        if found in _IDX_KIND:
            what = _IDX_KIND[found]
        elif found >> 16:
            what = "not an IDX file: its first two bytes are not zero"
        elif (found >> 8) & 0xFF != 0x08:
            what = f"IDX of data type code 0x{(found >> 8) & 0xFF:02X}, not unsigned bytes"
        else:
            what = f"{found & 0xFF}-D IDX"
        raise DatasetError(f"{path}: wrong IDX magic number: expected 0x{magic:08X} ({_IDX_KIND[magic]}), "
                           f"found 0x{found:08X} ({what})")
    if len(data) < header:
        raise DatasetError(f"{path}: too short for an IDX header: expected at least {header} bytes "
                           f"after decompression, found {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, dims)):
            if want is not None and want != got:
                expected = "x".join("N" if s is None else str(s) for s in shape)
                raise DatasetError(f"{path}: wrong IDX dimensions: expected {expected}, "
                                   f"found {'x'.join(map(str, dims))} (axis {axis})")
    size = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != size:
        raise DatasetError(f"{path}: wrong data length: the header announces {'x'.join(map(str, dims))} "
                           f"= {size} bytes after the {header}-byte header, found {len(data) - header}")
    # copied so the dataset owns a writable, aligned array instead of a view of the bytes
    return np.frombuffer(data, np.uint8, count=size, offset=header).reshape(dims).copy()


# ----- CIFAR-10 -----
CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then 1024 red, 1024 green, 1024 blue bytes


def file_digest(path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, computed once per process for each (file, size,
    modification time): loading a big verified file a second time costs nothing."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, algorithm)
    if key not in _DIGESTS:
        h = hashlib.new(algorithm)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict = {}


def read_members(source, names, md5) -> dict:
    """Read files ``names`` (base names, e.g. ``'data_batch_1.bin'``) from ``source``, a
    folder or a ``.tar.gz`` archive (members in any sub-folder), without extracting.

    ``md5`` maps base names to their expected MD5; every file is checked against it before
    it is returned (a name missing from the table fails: nothing unverified comes back).
    Returns {name: bytes}."""
    names = list(names)
    if os.path.isdir(source):
        found = {}
        for name in names:
            path = os.path.join(source, name)
            if not os.path.isfile(path):
                raise DatasetError(f"{source}: missing {name} (this folder holds: "
                                   f"{', '.join(sorted(os.listdir(source))) or 'nothing'})")
            _check_md5(path, md5.get(name), file_digest(path, "md5"))
            with open(path, "rb") as f:
                found[name] = f.read()
        return found
    found = _read_tar_members(source, names)
    for name, data in found.items():
        _check_md5(f"{source}: member {name}", md5.get(name), hashlib.md5(data).hexdigest())
    return found


def _check_md5(what, want, got) -> None:
    if got != want:
        raise DatasetError(f"{what}: MD5 mismatch: expected {want}, found {got}")


def _read_tar_members(archive, names) -> dict:
    wanted, found = set(names), {}
    try:
        # stream mode reads the gzip once from front to back; a big buffer keeps the
        # number of Python-level reads small (170 MB in about a second)
        with tarfile.open(archive, mode="r|gz", bufsize=1 << 20) as tar:
            for member in tar:
                base = posixpath.basename(posixpath.normpath(member.name))
                if member.isfile() and base in wanted:
                    found[base] = tar.extractfile(member).read()
                    if len(found) == len(wanted):
                        break  # the test batch comes last: the training split stops early
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{archive}: unreadable or truncated tar.gz archive ({type(exc).__name__}: {exc})") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DatasetError(f"{archive}: archive has no member named {', '.join(missing)}")
    return found


def parse_cifar_binary(data: bytes, where: str) -> tuple:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from 3073-byte records."""
    if len(data) % CIFAR_RECORD:
        raise DatasetError(f"{where}: expected a whole number of {CIFAR_RECORD}-byte records, "
                           f"found {len(data)} bytes ({len(data) / CIFAR_RECORD:.3f} records)")
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def parse_cifar_pickle(data: bytes, where: str) -> tuple:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from a batch pickle of the
    Python version. Call only on bytes whose checksum has passed."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DatasetError as exc:  # a class the unpickler refused
        raise DatasetError(f"{where}: {exc}") from None
    except Exception as exc:  # a damaged pickle can fail in many ways
        raise DatasetError(f"{where}: not a readable CIFAR-10 batch pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"{where}: expected a dict with keys b'data' and b'labels', found {keys}")
    images, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != CIFAR_RECORD - 1:
        raise DatasetError(f"{where}: expected b'data' of shape (N, 3072) uint8, found {images.shape} {images.dtype}")
    if labels.shape != (images.shape[0],):
        raise DatasetError(f"{where}: expected {images.shape[0]} labels for {images.shape[0]} images, "
                           f"found shape {labels.shape}")
    return images.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays only: even a verified pickle gets no
    chance to call anything else."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # the original batches were pickled by NumPy 1 (numpy.core), newer ones say numpy._core
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
        ("numpy.core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
        ("numpy._core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
        ("_codecs", "encode"): __import__("codecs").encode,  # how Python 3 writes bytes in protocol 2
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only "
                               f"dicts, lists, bytes and NumPy arrays") from None
