"""The tensor and the tape: reverse-mode automatic differentiation on NumPy arrays.

A :class:`Tensor` wraps an ``ndarray``. Every differentiable op is a :class:`Function`
subclass with a ``forward`` and a ``backward`` written next to each other; calling
``SomeFunction.apply(...)`` runs ``forward`` on the raw arrays and, when any input
requires a gradient, links the result to a :class:`Context` holding what ``backward``
needs. ``Tensor.backward()`` walks those links in reverse topological order,
accumulating one gradient per tensor.
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys
import threading

import numpy as np

from .kernels import parallel
from .kernels.padding import empty_like_layout

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


class no_grad(contextlib.ContextDecorator):
    """Context manager and decorator: ops inside record nothing on the tape."""

    _enabled = False

    def __init__(self):
        self._previous = []  # a stack, so one instance can be entered again while active (recursion)

    def __enter__(self):
        self._previous.append(is_grad_enabled())
        _state.grad_enabled = self._enabled
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = self._previous.pop()
        return False


class enable_grad(no_grad):
    """Turns recording back on inside a ``no_grad`` block."""

    _enabled = True


def _accumulate(total: np.ndarray, grad: np.ndarray, value: np.ndarray) -> np.ndarray:
    """``total + grad`` for a tensor reached along two paths (a residual), laid out like
    the tensor's value: NumPy picks C order when the two gradients' layouts differ, and
    every pass after would then stride across channels-last memory. A new array: either
    gradient may be an op's own array."""
    out = empty_like_layout(value.shape, value, dtype=np.result_type(total, grad))
    return parallel.elementwise(np.add, total, grad, out=out)


def _sole_owner(a: np.ndarray) -> bool:
    """Whether the caller's one variable is all that holds ``a`` and its memory, so a
    leaf may keep ``a`` as its ``.grad`` without copying it, as PyTorch's AccumulateGrad
    keeps a gradient nobody else holds. True for a writeable array that owns its memory,
    or that views the whole of a contiguous array owning its memory (a convolution's
    channels-last input gradient seen as NCHW) which nothing else references. Anything
    else (an op's array returned to two inputs, a view of the caller's own ``grad``,
    broadcast or read-only arrays) is copied: a later in-place update of the ``.grad``
    must not reach another array. The reference counts this reads are calibrated at
    import (:func:`_calibrate`), since interpreters count borrowed references apart."""
    if _SOLE is None or type(a) is not np.ndarray or not a.flags.writeable:
        return False
    if sys.getrefcount(a) > _SOLE[0]:
        return False
    base = a.base
    if base is None:
        return a.flags.c_contiguous or a.flags.f_contiguous
    return (type(base) is np.ndarray and base.base is None and base.flags.c_contiguous
            and base.nbytes == a.nbytes and sys.getrefcount(base) <= _SOLE[1])


def _calibrate():
    """The counts :func:`_sole_owner` reads for an array that only its caller's variable
    holds, and for the base of a view that only the view holds, each taken in a function
    built like it; None (always copy) unless one more holder reads one more, as on
    CPython, whose counts (and their borrowed references, 3.14 on) this follows."""
    if sys.implementation.name != "cpython":
        return None

    def count(a):                       # caller's variable -> this parameter -> getrefcount
        return sys.getrefcount(a)

    def count_base(v):                  # a view's base, as _sole_owner reaches it
        base = v.base
        return sys.getrefcount(base)

    a = np.empty(1)
    sole = count(a)
    b = a
    shared = count(a)
    del b
    v = np.empty(2)[:]
    base_sole = count_base(v)
    w = v.base
    base_shared = count_base(v)
    del w
    return (sole, base_sole) if shared == sole + 1 and base_shared == base_sole + 1 else None


_SOLE = _calibrate()


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` down to ``shape``: the adjoint of NumPy broadcasting.

    The one place where every op's gradient is reduced back to its input's shape."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Context:
    """What a Function's forward leaves for its backward.

    Arrays (or small tuples of them) go through ``save_for_backward`` and come back as
    ``saved_tensors``; small settings (shapes, strides) may be stored as attributes.
    ``needs_input_grad`` tells backward which gradients are wanted, so it can skip the
    others."""

    def __init__(self):
        self.saved_tensors = ()
        self.needs_input_grad = ()

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays


class Function:
    """One differentiable op. Subclasses write

    - ``forward(ctx, *args, **kwargs) -> ndarray``: ``args`` are the op's inputs with each
      Tensor replaced by its ndarray; keyword arguments are settings, never differentiated.
    - ``backward(ctx, grad) -> tuple``: one gradient per positional argument of forward,
      ``None`` where there is none (non-tensors, or ``not ctx.needs_input_grad[i]``).
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = Context()
        arrays = [a.data if isinstance(a, Tensor) else a for a in args]
        out = cls.forward(ctx, *arrays, **kwargs)
        track = is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)
        result = Tensor._wrap(out, requires_grad=track)
        if track:
            ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
            ctx.inputs = tuple(a if isinstance(a, Tensor) else None for a in args)
            ctx.function = cls
            result._ctx = ctx
        return result


def _as_array(data, dtype=None) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.asarray(data, dtype=dtype)
    if isinstance(data, np.ndarray):
        # an ndarray keeps its dtype (float64 stays float64), except half precision
        return data.astype(np.float32) if data.dtype == np.float16 else data
    arr = np.asarray(data)
    # Python floats and lists of floats become float32, as torch.tensor makes them
    return arr.astype(np.float32) if arr.dtype == np.float64 else arr


class Tensor:
    """An n-dimensional array that can record the ops applied to it.

    Args:
        data: array-like. NumPy arrays keep their dtype (float64 stays float64); Python
            floats and lists of floats become float32; integers stay integers.
        requires_grad: whether ``backward()`` should compute ``.grad`` for this tensor.
        dtype: optional dtype to convert to.
    """

    __array_priority__ = 1000  # so ndarray <op> Tensor defers to Tensor's reflected op

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _as_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._ctx = None
        self._retain = False

    @classmethod
    def _wrap(cls, array, requires_grad=False):
        t = cls.__new__(cls)
        t.data = array if isinstance(array, np.ndarray) else np.asarray(array)
        t.requires_grad = requires_grad
        t.grad = None
        t._ctx = None
        t._retain = False
        return t

    # ----- basic properties -----
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    is_leaf = property(lambda self: self._ctx is None)

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self):
        return len(self.data)

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self):
        return self.data.item()

    def tolist(self):
        return self.data.tolist()

    def detach(self) -> "Tensor":
        """The same data, cut from the tape."""
        return Tensor._wrap(self.data)

    def clone(self) -> "Tensor":
        from . import ops
        return ops.Clone.apply(self)

    def astype(self, dtype) -> "Tensor":
        from . import ops
        return ops.Cast.apply(self, dtype=np.dtype(dtype))

    float = lambda self: self.astype(np.float32)  # noqa: E731
    double = lambda self: self.astype(np.float64)  # noqa: E731

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = flag
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after ``backward()``."""
        self._retain = True

    def zero_(self) -> "Tensor":
        self.data[...] = 0
        return self

    def __repr__(self):
        body = np.array2string(self.data, separator=", ", prefix="Tensor(")
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self.data.dtype != np.float32:
            extra = f", dtype={self.data.dtype}" + extra
        return f"Tensor({body}{extra})"

    # ----- the backward pass -----
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires it.

        ``grad`` is the upstream gradient (default 1 for a single-element tensor). Unless
        ``retain_graph``, the saved arrays are released as the walk passes them, and a
        second backward through the same graph raises."""
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no grad_fn")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward: grad can be implicit only for single-element outputs, got shape {self.shape}")
            grad = np.ones_like(self.data)
        else:
            grad = _as_array(grad, self.data.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape}, expected {self.shape}")

        order = self._topological_order()
        grads = {id(self): grad}
        for node in order:
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._ctx is None:   # a leaf: a gradient nothing else holds is kept as it is
                if node.grad is None:
                    node.grad = g if _sole_owner(g) else g.copy(order="K")
                else:
                    node.grad = node.grad + g
                continue
            if node._retain:
                node.grad = g.copy(order="K") if node.grad is None else node.grad + g
            ctx = node._ctx
            if getattr(ctx, "released", False):
                raise RuntimeError(
                    "backward: trying to go through the graph a second time; "
                    "pass retain_graph=True to the first backward()"
                )
            in_grads = ctx.function.backward(ctx, g)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            assert len(in_grads) == len(ctx.inputs), f"{ctx.function.__name__}.backward returned {len(in_grads)} grads for {len(ctx.inputs)} inputs"
            for inp, ig in zip(ctx.inputs, in_grads):
                if inp is None or ig is None or not inp.requires_grad:
                    continue
                assert ig.shape == inp.shape, f"{ctx.function.__name__}.backward: grad shape {ig.shape} != input shape {inp.shape}"
                key = id(inp)
                grads[key] = ig if key not in grads else _accumulate(grads[key], ig, inp.data)
            in_grads = ig = None    # the dict holds the gradients now (see _sole_owner)
            if not retain_graph:
                ctx.saved_tensors = ()
                ctx.released = True

    def _topological_order(self):
        """Nodes from self back to the leaves, each after every node that uses it.
        Iterative, so deep networks do not hit Python's recursion limit."""
        order, visited = [], set()
        stack = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            if node._ctx is not None:
                for inp in node._ctx.inputs:
                    if inp is not None and inp.requires_grad and id(inp) not in visited:
                        stack.append((inp, False))
        return order[::-1]

    # ----- ops (defined in ops.py; methods here for PyTorch-style use) -----
    def __add__(self, other): return _ops.Add.apply(self, _lift(other, self))
    def __radd__(self, other): return _ops.Add.apply(_lift(other, self), self)
    def __sub__(self, other): return _ops.Sub.apply(self, _lift(other, self))
    def __rsub__(self, other): return _ops.Sub.apply(_lift(other, self), self)
    def __mul__(self, other): return _ops.Mul.apply(self, _lift(other, self))
    def __rmul__(self, other): return _ops.Mul.apply(_lift(other, self), self)
    def __truediv__(self, other): return _ops.Div.apply(self, _lift(other, self))
    def __rtruediv__(self, other): return _ops.Div.apply(_lift(other, self), self)
    def __neg__(self): return _ops.Neg.apply(self)
    def __matmul__(self, other): return _ops.MatMul.apply(self, _lift(other, self))
    def __rmatmul__(self, other): return _ops.MatMul.apply(_lift(other, self), self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            raise TypeError("Tensor ** Tensor is not supported; use exp(log(a) * b)")
        return _ops.Pow.apply(self, exponent=float(exponent))

    def __rpow__(self, base):
        """``base ** t`` for a positive number ``base``: exp(t * log(base))."""
        if isinstance(base, Tensor) or not np.isscalar(base) or base <= 0:
            raise TypeError(f"number ** Tensor needs a positive number as the base, got {base!r}")
        return (self * float(np.log(base))).exp()

    # comparisons give plain boolean tensors, outside the tape
    def __lt__(self, o): return Tensor._wrap(self.data < _raw(o))
    def __le__(self, o): return Tensor._wrap(self.data <= _raw(o))
    def __gt__(self, o): return Tensor._wrap(self.data > _raw(o))
    def __ge__(self, o): return Tensor._wrap(self.data >= _raw(o))
    def eq(self, o): return Tensor._wrap(self.data == _raw(o))
    __hash__ = object.__hash__

    def exp(self): return _ops.Exp.apply(self)
    def log(self): return _ops.Log.apply(self)
    def sqrt(self): return _ops.Pow.apply(self, exponent=0.5)
    def abs(self): return _ops.Abs.apply(self)
    def relu(self): return _ops.ReLU.apply(self)
    def tanh(self): return _ops.Tanh.apply(self)
    def sigmoid(self): return _ops.Sigmoid.apply(self)
    def clamp(self, min=None, max=None): return _ops.Clamp.apply(self, low=min, high=max)

    def sum(self, dim=None, keepdim=False): return _ops.Sum.apply(self, axis=_axes(dim), keepdims=keepdim)
    def mean(self, dim=None, keepdim=False): return _ops.Mean.apply(self, axis=_axes(dim), keepdims=keepdim)
    def var(self, dim=None, keepdim=False, unbiased=True):
        mu = self.mean(dim, keepdim=True)
        n = self.numel() if dim is None else int(np.prod([self.shape[d] for d in np.atleast_1d(dim)]))
        return ((self - mu) ** 2).sum(dim, keepdim=keepdim) / (n - 1 if unbiased else n)
    def max(self, dim=None, keepdim=False): return _ops.Max.apply(self, axis=_axes(dim), keepdims=keepdim)
    def amax(self, dim=None, keepdim=False): return self.max(dim, keepdim)
    def min(self, dim=None, keepdim=False): return -((-self).max(dim, keepdim))
    def argmax(self, dim=None, keepdim=False):
        return Tensor._wrap(np.argmax(self.data, axis=dim, keepdims=keepdim))

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _ops.Reshape.apply(self, shape=tuple(shape))
    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        nd = self.ndim
        s, e = start_dim % nd if nd else 0, end_dim % nd if nd else 0
        shape = self.shape[:s] + (math.prod(self.shape[s:e + 1]),) + self.shape[e + 1:]
        return self.reshape(shape)

    def permute(self, *dims):
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return _ops.Permute.apply(self, dims=tuple(d % self.ndim for d in dims))

    def transpose(self, dim0=None, dim1=None):
        if dim0 is None:
            return self.permute(tuple(range(self.ndim))[::-1])
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return self.permute(dims)

    T = property(lambda self: self.transpose())

    def unsqueeze(self, dim):
        dim = dim % (self.ndim + 1)
        return self.reshape(self.shape[:dim] + (1,) + self.shape[dim:])

    def squeeze(self, dim=None):
        if dim is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        dim = dim % self.ndim
        if self.shape[dim] != 1:
            return self
        return self.reshape(self.shape[:dim] + self.shape[dim + 1:])

    def expand(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = tuple(self.shape[i - len(shape) + self.ndim] if n == -1 else n for i, n in enumerate(shape))
        return _ops.BroadcastTo.apply(self, shape=shape)

    def __getitem__(self, index):
        return _ops.Index.apply(self, index=_raw_index(index))


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _raw_index(index):
    if isinstance(index, tuple):
        return tuple(_raw(i) for i in index)
    return _raw(index)


def _axes(dim):
    if dim is None or isinstance(dim, int):
        return dim
    return tuple(dim)


def _lift(value, like: Tensor):
    """Python numbers and arrays meet a tensor in its own dtype, never upcasting it."""
    if isinstance(value, Tensor):
        return value
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf" and like.data.dtype.kind == "f":
        arr = arr.astype(like.data.dtype, copy=False)
    return Tensor._wrap(arr)


def tensor(data, requires_grad=False, dtype=None) -> Tensor:
    """``cnnlab.autograd(data)``: like ``torch.tensor``."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def as_tensor(x, where: str = "as_tensor", arg: str = "input") -> Tensor:
    """``x`` itself if it is a Tensor, else a Tensor sharing the ndarray's memory.
    ``where`` and ``arg`` name the op and argument in the error for anything else."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return Tensor(x)
    raise TypeError(f"{where}: {arg} must be a cnnlab.Tensor or numpy.ndarray, got {type(x).__name__}")


def _factory(fill):
    @functools.wraps(fill)
    def make(*shape, dtype=np.float32, requires_grad=False):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Tensor(fill(tuple(shape), dtype), requires_grad=requires_grad)
    return make


zeros = _factory(lambda shape, dtype: np.zeros(shape, dtype))
ones = _factory(lambda shape, dtype: np.ones(shape, dtype))


from . import ops as _ops  # noqa: E402  (ops needs Tensor and Function defined above)
