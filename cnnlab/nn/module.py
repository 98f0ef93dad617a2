"""Module and Parameter: the base of every layer.

A module's parameters are its attributes: any :class:`Parameter`, any sub-:class:`Module`,
and modules inside lists or tuples are found by walking ``vars(self)`` in the order they
were assigned, with no registration calls. Other :class:`Tensor` attributes are buffers
(state that is saved but not trained, like BatchNorm's running statistics).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np

from .._errors import InputError
from ..autograd import Tensor, is_grad_enabled
from ..kernels import parallel

_call_observers = []


@contextlib.contextmanager
def observe_calls(fn):
    """While active, ``fn(module, inputs, output)`` runs after every module call. Used by
    :func:`cnnlab.summary` and the inspection tools to see inside a model without
    changing it: nothing is attached to the model, and nothing stays behind."""
    _call_observers.append(fn)
    try:
        yield
    finally:
        _call_observers.remove(fn)


def _container_items(value):
    if isinstance(value, (list, tuple)):
        return enumerate(value)
    if isinstance(value, dict):
        return ((k, v) for k, v in value.items() if isinstance(k, str))
    return ()


_NO_ATTRIBUTE = object()


@contextlib.contextmanager
def eval_mode(model):
    """Evaluation mode (dropout off, batch norm on its running statistics) inside the
    block; afterwards every layer gets back its own mode, so a model that was training
    with one frozen BatchNorm layer comes back exactly like that (a layer that had no
    ``training`` attribute of its own goes back to the class default)."""
    modules = list(model.modules())
    flags = [vars(m).get("training", _NO_ATTRIBUTE) for m in modules]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in zip(modules, flags):
            if flag is _NO_ATTRIBUTE:
                vars(m).pop("training", None)
            else:
                m.training = flag


def model_dtype(model):
    """The floating dtype of the model's parameters (float32 if it has none), which its
    inputs are cast to: the ops do not mix float32 and float64."""
    for p in model.parameters():
        if p.data.dtype.kind == "f":
            return p.data.dtype
    return np.dtype(np.float32)


def _name_layer(module, e: InputError) -> None:
    """Put the layer the user wrote in front of an input error's message, once
    (containers pass it on unchanged)."""
    if e.where is None:
        e.where = module
        e.args = (f"{module._short_repr()}: {e.args[0]}",) + e.args[1:]


class Parameter(Tensor):
    """A Tensor that is a trainable parameter of a Module (requires grad by default)."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of layers and models. Subclasses set attributes and define ``forward``."""

    training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        opened = parallel.enter_call()   # BLAS, once held to one thread, stays so for the call
        try:
            out = self.forward(*args, **kwargs)
        except InputError as e:
            _name_layer(self, e)
            raise
        finally:
            parallel.exit_call(opened)
        if _call_observers:
            for fn in list(_call_observers):
                fn(self, args, out)
        return out

    # ----- discovery -----
    def named_children(self):
        """(name, module) for every sub-module: attributes, and modules in lists, tuples
        and dicts (named ``attr.index`` or ``attr.key``)."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            else:
                for key, v in _container_items(value):
                    if isinstance(v, Module):
                        yield f"{name}.{key}", v

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = ""):
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            kids = [(f"{name}.{n}" if name else n, c) for n, c in m.named_children()]
            stack.extend(reversed(kids))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def _own_tensors(self):
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                yield name, value
            else:
                for key, v in _container_items(value):
                    if isinstance(v, Tensor):
                        yield f"{name}.{key}", v

    def _named_tensors(self, kind):
        seen = set()
        for prefix, m in self.named_modules():
            for name, t in m._own_tensors():
                if kind(t) and id(t) not in seen:
                    seen.add(id(t))
                    yield (f"{prefix}.{name}" if prefix else name), t

    def named_parameters(self):
        return self._named_tensors(lambda t: isinstance(t, Parameter))

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self):
        return self._named_tensors(lambda t: not isinstance(t, Parameter))

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ----- state -----
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, keyed by dotted path (as in PyTorch)."""
        return OrderedDict((name, t.data.copy()) for name, t in self._named_tensors(lambda t: True))

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy values into this module's parameters and buffers, in place.

        Raises ValueError naming every missing or unexpected key (with ``strict``), and
        every key whose shape differs from the parameter's, before changing anything."""
        own = OrderedDict(self._named_tensors(lambda t: True))
        values = {}
        for k, v in state_dict.items():
            if isinstance(v, Tensor):
                v = v.data
            elif hasattr(v, "detach") and hasattr(v, "cpu"):  # a PyTorch tensor, e.g. from a torch checkpoint
                v = v.detach().cpu().numpy()
            values[k] = np.asarray(v)
        missing = [k for k in own if k not in values]
        unexpected = [k for k in values if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        for k in own:
            if k in values and values[k].shape != own[k].shape:
                problems.append(f"{k!r} has shape {own[k].shape} in the model but {values[k].shape} in the state_dict")
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        for k, t in own.items():
            if k in values:
                np.copyto(t.data, values[k], casting="unsafe")
        return missing, unexpected

    # ----- modes and housekeeping -----
    def train(self, mode: bool = True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, dtype):
        """Convert floating-point parameters and buffers to ``dtype``, in place."""
        dtype = np.dtype(dtype)
        for t in self._named_tensors(lambda t: True):
            if t[1].data.dtype.kind == "f":
                t[1].data = t[1].data.astype(dtype)
                t[1].grad = None
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    def apply(self, fn):
        for m in self.modules():
            fn(m)
        return self

    # ----- printing -----
    def extra_repr(self) -> str:
        return ""

    def _short_repr(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def __repr__(self):
        kids = list(self.named_children())
        if not kids:
            return self._short_repr()
        lines = [f"{type(self).__name__}("]
        if self.extra_repr():
            lines.append("  " + self.extra_repr())
        for name, m in kids:
            body = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


def _fuses_relu(m, nxt) -> bool:
    """Whether ``m`` followed by ``nxt`` runs as one fused call, ``m(x, relu=True)``: when
    ``m``'s class offers it (``_fuses_relu`` in its own class body, so a subclass that
    changes forward does not inherit it), ``nxt`` is a plain ReLU, and no one observes
    module calls (the ReLU's own call, and the output before it, would be missing), and
    neither instance has its own ``forward``."""
    return (type(m).__dict__.get("_fuses_relu", False) and type(nxt).__dict__.get("_is_relu", False)
            and not _call_observers and "forward" not in vars(m) and "forward" not in vars(nxt))


def fused_relu(m, relu, x):
    """``relu(m(x))``, as one fused call ``m(x, relu=True)`` where :func:`_fuses_relu`
    allows (for blocks that write their forward by hand)."""
    return m(x, relu=True) if _fuses_relu(m, relu) else relu(m(x))


def fused_add_relu(bn, relu, x, residual):
    """``relu(bn(x) + residual)``, the end of a residual block, as one call
    ``bn(x, relu=True, residual=residual)`` where :func:`_fuses_relu` allows: the sum and
    the ReLU inside batch norm's last pass instead of two more passes over memory (for a
    batch norm class that says it takes a residual, ``_takes_residual``)."""
    if _fuses_relu(bn, relu) and type(bn).__dict__.get("_takes_residual", False):
        return bn(x, relu=True, residual=residual)
    return relu(bn(x) + residual)


def _folds_batch_norm(conv, bn, x) -> bool:
    """Whether ``bn(conv(x))`` runs as one convolution with the batch norm folded into its
    filters and bias (``conv(x, batch_norm=bn)``, :mod:`cnnlab.nn.fusion`): in inference
    (no gradient recorded, the batch norm in evaluation mode on running statistics), for
    a batched input (batch norm refuses an unbatched one), when both classes offer it in
    their own class body, and, as for :func:`_fuses_relu`, while no one observes module
    calls and neither instance has its own ``forward``. The result equals the separate
    layers' up to float rounding."""
    return (type(bn).__dict__.get("_folds_into_conv", False) and type(conv).__dict__.get("_folds_batch_norm", False)
            and not bn.training and not is_grad_enabled() and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None and bn.num_features == conv.out_channels
            and getattr(x, "ndim", 0) == 4
            and not _call_observers and "forward" not in vars(conv) and "forward" not in vars(bn))


def conv_bn(conv, bn, x, relu=None, shortcut=None):
    """``bn(conv(x))``, then ``+ shortcut()`` and ``relu`` where given:
    ``relu(bn(conv(x)) + shortcut())``, a convolution's share of a residual block.

    In inference (:func:`_folds_batch_norm`) one convolution computes it all, batch norm
    folded into the filters and the sum and the ReLU applied to each block of output
    while it is in cache (ResNet-20 at batch 1: 3.4 -> 2.8 ms). Otherwise the layers run
    one by one, the ReLU and the sum fused into batch norm where :func:`_fuses_relu`
    allows. ``shortcut`` is a function, called after ``conv``, as the layers' order
    would call it."""
    if _folds_batch_norm(conv, bn, x):
        residual = None if shortcut is None else shortcut()
        fuse = relu is None or _fuses_relu(conv, relu)
        try:   # forward itself: no one observes calls, and a module call's frame cost 1% at batch 1
            out = conv.forward(x, batch_norm=bn, residual=residual, relu=fuse and relu is not None)
        except InputError as e:
            _name_layer(conv, e)
            raise
        return out if fuse else relu(out)
    out = conv(x)
    if shortcut is None:
        return bn(out) if relu is None else fused_relu(bn, relu, out)
    if relu is None:
        return bn(out) + shortcut()
    return fused_add_relu(bn, relu, out, shortcut())


class Sequential(Module):
    """Modules applied one after another. Indexable, sliceable and iterable; its children
    are named "0", "1", ... as in PyTorch, so state_dict keys match.

    A ``Conv2d``, ``BatchNorm`` or ``Linear`` followed by a ``ReLU`` runs as one fused
    call, the ReLU inside the layer's op (for convolutions and batch norm while each block
    of output is still in cache, its gradient mask inside the layer's backward): the same
    values and gradients, with fewer passes over memory and one op call fewer. In
    inference a ``Conv2d`` followed by a ``BatchNorm2d`` (and a ``ReLU``) runs as one
    convolution, batch norm folded into its filters (:func:`conv_bn`). Not while calls
    are observed (:func:`observe_calls`), nor for subclasses."""

    def __init__(self, *modules):
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: argument {i} must be a Module, got {type(m).__name__}")
        self.layers = list(modules)

    def named_children(self):
        for i, m in enumerate(self.layers):
            yield str(i), m

    def forward(self, x):
        layers, i = self.layers, 0
        while i < len(layers):
            m = layers[i]
            if i + 1 < len(layers) and _folds_batch_norm(m, layers[i + 1], x):
                if i + 2 < len(layers) and _fuses_relu(m, layers[i + 2]):
                    x = m(x, batch_norm=layers[i + 1], relu=True)   # conv, batch norm and ReLU: one pass
                    i += 3
                else:
                    x = m(x, batch_norm=layers[i + 1])
                    i += 2
            elif i + 1 < len(layers) and _fuses_relu(m, layers[i + 1]):
                x = m(x, relu=True)   # the same result as m, then the ReLU, in one pass
                i += 2
            else:
                x = m(x)
                i += 1
        return x

    def __getitem__(self, i):
        return Sequential(*self.layers[i]) if isinstance(i, slice) else self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def append(self, module: Module):
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.append: expected a Module, got {type(module).__name__}")
        self.layers.append(module)
        return self


class ModuleList(Module):
    """A list of modules, named "0", "1", ... (like ``torch.nn.ModuleList``)."""

    def __init__(self, modules=()):
        self.items = list(modules)

    def named_children(self):
        for i, m in enumerate(self.items):
            yield str(i), m

    def __getitem__(self, i):
        return self.items[i]

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def append(self, module: Module):
        self.items.append(module)
        return self
