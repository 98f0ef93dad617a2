"""Where dataset files are looked for, how they are checked, and how missing ones are
downloaded.

Lookup order, for a dataset whose files live in a folder named ``folder``:

1. the ``data_dir`` argument: ``data_dir/folder/`` then ``data_dir/`` itself (so both
   ``data_dir=/data`` and ``data_dir=/data/mnist`` find ``/data/mnist/...``);
2. ``$CNNLAB_DATA``, the same two ways;
3. the per-user cache, ``$XDG_CACHE_HOME/cnnlab/folder/`` (default ``~/.cache/cnnlab``).

A missing file is downloaded into the first of those that is writable. Downloads are
written to a temporary file in the same folder, checked against the SHA256 they must
have, flushed to disk and only then renamed into place: a failed or corrupt download
leaves nothing behind. The mirror can be replaced, per call (``mirror=``) or for every
dataset through ``$CNNLAB_DATA_MIRROR``, a base URL laid out like a data folder
(``$CNNLAB_DATA_MIRROR/mnist/train-images-idx3-ubyte.gz``).

This module is the only part of cnnlab that touches the network.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from .._io import atomic_file
from .dataset import DatasetError, DownloadError
from .formats import file_digest

TIMEOUT_S = 60  # per network operation, not for the whole download
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The per-user download folder: ``$XDG_CACHE_HOME/cnnlab`` or ``~/.cache/cnnlab``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnnlab"


def data_roots(data_dir=None) -> list:
    """The folders searched, in order: ``data_dir``, ``$CNNLAB_DATA``, the cache."""
    roots = [Path(data_dir).expanduser()] if data_dir is not None else []
    if os.environ.get("CNNLAB_DATA"):
        roots.append(Path(os.environ["CNNLAB_DATA"]).expanduser())
    roots.append(cache_dir())
    return roots


def search_dirs(roots, folder: str) -> list:
    """``root/folder`` and ``root`` for each root, in order, without repeats."""
    dirs = []
    for root in roots:
        for d in (root / folder, root):
            if d not in dirs:
                dirs.append(d)
    return dirs


def find_file(roots, folder: str, name: str):
    """The first ``name`` in :func:`search_dirs`, or None."""
    for d in search_dirs(roots, folder):
        if (d / name).is_file():
            return d / name
    return None


def download_dir(roots, folder: str) -> Path:
    """The first writable of ``root/folder`` (``root`` itself if it is already named
    ``folder``), created if needed."""
    tried = []
    for root in roots:
        d = root if root.name == folder else root / folder
        if not _writable(d):
            tried.append(f"{d} (not writable)")
            continue
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            tried.append(f"{d} ({exc.strerror or exc})")
            continue
        return d
    raise DatasetError(f"no writable folder to download into; tried {'; '.join(tried)}; "
                       "pass a writable data_dir or set $CNNLAB_DATA")


def _writable(d: Path) -> bool:
    """Whether ``d``, or the nearest folder above it that exists, may be written to. A
    folder whose mode has no write bit counts as read-only even for root, who could
    write anyway: a shared copy marked read-only is never written into."""
    d = d.absolute()
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        return d.is_dir() and os.access(d, os.W_OK | os.X_OK) and bool(d.stat().st_mode & 0o222)
    except OSError:
        return False


def mirror_urls(name: str, folder: str, mirror, defaults) -> list:
    """The URLs to try for file ``name``: ``mirror`` (a base URL or a list of them) if
    given, else ``$CNNLAB_DATA_MIRROR/folder/``, else the dataset's own ``defaults``."""
    if mirror is not None:
        bases = [mirror] if isinstance(mirror, str) else list(mirror)
    elif os.environ.get("CNNLAB_DATA_MIRROR"):
        bases = [os.environ["CNNLAB_DATA_MIRROR"].rstrip("/") + "/" + folder]
    else:
        bases = list(defaults)
    return [b.rstrip("/") + "/" + name for b in bases]


def check_sha256(path, accepted, known=None) -> None:
    """Raise DatasetError unless the file's SHA256 is one of ``accepted``. ``known`` maps
    other digests to a description, to say which file it is instead."""
    got = file_digest(path, "sha256")
    if got in accepted:
        return
    hint = f" (this is {known[got]})" if known and got in known else ""
    raise DatasetError(f"{path}: SHA256 mismatch: expected {' or '.join(accepted)}, found {got}{hint}; "
                       "delete the file to download it again")


def fetch(urls, dest: Path, accepted, progress=None) -> Path:
    """Download the first of ``urls`` that answers with a file whose SHA256 is one of
    ``accepted`` into ``dest``, atomically. Raises DownloadError naming every URL tried,
    the file, and what went wrong with each (HTTP status, or expected and received
    checksum)."""
    errors = []
    for url in urls:
        try:
            _download_one(url, Path(dest), accepted, progress)
            return Path(dest)
        except DownloadError as exc:
            errors.append(str(exc))
    if len(errors) == 1:
        raise DownloadError(f"downloading {dest}: {errors[0]}")
    raise DownloadError(f"downloading {dest}: every mirror failed:\n  " + "\n  ".join(errors))


def _download_one(url: str, dest: Path, accepted, progress) -> None:
    try:
        with atomic_file(dest) as out:  # an error inside leaves no file behind
            with _open(url) as response:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                digest, received = _copy(response, out, total, dest.name, progress)
            if total is not None and received != total:
                raise DownloadError(f"{url}: truncated: expected {total} bytes, received {received}")
            if digest not in accepted:
                raise DownloadError(f"{url}: SHA256 mismatch for {dest.name}: expected "
                                    f"{' or '.join(accepted)}, received {digest} ({received} bytes); "
                                    "nothing was saved")
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"{url}: {type(exc).__name__}: {exc}") from None


def _open(url: str):
    """The one place a connection is opened (tests wrap it to keep to 127.0.0.1)."""
    request = urllib.request.Request(url, headers={"User-Agent": "cnnlab-data/0.1"})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def _copy(response, out, total, label, progress) -> tuple:
    h, received = hashlib.sha256(), 0
    bar = _progress_bar(progress, total, label)
    try:
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            h.update(chunk)
            received += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return h.hexdigest(), received


def _progress_bar(progress, total, label):
    """A tqdm bar on stderr: ``progress=True`` wants one (and tqdm), ``False`` none,
    ``None`` one when tqdm is installed and stderr is a terminal."""
    if progress is False:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        if progress is None:
            return None
        raise ImportError("cnnlab.data: the download progress bar needs tqdm; install it with "
                          "pip install 'cnnlab[progress]', or pass progress=False") from None
    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if progress is None else False)
