"""The images, and image patches, that most strongly activate a channel.

For each chosen channel of a layer, :func:`top_activations` goes once through a dataset
and keeps the k images whose largest activation in that channel is highest, with where
in the feature map that largest activation sits and the patch of input pixels that unit
sees: its receptive field.

Where a unit looks: :func:`cnnlab.summary` gives each layer's receptive-field size rf and
jump (the distance in input pixels between neighbouring units). The last piece is where
unit (0, 0) starts, which padding moves up and left: through a layer with padding p it
moves by -p times the jump of that layer's input (``'same'`` padding contributes its top
and left parts). Unit (i, j) then sees rows ``start_h + i * jump_h`` up to
``start_h + i * jump_h + rf_h`` (exclusive), clipped to the image, columns likewise.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ..autograd import Tensor
from ..functional.conv import resolve_padding
from ..nn import AvgPool2d, Conv2d, LocallyConnected2d, MaxPool2d, Module, observe_calls
from ..summary import summary
from ._common import (as_float_array, dataset_arrays, inspecting, iter_batches, model_dtype, positive_int,
                      shape_errors)
from .layers import capture, get_layer


@dataclass
class ReceptiveField:
    """Where the units of one layer look in the input (all in input pixels).

    ``size`` is (rf_h, rf_w) and ``jump`` (jump_h, jump_w), as :func:`cnnlab.summary`
    reports them, or ``"all"`` and ``"-"`` for layers that see the whole input (after a
    flatten, a fully connected layer or a global pooling). ``start`` is the (row, column)
    of the top-left input pixel unit (0, 0) sees, negative where padding reaches outside.
    ``input_hw`` is the input's (H, W)."""
    layer: str
    size: object
    jump: object
    start: tuple
    input_hw: tuple

    def box(self, i: int, j: int) -> tuple:
        """(top, left, bottom, right) of unit (i, j)'s receptive field, bottom and right
        exclusive, clipped to the input (so ``image[:, top:bottom, left:right]`` is it)."""
        H, W = self.input_hw
        if self.size == "all":
            return (0, 0, H, W)
        top = self.start[0] + i * self.jump[0]
        left = self.start[1] + j * self.jump[1]
        return (max(top, 0), max(left, 0), min(top + self.size[0], H), min(left + self.size[1], W))


def _pad_top_left(m, in_hw) -> tuple:
    """The padding a windowed layer adds above and to the left of its input."""
    if isinstance(m, (Conv2d, LocallyConnected2d)):
        top, _, left, _ = resolve_padding(m.padding, in_hw, m.kernel_size, m.stride, m.dilation)
        return top, left
    return tuple(m.padding)  # pooling layers: a pair


def receptive_field(model: Module, input_shape, layer: str) -> ReceptiveField:
    """Size, jump and start of the receptive fields of ``layer``'s output units, for
    inputs of shape ``input_shape`` (C, H, W).

    Size and jump come from :func:`cnnlab.summary` (run once, watching the same forward
    pass); the start follows the padding along the same chain of layers, falling back as
    summary does (to the largest field reached so far) where a layer's input is not a
    layer's output, e.g. after a residual addition. A layer used twice: its first call.
    A container layer: the field of its output, which is the last layer call inside it
    (or, for a sum such as a residual block's, the largest field inside it).
    """
    where = "receptive_field"
    target = get_layer(model, layer)
    input_shape = tuple(int(v) for v in input_shape)
    calls = []      # (module, input tensor or None, output tensor) per leaf call, as summary sees them
    found = []      # (output tensor, leaf calls before it returned) of the target's first call

    def observe(m, args, out):
        if m is target and not found:
            found.append((out, len(calls)))  # a container's layers have all been called by now
        if next(m.children(), None) is not None or not isinstance(out, Tensor):
            return
        calls.append((m, args[0] if args else None, out))

    with inspecting(model, where), shape_errors(where, input_shape), observe_calls(observe):
        info = summary(model, input_shape, dtype=model_dtype(model), verbose=False).layers
    assert len(info) == len(calls), "receptive_field: summary reported other layer calls than were observed"
    if not found or not isinstance(found[0][0], Tensor):
        raise ValueError(f"{where}: layer {layer!r} was not called with a Tensor output in the forward pass")

    # the same walk as summary's, carrying each output's start (a tensor's id is unique
    # while `calls` keeps it alive)
    field = {}
    largest = ((1, 1), (1, 1), (0, 0))   # size, jump, start
    states = [largest]                   # largest after 0, 1, 2, ... leaf calls
    for (m, inp, out), li in zip(calls, info):
        size_in, jump_in, start_in = field.get(id(inp), largest)
        if li.receptive_field == "all" or size_in == "all":
            start = (0, 0)
        elif isinstance(m, (Conv2d, LocallyConnected2d, MaxPool2d, AvgPool2d)):
            pad = _pad_top_left(m, inp.shape[-2:])
            start = tuple(s - p * j for s, p, j in zip(start_in, pad, jump_in))
        else:
            start = start_in
        field[id(out)] = (li.receptive_field, li.jump, start)
        if li.receptive_field == "all":
            largest = ("all", "-", (0, 0))
        elif largest[0] == "all" or np.prod(li.receptive_field) > np.prod(largest[0]):
            largest = field[id(out)]
        states.append(largest)
    out, n_before = found[0]
    size, jump, start = field.get(id(out), states[n_before])
    return ReceptiveField(layer, size, jump, tuple(int(s) for s in start), input_shape[-2:])


@dataclass
class TopActivations:
    """What :func:`top_activations` found; row r is about channel ``channels[r]``, and
    column q its q-th strongest image (strongest first).

    Attributes:
        layer: the layer's name.
        channels: (R,) channel indices.
        indices: (R, k) dataset indices of the images.
        values: (R, k) each image's largest activation of the channel.
        positions: (R, k, 2) (i, j) of that activation in the feature map ((0, 0) for a
            layer without spatial axes).
        boxes: (R, k, 4) (top, left, bottom, right) of the unit's receptive field in the
            input, bottom and right exclusive, clipped at the borders.
        patches: R lists of k arrays (C, bottom - top, right - left): the boxes cut from the
            dataset images as stored, scaled to [0, 1] (uint8 / 255), before any transform.
        receptive_field: the layer's :class:`ReceptiveField`.
    """
    layer: str
    channels: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    patches: list
    receptive_field: ReceptiveField


def _channel_list(channels, n: int, layer: str, where: str) -> np.ndarray:
    if channels is None:
        return np.arange(n)
    chosen = [channels] if isinstance(channels, numbers.Integral) else list(channels)
    bad = [c for c in chosen if not isinstance(c, numbers.Integral) or isinstance(c, bool) or not 0 <= c < n]
    if bad or not chosen:
        raise ValueError(f"{where}: channels must be indices in 0..{n - 1} (layer {layer!r} has {n} channels), "
                         f"got {channels!r}")
    return np.asarray(chosen, dtype=np.int64)


def top_activations(model: Module, dataset_or_loader, layer: str, channels=None, k: int = 9,
                    batch_size: int = 256, transform=None) -> TopActivations:
    """The k images of a dataset that activate each channel of ``layer`` most.

    An image's score for a channel is the largest value in that channel's feature map;
    the position of that value (the first, in row-major order, if several are equal)
    says which unit fired, and its receptive field which patch of the image made it fire.
    One forward pass per batch, in evaluation mode without the tape; ties between images
    go to the lower index.

    Args:
        model: any :class:`cnnlab.nn.Module`.
        dataset_or_loader: a DataLoader (its dataset and transform, read in dataset order),
            a dataset with ``images``, a pair (images, labels) or an images array.
        layer: a layer name. A 4-D output (N, C, H, W) gives one channel per C; a 2-D
            output (N, D), such as a Linear layer's, one "channel" per unit, whose field is
            the whole image. A layer used twice: its first call.
        channels: an index or a list of them; default every channel.
        k: images per channel (at most the dataset size).
        batch_size: images per forward pass.
        transform: batch transform ``t(x, rng)`` after scaling to [0, 1] (e.g. the
            training ``Normalize``); default the loader's.

    Raises:
        ValueError: unknown layer, channel out of range, or images the model cannot take.
    """
    where = "top_activations"
    images, _, transform = dataset_arrays(dataset_or_loader, transform, where)
    k = min(positive_int(k, "k", where), len(images))
    batch_size = positive_int(batch_size, "batch_size", where)
    if not len(images):
        raise ValueError(f"{where}: the dataset holds no images")
    get_layer(model, layer)
    rf = receptive_field(model, images.shape[1:], layer)
    chosen = None
    best_v = best_i = best_p = None   # (R, k) running top-k: values, dataset indices, flat positions
    with inspecting(model, where), shape_errors(where, images.shape[1:]):
        for lo, x in iter_batches(model, images, batch_size, transform, where):
            act = capture(model, Tensor(x), [layer])[layer].data
            if act.ndim not in (2, 4):
                raise ValueError(f"{where}: layer {layer!r} outputs shape {act.shape}; expected (N, C, H, W) "
                                 f"or (N, D)")
            if chosen is None:
                chosen = _channel_list(channels, act.shape[1], layer, where)
                spatial = act.shape[2:] if act.ndim == 4 else (1, 1)
            a = act[:, chosen].reshape(len(x), len(chosen), -1)
            pos = a.argmax(axis=2)                                        # (B, R)
            val = np.take_along_axis(a, pos[..., None], axis=2)[..., 0]   # (B, R)
            idx = np.broadcast_to(np.arange(lo, lo + len(x))[:, None], val.shape)
            if best_v is None:
                cand_v, cand_i, cand_p = val.T, idx.T, pos.T
            else:
                # earlier images first, so a stable sort keeps the lower index among equals
                cand_v = np.concatenate([best_v, val.T], axis=1)
                cand_i = np.concatenate([best_i, idx.T], axis=1)
                cand_p = np.concatenate([best_p, pos.T], axis=1)
            order = np.argsort(-cand_v, axis=1, kind="stable")[:, :k]
            best_v, best_i, best_p = (np.take_along_axis(c, order, axis=1) for c in (cand_v, cand_i, cand_p))
    positions = np.stack(np.unravel_index(best_p, spatial), axis=-1).astype(np.int64)
    boxes = np.array([[rf.box(i, j) for i, j in row] for row in positions], dtype=np.int64).reshape(len(chosen), k, 4)
    patches = [[as_float_array(images[n, :, t:b, l:r], where, "images").copy()
                for n, (t, l, b, r) in zip(row_i, row_b)] for row_i, row_b in zip(best_i, boxes)]
    return TopActivations(layer=layer, channels=chosen, indices=best_i.astype(np.int64), values=best_v,
                          positions=positions, boxes=boxes, patches=patches, receptive_field=rf)
