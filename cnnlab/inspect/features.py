"""The feature space of a trained network: what the classifier sees.

:func:`extract_features` collects, for every image of a dataset, the vector the last
Linear layer receives (or any layer's output, flattened). In that space images of one
class lie close together even when their pixels differ: :func:`nearest_neighbors`
against :func:`pixel_neighbors` shows the difference, :func:`embed` draws the space in
2-D (t-SNE or PCA), and :func:`knn_accuracy` measures how well the classes separate.
"""
from __future__ import annotations

import numpy as np

from ..autograd import Tensor, no_grad
from ..nn import Linear, Module, observe_calls
from ._common import as_float_array, dataset_arrays, inspecting, iter_batches, positive_int, shape_errors
from .layers import capture, get_layer

METHODS = ("tsne", "pca")
METRICS = ("euclidean", "cosine")
_ROWS = 1024  # rows of a distance matrix computed at a time: N x 1024 float64 stays small


def _last_linear_input(model: Module, x: Tensor, where: str) -> np.ndarray:
    """Run ``model(x)`` and return what the last Linear layer called received."""
    seen = []

    def observe(module, inputs, output):
        if isinstance(module, Linear) and inputs:
            seen[:] = [inputs[0]]

    with no_grad(), observe_calls(observe):
        model(x)
    if not seen:
        raise ValueError(f"{where}: {type(model).__name__} called no Linear layer, so it has no "
                         f"penultimate features; pass layer= the name of a layer to use instead")
    return seen[0].data


def extract_features(model: Module, dataset_or_loader, layer: str = None, batch_size: int = 256,
                     transform=None, limit: int = None):
    """Feature vectors of a dataset's images, one forward pass per batch.

    Args:
        model: any :class:`cnnlab.nn.Module`; it runs in evaluation mode, without the tape.
        dataset_or_loader: a DataLoader (its dataset and transform are used, in dataset
            order), a dataset with ``images`` and ``labels``, a pair (images, labels) or
            an images array (N, C, H, W).
        layer: default None, the penultimate features: the input of the last Linear
            layer the forward pass calls (LeNet-5's 84 units, a ResNet's pooled
            channels), found by watching the calls, whatever the architecture. Or a layer
            name: that layer's output (its first call), flattened.
        batch_size: images per forward pass.
        transform: batch transform ``t(x, rng)`` applied after scaling to [0, 1],
            typically the training ``Normalize``; default the loader's.
        limit: use only the first ``limit`` images.

    Returns:
        (features, labels): features (N, D); labels (N,) int64, or None without labels.
    """
    where = "extract_features"
    images, labels, transform = dataset_arrays(dataset_or_loader, transform, where)
    batch_size = positive_int(batch_size, "batch_size", where)
    if limit is not None:
        limit = positive_int(limit, "limit", where)
    if layer is not None:
        get_layer(model, layer)  # a bad name fails here, listing the valid ones
    chunks = []
    with inspecting(model, where), shape_errors(where, images.shape[1:]):
        for _, x in iter_batches(model, images, batch_size, transform, where, limit):
            if layer is None:
                f = _last_linear_input(model, Tensor(x), where)
            else:
                f = capture(model, Tensor(x), [layer])[layer].data
            chunks.append(f.reshape(len(x), -1))
    if not chunks:
        raise ValueError(f"{where}: the dataset holds no images")
    features = np.concatenate(chunks)
    if labels is not None:
        labels = labels[:len(features)].astype(np.int64)
    return features, labels


def embed(features, method: str = "tsne", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Points (N, 2) placing the N feature vectors (N, D) in a plane.

    Args:
        method: ``'tsne'`` (default; scikit-learn's TSNE with PCA initialisation and
            automatic learning rate: keeps neighbourhoods, so clusters show, but distances
            between clusters mean little) or ``'pca'`` (the two directions of largest
            variance: a linear projection, whose distances do mean something).
        seed: random state, so the picture is repeatable.
        perplexity: t-SNE's effective number of neighbours; must be below N.

    Needs scikit-learn (``pip install 'cnnlab[data]'``); t-SNE on a few thousand points
    takes some seconds.
    """
    where = "embed"
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    x = as_float_array(features, where, "features")
    if x.ndim != 2:
        raise ValueError(f"{where}: features must be 2-D (N, D), got shape {x.shape}")
    if len(x) < 3:
        raise ValueError(f"{where}: need at least 3 feature vectors, got {len(x)}")
    try:
        if method == "tsne":
            from sklearn.manifold import TSNE
        else:
            from sklearn.decomposition import PCA
    except ImportError:
        raise ImportError(f"{where}: method={method!r} needs scikit-learn; install it with "
                          f"pip install 'cnnlab[data]'") from None
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x.astype(np.float64))
    if not 0 < perplexity < len(x):
        raise ValueError(f"{where}: perplexity must lie between 0 and the number of points ({len(x)}), "
                         f"got {perplexity!r}")
    from threadpoolctl import threadpool_limits  # installed with scikit-learn
    tsne = TSNE(n_components=2, perplexity=float(perplexity), init="pca", learning_rate="auto", random_state=seed)
    # one thread: t-SNE's many small steps gain nothing from more, and on a busy machine
    # spinning OpenMP and BLAS threads made 1000 points take 40 s instead of 2
    with threadpool_limits(limits=1):
        return tsne.fit_transform(x.astype(np.float64))


def _sq_distances(q: np.ndarray, x: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (Q, N), |q|^2 - 2 q.x + |x|^2, clipped at 0 (rounding)."""
    d = (q * q).sum(axis=1)[:, None] - 2 * (q @ x.T) + x_sq[None, :]
    return np.maximum(d, 0)


def knn_accuracy(points, labels, k: int = 10) -> float:
    """Leave-one-out k-nearest-neighbour accuracy: the fraction of points whose k nearest
    other points (Euclidean) vote, by majority, for the point's own label.

    A tie between classes goes to the class whose voters are nearer (each vote weighs
    1 + a tiny amount that decreases with rank, too small to change a majority).

    Args:
        points: (N, D), e.g. from :func:`embed` or :func:`extract_features`.
        labels: (N,) integer labels.
        k: neighbours that vote, 1 <= k < N.
    """
    where = "knn_accuracy"
    x = as_float_array(points, where, "points").astype(np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"{where}: points must be 2-D (N, D), got shape {x.shape}")
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be ({len(x)},) integers to match points {x.shape}, "
                         f"got shape {y.shape} dtype {y.dtype}")
    k = positive_int(k, "k", where)
    if k >= len(x):
        raise ValueError(f"{where}: k must be below the number of points ({len(x)}), got {k}")
    classes, y = np.unique(y, return_inverse=True)
    weight = 1 + 1e-6 * np.arange(k, 0, -1) / k  # the k votes, nearest first
    x_sq = (x * x).sum(axis=1)
    correct = 0
    for lo in range(0, len(x), _ROWS):
        d = _sq_distances(x[lo:lo + _ROWS], x, x_sq)
        rows = np.arange(len(d))
        d[rows, lo + rows] = np.inf  # leave the point itself out
        near = np.argpartition(d, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(near, np.argsort(np.take_along_axis(d, near, axis=1), axis=1), axis=1)
        votes = np.zeros((len(d), len(classes)))
        np.add.at(votes, (rows[:, None], y[near]), weight)
        correct += int((votes.argmax(axis=1) == y[lo:lo + _ROWS]).sum())
    return correct / len(x)


def nearest_neighbors(query_features, features, k: int = 5, metric: str = "euclidean") -> np.ndarray:
    """Indices (Q, k) of the k rows of ``features`` (N, D) nearest to each query (Q, D),
    nearest first (ties: the lower index first).

    Args:
        metric: ``'euclidean'`` (default, the distance the classic feature-space picture
            uses) or ``'cosine'`` (1 - cosine similarity: only the direction counts, not
            the length; a zero vector is at distance 1 from everything).

    A query that is itself among ``features`` finds itself first (distance 0).
    """
    where = "nearest_neighbors"
    if metric not in METRICS:
        raise ValueError(f"{where}: metric must be one of {', '.join(map(repr, METRICS))}, got {metric!r}")
    q = as_float_array(query_features, where, "query_features").astype(np.float64)
    x = as_float_array(features, where, "features").astype(np.float64)
    if q.ndim == 1:
        q = q[None]
    if x.ndim != 2 or q.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ValueError(f"{where}: expected query_features (Q, D) and features (N, D) with the same D, "
                         f"got {q.shape} and {x.shape}")
    k = positive_int(k, "k", where)
    if k > len(x):
        raise ValueError(f"{where}: k must be at most the number of features ({len(x)}), got {k}")
    if metric == "cosine":
        unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)  # noqa: E731
        q, x = unit(q), unit(x)
    x_sq = (x * x).sum(axis=1)
    out = []
    for lo in range(0, len(q), _ROWS):
        d = _sq_distances(q[lo:lo + _ROWS], x, x_sq)
        out.append(np.argsort(d, axis=1, kind="stable")[:, :k])
    return np.concatenate(out)


def pixel_neighbors(query_images, images, k: int = 5) -> np.ndarray:
    """:func:`nearest_neighbors` in pixel space: images (Q, C, H, W) and (N, C, H, W) as
    flat vectors, Euclidean distance (uint8 pixels divided by 255). Shown beside the
    feature-space neighbours, it makes the point that pixel distance finds images that
    look alike (same thickness, same position), not images of the same class."""
    where = "pixel_neighbors"
    q = as_float_array(query_images, where, "query_images")
    x = as_float_array(images, where, "images")
    if q.ndim == x.ndim - 1:
        q = q[None]
    if x.ndim < 2 or q.shape[1:] != x.shape[1:]:
        raise ValueError(f"{where}: query_images and images must be (Q, ...) and (N, ...) with the same image "
                         f"shape, got {q.shape} and {x.shape}")
    return nearest_neighbors(q.reshape(len(q), -1), x.reshape(len(x), -1), k, metric="euclidean")
