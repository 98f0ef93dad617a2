"""``summary``: a table of a model's layers with output shapes, parameters, multiply-adds,
receptive fields and memory, obtained by running one forward pass and watching each layer.

Receptive field and jump follow the classic recurrence through a chain of layers:

    jump_out = jump_in * stride
    rf_out   = rf_in + (k_eff - 1) * jump_in,   k_eff = dilation * (k - 1) + 1

where rf is the size (in input pixels) of the input region one output unit sees, and the
jump is the distance in input pixels between neighbouring output units. Layers after a
global pooling, flatten or fully connected layer see the whole input ("all"). Where a
layer's input is not a previous layer's output (after a residual addition, say), the
largest receptive field reached so far is used, which is exact for residual blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import nn
from .autograd import Tensor, no_grad

_WINDOWED = (nn.Conv2d, nn.LocallyConnected2d, nn.MaxPool2d, nn.AvgPool2d)
_GLOBAL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.GlobalAvgPool2d, nn.GlobalMaxPool2d,
           nn.Flatten, nn.Linear)


@dataclass
class LayerInfo:
    name: str
    kind: str
    output_shape: tuple
    params: int
    mult_adds: int
    receptive_field: object  # (h, w), or "all"
    jump: object             # (h, w), or "-"
    activation_bytes: int


@dataclass
class Summary:
    layers: list = field(default_factory=list)
    input_shape: tuple = ()
    total_params: int = 0
    trainable_params: int = 0
    total_mult_adds: int = 0
    activation_bytes: int = 0
    param_bytes: int = 0

    def __str__(self):
        def fmt(v):
            if v == "all" or v == "-":
                return v
            return f"{v[0]}x{v[1]}" if v[0] != v[1] else str(v[0])
        head = ("Layer (type)", "Output shape", "Params", "Mult-adds", "RF", "Jump", "Act. memory")
        rows = [(f"{l.name} ({l.kind})", "x".join(map(str, l.output_shape)), f"{l.params:,}", f"{l.mult_adds:,}",
                 fmt(l.receptive_field), fmt(l.jump), _bytes(l.activation_bytes)) for l in self.layers]
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        rule = "-" * len(line(head))
        out = [rule, line(head), rule] + [line(r) for r in rows] + [rule]
        out += [f"Input shape: {'x'.join(map(str, self.input_shape))}",
                f"Total params: {self.total_params:,} (trainable {self.trainable_params:,}), {_bytes(self.param_bytes)}",
                f"Total mult-adds: {self.total_mult_adds:,}",
                f"Forward activations: {_bytes(self.activation_bytes)}", rule]
        return "\n".join(out)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def _mult_adds(m, out) -> int:
    per_sample = int(np.prod(out.shape[1:]))
    if isinstance(m, nn.Conv2d):
        return per_sample * m.weight.shape[1] * m.kernel_size[0] * m.kernel_size[1]
    if isinstance(m, nn.LocallyConnected2d):
        return per_sample * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
    if isinstance(m, nn.Linear):
        return per_sample * m.in_features
    return 0


def summary(model, input_shape, batch_size: int = 1, dtype=np.float32, verbose: bool = True) -> Summary:
    """Run ``model`` once on zeros of shape (batch_size, *input_shape) and report each layer.

    Args:
        model: a :class:`cnnlab.nn.Module`.
        input_shape: (C, H, W) of one input (or any per-sample shape the model takes).
        batch_size: used for the forward pass; figures are per sample except activation
            memory, which is for the whole batch.
        verbose: print the table (it is also returned, as a :class:`Summary`).

    Example:
        >>> summary(nn.Conv2d(3, 96, 11, stride=4), (3, 227, 227)).total_params
        34944
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary: model must be a cnnlab.nn.Module, got {type(model).__name__}")
    input_shape = tuple(int(v) for v in input_shape)
    names = {id(m): name for name, m in model.named_modules()}
    x = Tensor(np.zeros((batch_size,) + input_shape, dtype))
    rf = {id(x): ((1, 1), (1, 1))}
    keep = [x]          # keep traced tensors alive so their ids stay unique
    largest = [((1, 1), (1, 1))]
    result = Summary(input_shape=input_shape)

    def observe(m, args, out):
        if next(m.children(), None) is not None or not isinstance(out, Tensor):
            return  # containers: their layers are reported one by one
        inp = args[0] if args else None
        field_in, jump_in = rf.get(id(inp), largest[0])
        if field_in == "all" or isinstance(m, _GLOBAL):
            field_out, jump_out = "all", "-"
        elif isinstance(m, _WINDOWED):
            k, s, d = m.kernel_size, m.stride, getattr(m, "dilation", (1, 1))
            field_out = tuple(f + (di * (ki - 1)) * j for f, ki, di, j in zip(field_in, k, d, jump_in))
            jump_out = tuple(j * si for j, si in zip(jump_in, s))
        elif isinstance(m, nn.PadChannelsShortcut):  # subsamples: a 1x1 window with a stride
            field_out, jump_out = field_in, tuple(j * m.stride for j in jump_in)
        else:
            field_out, jump_out = field_in, jump_in
        rf[id(out)] = (field_out, jump_out)
        keep.append(out)
        if field_out != "all" and (largest[0][0] == "all" or np.prod(field_out) > np.prod(largest[0][0])):
            largest[0] = (field_out, jump_out)
        elif field_out == "all":
            largest[0] = ("all", "-")
        own = sum(t.numel() for _, t in m._own_tensors() if isinstance(t, nn.Parameter))
        result.layers.append(LayerInfo(
            name=names.get(id(m), "?") or type(m).__name__, kind=type(m).__name__,
            output_shape=tuple(out.shape[1:]), params=own, mult_adds=_mult_adds(m, out),
            receptive_field=field_out, jump=jump_out, activation_bytes=out.data.nbytes))

    with nn.eval_mode(model), no_grad(), nn.observe_calls(observe):
        model(x)
    params = list(model.parameters())
    result.total_params = sum(p.numel() for p in params)
    result.trainable_params = sum(p.numel() for p in params if p.requires_grad)
    result.param_bytes = sum(p.data.nbytes for p in params)
    result.total_mult_adds = sum(l.mult_adds for l in result.layers)
    result.activation_bytes = sum(l.activation_bytes for l in result.layers)
    if verbose:
        print(result)
    return result
