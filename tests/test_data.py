"""cnnlab.data: file readers, checksums, lookup and download, the loader, the transforms.

Most tests write tiny files in the original formats (gzip IDX; CIFAR-10 binary records
and batch pickles, as folders and as .tar.gz archives) and put their checksums into the
module-level tables with ``monkeypatch``. Downloads go to a local ``http.server`` on
127.0.0.1; an autouse fixture fails any test that tries to open another host. The real
distribution files are read (never written) from the folder ``$CNNLAB_TEST_DATA`` names
(laid out as mnist/, fashion-mnist/, cifar-10/); without it those tests are skipped.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import shutil
import socket
import sys
import tarfile
import threading
import urllib.parse
import warnings
from pathlib import Path

import numpy as np
import pytest

import cnnlab
from cnnlab import data as D
from cnnlab.data import catalog, download, formats

SHARED = Path(os.environ.get("CNNLAB_TEST_DATA") or "/nonexistent")
needs_mnist = pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                                 reason=f"MNIST not in {SHARED}")
needs_fashion = pytest.mark.skipif(not (SHARED / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason=f"Fashion-MNIST not in {SHARED}")
needs_cifar = pytest.mark.skipif(not (SHARED / "cifar-10" / "cifar-10-binary.tar.gz").is_file(),
                                 reason=f"CIFAR-10 not in {SHARED}")


# ----- isolation: no real cache, no environment, no network beyond 127.0.0.1 -----
@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for var in ("CNNLAB_DATA", "CNNLAB_DATA_MIRROR", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    real_open = download._open

    def local_only(url):
        host = urllib.parse.urlsplit(url).hostname
        if host != "127.0.0.1":
            pytest.fail(f"a test tried to reach {url}; tests may only use 127.0.0.1")
        return real_open(url)

    monkeypatch.setattr(download, "_open", local_only)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _ShortHandler(http.server.BaseHTTPRequestHandler):
    """Promises 1000 bytes, sends 10, hangs up: a connection lost mid-download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(directory=None, handler=None):
    """A threaded HTTP server on 127.0.0.1 (a free port) serving ``directory``; yields
    its base URL."""
    handler = handler or functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ----- tiny files in the original formats -----
def idx_gz(array: np.ndarray, magic: int) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return gzip.compress(header + array.tobytes())


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def md5(blob: bytes) -> str:
    return hashlib.md5(blob).hexdigest()


def tiny_idx_split(rng, n):
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.fixture
def tiny_mnist(monkeypatch, tmp_path):
    """Four tiny MNIST files (7 train, 5 test images) in tmp_path/src/mnist, their SHA256
    in the table. Returns (folder, {split: (images, labels)}, {file name: bytes})."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "src" / "mnist"
    folder.mkdir(parents=True)
    arrays, blobs = {}, {}
    for split, prefix, n in (("train", "train", 7), ("test", "t10k", 5)):
        images, labels = tiny_idx_split(rng, n)
        arrays[split] = (images, labels)
        blobs[f"{prefix}-images-idx3-ubyte.gz"] = idx_gz(images, formats.IDX_IMAGES)
        blobs[f"{prefix}-labels-idx1-ubyte.gz"] = idx_gz(labels, formats.IDX_LABELS)
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
        monkeypatch.setitem(catalog.SHA256["mnist"], name, sha256(blob))
    return folder, arrays, blobs


def cifar_batches(seed=0, per_batch=3):
    """{batch name: (images (n, 3, 32, 32) uint8, labels (n,))} for the 6 batches."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {n: (rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, per_batch))
            for n in names}


def cifar_member_bytes(batches, kind, numpy1_names=False) -> dict:
    """The member files of the binary (``name.bin``: 3073-byte records) or Python
    (``name``: pickled dict with bytes keys) version."""
    out = {}
    for name, (images, labels) in batches.items():
        if kind == "binary":
            records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(labels), -1)], axis=1)
            out[name + ".bin"] = records.tobytes()
        else:
            batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                     b"data": images.reshape(len(labels), -1), b"filenames": [b"x.png"] * len(labels)}
            blob = pickle.dumps(batch, protocol=2)
            if numpy1_names:  # what the original batches, pickled by NumPy 1, refer to
                blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            out[name] = blob
    return out


CIFAR_FOLDER = {"binary": "cifar-10-batches-bin", "python": "cifar-10-batches-py"}
CIFAR_ARCHIVE = {"binary": "cifar-10-binary.tar.gz", "python": "cifar-10-python.tar.gz"}


def write_cifar(root: Path, members: dict, kind: str, packed: bool, prefix=None, compresslevel=9) -> Path:
    """Write the members into root as the unpacked folder or the .tar.gz archive."""
    folder = prefix if prefix is not None else CIFAR_FOLDER[kind]
    root.mkdir(parents=True, exist_ok=True)
    if not packed:
        (root / folder).mkdir()
        for name, blob in members.items():
            (root / folder / name).write_bytes(blob)
        return root / folder
    path = root / CIFAR_ARCHIVE[kind]
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def trust(monkeypatch, members: dict) -> None:
    for name, blob in members.items():
        monkeypatch.setitem(catalog.CIFAR10_MD5, name, md5(blob))


def expected_split(batches, split):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return (np.concatenate([batches[n][0] for n in names]), np.concatenate([batches[n][1] for n in names]))


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ===== IDX files =====
def test_read_idx_round_trip(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    (tmp_path / "i.gz").write_bytes(idx_gz(images, formats.IDX_IMAGES))
    out = D.read_idx(tmp_path / "i.gz", formats.IDX_IMAGES, (None, 28, 28))
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("case, expect", [
    ("labels-as-images", ["0x00000803", "found 0x00000801", "labels"]),
    ("bad-dims", ["expected Nx28x28", "found 4x28x27"]),
    ("short-data", ["wrong data length", "3136 bytes", "found 3135"]),
    ("long-data", ["wrong data length", "found 3137"]),
    ("short-header", ["too short for an IDX header", "at least 16 bytes", "found 6"]),
    ("truncated-gzip", ["truncated gzip"]),
    ("not-gzip", ["not a valid gzip file"]),
])
def test_read_idx_rejects_bad_files(tmp_path, case, expect):
    rng = np.random.default_rng(2)
    header = formats.IDX_IMAGES.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (4, 28, 28))
    pixels = rng.integers(0, 256, 4 * 28 * 28, dtype=np.uint8).tobytes()
    blob = {
        "labels-as-images": idx_gz(np.zeros(4), formats.IDX_LABELS),
        "bad-dims": idx_gz(np.zeros((4, 28, 27)), formats.IDX_IMAGES),
        "short-data": gzip.compress(header + pixels[:-1]),
        "long-data": gzip.compress(header + pixels + b"\0"),
        "short-header": gzip.compress(header[:6]),
        "truncated-gzip": gzip.compress(header + pixels)[:-20],
        "not-gzip": header + pixels,
    }[case]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(blob)
    with pytest.raises(D.DatasetError) as info:
        D.read_idx(path, formats.IDX_IMAGES, (None, 28, 28))
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    for part in expect:
        assert part in str(info.value)


def test_mnist_reads_tiny_files(tiny_mnist):
    folder, arrays, _ = tiny_mnist
    for split in ("train", "test"):
        ds = D.mnist(split, data_dir=folder.parent, download=False)
        images, labels = arrays[split]
        assert ds.images.shape == (len(labels), 1, 28, 28) and ds.images.dtype == np.uint8
        assert ds.labels.dtype == np.int64 and ds.classes == [str(d) for d in range(10)]
        assert ds.name == f"mnist/{split}"
        np.testing.assert_array_equal(ds.images[:, 0], images)
        np.testing.assert_array_equal(ds.labels, labels)


def test_image_and_label_counts_must_match(tiny_mnist, monkeypatch):
    folder, arrays, _ = tiny_mnist
    blob = idx_gz(arrays["test"][1][:4], formats.IDX_LABELS)  # 4 labels for 5 images
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(blob)
    monkeypatch.setitem(catalog.SHA256["mnist"], "t10k-labels-idx1-ubyte.gz", sha256(blob))
    with pytest.raises(D.DatasetError, match="holds 5 images but .*t10k-labels-idx1-ubyte.gz holds 4 labels"):
        D.mnist("test", data_dir=folder, download=False)


def test_labels_out_of_range(tiny_mnist, monkeypatch):
    folder, _, _ = tiny_mnist
    blob = idx_gz(np.array([0, 1, 2, 10, 3]), formats.IDX_LABELS)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(blob)
    monkeypatch.setitem(catalog.SHA256["mnist"], "t10k-labels-idx1-ubyte.gz", sha256(blob))
    with pytest.raises(D.DatasetError, match=r"t10k-labels-idx1-ubyte.gz: labels must lie in 0..9, found 10"):
        D.mnist("test", data_dir=folder, download=False)


def test_local_checksum_mismatch_names_file_expected_and_found(tiny_mnist, monkeypatch):
    folder, _, blobs = tiny_mnist
    name = "t10k-images-idx3-ubyte.gz"
    monkeypatch.setitem(catalog.SHA256["mnist"], name, "0" * 64)
    with pytest.raises(D.DatasetError) as info:
        D.mnist("test", data_dir=folder.parent, download=False)
    message = str(info.value)
    assert str(folder / name) in message and "0" * 64 in message and sha256(blobs[name]) in message


@needs_fashion
def test_checksum_error_says_which_dataset_a_file_belongs_to(tmp_path):
    (tmp_path / "mnist").mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(SHARED / "fashion-mnist" / name, tmp_path / "mnist" / name)
    with pytest.raises(D.DatasetError, match="this is fashion-mnist's t10k-images-idx3-ubyte.gz"):
        D.mnist("test", data_dir=tmp_path, download=False)


def test_missing_files_without_download_list_where_they_were_looked_for(tmp_path):
    with pytest.raises(D.DatasetError) as info:
        D.mnist("test", data_dir=tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz not found" in message and "download=True" in message
    assert str(tmp_path / "nowhere" / "mnist") in message and str(download.cache_dir() / "mnist") in message


def test_lookup_order_data_dir_then_env_then_cache(tiny_mnist, tmp_path, monkeypatch):
    folder, _, _ = tiny_mnist
    name = "t10k-images-idx3-ubyte.gz"
    given, env, cache = tmp_path / "given", tmp_path / "env", download.cache_dir()
    monkeypatch.setenv("CNNLAB_DATA", str(env))
    roots = download.data_roots(given)
    assert roots == [given, env, cache]
    assert download.find_file(roots, "mnist", name) is None
    for place in (cache / "mnist", env, given / "mnist"):  # each later copy takes precedence
        place.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / name, place / name)
        assert download.find_file(roots, "mnist", name) == place / name
    # files straight in data_dir count too, after data_dir/mnist
    shutil.copy(folder / name, given / name)
    assert download.find_file(roots, "mnist", name) == given / "mnist" / name
    (given / "mnist" / name).unlink()
    assert download.find_file(roots, "mnist", name) == given / name


def test_loaders_find_files_in_env_and_cache(tiny_mnist, monkeypatch):
    folder, arrays, _ = tiny_mnist
    monkeypatch.setenv("CNNLAB_DATA", str(folder))  # the dataset folder itself
    np.testing.assert_array_equal(D.mnist("test", download=False).labels, arrays["test"][1])
    monkeypatch.delenv("CNNLAB_DATA")
    shutil.copytree(folder, download.cache_dir() / "mnist")
    np.testing.assert_array_equal(D.mnist("train", download=False).labels, arrays["train"][1])


def test_a_bad_file_early_in_the_lookup_order_is_an_error_not_skipped(tiny_mnist, tmp_path, monkeypatch):
    folder, _, _ = tiny_mnist
    monkeypatch.setenv("CNNLAB_DATA", str(folder.parent))  # good copy, later in the order
    bad = tmp_path / "given" / "mnist"
    shutil.copytree(folder, bad)
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(b"corrupt")
    with pytest.raises(D.DatasetError, match="given/mnist/t10k-labels-idx1-ubyte.gz: SHA256 mismatch"):
        D.mnist("test", data_dir=tmp_path / "given", download=False)


# ===== CIFAR-10 =====
@pytest.mark.parametrize("kind", ["binary", "python"])
@pytest.mark.parametrize("packed", [True, False], ids=["archive", "folder"])
def test_cifar10_versions_packed_and_unpacked(tmp_path, monkeypatch, kind, packed):
    batches = cifar_batches()
    members = cifar_member_bytes(batches, kind)
    trust(monkeypatch, members)
    write_cifar(tmp_path / "data" / "cifar-10", members, kind, packed)
    for split in ("train", "test"):
        ds = D.cifar10(split, data_dir=tmp_path / "data", download=False)
        images, labels = expected_split(batches, split)
        assert ds.images.shape == (len(labels), 3, 32, 32) and ds.images.flags.c_contiguous
        assert ds.classes[0] == "airplane" and ds.classes[9] == "truck" and ds.name == f"cifar10/{split}"
        np.testing.assert_array_equal(ds.images, images)
        np.testing.assert_array_equal(ds.labels, labels)


def test_cifar10_repacked_archive_is_accepted(tmp_path, monkeypatch):
    """Another gzip level, './' member names, members in another order, an extra file:
    the archive's own checksum differs, its member files are still the verified ones."""
    batches = cifar_batches()
    members = cifar_member_bytes(batches, "binary")
    trust(monkeypatch, members)
    shuffled = dict(reversed(list(members.items())))
    shuffled["readme.html"] = b"<html></html>"
    write_cifar(tmp_path, shuffled, "binary", packed=True, prefix="./cifar-10-batches-bin", compresslevel=1)
    ds = D.cifar10("test", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ds.images, batches["test_batch"][0])


def test_cifar10_numpy1_pickles_load_without_warnings(tmp_path, monkeypatch):
    batches = cifar_batches()
    members = cifar_member_bytes(batches, "python", numpy1_names=True)
    assert b"numpy.core.multiarray" in members["test_batch"]
    trust(monkeypatch, members)
    write_cifar(tmp_path, members, "python", packed=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = D.cifar10("test", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ds.labels, batches["test_batch"][1])


@pytest.mark.parametrize("packed", [True, False], ids=["archive", "folder"])
def test_cifar10_member_checksum_mismatch(tmp_path, monkeypatch, packed):
    members = cifar_member_bytes(cifar_batches(), "binary")
    trust(monkeypatch, members)
    monkeypatch.setitem(catalog.CIFAR10_MD5, "test_batch.bin", "f" * 32)
    source = write_cifar(tmp_path, members, "binary", packed)
    with pytest.raises(D.DatasetError) as info:
        D.cifar10("test", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(source) in message and "test_batch.bin" in message
    assert "f" * 32 in message and md5(members["test_batch.bin"]) in message


def test_cifar10_pickles_are_unpickled_only_after_their_checksum_passed(tmp_path, monkeypatch):
    members = cifar_member_bytes(cifar_batches(), "python")
    trust(monkeypatch, members)
    monkeypatch.setitem(catalog.CIFAR10_MD5, "test_batch", "0" * 32)
    write_cifar(tmp_path, members, "python", packed=True)
    calls = []
    monkeypatch.setattr(formats._ArrayUnpickler, "load", lambda self: calls.append(1))
    with pytest.raises(D.DatasetError, match="MD5 mismatch"):
        D.cifar10("test", data_dir=tmp_path, download=False)
    assert calls == []


def test_cifar10_pickles_may_only_hold_arrays(tmp_path, monkeypatch):
    """Even a pickle that passes its checksum cannot call an arbitrary function."""
    members = cifar_member_bytes(cifar_batches(), "python")
    members["test_batch"] = pickle.dumps({b"data": os.getcwd}, protocol=2)  # a global outside the allowed set
    trust(monkeypatch, members)
    write_cifar(tmp_path, members, "python", packed=False)
    with pytest.raises(D.DatasetError, match="test_batch: refusing to unpickle posix.getcwd|refusing to unpickle"):
        D.cifar10("test", data_dir=tmp_path, download=False)


def test_cifar10_bad_record_length_and_missing_member(tmp_path, monkeypatch):
    members = cifar_member_bytes(cifar_batches(), "binary")
    members["test_batch.bin"] = members["test_batch.bin"][:-1]
    del members["data_batch_3.bin"]
    trust(monkeypatch, members)
    source = write_cifar(tmp_path, members, "binary", packed=True)
    with pytest.raises(D.DatasetError, match=r"test_batch.bin: expected a whole number of 3073-byte records, found 9218 bytes"):
        D.cifar10("test", data_dir=tmp_path, download=False)
    with pytest.raises(D.DatasetError, match=f"{source}: archive has no member named data_batch_3.bin"):
        D.cifar10("train", data_dir=tmp_path, download=False)


def test_cifar10_truncated_archive(tmp_path, monkeypatch):
    members = cifar_member_bytes(cifar_batches(per_batch=50), "binary")
    trust(monkeypatch, members)
    path = write_cifar(tmp_path, members, "binary", packed=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(D.DatasetError, match="unreadable or truncated tar.gz archive"):
        D.cifar10("test", data_dir=tmp_path, download=False)


# ===== the real files (read only) =====
@needs_mnist
def test_real_mnist_test_split():
    ds = D.load_dataset("mnist", "test", data_dir=SHARED, download=False)
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == np.uint8
    assert ds.images.min() == 0 and ds.images.max() == 255
    np.testing.assert_array_equal(np.bincount(ds.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    mean, std = ds.mean_std()
    np.testing.assert_allclose(mean, [0.13251], atol=1e-5)
    np.testing.assert_allclose(std, [0.31048], atol=1e-5)
    # the dataset's own folder works as data_dir too
    again = D.mnist("test", data_dir=SHARED / "mnist", download=False)
    np.testing.assert_array_equal(again.labels, ds.labels)


@needs_fashion
def test_real_fashion_mnist_test_split():
    ds = D.load_dataset("fashion_mnist", "test", data_dir=SHARED, download=False)
    assert ds.images.shape == (10000, 1, 28, 28) and ds.classes[9] == "Ankle boot"
    np.testing.assert_array_equal(np.bincount(ds.labels), [1000] * 10)


@needs_cifar
def test_real_cifar10_test_split():
    ds = D.load_dataset("cifar-10", "test", data_dir=SHARED, download=False)
    assert ds.images.shape == (10000, 3, 32, 32) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.labels), [1000] * 10)
    mean, std = ds.mean_std()  # the per-channel statistics the data README lists
    np.testing.assert_allclose(mean, [0.4942, 0.4851, 0.4504], atol=6e-5)
    np.testing.assert_allclose(std, [0.2467, 0.2429, 0.2616], atol=6e-5)
    np.testing.assert_allclose(mean * 255, [126.02, 123.71, 114.85], atol=6e-3)


@needs_cifar
def test_real_cifar10_archive_is_an_accepted_download():
    """The rebuilt archive (same member files, other packing) would pass the download check."""
    path = SHARED / "cifar-10" / "cifar-10-binary.tar.gz"
    download.check_sha256(path, catalog.CIFAR10_ARCHIVE_SHA256["cifar-10-binary.tar.gz"])


# ===== downloads from a local server =====
def test_download_into_cache_then_reuse(tiny_mnist, monkeypatch):
    folder, arrays, blobs = tiny_mnist
    with serve(folder.parent) as url:
        monkeypatch.setenv("CNNLAB_DATA_MIRROR", url)  # laid out like a data folder: url/mnist/...
        ds = D.mnist("test", progress=False)
    cache = download.cache_dir() / "mnist"
    assert leftovers(cache) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert (cache / "t10k-images-idx3-ubyte.gz").read_bytes() == blobs["t10k-images-idx3-ubyte.gz"]
    np.testing.assert_array_equal(ds.labels, arrays["test"][1])
    # the server is gone: the second load reads the cache
    np.testing.assert_array_equal(D.mnist("test").labels, arrays["test"][1])


def test_download_goes_to_the_first_writable_folder(tiny_mnist, tmp_path):
    folder, _, _ = tiny_mnist
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        with serve(folder) as url:
            writable = tmp_path / "writable"  # created on demand
            D.mnist("test", data_dir=writable, mirror=[url], progress=False)
            assert leftovers(writable) == ["mnist", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
            D.mnist("test", data_dir=read_only, mirror=url, progress=False)
            assert leftovers(read_only) == []
            assert (download.cache_dir() / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    finally:
        read_only.chmod(0o755)


def test_corrupt_download_leaves_nothing_and_names_url_file_and_checksums(tiny_mnist, tmp_path, monkeypatch):
    folder, _, blobs = tiny_mnist
    name = "t10k-images-idx3-ubyte.gz"
    (folder / name).write_bytes(blobs[name][:-1] + b"!")  # the server's copy is damaged
    target = tmp_path / "target"
    with serve(folder) as url, pytest.raises(D.DownloadError) as info:
        D.mnist("test", data_dir=target, mirror=url, progress=False)
    message = str(info.value)
    assert f"{url}/{name}" in message and str(target / "mnist" / name) in message
    assert f"expected {sha256(blobs[name])}" in message
    assert f"received {sha256(blobs[name][:-1] + b'!')}" in message
    assert leftovers(target / "mnist") == []  # no partial or temporary file


def test_http_404_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with serve(tmp_path / "empty") as url, pytest.raises(D.DownloadError) as info:
        D.mnist("test", data_dir=tmp_path / "target", mirror=url, progress=False)
    assert f"{url}/t10k-images-idx3-ubyte.gz: HTTP 404" in str(info.value)
    assert leftovers(tmp_path / "target" / "mnist") == []


def test_falls_back_to_the_next_mirror(tiny_mnist, tmp_path):
    folder, arrays, _ = tiny_mnist
    (tmp_path / "empty").mkdir()
    with serve(tmp_path / "empty") as bad, serve(folder) as good:
        ds = D.mnist("test", data_dir=tmp_path / "target", mirror=[bad, good], progress=False)
    np.testing.assert_array_equal(ds.labels, arrays["test"][1])


def test_every_mirror_failing_lists_each(tmp_path):
    (tmp_path / "empty").mkdir()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with serve(tmp_path / "empty") as url, pytest.raises(D.DownloadError) as info:
        D.mnist("test", data_dir=tmp_path / "target", mirror=[url, dead], progress=False)
    message = str(info.value)
    assert "every mirror failed" in message and "HTTP 404" in message and dead in message


def test_connection_lost_mid_download(tmp_path):
    with serve(handler=_ShortHandler) as url, pytest.raises(D.DownloadError) as info:
        D.mnist("test", data_dir=tmp_path / "target", mirror=url, progress=False)
    assert url in str(info.value)
    assert leftovers(tmp_path / "target" / "mnist") == []


def test_downloaded_truncated_gzip_is_reported_when_read(tiny_mnist, tmp_path, monkeypatch):
    """A file whose checksum the table vouches for (here: a truncated one) still has
    its gzip stream checked when it is read."""
    folder, _, blobs = tiny_mnist
    name = "t10k-images-idx3-ubyte.gz"
    cut = blobs[name][: len(blobs[name]) // 2]
    (folder / name).write_bytes(cut)
    monkeypatch.setitem(catalog.SHA256["mnist"], name, sha256(cut))
    with serve(folder) as url, pytest.raises(D.DatasetError, match=f"{name}: truncated gzip file"):
        D.mnist("test", data_dir=tmp_path / "target", mirror=url, progress=False)


def test_progress_bar_needs_tqdm_only_when_asked_for(tiny_mnist, tmp_path, monkeypatch, capsys):
    folder, _, _ = tiny_mnist
    pytest.importorskip("tqdm")
    with serve(folder) as url:
        D.mnist("test", data_dir=tmp_path / "a", mirror=url, progress=True)
        assert "t10k-images-idx3-ubyte.gz" in capsys.readouterr().err
        monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
        with pytest.raises(ImportError, match=r"cnnlab\[progress\]"):
            D.mnist("test", data_dir=tmp_path / "b", mirror=url, progress=True)
        assert leftovers(tmp_path / "b" / "mnist") == []
        D.mnist("test", data_dir=tmp_path / "c", mirror=url)  # progress=None: no bar, no error


def test_cifar10_download_of_a_tiny_archive(tmp_path, monkeypatch):
    batches = cifar_batches()
    members = cifar_member_bytes(batches, "binary")
    trust(monkeypatch, members)
    archive = write_cifar(tmp_path / "mirror", members, "binary", packed=True)
    monkeypatch.setitem(catalog.CIFAR10_ARCHIVE_SHA256, "cifar-10-binary.tar.gz", (sha256(archive.read_bytes()),))
    with serve(tmp_path / "mirror") as url:
        ds = D.cifar10("test", mirror=url, progress=False)
    cached = download.cache_dir() / "cifar-10" / "cifar-10-binary.tar.gz"
    assert cached.is_file()
    np.testing.assert_array_equal(ds.images, batches["test_batch"][0])
    cached.unlink()
    monkeypatch.setitem(catalog.CIFAR10_ARCHIVE_SHA256, "cifar-10-binary.tar.gz", ("a" * 64,))
    with serve(tmp_path / "mirror") as url, pytest.raises(D.DownloadError, match="expected a{64}, received"):
        D.cifar10("test", data_dir=tmp_path / "other", mirror=url, progress=False)
    assert leftovers(tmp_path / "other" / "cifar-10") == []


@needs_mnist
def test_download_of_the_real_files_from_a_local_mirror(tmp_path, monkeypatch):
    """The real SHA256 table, the real files, served over HTTP."""
    with serve(SHARED) as url:
        monkeypatch.setenv("CNNLAB_DATA_MIRROR", url)
        ds = D.load_dataset("mnist", "test", data_dir=tmp_path, progress=False)
    assert len(ds) == 10000
    assert (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes() == \
        (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()


# ===== digits and load_dataset =====
def test_digits_split_is_fixed_stratified_and_complete():
    pytest.importorskip("sklearn")
    train, test = D.digits("train"), D.load_dataset("digits", "test")
    assert (len(train), len(test)) == (1438, 359) and len(train) + len(test) == 1797
    for ds in (train, test):
        assert ds.images.shape[1:] == (1, 8, 8) and ds.images.dtype == np.float32
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0 and len(ds.classes) == 10
    per_class = np.bincount(train.labels) + np.bincount(test.labels)
    np.testing.assert_array_equal(per_class, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    np.testing.assert_array_equal(np.bincount(test.labels), np.round(0.2 * per_class))
    again = D.digits("test")
    np.testing.assert_array_equal(again.images, test.images)
    again.images[0] = 0  # a loaded dataset is a copy: the next load is untouched
    assert D.digits("test").images[0].max() > 0


def test_digits_without_scikit_learn_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    catalog._digits_arrays.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"cnnlab\[data\]"):
            D.digits()
    finally:
        catalog._digits_arrays.cache_clear()


def test_load_dataset_rejects_unknown_names_and_splits():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; expected one of mnist, fashion-mnist, cifar10, digits"):
        D.load_dataset("imagenet")
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        D.load_dataset("mnist", "val", download=False)


# ===== ArrayDataset =====
def test_array_dataset_indexing_and_checks():
    images = np.arange(5 * 2 * 3 * 3, dtype=np.uint8).reshape(5, 2, 3, 3)
    ds = D.ArrayDataset(images, [0, 1, 2, 1, 0], ["a", "b", "c"], name="toy")
    image, label = ds[3]
    assert image.shape == (2, 3, 3) and label == 1 and isinstance(label, int)
    batch, labels = ds[1:4]
    assert batch.shape == (3, 2, 3, 3) and labels.tolist() == [1, 2, 1]
    assert len(ds) == 5 and ds.shape == (2, 3, 3) and "toy" in repr(ds)
    assert D.ArrayDataset(images.astype(np.float64) / 255, np.zeros(5, int)).images.dtype == np.float32
    with pytest.raises(ValueError, match=r"must be 4-D \(N, C, H, W\), got shape \(5, 18\)"):
        D.ArrayDataset(images.reshape(5, -1), np.zeros(5, int))
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\)"):
        D.ArrayDataset(images, np.zeros(4, int))
    with pytest.raises(ValueError, match=r"labels must lie in 0..2 \(3 classes\), got values in 0..3"):
        D.ArrayDataset(images, [0, 1, 2, 3, 0], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        D.ArrayDataset(images.astype(np.float32), np.zeros(5, int))
    with pytest.raises(TypeError, match="uint8 .* or floating point"):
        D.ArrayDataset(images.astype(np.int32), np.zeros(5, int))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_mean_std_matches_numpy(dtype):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (37, 3, 5, 6), dtype=np.uint8)
    if dtype == np.float32:
        images = (images / 255).astype(np.float32)
    mean, std = D.ArrayDataset(images, np.zeros(37, int)).mean_std()
    scaled = images.astype(np.float64) / (255 if dtype == np.uint8 else 1)
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-6)


# ===== DataLoader =====
def toy_dataset(n=10, shape=(1, 4, 4)):
    """Image i is filled with the value i, label i: every batch says which images it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n,) + shape).copy()
    return D.ArrayDataset(images, np.arange(n), [str(i) for i in range(n)], name="toy")


def batches_of(it):
    return [(x.data.copy(), y.data.copy()) for x, y in it]


def test_loader_batches_scale_and_types():
    ds = toy_dataset(10)
    loader = D.DataLoader(ds, batch_size=4)
    assert len(loader) == 3 and len(D.DataLoader(ds, batch_size=4, drop_last=True)) == 2
    out = list(loader)
    assert [len(y) for _, y in out] == [4, 4, 2]
    for x, y in out:
        assert isinstance(x, cnnlab.Tensor) and isinstance(y, cnnlab.Tensor)
        assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape[1:] == (1, 4, 4)
        np.testing.assert_array_equal(x.data[:, 0, 0, 0], y.data.astype(np.float32) / np.float32(255))
    assert np.concatenate([y.data for _, y in out]).tolist() == list(range(10))
    assert [len(y) for _, y in D.DataLoader(ds, 4, drop_last=True)] == [4, 4]
    assert [len(y) for _, y in D.DataLoader(ds, 5, drop_last=True)] == [5, 5]


def test_loader_leaves_the_dataset_untouched_and_passes_float_images():
    ds = toy_dataset(6)
    before = ds.images.copy()
    for x, _ in D.DataLoader(ds, 4, transform=D.Normalize(0.5, 0.25)):
        x.data[...] = -1
    np.testing.assert_array_equal(ds.images, before)
    floats = D.ArrayDataset(ds.images / np.float32(255), ds.labels, ds.classes)
    for x, _ in D.DataLoader(floats, 4):
        x.data[...] = -1
    assert floats.images.min() >= 0


def test_shuffle_is_seeded_and_every_image_comes_once():
    ds = toy_dataset(50)
    a, b = D.DataLoader(ds, 8, shuffle=True, seed=7), D.DataLoader(ds, 8, shuffle=True, seed=7)
    epoch0 = np.concatenate([y.data for _, y in a])
    assert sorted(epoch0.tolist()) == list(range(50)) and epoch0.tolist() != list(range(50))
    np.testing.assert_array_equal(epoch0, np.concatenate([y.data for _, y in b]))
    assert a.epoch == 1
    epoch1 = np.concatenate([y.data for _, y in a])
    assert epoch1.tolist() != epoch0.tolist()
    np.testing.assert_array_equal(epoch1, a.order(1))
    other_seed = np.concatenate([y.data for _, y in D.DataLoader(ds, 8, shuffle=True, seed=8)])
    assert other_seed.tolist() != epoch0.tolist()
    # the order is a function of (seed, epoch) only, and its stream is not batch 0's augmentation stream
    c = D.DataLoader(ds, 8, shuffle=True, seed=7)
    c.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([y.data for _, y in c]), epoch1)
    assert a.order(0).tolist() != np.random.default_rng((7, 0, 0)).permutation(50).tolist()


def test_epoch_advances_only_when_run_to_the_end():
    loader = D.DataLoader(toy_dataset(10), 3, shuffle=True)
    for _ in loader:
        break
    assert loader.epoch == 0
    list(loader)
    assert loader.epoch == 1
    list(loader.iter_epoch(5))
    assert loader.epoch == 1


@pytest.mark.parametrize("start", [0, 1, 4, 6, 7])
def test_iter_epoch_resumes_exactly(start):
    ds = D.ArrayDataset(np.random.default_rng(4).integers(0, 256, (26, 2, 6, 6), dtype=np.uint8), np.zeros(26, int))
    transform = D.Compose([D.RandomTranslate(2), D.RandomHorizontalFlip(), D.Normalize([0.5, 0.4], [0.2, 0.3])])
    loader = D.DataLoader(ds, 4, shuffle=True, transform=transform, seed=3)
    loader.set_epoch(2)
    full = batches_of(loader)
    resumed = batches_of(D.DataLoader(ds, 4, shuffle=True, transform=transform, seed=3).iter_epoch(2, start))
    assert len(full) == 7 and len(resumed) == 7 - start
    for (xa, ya), (xb, yb) in zip(full[start:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_batch_augmentation_uses_rng_of_seed_epoch_and_batch():
    ds = D.ArrayDataset(np.random.default_rng(5).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8), np.zeros(20, int))
    crop = D.RandomCrop(8, padding=2)
    loader = D.DataLoader(ds, 8, shuffle=True, transform=crop, seed=11)
    order = loader.order(4)
    for b, (x, _) in enumerate(loader.iter_epoch(4)):
        raw = ds.images[order[b * 8:(b + 1) * 8]].astype(np.float32) / 255
        rng = np.random.default_rng(np.random.SeedSequence(11, spawn_key=(0, 4, b)))
        np.testing.assert_array_equal(x.data, crop(raw, rng))


def test_large_seeds_do_not_share_streams():
    ds = D.ArrayDataset(np.zeros((64, 1, 2, 2), np.uint8), np.arange(64) % 10)
    a, b = D.DataLoader(ds, 8, shuffle=True, seed=2**32), D.DataLoader(ds, 8, shuffle=True, seed=0)
    assert not np.array_equal(a.order(1), b.order(0))  # 2**32 spilled into the next entropy word


def test_loader_argument_errors():
    ds = toy_dataset(5)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        D.DataLoader(ds, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        D.DataLoader(ds, seed=-1)
    with pytest.raises(TypeError, match="dataset must have ndarray attributes images and labels"):
        D.DataLoader([1, 2, 3])
    with pytest.raises(TypeError, match="transform must be callable"):
        D.DataLoader(ds, transform="flip")
    with pytest.raises(ValueError, match=r"start_batch must lie in 0..2, got 3"):
        D.DataLoader(ds, 3).iter_epoch(0, 3)


# ===== transforms =====
def batch(seed=0, shape=(16, 3, 10, 12)):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def naive_crop(x, padding, mode, size, rng):
    """Loop twin of RandomCrop: np.pad each image, then slice it, drawing the offsets
    the same way."""
    (ph, pw), (h, w) = padding, size
    np_mode = "constant" if mode == "zeros" else "reflect"
    H, W = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    top, left = rng.integers(0, H - h + 1, len(x)), rng.integers(0, W - w + 1, len(x))
    out = []
    for image, t, l in zip(x, top, left):
        padded = np.pad(image, ((0, 0), (ph, ph), (pw, pw)), mode=np_mode)
        out.append(padded[:, t:t + h, l:l + w])
    return np.stack(out)


@pytest.mark.parametrize("size, padding, mode", [
    (8, 0, "zeros"), ((10, 12), 4, "zeros"), ((10, 12), (2, 3), "reflect"), (7, 1, "reflect"), (12, 1, "zeros"),
])
def test_random_crop_matches_its_loop_twin(size, padding, mode):
    x = batch()
    crop = D.RandomCrop(size, padding, mode)
    out = crop(x, np.random.default_rng(1))
    expected = naive_crop(x, crop.padding, mode, crop.size, np.random.default_rng(1))
    assert out.shape == (16, 3) + crop.size and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(crop(x, np.random.default_rng(1)), out)  # determinism
    assert not np.array_equal(crop(x, np.random.default_rng(2)), out)
    assert out.min() >= 0 and out.max() <= 1


def test_crop_with_padding_keeps_size_and_offsets_differ_per_image():
    same = np.repeat(batch(shape=(1, 1, 8, 8)), 32, axis=0)  # 32 copies of one image
    out = D.RandomCrop(8, padding=3)(same, np.random.default_rng(0))
    assert out.shape == same.shape
    assert len({o.tobytes() for o in out}) > 10


def naive_translate(x, shift, rng):
    sy, sx = shift
    top, left = rng.integers(0, 2 * sy + 1, len(x)), rng.integers(0, 2 * sx + 1, len(x))
    out = np.zeros_like(x)
    H, W = x.shape[2:]
    for i, (t, l) in enumerate(zip(top, left)):
        dy, dx = sy - t, sx - l  # content moves down by dy, right by dx
        y0, y1, x0, x1 = max(dy, 0), min(H, H + dy), max(dx, 0), min(W, W + dx)
        if y0 < y1 and x0 < x1:  # else shifted out of view entirely
            out[i, :, y0:y1, x0:x1] = x[i, :, y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    return out


@pytest.mark.parametrize("shift", [0, 2, (1, 3), 20])
def test_random_translate_matches_its_loop_twin(shift):
    x = batch()
    translate = D.RandomTranslate(shift)
    out = translate(x, np.random.default_rng(5))
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, naive_translate(x, translate.max_shift, np.random.default_rng(5)))
    if shift == 0:
        np.testing.assert_array_equal(out, x)


def test_random_translate_shifts_within_range_with_zero_fill():
    x = np.zeros((64, 1, 9, 9), np.float32)
    x[:, 0, 4, 4] = 1.0  # one lit pixel in the centre
    out = D.RandomTranslate(2)(x, np.random.default_rng(0))
    ys, xs = np.nonzero(out[:, 0])[1:]
    assert len(ys) == 64 and out.sum() == 64  # the pixel stays in view, nothing else appears
    assert set(ys - 4) == set(xs - 4) == {-2, -1, 0, 1, 2}


def test_random_horizontal_flip():
    x = batch(shape=(64, 2, 5, 7))
    before = x.copy()
    np.testing.assert_array_equal(D.RandomHorizontalFlip(1.0)(x, np.random.default_rng(0)), x[..., ::-1])
    np.testing.assert_array_equal(D.RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)), x)
    out = D.RandomHorizontalFlip()(x, np.random.default_rng(0))
    flipped = np.array([np.array_equal(o, i[..., ::-1]) for o, i in zip(out, x)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    assert np.all(flipped ^ kept) and 10 < flipped.sum() < 54
    np.testing.assert_array_equal(flipped, np.random.default_rng(0).random(64) < 0.5)
    np.testing.assert_array_equal(x, before)


def test_normalize_per_channel():
    x = batch(shape=(4, 3, 2, 2))
    out = D.Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])(x)
    assert out.dtype == np.float32
    expected = (x - np.array([0.1, 0.2, 0.3], np.float32)[:, None, None]) / np.array([0.5, 0.25, 2.0], np.float32)[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(D.Normalize(0.5, 0.5)(x), (x - 0.5) / 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="Normalize: 2 means and stds for input with 3 channels"):
        D.Normalize([0.1, 0.2], [1, 1])(x)
    with pytest.raises(ValueError, match=r"std must be positive, got \[1.0, 0.0\]"):
        D.Normalize([0, 0], [1, 0])


def test_compose_applies_in_order_with_one_generator():
    x = batch()
    steps = [D.RandomCrop(8, padding=2, padding_mode="reflect"), D.RandomHorizontalFlip(), D.Normalize(0.5, 0.2)]
    out = D.Compose(steps)(x, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    expected = x
    for t in steps:
        expected = t(expected, rng)
    np.testing.assert_array_equal(out, expected)
    assert repr(D.Compose(steps)).startswith("Compose([RandomCrop(size=(8, 8), padding=(2, 2), padding_mode='reflect')")


def test_transforms_leave_their_input_alone_and_work_without_an_rng():
    x = batch()
    before = x.copy()
    cnnlab.manual_seed(0)
    for t in (D.RandomCrop(10, 2), D.RandomCrop(10), D.RandomTranslate(1), D.RandomHorizontalFlip(1.0), D.Normalize(0.5, 0.5)):
        t(x)
        np.testing.assert_array_equal(x, before)


def test_transform_argument_errors():
    with pytest.raises(ValueError, match="padding_mode must be one of zeros, reflect, got 'circular'"):
        D.RandomCrop(8, 1, "circular")
    with pytest.raises(ValueError, match=r"crop size \(20, 20\) is larger than the padded image \(14, 16\)"):
        D.RandomCrop(20, 2)(batch())
    with pytest.raises(ValueError, match="reflect padding .* must be smaller than the image"):
        D.RandomCrop(10, 10, "reflect")(batch())
    with pytest.raises(ValueError, match=r"RandomTranslate: expected a floating-point ndarray batch \(B, C, H, W\), got shape \(3, 4\)"):
        D.RandomTranslate(1)(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="p must lie in"):
        D.RandomHorizontalFlip(1.5)
    with pytest.raises(TypeError, match="size must be an int or a pair"):
        D.RandomCrop("big")
