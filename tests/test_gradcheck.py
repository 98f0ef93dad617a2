"""Every op's backward against central finite differences (cnnlab.gradcheck), float64,
tiny shapes. Max-based ops get inputs without ties, and piecewise ops inputs away from
their kinks, so the finite difference is well defined."""
import numpy as np
import pytest

import cnnlab
import cnnlab.functional as F
from cnnlab import Tensor, gradcheck
from conftest import distinct

MODES = ["zeros", "reflect", "replicate", "circular", "symmetric"]


def rand(rng, *shape):
    return rng.standard_normal(shape)


def away_from_zero(rng, *shape):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.05, 0.3, x)


def check(fn, *inputs):
    """gradcheck with every input that is an ndarray of floats differentiated; Tensors
    keep their own requires_grad (integer targets, constants)."""
    inputs = [Tensor(a, requires_grad=True) if isinstance(a, np.ndarray) else a for a in inputs]
    # tighter than gradcheck's defaults: central differences in float64 with eps 1e-6 are
    # good to ~1e-9 here, while a wrong gradient is off by O(1)
    return gradcheck(fn, inputs, atol=1e-7, rtol=1e-5)


# ----- convolution -----
CONV_CASES = {
    "stride_groups": ((1, 4, 5, 5), (4, 2, 3, 3), dict(padding=1, stride=2, groups=2)),
    "dilation_pair": ((2, 2, 5, 6), (2, 2, 2, 3), dict(padding=(2, 1), dilation=(2, 1))),
    "same_stride_depthwise": ((1, 3, 5, 4), (3, 1, 3, 3), dict(padding="same", stride=2, groups=3)),
    "same_even_kernel": ((1, 2, 4, 5), (2, 2, 2, 4), dict(padding="same")),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("mode", MODES)
def test_conv2d(mode, case):
    xs, ws, kw = CONV_CASES[case]
    rng = np.random.default_rng(0)
    check(lambda x, w, b: F.conv2d(x, w, b, padding_mode=mode, **kw), rand(rng, *xs), rand(rng, *ws), rand(rng, ws[0]))


@pytest.mark.skipif(cnnlab.kernels.jit.kernels() is None, reason="Winograd's transforms need Numba")
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("xs,padding", [((2, 3, 5, 4), 1), ((2, 2, 4, 5), 0), ((1, 2, 3, 3), 2)],
                         ids=["pad1_odd", "valid", "pad2"])
def test_conv2d_by_winograd(xs, padding, mode, monkeypatch):
    """Winograd's forward, input and weight gradients (every 3x3 stride-1 convolution
    taken that way, whatever its channels) against central differences."""
    conv = cnnlab.functional.conv
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    calls = []
    run = conv._winograd_conv
    monkeypatch.setattr(conv, "_winograd_conv", lambda *a: calls.append(1) or run(*a))
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, *xs), rand(rng, 3, xs[1], 3, 3), rand(rng, 3)
    check(lambda x, w, b: F.conv2d(x, w, b, padding=padding, padding_mode=mode), x, w, b)
    assert calls


def test_conv2d_unbatched_no_bias():
    rng = np.random.default_rng(1)
    check(lambda x, w: F.conv2d(x, w, stride=(1, 2), padding=(0, 1)), rand(rng, 2, 4, 5), rand(rng, 3, 2, 2, 2))


def test_conv2d_untied_bias():
    rng = np.random.default_rng(2)
    check(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, padding_mode="reflect"),
          rand(rng, 2, 2, 5, 4), rand(rng, 3, 2, 3, 3), rand(rng, 3, 3, 2))


def test_true_conv2d():
    rng = np.random.default_rng(3)
    check(lambda x, w, b: F.true_conv2d(x, w, b, padding=(1, 0), dilation=(1, 2), groups=2),
          rand(rng, 1, 4, 5, 6), rand(rng, 2, 2, 3, 2), rand(rng, 2))


@pytest.mark.parametrize("bias", ["untied", "none", "tied"])
@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding="same", padding_mode="symmetric"),
                                dict(dilation=(2, 1), padding=(1, 0), padding_mode="replicate")],
                         ids=["pad1", "same_symmetric", "dilation_replicate"])
def test_locally_connected2d(kw, bias):
    rng = np.random.default_rng(4)
    ho, wo = F.conv_output_size((5, 4), (3, 2), kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1))
    x, w = rand(rng, 2, 2, 5, 4), rand(rng, ho, wo, 2, 2, 3, 2)
    if bias == "none":
        check(lambda x, w: F.locally_connected2d(x, w, **kw), x, w)
    else:
        b = rand(rng, 2, ho, wo) if bias == "untied" else rand(rng, 2)
        check(lambda x, w, b: F.locally_connected2d(x, w, b, **kw), x, w, b)


def test_unfold():
    x = np.random.default_rng(5).standard_normal((2, 2, 5, 4))
    check(lambda x: F.unfold(x, (3, 2), dilation=(1, 2), padding=1, stride=(2, 1)), x)


def test_fold():
    cols = np.random.default_rng(6).standard_normal((2, 2 * 6, 3 * 4))
    check(lambda c: F.fold(c, (5, 4), (3, 2), dilation=(1, 2), padding=1, stride=(2, 1)), cols)


# ----- pooling -----
@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1),
                                dict(kernel_size=(2, 3), stride=2, padding=(1, 1), ceil_mode=True),
                                dict(kernel_size=2, stride=1, dilation=2)],
                         ids=["k2", "overlap_pad", "ceil", "dilation"])
def test_max_pool2d(kw):
    check(lambda x: F.max_pool2d(x, **kw), distinct(np.random.default_rng(7), 2, 2, 5, 6))


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                                dict(kernel_size=(2, 3), stride=1, divisor_override=4)],
                         ids=["k2", "pad", "ceil_excl", "divisor"])
def test_avg_pool2d(kw):
    check(lambda x: F.avg_pool2d(x, **kw), rand(np.random.default_rng(8), 2, 2, 5, 6))


@pytest.mark.parametrize("size", [(2, 3), (None, 4), 4])
def test_adaptive_avg_pool2d(size):
    check(lambda x: F.adaptive_avg_pool2d(x, size), rand(np.random.default_rng(9), 2, 2, 5, 3))


@pytest.mark.parametrize("size", [(2, 3), (None, 2), 3])
def test_adaptive_max_pool2d(size):
    check(lambda x: F.adaptive_max_pool2d(x, size), distinct(np.random.default_rng(10), 2, 2, 5, 4))


def test_global_pools():
    rng = np.random.default_rng(11)
    check(lambda x: F.global_avg_pool2d(x), rand(rng, 2, 3, 3, 4))
    check(lambda x: F.global_max_pool2d(x, keepdim=True), distinct(rng, 2, 3, 3, 4))


# ----- linear and activations -----
def test_linear():
    rng = np.random.default_rng(12)
    check(F.linear, rand(rng, 2, 3, 4), rand(rng, 5, 4), rand(rng, 5))


ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "elu": lambda x: F.elu(x, alpha=0.7),
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "softmax_dim1": lambda x: F.softmax(x, dim=1),
    "softmax_dim0": lambda x: F.softmax(x, dim=0),
    "log_softmax_dim1": lambda x: F.log_softmax(x, dim=1),
    "log_softmax_dim-1": lambda x: F.log_softmax(x, dim=-1),
    "dropout_seeded": lambda x: (cnnlab.manual_seed(0), F.dropout(x, 0.4))[1],  # the same mask every call
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(name):
    check(ACTIVATIONS[name], 2 * away_from_zero(np.random.default_rng(13), 2, 3, 4))


@pytest.mark.parametrize("ws", [(1,), (3,)], ids=["shared", "per_channel"])
def test_prelu_input_and_weight(ws):
    rng = np.random.default_rng(14)
    check(F.prelu, away_from_zero(rng, 2, 3, 2, 2), rng.uniform(0.1, 0.5, ws))


# ----- losses -----
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)], ids=["NC", "NCHW"])
def test_cross_entropy_indices_smoothing_weight_ignore(shape, reduction):
    rng = np.random.default_rng(15)
    t_shape = (shape[0],) + shape[2:]
    t = rng.integers(0, 3, t_shape)
    t.reshape(-1)[0] = -100
    w = rng.uniform(0.5, 2.0, 3)
    check(lambda x: F.cross_entropy(x, Tensor(t), weight=w, reduction=reduction, label_smoothing=0.2),
          rand(rng, *shape))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_probabilities(reduction):
    rng = np.random.default_rng(16)
    t = rng.uniform(size=(4, 3))
    t /= t.sum(axis=1, keepdims=True)
    check(lambda x: F.cross_entropy(x, Tensor(t), weight=np.array([0.5, 1.0, 2.0]),
                                    reduction=reduction, label_smoothing=0.1), rand(rng, 4, 3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss(reduction):
    rng = np.random.default_rng(17)
    t = np.array([0, 2, 1, 2, 1])
    check(lambda x: F.nll_loss(F.log_softmax(x, dim=1), Tensor(t), weight=np.array([0.3, 1.0, 2.0]),
                               ignore_index=1, reduction=reduction), rand(rng, 5, 3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(reduction):
    rng = np.random.default_rng(18)
    check(lambda x, t: F.mse_loss(x, t, reduction=reduction), rand(rng, 3, 4), rand(rng, 3, 4))


# ----- batch norm -----
@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 4), (2, 3, 2, 3)], ids=["NC", "NCL", "NCHW"])
def test_batch_norm_training(shape):
    rng = np.random.default_rng(19)
    check(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
          rand(rng, *shape), rng.uniform(0.5, 1.5, 3), rand(rng, 3))


def test_batch_norm_training_no_affine_with_running_stats():
    rng = np.random.default_rng(20)
    rm, rv = np.zeros(3), np.ones(3)
    check(lambda x: F.batch_norm(x, rm, rv, training=True, momentum=0.2), rand(rng, 4, 3, 2))


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 3)], ids=["NC", "NCHW"])
def test_batch_norm_eval(shape):
    rng = np.random.default_rng(21)
    rm, rv = rand(rng, 3), rng.uniform(0.5, 2.0, 3)
    check(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False),
          rand(rng, *shape), rng.uniform(0.5, 1.5, 3), rand(rng, 3))


# ----- pad -----
@pytest.mark.parametrize("pads", [(1, 2), (2, 1, 0, 3)], ids=["pair", "quad"])
@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular", "symmetric"])
def test_pad(mode, pads):
    check(lambda x: F.pad(x, pads, mode=mode), rand(np.random.default_rng(22), 2, 4, 4))


def test_gradcheck_perturbs_channels_last_inputs_where_they_lie():
    """A channels-last input's float64 copy keeps its layout; its elements are perturbed
    in place, not in a flattened copy (which left the numeric gradient at zero)."""
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 4))
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    result = cnnlab.gradcheck(lambda t: (t * t).sum(dim=1), [cnnlab.Tensor(x, requires_grad=True)])
    assert result.ok and result.max_rel_error < 1e-6
