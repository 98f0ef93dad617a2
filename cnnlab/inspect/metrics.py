"""What a model gets wrong, and how training went: the confusion matrix, and the per-epoch
metrics that :func:`cnnlab.train.fit` writes (one JSON object per line)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ..autograd import Tensor
from ..nn import Module
from ..train import evaluate
from ._common import dataset_arrays, inspecting, iter_batches, positive_int, shape_errors


@dataclass
class Confusion:
    """A confusion matrix; rows are the true classes, columns the predicted ones.

    Attributes:
        counts: (K, K) int64, ``counts[t, p]`` images of class t predicted as p.
        rates: (K, K) float64, each row divided by its total (a row without images is 0).
        accuracy: the fraction predicted right.
        per_class_accuracy: (K,) the diagonal of ``rates``.
        loss: the mean cross-entropy.
        classes: the class names, when the dataset has them; else None.
    """
    counts: np.ndarray
    rates: np.ndarray
    accuracy: float
    per_class_accuracy: np.ndarray
    loss: float
    classes: list = None


def confusion_matrix(model: Module, dataset_or_loader, batch_size: int = 256, transform=None,
                     num_classes: int = None) -> Confusion:
    """The confusion matrix of ``model`` on a labelled dataset, computed by
    :func:`cnnlab.train.evaluate` (evaluation mode, no tape; each layer's mode restored).

    Args:
        dataset_or_loader: a DataLoader (its dataset and transform are used, in dataset
            order, without touching its epoch counter), a dataset with ``images`` and
            ``labels``, or a pair (images, labels).
        batch_size: images per forward pass.
        transform: batch transform after scaling to [0, 1]; default the loader's.
        num_classes: K; default the width of the model's output.
    """
    where = "confusion_matrix"
    images, labels, transform = dataset_arrays(dataset_or_loader, transform, where)
    if labels is None:
        raise ValueError(f"{where}: the dataset has no labels")
    batch_size = positive_int(batch_size, "batch_size", where)
    labels = labels.astype(np.int64)
    batches = ((Tensor(x), Tensor(labels[lo:lo + len(x)]))
               for lo, x in iter_batches(model, images, batch_size, transform, where))
    with inspecting(model, where), shape_errors(where, images.shape[1:]):
        result = evaluate(model, batches, num_classes=num_classes)
    counts = np.asarray(result["confusion"], dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    rates = counts / np.maximum(totals, 1)
    classes = getattr(getattr(dataset_or_loader, "dataset", dataset_or_loader), "classes", None)
    return Confusion(counts=counts, rates=rates, accuracy=result["accuracy"],
                     per_class_accuracy=rates.diagonal().copy(), loss=result["loss"],
                     classes=None if classes is None else list(classes))


def read_metrics(path) -> dict:
    """The metrics file of a training run as ``{key: [value of epoch 1, epoch 2, ...]}``.

    Each line of the file is one epoch's JSON object (keys ``epoch``, ``train_loss``,
    ``train_accuracy``, ``lr``, ``seconds``, ``images_per_second`` and, with a test set,
    ``test_loss``, ``test_accuracy``, ``test_per_class_accuracy``). Keys missing from some
    lines get None there; blank lines are skipped. A resumed run that repeated an epoch
    keeps both lines, in file order.

    Raises:
        FileNotFoundError: no such file (the message names it).
        ValueError: the file holds no epochs, or a line is not a JSON object (the message
            names the file and the line number).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_metrics: no metrics file {path!r}")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"read_metrics: {path}, line {number}: not valid JSON ({e.msg}): "
                                 f"{line.strip()[:80]!r}") from None
            if not isinstance(record, dict):
                raise ValueError(f"read_metrics: {path}, line {number}: expected a JSON object (one epoch), "
                                 f"got {type(record).__name__}")
            records.append(record)
    if not records:
        raise ValueError(f"read_metrics: {path} holds no epochs (the file is empty)")
    keys = list(dict.fromkeys(k for r in records for k in r))
    return {k: [r.get(k) for r in records] for k in keys}
