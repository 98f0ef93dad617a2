"""The Tensor and its tape, against PyTorch.

Every op is run on the same arrays in cnnlab and in torch (the oracle); values and the
gradients of a *random* upstream gradient are compared with ``check_op`` (conftest), in
float64 (relative error <= 1e-10) and float32 (<= 1e-4). Then the tape itself: shared
nodes, diamonds, retain_graph, no_grad, detach, deep graphs, dtype rules and gradcheck.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import cnnlab
from cnnlab import GradcheckError, Tensor
from cnnlab.autograd import Function


def randn(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def away_from_zero(seed, *shape, low=0.5, high=2.0):
    """Random values with |v| in [low, high] and random signs: safe denominators."""
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def positive(seed, *shape, low=0.5, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, shape)


def ties(seed, *shape):
    """Small integers as floats: many equal maxima and minima in every slice."""
    return np.random.default_rng(seed).integers(0, 3, shape).astype(np.float64)


# ----- elementwise arithmetic with broadcasting -----
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
}

BROADCAST_SHAPES = [
    ((3, 4), (3, 4)),
    ((3, 1), (1, 4)),
    ((1, 4), (3, 1)),
    ((2, 3, 4), (4,)),
    ((4,), (2, 3, 4)),
    ((2, 1, 4), (3, 1)),
    ((3, 1), (2, 1, 4)),
    ((), (3, 4)),
    ((3, 4), ()),
    ((1,), (5,)),
    ((), ()),
]


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_binary_broadcasting(check_op, dtype, op, shapes):
    ours, theirs = BINARY[op]
    a = randn(1, *shapes[0])
    b = away_from_zero(2, *shapes[1])
    check_op(f"binary {op}", ours, theirs, [a, b], dtype)


@settings(max_examples=40, deadline=None, database=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3),
       op=st.sampled_from(sorted(BINARY)), dtype=st.sampled_from([np.float64, np.float32]),
       seed=st.integers(0, 2**31 - 1))
def test_binary_broadcasting_random_shapes(check_op, shapes, op, dtype, seed):
    ours, theirs = BINARY[op]
    a = randn(seed, *shapes.input_shapes[0])
    b = away_from_zero(seed + 1, *shapes.input_shapes[1])
    check_op(f"binary {op}", ours, theirs, [a, b], dtype, seed=seed)


def test_only_one_operand_requires_grad(check_op, dtype):
    a, b = randn(3, 3, 1), away_from_zero(4, 1, 4)
    check_op("mul one grad", lambda x, y: x * y, lambda x, y: x * y, [a, b], dtype,
             requires_grad=[False, True])
    check_op("div one grad", lambda x, y: x / y, lambda x, y: x / y, [a, b], dtype,
             requires_grad=[True, False])


# ----- reflected ops: Python numbers and NumPy arrays on the left -----
NP_LEFT = away_from_zero(5, 2, 3, 4)   # broadcasts against a (3, 4) tensor
NP_MAT = randn(6, 5, 3)                # (5, 3) @ (3, 4)

REFLECTED = {
    "2.0 + t": (lambda t: 2.0 + t, lambda t: 2.0 + t),
    "2.0 - t": (lambda t: 2.0 - t, lambda t: 2.0 - t),
    "3.0 * t": (lambda t: 3.0 * t, lambda t: 3.0 * t),
    "2.0 / t": (lambda t: 2.0 / t, lambda t: 2.0 / t),
    "2 * t": (lambda t: 2 * t, lambda t: 2 * t),
    "t - 0.5": (lambda t: t - 0.5, lambda t: t - 0.5),
    "t / 4": (lambda t: t / 4, lambda t: t / 4),
    "np + t": (lambda t: NP_LEFT + t, lambda t: torch.from_numpy(NP_LEFT).to(t.dtype) + t),
    "np - t": (lambda t: NP_LEFT - t, lambda t: torch.from_numpy(NP_LEFT).to(t.dtype) - t),
    "np * t": (lambda t: NP_LEFT * t, lambda t: torch.from_numpy(NP_LEFT).to(t.dtype) * t),
    "np / t": (lambda t: NP_LEFT / t, lambda t: torch.from_numpy(NP_LEFT).to(t.dtype) / t),
    "t / np": (lambda t: t / NP_LEFT, lambda t: t / torch.from_numpy(NP_LEFT).to(t.dtype)),
    "np @ t": (lambda t: NP_MAT @ t, lambda t: torch.from_numpy(NP_MAT).to(t.dtype) @ t),
    "np.float64 * t": (lambda t: np.float64(1.5) * t, lambda t: 1.5 * t),
}


@pytest.mark.parametrize("case", sorted(REFLECTED))
def test_reflected_ops(check_op, dtype, case):
    ours, theirs = REFLECTED[case]

    def run(t):
        out = ours(t)
        # NumPy on the left must hand over to Tensor, not build an object array
        assert isinstance(out, Tensor), f"{case} gave {type(out).__name__}, expected a cnnlab Tensor"
        return out

    check_op(f"reflected {case}", run, theirs, [away_from_zero(7, 3, 4)], dtype)


# ----- unary ops -----
UNARY = {
    "neg": (lambda t: -t, lambda t: -t, away_from_zero),
    "pow 2": (lambda t: t ** 2, lambda t: t ** 2, randn),
    "pow 3": (lambda t: t ** 3, lambda t: t ** 3, randn),
    "pow 0.5": (lambda t: t ** 0.5, lambda t: t ** 0.5, positive),
    "pow -1": (lambda t: t ** -1, lambda t: t ** -1, away_from_zero),
    "pow -2.5": (lambda t: t ** -2.5, lambda t: t ** -2.5, positive),
    "exp": (lambda t: t.exp(), lambda t: t.exp(), randn),
    "log": (lambda t: t.log(), lambda t: t.log(), positive),
    "abs": (lambda t: t.abs(), lambda t: t.abs(), away_from_zero),
    "sqrt": (lambda t: t.sqrt(), lambda t: t.sqrt(), positive),
    "clamp both": (lambda t: t.clamp(-0.5, 0.7), lambda t: t.clamp(-0.5, 0.7), randn),
    "clamp min": (lambda t: t.clamp(min=-0.3), lambda t: t.clamp(min=-0.3), randn),
    "clamp max": (lambda t: t.clamp(max=0.2), lambda t: t.clamp(max=0.2), randn),
    "relu": (lambda t: t.relu(), lambda t: t.relu(), away_from_zero),
    "tanh": (lambda t: t.tanh(), lambda t: t.tanh(), randn),
    "sigmoid": (lambda t: t.sigmoid(), lambda t: t.sigmoid(), randn),
    "sigmoid large": (lambda t: (t * 40.0).sigmoid(), lambda t: (t * 40.0).sigmoid(), randn),
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(check_op, dtype, op):
    ours, theirs, make = UNARY[op]
    check_op(f"unary {op}", ours, theirs, [make(8, 3, 5)], dtype)


def test_pow_tensor_exponent_is_rejected():
    t = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError):
        t ** t


# ----- matmul -----
MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 6)),     # broadcast batch on both sides
    ((3, 4), (2, 4, 5)),           # a 2-D operand against a batch
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (4,)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=lambda s: f"{s[0]}@{s[1]}")
def test_matmul(check_op, dtype, shapes):
    check_op("matmul", lambda a, b: a @ b, lambda a, b: a @ b,
             [randn(9, *shapes[0]), randn(10, *shapes[1])], dtype)


# ----- reductions -----
DIMS = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2)]
DIM_IDS = [str(d) for d in DIMS]


def _torch_dims(dim, ndim):
    return tuple(range(ndim)) if dim is None else dim


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", DIMS, ids=DIM_IDS)
def test_sum_mean(check_op, dtype, dim, keepdim):
    x = randn(11, 2, 3, 4)
    check_op("sum", lambda t: t.sum(dim, keepdim=keepdim),
             lambda t: t.sum(_torch_dims(dim, 3), keepdim=keepdim), [x], dtype)
    check_op("mean", lambda t: t.mean(dim, keepdim=keepdim),
             lambda t: t.mean(_torch_dims(dim, 3), keepdim=keepdim), [x], dtype)


@pytest.mark.parametrize("dim", DIMS, ids=DIM_IDS)
def test_mean_is_numpys_mean_bit_for_bit(dtype, dim):
    """Mean takes np.mean's own steps (a sum, then a true division by the count)."""
    x = (randn(11, 2, 3, 4) * 1e3).astype(dtype)
    for keepdim in (False, True):
        got = cnnlab.Tensor(x).mean(dim, keepdim=keepdim).data
        want = np.asarray(x.mean(axis=dim, keepdims=keepdim))
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(cnnlab.Tensor(np.arange(5)).mean().data, np.arange(5).mean())   # ints: float64
    half = cnnlab.Tensor(np.full((4, 20000), 10, np.float32)).astype(np.float16)   # summed in float32, as np.mean
    assert half.mean().item() == 10 and (half.mean(1).data == 10).all()


def test_sum_mean_default_is_scalar(check_op, dtype):
    x = randn(12, 3, 4)
    check_op("sum", lambda t: t.sum(), lambda t: t.sum(), [x], dtype)
    check_op("mean", lambda t: t.mean(), lambda t: t.mean(), [x], dtype)


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", DIMS, ids=DIM_IDS)
@pytest.mark.parametrize("data", ["random", "ties"])
def test_max_min(check_op, dtype, data, dim, keepdim):
    # with ties, the gradient is split equally among the maxima, as torch.amax/amin do
    x = randn(13, 2, 3, 4) if data == "random" else ties(13, 2, 3, 4)
    check_op("max", lambda t: t.max(dim, keepdim=keepdim),
             lambda t: torch.amax(t, _torch_dims(dim, 3), keepdim=keepdim), [x], dtype)
    check_op("min", lambda t: t.min(dim, keepdim=keepdim),
             lambda t: torch.amin(t, _torch_dims(dim, 3), keepdim=keepdim), [x], dtype)


def test_max_all_equal_splits_evenly():
    x = Tensor(np.full((2, 3), 5.0), requires_grad=True)
    x.max().backward(np.array(6.0))
    np.testing.assert_array_equal(x.grad, np.ones((2, 3)))


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [None, 1, -1, (0, 2)], ids=str)
def test_var(check_op, dtype, dim, keepdim, unbiased):
    check_op("var", lambda t: t.var(dim, keepdim=keepdim, unbiased=unbiased),
             lambda t: torch.var(t, _torch_dims(dim, 3), correction=int(unbiased), keepdim=keepdim),
             [randn(14, 2, 3, 4)], dtype)


# ----- shape ops -----
SHAPE_OPS = {
    "reshape": (lambda t: t.reshape(4, 6), lambda t: t.reshape(4, 6)),
    "reshape tuple -1": (lambda t: t.reshape((3, -1)), lambda t: t.reshape(3, -1)),
    "view": (lambda t: t.view(2, 12), lambda t: t.view(2, 12)),
    "flatten": (lambda t: t.flatten(), lambda t: t.flatten()),
    "flatten 1": (lambda t: t.flatten(1), lambda t: t.flatten(1)),
    "flatten 0 1": (lambda t: t.flatten(0, 1), lambda t: t.flatten(0, 1)),
    "flatten -2 -1": (lambda t: t.flatten(-2, -1), lambda t: t.flatten(-2, -1)),
    "permute": (lambda t: t.permute(2, 0, 1), lambda t: t.permute(2, 0, 1)),
    "permute tuple": (lambda t: t.permute((1, 2, 0)), lambda t: t.permute((1, 2, 0))),
    "permute negative": (lambda t: t.permute(0, -1, 1), lambda t: t.permute(0, -1, 1)),
    "transpose": (lambda t: t.transpose(0, 2), lambda t: t.transpose(0, 2)),
    "transpose negative": (lambda t: t.transpose(-1, -2), lambda t: t.transpose(-1, -2)),
    "unsqueeze 0": (lambda t: t.unsqueeze(0), lambda t: t.unsqueeze(0)),
    "unsqueeze -1": (lambda t: t.unsqueeze(-1), lambda t: t.unsqueeze(-1)),
    "unsqueeze 2": (lambda t: t.unsqueeze(2), lambda t: t.unsqueeze(2)),
}


@pytest.mark.parametrize("op", sorted(SHAPE_OPS))
def test_shape_ops(check_op, dtype, op):
    ours, theirs = SHAPE_OPS[op]
    check_op(op, ours, theirs, [randn(15, 2, 3, 4)], dtype)


def test_T_of_matrix(check_op, dtype):
    check_op(".T", lambda t: t.T, lambda t: t.T, [randn(16, 3, 5)], dtype)


def test_T_of_3d_reverses_all_axes(check_op, dtype):
    check_op(".T 3-D", lambda t: t.T, lambda t: t.permute(2, 1, 0), [randn(16, 2, 3, 5)], dtype)


@pytest.mark.parametrize("dim", [None, 0, 2, -2, 1], ids=str)
def test_squeeze(check_op, dtype, dim):
    args = () if dim is None else (dim,)
    check_op("squeeze", lambda t: t.squeeze(*args) * 1.0, lambda t: t.squeeze(*args) * 1.0,
             [randn(17, 1, 3, 1, 4)], dtype)


@pytest.mark.parametrize("src,target", [((3, 1), (2, 3, 4)), ((3, 1), (-1, 5)), ((1, 4), (3, -1)),
                                        ((), (2, 3)), ((2, 1, 1), (2, 3, 4))], ids=str)
def test_expand(check_op, dtype, src, target):
    check_op("expand", lambda t: t.expand(*target), lambda t: t.expand(*target),
             [randn(18, *src)], dtype)


# ----- indexing -----
def _torch_index(index):
    items = index if isinstance(index, tuple) else (index,)
    out = tuple(torch.from_numpy(i) if isinstance(i, np.ndarray) else i for i in items)
    return out if isinstance(index, tuple) else out[0]


MASK = np.random.default_rng(19).random((4, 5, 6)) > 0.5
INDICES = {
    "int": 1,
    "negative int": -1,
    "int pair": (2, -3),
    "ints full": (1, 2, 3),
    "slice": slice(1, 3),
    "slice step": slice(None, None, 2),
    "slices steps negative bounds": (slice(-3, None), slice(0, 5, 2), slice(-5, -1, 3)),
    "slice and negative int": (slice(None), -2),
    "None": None,
    "None ellipsis int": (None, Ellipsis, 1),
    "ellipsis None": (Ellipsis, None),
    "int ellipsis": (1, Ellipsis),
    "ellipsis slice": (Ellipsis, slice(1, None, 2)),
    "bool mask full": MASK,
    "bool mask first axis": np.array([True, False, True, True]),
    "int array repeats": np.array([0, 2, 0, 0, 3]),
    "int array negative repeats": np.array([-1, -1, 1]),
    "int arrays broadcast repeats": (np.array([1, 1, 3]), slice(None), np.array([0, 0, 5])),
    "2-D int array": np.array([[0, 1], [1, 1]]),
    "int array and int": (np.array([2, 2, 0]), 4),
}


@pytest.mark.parametrize("name", list(INDICES))
def test_indexing(check_op, dtype, name):
    index = INDICES[name]
    check_op(f"index {name}", lambda t: t[index], lambda t: t[_torch_index(index)],
             [randn(20, 4, 5, 6)], dtype)


@pytest.mark.parametrize("name", ["strided slices", "int array repeats", "bool mask first axis"])
def test_indexing_gradient_keeps_a_channels_last_input_layout(name):
    """The gradient of x[index] lies in memory like x (channels-last after a convolution),
    as the gradients it is added to do; its values are those of the NCHW case."""
    index = {"strided slices": (slice(None), slice(None), slice(None, None, 2), slice(None, None, 2)),
             "int array repeats": np.array([0, 2, 0, 0, 3]),
             "bool mask first axis": np.array([True, False, True, True, False])}[name]
    x = np.random.default_rng(24).standard_normal((5, 3, 4, 6))
    grads = []
    for data in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
        t = Tensor(data, requires_grad=True)
        y = t[index]
        y.backward(np.arange(y.data.size, dtype=np.float64).reshape(y.shape))
        grads.append(t.grad)
    np.testing.assert_array_equal(grads[0], grads[1])
    assert grads[1].strides[1] == grads[1].itemsize        # channels-last, as its input


def test_indexing_repeats_accumulate_exactly():
    x = Tensor(np.zeros(4), requires_grad=True)
    x[np.array([0, 2, 0, 0])].backward(np.array([1.0, 10.0, 100.0, 1000.0]))
    np.testing.assert_array_equal(x.grad, [1101.0, 0.0, 10.0, 0.0])


def test_indexing_with_a_list_of_repeats(check_op, dtype):
    check_op("index list", lambda t: t[[3, 3, 0]], lambda t: t[[3, 3, 0]], [randn(21, 4, 2)], dtype)


def test_indexing_with_negative_step(check_op, dtype):
    # torch has no negative steps; flip is the same selection
    check_op("index negative step", lambda t: t[::-1, 1, ::-2],
             lambda t: torch.flip(t, (0, 2))[:, 1, ::2], [randn(22, 4, 5, 6)], dtype)


def test_indexing_with_a_boolean_tensor(check_op, dtype):
    check_op("index bool tensor", lambda t: t[t > 0], lambda t: t[t > 0], [away_from_zero(23, 3, 4)], dtype)


# ----- cat and stack -----
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat(check_op, dtype, dim):
    sizes = [1, 3, 2]
    shapes = []
    for s in sizes:
        shape = [2, 3, 4]
        shape[dim] = s
        shapes.append(tuple(shape))
    arrays = [randn(24 + i, *s) for i, s in enumerate(shapes)]
    check_op("cat", lambda *ts: cnnlab.cat(ts, dim=dim), lambda *ts: torch.cat(ts, dim=dim), arrays, dtype)


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack(check_op, dtype, dim):
    arrays = [randn(30 + i, 2, 3) for i in range(3)]
    check_op("stack", lambda *ts: cnnlab.stack(ts, dim=dim), lambda *ts: torch.stack(ts, dim=dim), arrays, dtype)


def test_cat_with_an_input_without_grad(check_op, dtype):
    check_op("cat", lambda a, b: cnnlab.cat([a, b], 1), lambda a, b: torch.cat([a, b], 1),
             [randn(35, 2, 3), randn(36, 2, 2)], dtype, requires_grad=[False, True])


# ----- graph structure -----
def test_tensor_used_twice_accumulates(check_op, dtype):
    check_op("used twice", lambda x: x * x + x, lambda x: x * x + x, [randn(40, 3, 4)], dtype)


def test_used_twice_exact():
    x = Tensor(np.array([3.0]), requires_grad=True)
    (x * x + x).backward(np.array([2.0]))
    np.testing.assert_array_equal(x.grad, [2.0 * (2 * 3.0 + 1)])


def test_diamond_graph(check_op, dtype):
    def graph(x):
        a = x.exp()
        b = a * 2.0
        c = a.tanh()
        return b * c + a

    check_op("diamond", graph, graph, [randn(41, 3, 4)], dtype)


def test_residual_connection(check_op, dtype):
    check_op("residual", lambda x, w: (x @ w).tanh() + x, lambda x, w: (x @ w).tanh() + x,
             [randn(42, 5, 4), randn(43, 4, 4)], dtype)


def test_deeply_shared_subgraph(check_op, dtype):
    # every step uses the previous result twice: 2**20 paths, each visited once
    def graph(x):
        y = x
        for _ in range(20):
            y = (y * 0.5 + y * 0.25).tanh()
        return y

    check_op("shared subgraph", graph, graph, [randn(44, 3)], dtype)


def test_backward_twice_raises_without_retain_graph():
    x = Tensor(randn(45, 3), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_backward_twice_with_retain_graph_accumulates():
    data = randn(46, 3)
    x = Tensor(data, requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * data, rtol=1e-12)
    with pytest.raises(RuntimeError):
        y.backward()


def test_grad_accumulates_across_backward_calls():
    data = randn(47, 2, 3)
    g1, g2 = randn(48, 2, 3), randn(49, 2, 3)
    x = Tensor(data, requires_grad=True)
    (x * 3.0).backward(g1)
    (x * x).backward(g2)
    xt = torch.tensor(data, requires_grad=True)
    (xt * 3.0).backward(torch.from_numpy(g1))
    (xt * xt).backward(torch.from_numpy(g2))
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-12)


class _FreshGradient(Function):
    """Identity whose backward returns ``make(g)`` and records where that array lies."""
    pointers: list = []
    kept: list = []

    @staticmethod
    def forward(ctx, x, *, make, keep=False):
        ctx.make, ctx.keep = make, keep
        return x.copy()

    @staticmethod
    def backward(ctx, g):
        out = ctx.make(g)
        _FreshGradient.pointers.append(out.__array_interface__["data"][0])
        if ctx.keep:
            _FreshGradient.kept.append(out)
        return out


def _data_pointer(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("layout", ["c", "channels_last"])
def test_leaf_keeps_a_gradient_nothing_else_holds(layout):
    """As PyTorch's AccumulateGrad does: no copy of an input-sized gradient (a
    saliency map's, a layer benchmark's) when no one else can reach its memory."""
    from cnnlab import autograd
    if autograd._SOLE is None:
        pytest.skip("this interpreter's reference counts are not exact: gradients are always copied")
    def make(g):
        return g * 2.0 if layout == "c" else np.ascontiguousarray((g * 2.0).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    x = Tensor(randn(60, 2, 3, 4, 5), requires_grad=True)
    _FreshGradient.apply(x, make=make).backward(randn(61, 2, 3, 4, 5))
    assert _data_pointer(x.grad) == _FreshGradient.pointers[-1]
    np.testing.assert_array_equal(x.grad, 2.0 * randn(61, 2, 3, 4, 5))
    assert x.grad.flags.writeable


def test_leaf_copies_a_gradient_someone_else_holds():
    # one array returned to two inputs: in-place changes to one .grad must not reach the other
    a, b = Tensor(randn(62, 3), requires_grad=True), Tensor(randn(63, 3), requires_grad=True)
    (a + b).backward(np.ones(3))
    assert not np.shares_memory(a.grad, b.grad)
    a.grad += 1
    np.testing.assert_array_equal(b.grad, np.ones(3))
    # the caller's own upstream gradient, given to a leaf or passed through a view
    g = randn(64, 2, 3)
    leaf = Tensor(randn(65, 2, 3), requires_grad=True)
    leaf.backward(g)
    assert not np.shares_memory(leaf.grad, g)
    x = Tensor(randn(66, 6), requires_grad=True)
    x.reshape(2, 3).backward(g)
    assert not np.shares_memory(x.grad, g)
    # read-only (broadcast) gradients, views of part of an array, arrays an op keeps
    x = Tensor(randn(67, 4, 5), requires_grad=True)
    x.sum().backward()
    assert x.grad.flags.writeable and x.grad.flags.c_contiguous
    y = Tensor(randn(68, 4, 5), requires_grad=True)
    _FreshGradient.apply(y, make=lambda g: np.concatenate([g, g], axis=1)[:, :5]).backward(np.ones((4, 5)))
    assert y.grad.flags.c_contiguous and _data_pointer(y.grad) != _FreshGradient.pointers[-1]
    z = Tensor(randn(69, 4, 5), requires_grad=True)
    _FreshGradient.apply(z, make=lambda g: g * 3.0, keep=True).backward(np.ones((4, 5)))
    assert not np.shares_memory(z.grad, _FreshGradient.kept[-1])
    z.grad += 1
    np.testing.assert_array_equal(_FreshGradient.kept[-1], np.full((4, 5), 3.0))


def test_retain_grad_on_non_leaf():
    data, g = randn(50, 3, 4), randn(51, 3, 4)
    x = Tensor(data, requires_grad=True)
    h = x * 2.0
    h.retain_grad()
    other = x + 1.0  # a non-leaf without retain_grad keeps no .grad
    (h.tanh() * other).backward(g)
    xt = torch.tensor(data, requires_grad=True)
    ht = xt * 2.0
    ht.retain_grad()
    (ht.tanh() * (xt + 1.0)).backward(torch.from_numpy(g))
    assert not h.is_leaf
    np.testing.assert_allclose(h.grad, ht.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-12)
    assert other.grad is None


def test_no_grad_context_records_nothing():
    x = Tensor(randn(52, 3), requires_grad=True)
    with cnnlab.no_grad():
        assert not cnnlab.is_grad_enabled()
        y = (x * 2.0).exp().sum()
        z = x[0] + x[1]
    assert cnnlab.is_grad_enabled()
    for t in (y, z):
        assert not t.requires_grad
        assert t.is_leaf
    with pytest.raises(RuntimeError):
        y.backward()
    assert x.grad is None


def test_no_grad_as_decorator():
    x = Tensor(randn(53, 3), requires_grad=True)

    @cnnlab.no_grad()
    def double(t):
        return t * 2.0

    y = double(x)
    assert not y.requires_grad
    assert cnnlab.is_grad_enabled()
    assert (x * 2.0).requires_grad


def test_no_grad_decorator_reentrant():
    # a decorated function that calls itself must leave recording on when it returns
    @cnnlab.no_grad()
    def depth(n):
        assert not cnnlab.is_grad_enabled()
        return 0 if n == 0 else 1 + depth(n - 1)

    # enable_grad's exit restores the state found on entry (on), so a failure here
    # does not leave recording off for the tests that follow
    with cnnlab.enable_grad():
        assert depth(3) == 3
        still_on = cnnlab.is_grad_enabled()
    assert still_on, "grad recording stayed off after a re-entrant @no_grad() function returned"


def test_no_grad_nested_restores():
    with cnnlab.no_grad():
        with cnnlab.no_grad():
            pass
        assert not cnnlab.is_grad_enabled()
    assert cnnlab.is_grad_enabled()


def test_enable_grad_inside_no_grad():
    data, g = randn(54, 3), randn(55, 3)
    x = Tensor(data, requires_grad=True)
    with cnnlab.no_grad():
        with cnnlab.enable_grad():
            assert cnnlab.is_grad_enabled()
            y = x * x
        assert not cnnlab.is_grad_enabled()
        z = x * x
    assert y.requires_grad and not z.requires_grad
    y.backward(g)
    np.testing.assert_allclose(x.grad, 2 * data * g, rtol=1e-12)


def test_enable_grad_as_decorator_inside_no_grad():
    x = Tensor(randn(56, 3), requires_grad=True)

    @cnnlab.enable_grad()
    def square(t):
        return t * t

    with cnnlab.no_grad():
        y = square(x)
        assert not cnnlab.is_grad_enabled()
    assert y.requires_grad


def test_detach_cuts_the_graph():
    data, g = randn(57, 3), randn(58, 3)
    x = Tensor(data, requires_grad=True)
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    assert np.shares_memory(d.data, x.data)
    (d * x).backward(g)
    np.testing.assert_allclose(x.grad, data * g, rtol=1e-12)  # not 2 * data * g
    assert d.grad is None


def test_deep_chain_does_not_hit_recursion_limit():
    import sys
    n = 5000
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default, well below the depth of the graph
    try:
        x = Tensor(np.array([0.5, -1.0]), requires_grad=True)
        y = x
        for i in range(n):
            y = y * 1.0001 if i % 2 else y + 0.001
        y.backward(np.array([1.0, 2.0]))
        del y  # freeing the deep chain must not recurse either
    finally:
        sys.setrecursionlimit(limit)
    np.testing.assert_allclose(x.grad, np.array([1.0, 2.0]) * 1.0001 ** (n // 2), rtol=1e-12)


# ----- dtype rules -----
DTYPE_OPS = {
    "x + 1.5": lambda x: x + 1.5,
    "1.5 + x": lambda x: 1.5 + x,
    "x - 0.5": lambda x: x - 0.5,
    "2.0 - x": lambda x: 2.0 - x,
    "x * 3.0": lambda x: x * 3.0,
    "3.0 * x": lambda x: 3.0 * x,
    "x * 2": lambda x: x * 2,
    "x / 3.0": lambda x: x / 3.0,
    "2.0 / x": lambda x: 2.0 / x,
    "f64 array * x": lambda x: np.full((3, 4), 1.5) * x,
    "x + f64 array": lambda x: x + np.full((4,), 0.5),
    "np.float64 * x": lambda x: np.float64(1.5) * x,
    "-x": lambda x: -x,
    "x ** 2": lambda x: x ** 2,
    "x ** 0.5": lambda x: x ** 0.5,
    "x ** -1": lambda x: x ** -1,
    "sqrt": lambda x: x.sqrt(),
    "exp": lambda x: x.exp(),
    "log": lambda x: x.log(),
    "abs": lambda x: x.abs(),
    "clamp": lambda x: x.clamp(0.7, 1.5),
    "relu": lambda x: x.relu(),
    "tanh": lambda x: x.tanh(),
    "sigmoid": lambda x: x.sigmoid(),
    "matmul": lambda x: x @ x.T,
    "sum": lambda x: x.sum(),
    "mean": lambda x: x.mean(1),
    "max": lambda x: x.max(),
    "max dim": lambda x: x.max(1),
    "min": lambda x: x.min(0),
    "var": lambda x: x.var(),
    "reshape": lambda x: x.reshape(2, 6),
    "permute": lambda x: x.permute(1, 0),
    "expand": lambda x: x.expand(2, 3, 4),
    "index": lambda x: x[np.array([0, 0, 2])],
    "cat": lambda x: cnnlab.cat([x, x * 2.0]),
    "stack": lambda x: cnnlab.stack([x, x + 1.0]),
}


@pytest.mark.parametrize("op", list(DTYPE_OPS))
def test_dtype_is_kept(dtype, op):
    x = Tensor(positive(60, 3, 4).astype(dtype), requires_grad=True)
    out = DTYPE_OPS[op](x)
    assert out.dtype == dtype, f"{op}: {dtype} input gave a {out.dtype} output"
    out.backward(randn(61, *out.shape).astype(dtype))
    assert x.grad.dtype == dtype, f"{op}: {dtype} input got a {x.grad.dtype} gradient"


def test_constructor_dtypes():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert cnnlab.tensor([[1.5], [2.5]]).dtype == np.float32
    assert Tensor(2.5).dtype == np.float32
    assert Tensor(np.zeros(3)).dtype == np.float64
    assert Tensor(np.zeros(3, np.float32)).dtype == np.float32
    assert Tensor(np.zeros(3, np.float16)).dtype == np.float32
    assert Tensor([1, 2]).dtype.kind == "i"
    assert Tensor([1.0], dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("data", [[1, 2, 3], np.arange(3), np.array([True, False])], ids=["list", "array", "bool"])
def test_integer_tensors_cannot_require_grad(data):
    with pytest.raises(TypeError, match="floating"):
        Tensor(data, requires_grad=True)
    t = Tensor(data)
    with pytest.raises(TypeError, match="floating"):
        t.requires_grad_()


def test_backward_on_non_scalar_needs_grad():
    y = Tensor(randn(62, 3), requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"\(3,\)"):
        y.backward()


def test_backward_with_grad_of_wrong_shape():
    y = Tensor(randn(63, 3, 4), requires_grad=True) * 2.0
    with pytest.raises((ValueError, RuntimeError), match=r"\(4, 3\).*\(3, 4\)"):
        y.backward(np.ones((4, 3)))


def test_backward_without_requires_grad_raises():
    with pytest.raises(RuntimeError):
        (Tensor(randn(64, 3)) * 2.0).sum().backward()


def test_scalar_backward_defaults_to_one():
    data = randn(65, 3)
    x = Tensor(data, requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * data, rtol=1e-12)


# ----- gradcheck -----
class WrongSquare(Function):
    """x ** 2 with the factor 2 missing from backward."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return (g * a,)


class WrongSecondInput(Function):
    """a * b with a right gradient for a and a wrong one (sign) for b."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * b, -g * a


class ForgetsToFlip(Function):
    """x[::-1] whose backward does not flip: invisible to an all-ones upstream gradient."""

    @staticmethod
    def forward(ctx, a):
        return a[::-1].copy()

    @staticmethod
    def backward(ctx, g):
        return (g,)


def test_gradcheck_passes_on_a_correct_function():
    a = Tensor(randn(70, 3, 4), requires_grad=True)
    b = Tensor(randn(71, 4, 2), requires_grad=True)
    result = cnnlab.gradcheck(lambda a, b: (a @ b).tanh() * b.sum() + a.exp().mean(), [a, b])
    assert result.ok
    assert len(result.rel_errors) == 2
    assert result.max_rel_error < 1e-6


def test_gradcheck_accepts_float32_inputs():
    a = Tensor(randn(72, 3).astype(np.float32), requires_grad=True)
    assert cnnlab.gradcheck(lambda t: t.sigmoid() * t, [a]).ok


@pytest.mark.parametrize("fn,shapes", [
    (lambda a: WrongSquare.apply(a), [(3, 2)]),
    (lambda a, b: WrongSecondInput.apply(a, b), [(3,), (3,)]),
    (lambda a: ForgetsToFlip.apply(a), [(4,)]),
], ids=["wrong factor", "wrong second input", "unflipped gradient"])
def test_gradcheck_catches_a_wrong_backward(fn, shapes):
    inputs = [Tensor(away_from_zero(73 + i, *s), requires_grad=True) for i, s in enumerate(shapes)]
    with pytest.raises(GradcheckError, match="analytic"):
        cnnlab.gradcheck(fn, inputs)
    result = cnnlab.gradcheck(fn, inputs, raise_exception=False)
    assert not result.ok
    assert result.max_rel_error > 1e-2


def test_gradcheck_error_is_an_assertion_error():
    assert issubclass(GradcheckError, AssertionError)
