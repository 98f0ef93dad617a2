"""Checkpoints: one ``.npz`` file holding everything needed to resume or reuse a run.

Arrays (model parameters and buffers, optimizer state) are stored as NumPy arrays under
``model/<name>`` and ``optimizer/<param index>/<name>``; everything else (the model's
recipe, optimizer options and scalar state, scheduler state, random number generator
states, the epoch and batch reached, dataset statistics) is one JSON document under
``meta``. No pickle, so loading a checkpoint never runs code. Files are written to a
temporary file beside the target and renamed into place, so a crash never leaves half a
checkpoint.
"""
from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

from .._io import atomic_write_bytes

FORMAT = "cnnlab-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable cnnlab checkpoint, or one that does not fit the model."""


def _split_state(state: dict, prefix: str, arrays: dict):
    """Move the ndarrays of a nested state dict into ``arrays``; return the JSON-able rest."""
    if isinstance(state, dict):
        return {str(k): _split_state(v, f"{prefix}/{k}", arrays) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_split_state(v, f"{prefix}/{i}", arrays) for i, v in enumerate(state)]
    if isinstance(state, np.ndarray):
        arrays[prefix] = state
        return {"__array__": prefix}
    if isinstance(state, np.generic):
        return state.item()
    return state


def _join_state(doc, arrays):
    if isinstance(doc, dict):
        if set(doc) == {"__array__"}:
            return arrays[doc["__array__"]].copy()
        return {k: _join_state(v, arrays) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_join_state(v, arrays) for v in doc]
    return doc


def save_checkpoint(path: str, model, optimizer=None, scheduler=None, meta: dict = None) -> None:
    """Save the model (and optionally optimizer and scheduler state) plus a JSON-able ``meta`` dict."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    doc = {"format": FORMAT, "version": VERSION, "meta": _split_state(meta or {}, "meta", arrays)}
    if optimizer is not None:
        doc["optimizer"] = _split_state(optimizer.state_dict(), "optimizer", arrays)
    if scheduler is not None:
        doc["scheduler"] = _split_state(scheduler.state_dict(), "scheduler", arrays)
    arrays["__doc__"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


class Checkpoint:
    """A loaded checkpoint: ``model_state`` (name -> array), ``optimizer_state``,
    ``scheduler_state`` (or None) and ``meta`` (dict)."""

    def __init__(self, path, model_state, optimizer_state, scheduler_state, meta):
        self.path, self.model_state = path, model_state
        self.optimizer_state, self.scheduler_state, self.meta = optimizer_state, scheduler_state, meta


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, with clear errors for anything else."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"checkpoint {path}: not a cnnlab checkpoint (expected an .npz file written by "
                              f"cnnlab; reading it failed: {e})") from None
    try:
        doc = json.loads(arrays.pop("__doc__").tobytes().decode())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise KeyError("format")
    except (KeyError, ValueError, UnicodeDecodeError, AttributeError):
        raise CheckpointError(f"checkpoint {path}: not a cnnlab checkpoint (an .npz file without cnnlab's "
                              f"'{FORMAT}' header)") from None
    if doc.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {doc['version']} is newer than this cnnlab "
                              f"reads ({VERSION}); upgrade cnnlab")
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    return Checkpoint(path, model_state, _join_state(doc.get("optimizer"), arrays),
                      _join_state(doc.get("scheduler"), arrays), _join_state(doc.get("meta", {}), arrays))
