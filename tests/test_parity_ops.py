"""Pooling, linear, activations, softmax, losses, dropout, batch norm and pad against
PyTorch, values and gradients, every case in float64 and float32."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import cnnlab
import cnnlab.functional as F
from conftest import TOLERANCE, check_op, distinct, rel_error, torch_pad


def rand(rng, *shape):
    return rng.standard_normal(shape)


# ----- max pooling -----
MAX_POOL = {
    "k2_default_stride": ((2, 3, 6, 8), dict(kernel_size=2)),
    "k3_default_stride_uneven": ((2, 2, 7, 8), dict(kernel_size=3)),
    "overlapping": ((2, 2, 7, 7), dict(kernel_size=3, stride=1)),
    "overlapping_s2": ((2, 2, 8, 7), dict(kernel_size=3, stride=2)),
    "pair_kernel_stride_pad": ((2, 2, 7, 9), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    "padding": ((1, 3, 6, 6), dict(kernel_size=3, stride=2, padding=1)),
    "dilation": ((2, 2, 9, 8), dict(kernel_size=3, stride=1, dilation=2)),
    "dilation_pair_pad": ((1, 2, 9, 10), dict(kernel_size=(3, 2), stride=2, dilation=(2, 3), padding=1)),
    "ceil": ((2, 2, 7, 8), dict(kernel_size=2, ceil_mode=True)),
    "ceil_stride_pad": ((2, 2, 8, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "ceil_dropped_window": ((1, 1, 5, 5), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    "ceil_dilation": ((2, 1, 8, 9), dict(kernel_size=2, stride=3, dilation=2, ceil_mode=True)),
    "stride_gt_kernel": ((2, 2, 9, 9), dict(kernel_size=2, stride=3)),
    "global": ((2, 3, 4, 5), dict(kernel_size=(4, 5))),
}


@pytest.mark.parametrize("case", list(MAX_POOL))
def test_max_pool2d(case, dtype):
    xs, kw = MAX_POOL[case]
    x = distinct(np.random.default_rng(1), *xs)
    check_op("max_pool2d", lambda x: F.max_pool2d(x, **kw), lambda x: TF.max_pool2d(x, **kw), [x], dtype)


@pytest.mark.parametrize("case", list(MAX_POOL))
def test_max_pool2d_return_indices(case, dtype):
    xs, kw = MAX_POOL[case]
    x = distinct(np.random.default_rng(2), *xs)
    check_op("max_pool2d", lambda x: F.max_pool2d(x, return_indices=True, **kw),
             lambda x: TF.max_pool2d(x, return_indices=True, **kw), [x], dtype)


def test_max_pool2d_unbatched(dtype):
    x = distinct(np.random.default_rng(3), 3, 7, 6)
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    check_op("max_pool2d", lambda x: F.max_pool2d(x, return_indices=True, **kw),
             lambda x: TF.max_pool2d(x, return_indices=True, **kw), [x], dtype)


def test_max_pool2d_all_negative_with_padding(dtype):
    """Padding is -inf, not 0: an all-negative input must not pool to 0."""
    x = -1 - np.abs(distinct(np.random.default_rng(4), 2, 2, 5, 5))
    check_op("max_pool2d", lambda x: F.max_pool2d(x, 3, 2, 1), lambda x: TF.max_pool2d(x, 3, 2, 1), [x], dtype)


@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=(3, 2), stride=1, padding=(1, 1), dilation=(1, 2))],
                         ids=["k3s2p1", "dilated"])
def test_max_pool2d_minus_inf_windows_pick_their_first_real_element(kw, dtype):
    """A window whose real values are all -inf: PyTorch's search starts at its first real
    element, so the index and the gradient go there, never to the padding."""
    rng = np.random.default_rng(6)
    x = np.where(rng.random((2, 2, 7, 6)) < 0.85, -np.inf, rng.standard_normal((2, 2, 7, 6)))
    check_op("max_pool2d", lambda x: F.max_pool2d(x, return_indices=True, **kw),
             lambda x: TF.max_pool2d(x, return_indices=True, **kw), [x], dtype)


@pytest.mark.parametrize("case", ["k2", "k3s2p1", "overlap", "dilation"])
def test_max_pool2d_ties_go_to_the_first_maximum(case, dtype):
    """Few distinct values, so most windows hold several maxima: forward, gradient and
    indices must all pick the first, as PyTorch does."""
    kw = {"k2": dict(kernel_size=2), "k3s2p1": dict(kernel_size=3, stride=2, padding=1),
          "overlap": dict(kernel_size=3, stride=1), "dilation": dict(kernel_size=2, stride=1, dilation=2)}[case]
    x = np.random.default_rng(5).integers(0, 3, (2, 3, 8, 7)).astype(float)
    check_op("max_pool2d", lambda x: F.max_pool2d(x, return_indices=True, **kw),
             lambda x: TF.max_pool2d(x, return_indices=True, **kw), [x], dtype)


def test_max_pool2d_nan_propagates_like_torch():
    x = np.random.default_rng(6).standard_normal((1, 2, 6, 6))
    x[0, 0, 1, 1] = np.nan                 # one NaN in a window
    x[0, 1, 2, 2] = x[0, 1, 3, 3] = np.nan  # two in one window
    ours = F.max_pool2d(cnnlab.Tensor(x, requires_grad=True), 2)
    theirs = TF.max_pool2d(torch.tensor(x, requires_grad=True), 2)
    np.testing.assert_array_equal(ours.data, theirs.detach().numpy())  # NaNs in the same places
    g = np.random.default_rng(7).standard_normal(ours.shape)
    xo, xt = cnnlab.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    F.max_pool2d(xo, 2).backward(g)
    TF.max_pool2d(xt, 2).backward(torch.tensor(g))
    np.testing.assert_array_equal(xo.grad, xt.grad.numpy())
    # the indices, too, name PyTorch's choice (the last NaN of a window)
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1)):
        _, io = F.max_pool2d(cnnlab.Tensor(x), return_indices=True, **kw)
        _, it = TF.max_pool2d(torch.tensor(x), return_indices=True, **kw)
        np.testing.assert_array_equal(io.data, it.numpy())



@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(MAX_POOL) + ["all_negative_padded", "nan"])
def test_max_pool2d_inference_is_torch_exactly(case, layout, dtype):
    """With no gradient to follow, max pooling takes maxima down the windows' rows, then
    across (no arg-max): PyTorch's values exactly, NaN and -inf padding included, laid out
    like the input (channels-last stays channels-last for the next convolution)."""
    xs, kw = MAX_POOL.get(case, ((2, 3, 7, 8), dict(kernel_size=3, stride=2, padding=1)))
    x = distinct(np.random.default_rng(8), *xs).astype(dtype)
    if case == "all_negative_padded":
        x = -1 - np.abs(x)
    if case == "nan":
        x[0, 0, 1, 1] = x[1, 2, 4, 5] = x[1, 2, 5, 5] = np.nan
    xo = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) if layout == "channels_last" else x
    with cnnlab.no_grad():
        ours = F.max_pool2d(cnnlab.Tensor(xo), **kw)
    assert ours._ctx is None and ours.dtype == dtype
    np.testing.assert_array_equal(ours.data, TF.max_pool2d(torch.tensor(x), **kw).numpy())
    if layout == "channels_last" and x.shape[1] > 1:
        assert ours.data.strides[1] == ours.data.itemsize

# ----- average pooling -----
@pytest.mark.parametrize("padding", [0, 1], ids=["pad0", "pad1"])
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl", "excl"])
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("geom", [((2, 2, 7, 8), 3, 2), ((1, 3, 6, 7), (2, 3), (2, 1)), ((2, 1, 8, 8), 3, None)],
                         ids=["k3s2", "k23s21", "k3default"])
def test_avg_pool2d(geom, ceil_mode, count_include_pad, padding, dtype):
    xs, k, s = geom
    kw = dict(kernel_size=k, stride=s, padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    x = rand(np.random.default_rng(5), *xs)
    check_op("avg_pool2d", lambda x: F.avg_pool2d(x, **kw), lambda x: TF.avg_pool2d(x, **kw), [x], dtype)


@pytest.mark.parametrize("kw", [dict(kernel_size=2, divisor_override=3),
                                dict(kernel_size=3, stride=2, padding=1, divisor_override=5),
                                dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False,
                                     divisor_override=2)],
                         ids=["k2", "k3_pad", "ceil_excl"])
def test_avg_pool2d_divisor_override(kw, dtype):
    x = rand(np.random.default_rng(6), 2, 2, 7, 6)
    check_op("avg_pool2d", lambda x: F.avg_pool2d(x, **kw), lambda x: TF.avg_pool2d(x, **kw), [x], dtype)


def test_avg_pool2d_unbatched(dtype):
    x = rand(np.random.default_rng(7), 3, 7, 5)
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    check_op("avg_pool2d", lambda x: F.avg_pool2d(x, **kw), lambda x: TF.avg_pool2d(x, **kw), [x], dtype)


# ----- adaptive and global pooling -----
ADAPTIVE = [((2, 3, 6, 6), (3, 3)), ((2, 2, 7, 5), (3, 2)), ((1, 2, 5, 7), 4), ((2, 2, 3, 4), (5, 6)),
            ((2, 2, 6, 7), (None, 3)), ((2, 2, 6, 7), (4, None)), ((2, 3, 5, 5), 1), ((3, 6, 5), (2, 3))]
ADAPTIVE_IDS = ["divides", "uneven", "int", "upsample", "none_h", "none_w", "one", "unbatched"]


@pytest.mark.parametrize("xs,size", ADAPTIVE, ids=ADAPTIVE_IDS)
def test_adaptive_avg_pool2d(xs, size, dtype):
    x = rand(np.random.default_rng(8), *xs)
    check_op("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, size),
             lambda x: TF.adaptive_avg_pool2d(x, size), [x], dtype)


@pytest.mark.parametrize("xs,size", ADAPTIVE, ids=ADAPTIVE_IDS)
def test_adaptive_max_pool2d(xs, size, dtype):
    x = distinct(np.random.default_rng(9), *xs)
    check_op("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, size),
             lambda x: TF.adaptive_max_pool2d(x, size), [x], dtype)


@pytest.mark.parametrize("keepdim", [False, True])
def test_global_avg_pool2d(keepdim, dtype):
    x = rand(np.random.default_rng(10), 2, 3, 4, 5)
    check_op("global_avg_pool2d", lambda x: F.global_avg_pool2d(x, keepdim=keepdim),
             lambda x: TF.adaptive_avg_pool2d(x, 1).flatten(2).squeeze(-1) if not keepdim else
             TF.adaptive_avg_pool2d(x, 1), [x], dtype)


@pytest.mark.parametrize("keepdim", [False, True])
def test_global_max_pool2d(keepdim, dtype):
    x = distinct(np.random.default_rng(11), 2, 3, 4, 5)
    check_op("global_max_pool2d", lambda x: F.global_max_pool2d(x, keepdim=keepdim),
             lambda x: x.amax((2, 3), keepdim=keepdim), [x], dtype)


# ----- linear -----
@pytest.mark.parametrize("xs", [(5, 4), (4,), (2, 3, 4)], ids=["2d", "1d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear(xs, bias, dtype):
    rng = np.random.default_rng(12)
    arrays = [rand(rng, *xs), rand(rng, 3, 4)] + ([rand(rng, 3)] if bias else [])
    check_op("linear", F.linear, TF.linear, arrays, dtype)


@pytest.mark.parametrize("xs", [(64, 4), (4,), (2, 30, 4)], ids=["2d", "1d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_fused_relu_matches_torch(xs, bias, dtype):
    """relu=True: relu(linear(...)) as one op, values and gradients (each input's alone too)."""
    rng = np.random.default_rng(13)
    arrays = [rand(rng, *xs), rand(rng, 3, 4)] + ([rand(rng, 3)] if bias else [])
    ours = lambda x, w, b=None: F.linear(x, w, b, relu=True)                 # noqa: E731
    theirs = lambda x, w, b=None: torch.relu(TF.linear(x, w, b))             # noqa: E731
    out, _ = check_op("linear relu=True", ours, theirs, arrays, dtype)
    assert xs == (4,) or 0.1 < np.mean(out[0].data == 0) < 0.9
    for i in range(len(arrays)):
        check_op("linear relu=True", ours, theirs, arrays, dtype, requires_grad=[j == i for j in range(len(arrays))])


def test_linear_fused_relu_gradient_is_the_separate_relus_even_for_inf_and_nan():
    rng = np.random.default_rng(14)
    x, w, b = (rand(rng, *s).astype(np.float32) for s in ((8, 5), (6, 5), (6,)))
    results = []
    for fused in (True, False):
        ts = [cnnlab.Tensor(a, requires_grad=True) for a in (x, w, b)]
        out = F.linear(*ts, relu=True) if fused else F.relu(F.linear(*ts))
        g = np.ones(out.shape, np.float32)
        g.reshape(-1)[::3] = np.inf
        g.reshape(-1)[1::5] = np.nan
        with np.errstate(invalid="ignore"):   # inf * 0 in the mask, as in the separate ReLU
            out.backward(g)
        results.append([out.data] + [t.grad for t in ts])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ----- activations -----
def _activation_input(rng, *shape):
    """Normal values, kept away from 0 where the piecewise ops have a kink."""
    x = rand(rng, *shape)
    return np.where(np.abs(x) < 1e-3, 0.5, x)


ACTIVATIONS = {
    "relu": (F.relu, TF.relu),
    "leaky_relu": (F.leaky_relu, TF.leaky_relu),
    "leaky_relu_0.2": (lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2)),
    "elu": (F.elu, TF.elu),
    "elu_alpha0.5": (lambda x: F.elu(x, alpha=0.5), lambda x: TF.elu(x, alpha=0.5)),
    "gelu": (F.gelu, TF.gelu),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh")),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "tanh": (F.tanh, torch.tanh),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(name, dtype):
    ours, theirs = ACTIVATIONS[name]
    x = 3 * _activation_input(np.random.default_rng(13), 3, 4, 5)
    check_op(name.split("_0")[0].split("_alpha")[0], ours, theirs, [x], dtype)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "elu", "gelu", "gelu_tanh"])
def test_activation_large_inputs(name, dtype):
    """Large |x| must neither overflow nor lose the tiny tails."""
    ours, theirs = ACTIVATIONS[name]
    big = [-1000.0, -700.0, -100.0, -50.0, -30.0, -17.0, 17.0, 30.0, 50.0, 100.0, 700.0, 1000.0]
    x = np.array(big + list(np.random.default_rng(14).standard_normal(12) * 5))
    with np.errstate(over="raise", invalid="raise"):
        check_op(name, ours, theirs, [x], dtype)


def test_sigmoid_tails_keep_relative_accuracy():
    """In float64, sigmoid(-30) ~ 9.4e-14 must be accurate relative to itself, not only to 1."""
    x = np.array([-30.0, -50.0, -100.0, -700.0])
    got = F.sigmoid(cnnlab.Tensor(x)).data
    want = torch.sigmoid(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("xs,ws", [((2, 3, 4, 5), (1,)), ((2, 3, 4, 5), (3,)), ((4, 3), (3,)), ((4, 3), (1,)),
                                   ((2, 3, 5), (3,))],
                         ids=["nchw_one", "nchw_per_channel", "nc_per_channel", "nc_one", "ncl_per_channel"])
def test_prelu(xs, ws, dtype):
    rng = np.random.default_rng(15)
    arrays = [_activation_input(rng, *xs), rng.uniform(0.05, 0.5, ws)]
    check_op("prelu", F.prelu, TF.prelu, arrays, dtype)


# ----- softmax and log-softmax -----
@pytest.mark.parametrize("xs,dim", [((4, 5), 1), ((4, 5), 0), ((4, 5), -1), ((2, 3, 4), 0), ((2, 3, 4), 1),
                                    ((2, 3, 4), 2), ((2, 3, 2, 3), 1), ((2, 3, 2, 3), -2), ((6,), 0)])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax(op, xs, dim, dtype):
    x = 2 * rand(np.random.default_rng(16), *xs)
    check_op(op, lambda x: getattr(F, op)(x, dim=dim), lambda x: getattr(TF, op)(x, dim=dim), [x], dtype)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_large_logits(op, dtype):
    x = rand(np.random.default_rng(17), 3, 5) * 30 + np.array([[1000.0], [-1000.0], [0.0]])
    with np.errstate(over="raise", invalid="raise"):
        check_op(op, lambda x: getattr(F, op)(x, dim=1), lambda x: getattr(TF, op)(x, dim=1), [x], dtype)


# ----- cross-entropy and NLL -----
REDUCTIONS = ["mean", "sum", "none"]
CE_VARIANTS = {
    "plain": {},
    "weight": dict(weight=True),
    "ignore_-100": dict(ignore=-100),
    "ignore_2": dict(ignore=2, ignore_index=2),
    "smoothing": dict(label_smoothing=0.2),
    "all": dict(weight=True, ignore=-100, label_smoothing=0.15),
}


def _ce_arrays(rng, shape, variant, probabilities=False):
    c = shape[0] if len(shape) == 1 else shape[1]
    x = 2 * rand(rng, *shape)
    if probabilities:
        t = rng.uniform(0.0, 1.0, shape)
        t = t / t.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
    else:
        t_shape = () if len(shape) == 1 else (shape[0],) + shape[2:]
        t = np.asarray(rng.integers(0, c, t_shape))
        if "ignore" in variant and t.size > 1:
            t.reshape(-1)[::3] = variant["ignore"]
            t.reshape(-1)[1] = 1 if variant["ignore"] != 1 else 0  # at least one row that counts
        elif "ignore" in variant and t == variant["ignore"]:
            t = (t + 1) % c  # a single unbatched row must count, or 'mean' is 0/0
    w = rng.uniform(0.2, 2.0, c) if variant.get("weight") else None
    return x, np.asarray(t), w


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("variant", list(CE_VARIANTS))
@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 3, 3), (3, 4, 5), (5,)], ids=["NC", "NCHW", "NCL", "C"])
def test_cross_entropy_class_indices(shape, variant, reduction, dtype):
    v = CE_VARIANTS[variant]
    x, t, w = _ce_arrays(np.random.default_rng(18), shape, v)
    kw = dict(reduction=reduction, label_smoothing=v.get("label_smoothing", 0.0),
              ignore_index=v.get("ignore_index", -100))
    check_op("cross_entropy", lambda x, t: F.cross_entropy(x, t, weight=w, **kw),
             lambda x, t: TF.cross_entropy(x, t, weight=None if w is None else torch.tensor(w, dtype=x.dtype), **kw),
             [x, t], dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("variant", ["plain", "weight", "smoothing", "weight_smoothing"])
@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 3, 3), (5,)], ids=["NC", "NCHW", "C"])
def test_cross_entropy_probabilities(shape, variant, reduction, dtype):
    rng = np.random.default_rng(19)
    x, t, w = _ce_arrays(rng, shape, dict(weight="weight" in variant), probabilities=True)
    kw = dict(reduction=reduction, label_smoothing=0.1 if "smoothing" in variant else 0.0)
    check_op("cross_entropy", lambda x, t: F.cross_entropy(x, t, weight=w, **kw),
             lambda x, t: TF.cross_entropy(x, t, weight=None if w is None else torch.tensor(w, dtype=x.dtype), **kw),
             [x, t], dtype, requires_grad=[True, False])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("variant", ["plain", "weight", "ignore_-100", "ignore_2"])
@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 3, 3)], ids=["NC", "NCHW"])
def test_nll_loss(shape, variant, reduction, dtype):
    v = CE_VARIANTS[variant]
    x, t, w = _ce_arrays(np.random.default_rng(20), shape, v)
    kw = dict(reduction=reduction, ignore_index=v.get("ignore_index", -100))
    check_op("nll_loss", lambda x, t: F.nll_loss(F.log_softmax(x, dim=1), t, weight=w, **kw),
             lambda x, t: TF.nll_loss(TF.log_softmax(x, dim=1), t,
                                      weight=None if w is None else torch.tensor(w, dtype=x.dtype), **kw),
             [x, t], dtype)
    check_op("nll_loss", lambda x, t: F.nll_loss(x, t, weight=w, **kw),
             lambda x, t: TF.nll_loss(x, t, weight=None if w is None else torch.tensor(w, dtype=x.dtype), **kw),
             [x, t], dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 5)])
def test_mse_loss(shape, reduction, dtype):
    rng = np.random.default_rng(21)
    check_op("mse_loss", lambda x, t: F.mse_loss(x, t, reduction=reduction),
             lambda x, t: TF.mse_loss(x, t, reduction=reduction), [rand(rng, *shape), rand(rng, *shape)], dtype)


# ----- dropout -----
def test_dropout_p0_and_eval_are_identity(dtype):
    x = rand(np.random.default_rng(22), 3, 4)
    check_op("dropout", lambda x: F.dropout(x, 0.0), lambda x: TF.dropout(x, 0.0), [x], dtype)
    check_op("dropout", lambda x: F.dropout(x, 0.7, training=False),
             lambda x: TF.dropout(x, 0.7, training=False), [x], dtype)


def test_dropout_p1_zeroes_everything(dtype):
    x = rand(np.random.default_rng(23), 3, 4)
    check_op("dropout", lambda x: F.dropout(x, 1.0), lambda x: TF.dropout(x, 1.0), [x], dtype)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_training(p, dtype):
    rng = np.random.default_rng(24)
    x = (rng.uniform(0.5, 2.0, (200, 500)) * rng.choice([-1, 1], (200, 500))).astype(dtype)  # no zeros
    cnnlab.manual_seed(1234)
    xt = cnnlab.Tensor(x, requires_grad=True)
    out = F.dropout(xt, p)
    assert out.dtype == dtype
    dropped = out.data == 0
    n = x.size
    # the fraction of zeros is binomial(n, p): allow five standard deviations
    assert abs(dropped.mean() - p) <= 5 * np.sqrt(p * (1 - p) / n)
    tol = TOLERANCE[np.dtype(dtype)]
    kept = ~dropped
    assert rel_error(out.data[kept], x[kept] / np.array(1 - p, dtype)) <= tol
    g = rng.standard_normal(x.shape).astype(dtype)
    out.backward(g)
    assert np.all(xt.grad[dropped] == 0)
    assert rel_error(xt.grad[kept], g[kept] / np.array(1 - p, dtype)) <= tol
    # the same seed gives the same mask; another seed another one
    cnnlab.manual_seed(1234)
    again = F.dropout(cnnlab.Tensor(x), p).data
    np.testing.assert_array_equal(again, out.data)
    cnnlab.manual_seed(4321)
    other = F.dropout(cnnlab.Tensor(x), p).data
    assert not np.array_equal(other == 0, dropped)
    # two calls in a row draw fresh masks
    cnnlab.manual_seed(1234)
    F.dropout(cnnlab.Tensor(x), p)
    assert not np.array_equal(F.dropout(cnnlab.Tensor(x), p).data == 0, dropped)


def test_dropout_mean_is_preserved():
    x = np.ones((400, 500))
    cnnlab.manual_seed(7)
    out = F.dropout(cnnlab.Tensor(x), 0.3).data
    assert abs(out.mean() - 1.0) < 0.01


# ----- batch norm -----
BN_SHAPES = [(8, 3), (4, 3, 5), (3, 3, 4, 5)]
BN_IDS = ["NC", "NCL", "NCHW"]


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=BN_IDS)
def test_batch_norm_training_updates_running_stats(shape, momentum, affine, dtype):
    rng = np.random.default_rng(25)
    c = shape[1]
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2.0, c).astype(dtype)
    rm_t, rv_t = torch.tensor(rm.copy()), torch.tensor(rv.copy())
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    for step in range(3):
        x = 2 * rand(rng, *shape) + 0.5 * step
        arrays = [x] + ([gamma, beta] if affine else [])
        check_op("batch_norm", lambda x, w=None, b=None: F.batch_norm(x, rm, rv, w, b, True, momentum),
                 lambda x, w=None, b=None: TF.batch_norm(x, rm_t, rv_t, w, b, True, momentum),
                 arrays, dtype, seed=step)
        assert rm.dtype == dtype and rv.dtype == dtype
    tol = TOLERANCE[np.dtype(dtype)]
    assert rel_error(rm, rm_t.numpy()) <= tol
    assert rel_error(rv, rv_t.numpy()) <= tol


def test_batch_norm_training_without_running_stats(dtype):
    rng = np.random.default_rng(26)
    arrays = [rand(rng, 4, 3, 2, 2), rng.uniform(0.5, 1.5, 3), rand(rng, 3)]
    check_op("batch_norm", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, eps=1e-3),
             lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True, eps=1e-3), arrays, dtype)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=BN_IDS)
def test_batch_norm_eval(shape, affine, dtype):
    rng = np.random.default_rng(27)
    c = shape[1]
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2.0, c).astype(dtype)
    arrays = [rand(rng, *shape)] + ([rng.uniform(0.5, 1.5, c), rand(rng, c)] if affine else [])
    check_op("batch_norm", lambda x, w=None, b=None: F.batch_norm(x, rm.copy(), rv.copy(), w, b, False),
             lambda x, w=None, b=None: TF.batch_norm(x, torch.tensor(rm), torch.tensor(rv), w, b, False),
             arrays, dtype)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=BN_IDS)
def test_batch_norm_inference_folds_the_statistics(shape, affine, dtype):
    """Evaluation with no gradient to follow takes the folded scale-and-shift path; the
    values stay PyTorch's, also for a mean far from zero (the fold's worst case)."""
    rng = np.random.default_rng(29)
    c = shape[1]
    rm, rv = (rng.standard_normal(c) * 50).astype(dtype), rng.uniform(0.5, 2.0, c).astype(dtype)
    x = (rand(rng, *shape) + rm.reshape((1, c) + (1,) * (len(shape) - 2))).astype(dtype)
    w, b = (rng.uniform(0.5, 1.5, c).astype(dtype), rand(rng, c).astype(dtype)) if affine else (None, None)
    with cnnlab.no_grad():
        out = F.batch_norm(cnnlab.Tensor(x), rm, rv, None if w is None else cnnlab.Tensor(w),
                           None if b is None else cnnlab.Tensor(b), training=False)
    want = TF.batch_norm(torch.tensor(x), torch.tensor(rm), torch.tensor(rv),
                         None if w is None else torch.tensor(w), None if b is None else torch.tensor(b), False)
    assert out.dtype == dtype and out._ctx is None
    assert rel_error(out.data, want.numpy()) <= TOLERANCE[np.dtype(dtype)]


def test_batch_norm_eval_does_not_touch_running_stats(dtype):
    rng = np.random.default_rng(28)
    rm, rv = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2.0, 3).astype(dtype)
    before = rm.copy(), rv.copy()
    F.batch_norm(cnnlab.Tensor(rand(rng, 4, 3).astype(dtype)), rm, rv, training=False)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])


# ----- pad -----
PAD_CASES = [((2, 5, 6), (1, 2)), ((5, 6), (2, 1)), ((2, 5, 6), (1, 2, 3, 0)), ((2, 3, 5, 6), (2, 1, 0, 3)),
             ((2, 3, 4, 4), (3, 3, 3, 3)), ((1, 2, 4, 5), (0, 0, 2, 0))]
PAD_IDS = ["3d_pair", "2d_pair", "3d_quad", "4d_quad", "4d_pad_eq_size_minus1", "4d_top_only"]


@pytest.mark.parametrize("xs,pads", PAD_CASES, ids=PAD_IDS)
@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular", "symmetric"])
def test_pad(mode, xs, pads, dtype):
    x = rand(np.random.default_rng(29), *xs)
    quad = (pads + (0, 0))[:4]  # torch order: (left, right, top, bottom)
    ref_pads = (quad[2], quad[3], quad[0], quad[1])  # conftest.torch_pad order: (top, bottom, left, right)
    if mode == "symmetric":
        torch_fn = lambda x: torch_pad(x, ref_pads, "symmetric")  # noqa: E731
    elif mode != "constant" and len(xs) == 2 and len(pads) == 4:
        pytest.skip("torch pads 2-D input only in constant mode with a 4-tuple")
    else:
        torch_fn = lambda x: TF.pad(x, pads, mode=mode)  # noqa: E731
    check_op("pad", lambda x: F.pad(x, pads, mode=mode), torch_fn, [x], dtype)


def test_pad_symmetric_is_numpy_symmetric(dtype):
    x = rand(np.random.default_rng(30), 2, 3, 4, 5).astype(dtype)
    got = F.pad(cnnlab.Tensor(x), (2, 5, 4, 1), mode="symmetric").data
    np.testing.assert_array_equal(got, np.pad(x, ((0, 0), (0, 0), (4, 1), (2, 5)), mode="symmetric"))


@pytest.mark.parametrize("value", [0.0, 1.5, -2.0])
def test_pad_constant_value(value, dtype):
    x = rand(np.random.default_rng(31), 2, 3, 4)
    check_op("pad", lambda x: F.pad(x, (1, 2, 0, 3), value=value), lambda x: TF.pad(x, (1, 2, 0, 3), value=value),
             [x], dtype)
