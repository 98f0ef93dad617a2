"""The training loop: ``fit`` trains and evaluates a model epoch by epoch, and ``evaluate``
measures loss, accuracy (overall and per class) and the confusion matrix.

What ``fit`` guarantees:
- metrics of every epoch are appended to a JSON-lines file;
- a checkpoint is written (atomically) after every epoch, with the model, optimizer,
  scheduler, random generator states and the position reached;
- ``resume=True`` continues from that checkpoint to the same final weights an
  uninterrupted run reaches (batch order and augmentation depend only on the seed, the
  epoch and the batch index; dropout's generator state is restored);
- a NaN or infinite loss (or weights) stops training with :class:`TrainingDiverged`,
  leaving the last good checkpoint in place;
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
from ..kernels.memory import reuse_freed_memory
from ..nn.module import eval_mode, model_dtype
from .checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint


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


TTA_MODES = (None, "flip")


def evaluate(model, loader, num_classes: int = None, tta: str = None) -> dict:
    """Cross-entropy loss, accuracy, per-class accuracy and confusion matrix (rows: true
    class) of ``model`` on every batch of ``loader``, in evaluation mode, without the tape.
    Every layer's train/eval mode is restored afterwards. Batches are cast to the model's
    dtype, so float64 models evaluate from the same float32 loader.

    ``tta='flip'``: test-time augmentation, the class probabilities averaged over each
    image and its mirror image (for models trained with horizontal flips); the loss is
    then the negative log of the averaged probability of the true class."""
    if tta not in TTA_MODES:
        raise ValueError(f"evaluate: tta must be one of {TTA_MODES}, got {tta!r}")
    dtype = model_dtype(model)
    total_loss, count, confusion = 0.0, 0, None
    with eval_mode(model), no_grad():
        for x, y in loader:
            x = x if x.dtype == dtype else x.astype(dtype)
            logits = model(x)
            if tta is None:
                total_loss += float(F.cross_entropy(logits, y, reduction="sum").item())
                scores = logits.data
            else:
                if x.ndim != 4:
                    raise ValueError(f"evaluate: tta='flip' mirrors images (N, C, H, W); "
                                     f"got batches of shape {x.shape}")
                mirrored = model(Tensor(np.ascontiguousarray(x.data[..., ::-1])))
                # log of the mean of the two softmax distributions
                scores = np.logaddexp(F.log_softmax(logits, 1).data, F.log_softmax(mirrored, 1).data) - np.log(2)
                total_loss += float(-scores[np.arange(len(y.data)), y.data].sum())
            k = num_classes or scores.shape[1]
            if confusion is None:
                confusion = np.zeros((k, k), np.int64)
            np.add.at(confusion, (y.data, scores.argmax(axis=1)), 1)
            count += len(y.data)
    if not count:
        raise ValueError("evaluate: the loader yielded no batches")
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"loss": total_loss / count, "accuracy": float(confusion.trace() / count),
            "per_class_accuracy": per_class.round(6).tolist(), "confusion": confusion.tolist(), "count": count}


def _progress(total, desc, enabled):
    """A tqdm bar if tqdm is installed and wanted, else None."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _loader_settings(loader) -> dict:
    """What fixes the sequence of batches: a resumed run must use the same."""
    return {"images": len(loader.dataset), "batch_size": loader.batch_size, "shuffle": bool(loader.shuffle),
            "drop_last": bool(loader.drop_last), "seed": loader.seed}


def _all_finite(model) -> bool:
    return all(np.isfinite(p.data).all() for p in model.parameters())


def fit(model, train_loader, optimizer, epochs: int, *, test_loader=None, scheduler=None,
        scheduler_interval: str = "epoch", loss_fn=F.cross_entropy, checkpoint_path: str = None,
        metrics_path: str = None, resume: bool = False, progress: bool = False, meta: dict = None,
        log=None, reuse_memory: bool = True, eval_every: int = 1) -> History:
    """Train ``model`` for ``epochs`` epochs.

    Args:
        model: a :class:`cnnlab.nn.Module`.
        train_loader: a :class:`cnnlab.data.DataLoader` (its order and augmentation are a
            function of its seed, the epoch and the batch index, which makes resuming exact).
        optimizer: a :mod:`cnnlab.optim` optimizer over the model's parameters.
        epochs: the total number of epochs (a resumed run continues up to it).
        test_loader: evaluated after every epoch (plain cross-entropy and accuracy), if given.
        scheduler: a learning-rate scheduler, stepped every epoch or, with
            ``scheduler_interval='batch'``, every batch (e.g. OneCycleLR).
        loss_fn: the training loss, ``loss_fn(logits, targets)``; default cross-entropy.
        checkpoint_path: where to keep the checkpoint (written every epoch).
        metrics_path: JSON-lines file; one line per epoch is appended.
        resume: continue from ``checkpoint_path``; the loader must be set up as before
            (same images, batch size, shuffling, seed), else ValueError names what differs.
        progress: show a tqdm progress bar with images per second.
        meta: JSON-able facts to store in the checkpoint (e.g. how to rebuild the model).
        log: called with one summary line per epoch (e.g. ``print``); silent by default.
        reuse_memory: first call :func:`cnnlab.reuse_freed_memory`, so that each step's
            arrays reuse the memory the last step freed instead of faulting in fresh pages
            (15-20% of a step on glibc). It changes the C allocator's settings for the
            whole process and for good: the process keeps the memory it frees, so its
            resident size stays near the training peak. Pass False to leave them alone.
        eval_every: evaluate ``test_loader`` after every ``eval_every``-th epoch and after
            the last (Keras's ``validation_freq``); the other epochs' records have no test
            metrics. Each evaluation of CIFAR-10's test set costs a ResNet-20 about 9 s.
    """
    if not isinstance(eval_every, int) or isinstance(eval_every, bool) or eval_every < 1:
        raise ValueError(f"fit: eval_every must be a positive int, got {eval_every!r}")
    if scheduler_interval not in ("epoch", "batch"):
        raise ValueError(f"fit: scheduler_interval must be 'epoch' or 'batch', got {scheduler_interval!r}")
    if len(train_loader) == 0:
        raise ValueError(f"fit: train_loader yields no batches ({len(train_loader.dataset)} images, "
                         f"batch_size {train_loader.batch_size}, drop_last={train_loader.drop_last})")
    log = log or (lambda *a, **k: None)
    if reuse_memory:
        reuse_freed_memory()
    history = History()
    settings = _loader_settings(train_loader)
    start_epoch, start_batch, partial = 0, 0, {}
    if resume:
        if not checkpoint_path:
            raise ValueError("fit: resume=True needs checkpoint_path")
        start_epoch, start_batch, partial = _restore(checkpoint_path, model, optimizer, scheduler, settings)
        log(f"resuming from {checkpoint_path} at epoch {start_epoch + 1}, batch {start_batch}")
        if metrics_path:
            _drop_metrics_after(metrics_path, start_epoch)
    meta = dict(meta or {}, loader=settings)
    dtype = model_dtype(model)

    def save(epoch, batch, **extra):
        if checkpoint_path:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler,
                            dict(meta, epoch=epoch, batch=batch, rng_state=get_rng_state(), **extra))

    with _InterruptFlag() as interrupt:
        for epoch in range(start_epoch, epochs):
            model.train()
            lr = float(optimizer.param_groups[0]["lr"])  # the rate this epoch starts with
            bar = _progress(len(train_loader) - start_batch, f"epoch {epoch + 1}/{epochs}", progress)
            # running sums; a resumed epoch starts from those saved when it was interrupted
            seen, loss_sum, correct = partial.get("seen", 0), partial.get("loss_sum", 0.0), partial.get("correct", 0)
            seconds_before, partial = partial.get("seconds", 0.0), {}
            t0 = time.perf_counter()
            try:
                for batch, (x, y) in enumerate(train_loader.iter_epoch(epoch, start_batch), start=start_batch):
                    logits = model(x if x.dtype == dtype else x.astype(dtype))
                    loss = loss_fn(logits, y)
                    value = float(loss.item())
                    if not math.isfinite(value):
                        raise TrainingDiverged(_diverged_message(f"the loss became {value}", epoch, batch,
                                                                 checkpoint_path))
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
                        if not _all_finite(model):
                            raise TrainingDiverged(_diverged_message("the weights are no longer finite", epoch,
                                                                     batch, checkpoint_path))
                        save(epoch, batch + 1, interrupted=True, running={
                            "seen": seen, "loss_sum": loss_sum, "correct": correct,
                            "seconds": seconds_before + time.perf_counter() - t0})
                        raise TrainingInterrupted(_interrupted_message(epoch, batch + 1, checkpoint_path))
            finally:
                if bar is not None:
                    bar.close()
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            if not _all_finite(model):  # a finite loss can still come with an infinite gradient
                raise TrainingDiverged(_diverged_message("the weights are no longer finite", epoch,
                                                         len(train_loader) - 1, checkpoint_path))
            seconds = seconds_before + time.perf_counter() - t0
            record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                      "lr": lr, "seconds": round(seconds, 3), "images_per_second": round(seen / seconds, 1)}
            evaluated = test_loader is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)
            if evaluated:
                ev = evaluate(model, test_loader)
                record.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"],
                              test_per_class_accuracy=ev["per_class_accuracy"])
            history.epochs.append(record)
            save(epoch + 1, 0)  # the checkpoint first: a crash before the metrics line is then harmless
            if metrics_path:
                _append_jsonl(metrics_path, record)
            start_batch = 0
            line = (f"epoch {epoch + 1}/{epochs}  loss {record['train_loss']:.4f}  "
                    f"train acc {record['train_accuracy']:.4f}")
            if evaluated:
                line += f"  test loss {record['test_loss']:.4f}  test acc {record['test_accuracy']:.4f}"
            log(line + f"  {seconds:.1f} s ({record['images_per_second']:.0f} img/s)")
            if interrupt.requested:
                raise TrainingInterrupted(_interrupted_message(epoch + 1, 0, checkpoint_path))
    return history


def _diverged_message(what, epoch, batch, checkpoint_path):
    kept = (f"the last good checkpoint is kept at {checkpoint_path}" if checkpoint_path
            else "no checkpoint was being written")
    return f"training stopped: {what} at epoch {epoch + 1}, batch {batch + 1}; {kept}. Try a lower learning rate."


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


def _drop_metrics_after(path, epoch):
    """Keep only the metrics of epochs up to ``epoch`` (those the checkpoint includes), so a
    resumed run never repeats a line; a half-written last line is dropped too."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["epoch"] <= epoch:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
    atomic_write_bytes(path, "".join(kept).encode())


def _restore(path, model, optimizer, scheduler, settings):
    ckpt = load_checkpoint(path)
    saved = ckpt.meta.get("loader")
    if saved is not None and saved != settings:
        changed = ", ".join(f"{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in settings if saved.get(k) != settings[k])
        raise ValueError(f"fit: cannot resume {path} with a differently set up train_loader ({changed}); "
                         f"the batches would not continue where they stopped")
    try:
        model.load_state_dict(ckpt.model_state)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {e}") from None
    if ckpt.optimizer_state is not None:
        optimizer.load_state_dict(ckpt.optimizer_state)
    if scheduler is not None and ckpt.scheduler_state is not None:
        scheduler.load_state_dict(ckpt.scheduler_state)
    if "rng_state" in ckpt.meta:
        set_rng_state(ckpt.meta["rng_state"])
    return int(ckpt.meta.get("epoch", 0)), int(ckpt.meta.get("batch", 0)), ckpt.meta.get("running") or {}
