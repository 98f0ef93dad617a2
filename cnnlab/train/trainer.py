"""The training loop: ``fit`` trains and evaluates a model epoch by epoch, and ``evaluate``
measures loss, accuracy (overall and per class) and the confusion matrix.

What ``fit`` guarantees:
- metrics of every epoch are appended to a JSON-lines file;
- a checkpoint is written (atomically) after every epoch, with the model, optimizer,
  scheduler, random generator states and the position reached;
- ``resume=True`` continues from that checkpoint to the same final weights an
  uninterrupted run reaches (batch order and augmentation depend only on the seed, the
  epoch and the batch index; dropout's generator state is restored);
- a NaN or infinite loss stops training with :class:`TrainingDiverged`, leaving the last
  good checkpoint in place;
- Ctrl-C finishes the current batch, saves the state reached (mid-epoch included) and
  raises :class:`TrainingInterrupted`; resuming continues from the very next batch.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from ..random import get_rng_state, set_rng_state
from ..autograd import Tensor, no_grad
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``fit``; the state reached was saved to ``checkpoint_path``."""


@dataclass
class History:
    """What ``fit`` measured: one dict per epoch (as written to the metrics file)."""
    epochs: list = field(default_factory=list)

    @property
    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def evaluate(model, loader, loss_fn=F.cross_entropy, num_classes: int = None) -> dict:
    """Loss, accuracy, per-class accuracy and confusion matrix (rows: true class) of
    ``model`` on every batch of ``loader``, in evaluation mode and without the tape."""
    was_training = model.training
    model.eval()
    total_loss, count, confusion = 0.0, 0, None
    try:
        with no_grad():
            for x, y in loader:
                logits = model(x)
                total_loss += float(loss_fn(logits, y, reduction="sum").item())
                k = num_classes or logits.shape[1]
                if confusion is None:
                    confusion = np.zeros((k, k), np.int64)
                np.add.at(confusion, (y.data, logits.data.argmax(axis=1)), 1)
                count += len(y.data)
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("evaluate: the loader yielded no batches")
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"loss": total_loss / count, "accuracy": float(confusion.trace() / count),
            "per_class_accuracy": per_class.round(6).tolist(), "confusion": confusion.tolist(), "count": count}


def _progress(total, desc, enabled):
    """A tqdm bar if tqdm is installed and wanted, else None (plain lines are printed)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def fit(model, train_loader, optimizer, epochs: int, *, test_loader=None, scheduler=None,
        scheduler_interval: str = "epoch", loss_fn=F.cross_entropy, checkpoint_path: str = None,
        metrics_path: str = None, resume: bool = False, progress: bool = True, meta: dict = None,
        log=print) -> History:
    """Train ``model`` for ``epochs`` epochs.

    Args:
        model: a :class:`cnnlab.nn.Module`.
        train_loader: a :class:`cnnlab.data.DataLoader` (its order and augmentation are a
            function of its seed, the epoch and the batch index, which makes resuming exact).
        optimizer: a :mod:`cnnlab.optim` optimizer over the model's parameters.
        epochs: the total number of epochs (a resumed run continues up to it).
        test_loader: evaluated after every epoch, if given.
        scheduler: a learning-rate scheduler, stepped every epoch or, with
            ``scheduler_interval='batch'``, every batch (e.g. OneCycleLR).
        loss_fn: ``loss_fn(logits, targets)``; default cross-entropy.
        checkpoint_path: where to keep the checkpoint (written every epoch).
        metrics_path: JSON-lines file; one line per epoch is appended.
        resume: continue from ``checkpoint_path``.
        progress: show a progress bar (tqdm) with images per second.
        meta: JSON-able facts to store in the checkpoint (e.g. how to rebuild the model).
        log: where one summary line per epoch goes (``None`` for silence).
    """
    if scheduler_interval not in ("epoch", "batch"):
        raise ValueError(f"fit: scheduler_interval must be 'epoch' or 'batch', got {scheduler_interval!r}")
    log = log or (lambda *a, **k: None)
    history = History()
    start_epoch, start_batch = 0, 0
    if resume:
        if not checkpoint_path:
            raise ValueError("fit: resume=True needs checkpoint_path")
        start_epoch, start_batch = _restore(checkpoint_path, model, optimizer, scheduler)
        log(f"resuming from {checkpoint_path} at epoch {start_epoch + 1}, batch {start_batch}")
    meta = dict(meta or {})

    def save(epoch, batch, **extra):
        if checkpoint_path:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler,
                            dict(meta, epoch=epoch, batch=batch, rng_state=get_rng_state(), **extra))

    with _InterruptFlag() as interrupt:
        for epoch in range(start_epoch, epochs):
            model.train()
            bar = _progress(len(train_loader) - start_batch, f"epoch {epoch + 1}/{epochs}", progress)
            t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
            try:
                for batch, (x, y) in enumerate(train_loader.iter_epoch(epoch, start_batch), start=start_batch):
                    logits = model(x)
                    loss = loss_fn(logits, y)
                    value = float(loss.item())
                    if not math.isfinite(value):
                        kept = (f"the last good checkpoint is kept at {checkpoint_path}" if checkpoint_path
                                else "no checkpoint was being written")
                        raise TrainingDiverged(f"training stopped: the loss became {value} at epoch {epoch + 1}, "
                                               f"batch {batch + 1}; {kept}. Try a lower learning rate.")
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    if scheduler is not None and scheduler_interval == "batch":
                        scheduler.step()
                    n = len(y.data)
                    seen += n
                    loss_sum += value * n
                    correct += int((logits.data.argmax(axis=1) == y.data).sum())
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                                        img_s=f"{seen / (time.perf_counter() - t0):.0f}")
                    if interrupt.requested:
                        save(epoch, batch + 1, interrupted=True)
                        raise TrainingInterrupted(_interrupted_message(epoch, batch + 1, checkpoint_path))
            finally:
                if bar is not None:
                    bar.close()
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                      "train_accuracy": correct / max(seen, 1), "lr": float(optimizer.param_groups[0]["lr"]),
                      "seconds": round(seconds, 3), "images_per_second": round(seen / seconds, 1) if seconds else None}
            if test_loader is not None:
                ev = evaluate(model, test_loader, loss_fn)
                record.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"],
                              test_per_class_accuracy=ev["per_class_accuracy"])
            history.epochs.append(record)
            if metrics_path:
                _append_jsonl(metrics_path, record)
            save(epoch + 1, 0)
            start_batch = 0
            line = (f"epoch {epoch + 1}/{epochs}  loss {record['train_loss']:.4f}  "
                    f"train acc {record['train_accuracy']:.4f}")
            if test_loader is not None:
                line += f"  test loss {record['test_loss']:.4f}  test acc {record['test_accuracy']:.4f}"
            log(line + f"  {seconds:.1f} s ({record['images_per_second']:.0f} img/s)")
            if interrupt.requested:
                raise TrainingInterrupted(_interrupted_message(epoch + 1, 0, checkpoint_path))
    return history


class _InterruptFlag:
    """While training, Ctrl-C (SIGINT) only sets ``requested``; the loop checks it between
    batches, saves, and stops. So the saved state is never half an update, and resuming
    continues exactly. A second Ctrl-C stops at once, without saving."""

    def __enter__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _interrupted_message(epoch, batch, checkpoint_path):
    where = f"; the state was saved to {checkpoint_path}: run again with resume to continue" if checkpoint_path else ""
    return f"interrupted at epoch {epoch + 1}, batch {batch}{where}"


def _append_jsonl(path, record):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _restore(path, model, optimizer, scheduler):
    ckpt = load_checkpoint(path)
    try:
        model.load_state_dict(ckpt.model_state)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {e}") from None
    if ckpt.optimizer_state is not None:
        state = dict(ckpt.optimizer_state)
        state["state"] = {int(k): v for k, v in state.get("state", {}).items()}  # JSON made the keys strings
        optimizer.load_state_dict(state)
    if scheduler is not None and ckpt.scheduler_state is not None:
        scheduler.load_state_dict(ckpt.scheduler_state)
    if "rng_state" in ckpt.meta:
        set_rng_state(ckpt.meta["rng_state"])
    return int(ckpt.meta.get("epoch", 0)), int(ckpt.meta.get("batch", 0))
