"""Finding layers by name and catching what they output, without changing the model.

Layers are named by their dotted path, as in ``model.named_modules()`` and ``state_dict``
keys ("0", "features.3", "stages.1.0.conv2"). Outputs are caught with
:func:`cnnlab.nn.observe_calls`, which attaches nothing to the model: when the ``with``
block ends, no trace of the inspection is left behind.
"""
from __future__ import annotations

from collections import OrderedDict

from ..autograd import Tensor, no_grad
from ..nn import Module, observe_calls


def layer_names(model: Module, leaves_only: bool = False) -> list:
    """Every layer's dotted name (the model itself excluded), in definition order."""
    return [name for name, m in model.named_modules()
            if name and (not leaves_only or next(m.children(), None) is None)]


def get_layer(model: Module, name: str) -> Module:
    """The layer called ``name``; a ValueError listing the valid names if there is none."""
    for n, m in model.named_modules():
        if n == name and n:
            return m
    raise ValueError(f"layer {name!r} does not exist in {type(model).__name__}; "
                     f"valid layers: {', '.join(layer_names(model))}")


def capture(model: Module, x, layers=None, *, grad: bool = False) -> "OrderedDict[str, Tensor]":
    """Run ``model(x)`` and return ``{layer name: output Tensor}`` for ``layers`` (names;
    default every leaf layer), plus ``"output"`` for the model's output.

    A layer called more than once (the same module used twice in the forward pass) gives
    one entry per call: ``name``, then ``name (call 2)``, ... With ``grad=True`` the pass is
    recorded on the tape and each caught output keeps its ``.grad`` after ``backward()``."""
    if layers is None:
        layers = layer_names(model, leaves_only=True)
    elif isinstance(layers, str):
        layers = [layers]
    wanted = {id(get_layer(model, n)): n for n in layers}
    caught = OrderedDict()
    calls = {}

    def observe(module, inputs, output):
        name = wanted.get(id(module))
        if name is None or not isinstance(output, Tensor):
            return
        calls[name] = calls.get(name, 0) + 1
        if grad and output.requires_grad:
            output.retain_grad()
        caught[name if calls[name] == 1 else f"{name} (call {calls[name]})"] = output

    if grad:
        with observe_calls(observe):
            caught["output"] = model(x)
    else:
        with no_grad(), observe_calls(observe):
            caught["output"] = model(x)
    return caught
