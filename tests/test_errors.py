"""Bad arguments and inputs to cnnlab.functional.

Every user error must be a ValueError or TypeError (InputError is a ValueError) raised
where the argument enters, and its message must name the op and the argument, and give
what was expected and what was received. ``msg(...)`` turns those key parts into one
regex for ``pytest.raises(match=...)`` that needs every part, in any order.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import cnnlab
import cnnlab.functional as F
from cnnlab import Tensor
from cnnlab._errors import InputError


def msg(*parts: str) -> str:
    """A regex that matches when every part (itself a regex) occurs somewhere."""
    return "(?s)" + "".join(f"(?=.*(?:{p}))" for p in parts)


def shape(*dims) -> str:
    """The regex of a shape tuple as Python prints it: (2, 3) or (5,)."""
    return re.escape(str(tuple(dims)))


def num(n) -> str:
    """A number standing on its own: 3 but not 13 or 3.5."""
    return rf"(?<![\d.]){re.escape(str(n))}(?![\d.])"


def randn(seed, *dims, dtype=np.float32):
    return Tensor(np.random.default_rng(seed).standard_normal(dims).astype(dtype))


X = randn(0, 2, 3, 5, 5)      # N C H W
W = randn(1, 4, 3, 3, 3)      # F C KH KW


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


# ----- conv2d -----
@pytest.mark.parametrize("dims", [(5, 5), (1, 2, 3, 5, 5)], ids=["2-D", "5-D"])
def test_conv2d_wrong_rank(dims):
    with pytest.raises(ValueError, match=msg("conv2d", "input", "4-D", shape(*dims))):
        F.conv2d(randn(2, *dims), W)


def test_conv2d_wrong_channel_count():
    with pytest.raises(ValueError, match=msg("conv2d", r"\b3 channels", r"got 4\b|4 channels", shape(2, 4, 5, 5))):
        F.conv2d(randn(3, 2, 4, 5, 5), W)


def test_conv2d_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match=msg("conv2d", "kernel", num(7), num(5))):
        F.conv2d(randn(4, 1, 3, 5, 5), randn(5, 4, 3, 7, 7))
    # padding counts: a 5x5 input padded by 1 is 7 wide, still too small for 9
    with pytest.raises(ValueError, match=msg("conv2d", "kernel", num(9), num(7))):
        F.conv2d(randn(4, 1, 3, 5, 5), randn(5, 4, 3, 9, 9), padding=1)


@pytest.mark.parametrize("arg", ["stride", "dilation"])
def test_conv2d_stride_and_dilation_must_be_positive(arg):
    with pytest.raises(ValueError, match=msg("conv2d", arg, "positive", r"got \(?0")):
        F.conv2d(X, W, **{arg: 0})
    with pytest.raises(ValueError, match=msg("conv2d", arg, "positive", re.escape("(1, 0)"))):
        F.conv2d(X, W, **{arg: (1, 0)})


def test_conv2d_negative_padding():
    with pytest.raises(ValueError, match=msg("conv2d", "padding", "non-negative", num(-1))):
        F.conv2d(X, W, padding=-1)


def test_conv2d_padding_bad_string():
    with pytest.raises(ValueError, match=msg("conv2d", "padding", "'same'", "'valid'", "'full'")):
        F.conv2d(X, W, padding="full")


def test_conv2d_reflect_padding_not_smaller_than_input():
    x = randn(6, 1, 3, 4, 6)
    with pytest.raises(ValueError, match=msg("conv2d", "reflect", "padding", "height", num(4))):
        F.conv2d(x, W, padding=(4, 1), padding_mode="reflect")
    with pytest.raises(ValueError, match=msg("conv2d", "reflect", "padding", "width", num(6))):
        F.conv2d(x, W, padding=(1, 6), padding_mode="reflect")


def test_conv2d_circular_padding_larger_than_input():
    x = randn(7, 1, 3, 3, 3)
    with pytest.raises(ValueError, match=msg("conv2d", "circular", "padding", num(4), num(3))):
        F.conv2d(x, W, padding=4, padding_mode="circular")
    F.conv2d(x, W, padding=3, padding_mode="circular")  # a full wrap-around is allowed


def test_conv2d_unknown_padding_mode():
    with pytest.raises(ValueError, match=msg("conv2d", "padding_mode", "'mirror'", "'zeros'", "'reflect'", "'circular'")):
        F.conv2d(X, W, padding=1, padding_mode="mirror")


def test_conv2d_same_with_reflect_on_a_small_input():
    # 'same' with a 5x5 kernel pads 2 on each side; reflect needs padding < 2
    with pytest.raises(ValueError, match=msg("conv2d", "same", "reflect", num(2))):
        F.conv2d(randn(8, 1, 3, 2, 2), randn(9, 4, 3, 5, 5), padding="same", padding_mode="reflect")


def test_conv2d_groups_not_dividing_channels():
    # weight (6, 2, ...) with groups=3 needs 6 input channels
    with pytest.raises(ValueError, match=msg("conv2d", r"groups\W*3", r"\b6 channels", r"got 4\b|4 channels")):
        F.conv2d(randn(10, 1, 4, 5, 5), randn(11, 6, 2, 3, 3), groups=3)


def test_conv2d_groups_not_dividing_filters():
    with pytest.raises(ValueError, match=msg("conv2d", "groups", "divisible", num(4), num(3))):
        F.conv2d(randn(12, 1, 6, 5, 5), randn(13, 4, 2, 3, 3), groups=3)


def test_conv2d_groups_must_be_positive():
    with pytest.raises(ValueError, match=msg("conv2d", "groups", "positive", num(0))):
        F.conv2d(X, W, groups=0)


def test_conv2d_bias_of_wrong_shape():
    with pytest.raises(ValueError, match=msg("conv2d", "bias", shape(4), shape(5))):
        F.conv2d(X, W, bias=randn(14, 5))


def test_conv2d_weight_of_wrong_rank():
    with pytest.raises(ValueError, match=msg("conv2d", "weight", "4-D", shape(4, 3, 3))):
        F.conv2d(X, randn(15, 4, 3, 3))


def test_conv2d_integer_input():
    x = Tensor(np.ones((1, 3, 5, 5), dtype=np.int64))
    with pytest.raises((TypeError, ValueError), match=msg("conv2d", "input", "float", "int64")):
        F.conv2d(x, W)


def test_conv2d_dtype_mismatch():
    with pytest.raises((TypeError, ValueError), match=msg("conv2d", "input", "weight", "float32", "float64")):
        F.conv2d(X, randn(16, 4, 3, 3, 3, dtype=np.float64))


def test_conv2d_list_input_is_a_type_error():
    with pytest.raises(TypeError, match=msg("conv2d", "input", "list")):
        F.conv2d(X.data.tolist(), W)


def test_conv2d_stride_of_wrong_type():
    with pytest.raises(TypeError, match=msg("conv2d", "stride", "int", "1.5")):
        F.conv2d(X, W, stride=1.5)


# ----- pooling -----
POOLS = {"max_pool2d": F.max_pool2d, "avg_pool2d": F.avg_pool2d}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_padding_more_than_half_the_kernel(name):
    with pytest.raises(ValueError, match=msg(name, "padding", "kernel_size", "half", num(2), num(3))):
        POOLS[name](X, 3, padding=2)


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_kernel_larger_than_input(name):
    with pytest.raises(ValueError, match=msg(name, "kernel_size", shape(7, 7), shape(5, 5))):
        POOLS[name](X, 7)


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_stride_zero(name):
    with pytest.raises(ValueError, match=msg(name, "stride", "positive", r"got \(?0")):
        POOLS[name](X, 2, stride=0)


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_wrong_rank(name):
    with pytest.raises(ValueError, match=msg(name, "input", "4-D", shape(5, 5))):
        POOLS[name](randn(17, 5, 5), 2)


@pytest.mark.parametrize("name", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
@pytest.mark.parametrize("size", [0, (0, 2), (2, -1)], ids=str)
def test_adaptive_pool_output_size_not_positive(name, size):
    with pytest.raises(ValueError, match=msg(name, "output_size", "positive", re.escape(repr(size)))):
        getattr(F, name)(X, size)


@pytest.mark.parametrize("name", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
def test_adaptive_pool_output_size_not_int(name):
    with pytest.raises(TypeError, match=msg(name, "output_size", "int", re.escape("2.5"))):
        getattr(F, name)(X, (2.5, 2))


# ----- losses -----
LOGITS = randn(20, 4, 3)
TARGET = Tensor(np.array([0, 2, 1, 1]))


@pytest.mark.parametrize("bad", [5, 3, -1])
def test_cross_entropy_target_out_of_range(bad):
    target = Tensor(np.array([0, 1, bad, 2]))
    with pytest.raises(ValueError, match=msg("cross_entropy", "target", r"\[0, 2\]|< ?3|3 classes", rf"got {bad}\b")):
        F.cross_entropy(LOGITS, target)


def test_cross_entropy_target_of_wrong_shape():
    with pytest.raises(ValueError, match=msg("cross_entropy", "target", shape(4), shape(5), shape(4, 3))):
        F.cross_entropy(LOGITS, Tensor(np.zeros(5, dtype=np.int64)))


def test_cross_entropy_probability_target_of_wrong_shape():
    with pytest.raises(ValueError, match=msg("cross_entropy", "target", shape(4, 3), shape(4, 2))):
        F.cross_entropy(LOGITS, randn(21, 4, 2))


@pytest.mark.parametrize("fn", [F.cross_entropy, F.nll_loss], ids=["cross_entropy", "nll_loss"])
def test_loss_bad_reduction(fn):
    with pytest.raises(ValueError, match=msg(fn.__name__, "reduction", "'avg'", "'mean'", "'sum'", "'none'")):
        fn(LOGITS, TARGET, reduction="avg")


@pytest.mark.parametrize("eps", [1.5, -0.1])
def test_cross_entropy_label_smoothing_out_of_range(eps):
    with pytest.raises(ValueError, match=msg("cross_entropy", "label_smoothing", r"\[0, 1\]", re.escape(repr(eps)))):
        F.cross_entropy(LOGITS, TARGET, label_smoothing=eps)


def test_cross_entropy_weight_of_wrong_length():
    with pytest.raises(ValueError, match=msg("cross_entropy", "weight", shape(3), shape(4))):
        F.cross_entropy(LOGITS, TARGET, weight=randn(22, 4))


def test_nll_loss_float_target():
    with pytest.raises((TypeError, ValueError), match=msg("nll_loss", "target", "int", "float32")):
        F.nll_loss(LOGITS, randn(23, 4))


def test_nll_loss_target_out_of_range():
    with pytest.raises(ValueError, match=msg("nll_loss", "target", r"\[0, 2\]|< ?3|3 classes", r"got 7\b")):
        F.nll_loss(LOGITS, Tensor(np.array([0, 7, 1, 1])))


def test_mse_loss_shape_mismatch():
    with pytest.raises(ValueError, match=msg("mse_loss", shape(4, 3), shape(3, 4))):
        F.mse_loss(LOGITS, randn(24, 3, 4))


# ----- batch norm, dropout -----
@pytest.mark.parametrize("dims", [(1, 3), (1, 3, 1, 1)], ids=str)
def test_batch_norm_one_value_per_channel_in_training(dims):
    with pytest.raises(ValueError, match=msg("batch_norm", "more than 1", shape(*dims))):
        F.batch_norm(randn(25, *dims), None, None, training=True)


@pytest.mark.parametrize("arg", ["running_mean", "running_var", "weight", "bias"])
def test_batch_norm_parameter_of_wrong_shape(arg):
    args = {"running_mean": randn(26, 3), "running_var": Tensor(np.ones(3, np.float32))}
    args[arg] = Tensor(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=msg("batch_norm", arg, shape(3), shape(4))):
        F.batch_norm(X, args.pop("running_mean"), args.pop("running_var"), **args)


def test_batch_norm_running_stats_as_a_list():
    with pytest.raises((TypeError, ValueError), match=msg("batch_norm", "running_mean", "list")):
        F.batch_norm(X, [0.0, 0.0, 0.0], Tensor(np.ones(3, np.float32)))


@pytest.mark.parametrize("p", [1.5, -0.1])
def test_dropout_p_out_of_range(p):
    with pytest.raises(ValueError, match=msg("dropout", r"\bp\b", r"\[0, 1\]", re.escape(repr(p)))):
        F.dropout(X, p)


# ----- pad, fold, locally connected -----
def test_pad_bad_mode():
    with pytest.raises(ValueError, match=msg(r"\bpad\b", "mode", "'wrap'", "'constant'", "'reflect'")):
        F.pad(X, (1, 1), mode="wrap")


def test_pad_reflect_too_large():
    x = randn(27, 1, 1, 3, 4)
    with pytest.raises(ValueError, match=msg(r"\bpad\b", "reflect", "height", num(3))):
        F.pad(x, (1, 1, 3, 0), mode="reflect")
    with pytest.raises(ValueError, match=msg(r"\bpad\b", "reflect", "width", num(4))):
        F.pad(x, (0, 4), mode="reflect")


def test_pad_bad_pad_length():
    with pytest.raises(ValueError, match=msg(r"\bpad\b", "2 or 4", re.escape("(1, 1, 1)"))):
        F.pad(X, (1, 1, 1))


@pytest.mark.parametrize("dims", [(1, 4, 8), (1, 5, 9)], ids=str)
def test_fold_wrong_number_of_blocks(dims):
    # output 4x4, kernel 2, stride 1: 3x3 = 9 blocks of C*4 values
    with pytest.raises(ValueError, match=msg("fold", num(9), shape(*dims))):
        F.fold(randn(28, *dims), output_size=4, kernel_size=2)


def test_locally_connected2d_output_grid_mismatch():
    weight = randn(29, 3, 3, 4, 2, 3, 3)          # built for a 5x5 input
    grid = lambda n: rf"{n}\s*x\s*{n}|\({n}, {n}\)"  # noqa: E731
    with pytest.raises(ValueError, match=msg("locally_connected2d", "weight", grid(3), grid(4), shape(6, 6))):
        F.locally_connected2d(randn(30, 1, 2, 6, 6), weight)


# ----- softmax, linear -----
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [2, -3])
def test_softmax_dim_out_of_range(name, dim):
    with pytest.raises(ValueError, match=msg(name, "dim", num(dim), r"2-D|\[-2, 1\]")):
        getattr(F, name)(LOGITS, dim=dim)


def test_linear_mismatched_in_features():
    with pytest.raises(ValueError, match=msg("linear", "in_features", num(5), shape(2, 3))):
        F.linear(randn(31, 2, 3), randn(32, 4, 5))


def test_linear_bias_of_wrong_shape():
    with pytest.raises(ValueError, match=msg("linear", "bias", shape(4), shape(5))):
        F.linear(randn(33, 2, 3), randn(34, 4, 3), randn(35, 5))


def test_conv_settings_are_checked_on_every_call_even_after_the_same_shapes_passed():
    """conv2d keeps the geometry of settings and shapes that passed its checks; any
    setting in another form, and any other shape, is checked afresh."""
    x, w = np.zeros((1, 2, 6, 6), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    assert F.conv2d(x, w, stride=(1, 1), padding=1).shape == (1, 3, 6, 6)
    assert F.conv2d(x, w, stride=(1, 1), padding=1).shape == (1, 3, 6, 6)
    with pytest.raises(TypeError, match="stride must be an int or a pair of ints"):
        F.conv2d(x, w, stride=(True, 1), padding=1)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        F.conv2d(x, w, padding=1, groups=True)
    with pytest.raises(ValueError, match="expected input with 2 channels"):
        F.conv2d(np.zeros((1, 4, 6, 6), np.float32), w, stride=(1, 1), padding=1)
    with pytest.raises(ValueError, match="kernel height 3 is larger than the padded input height 2"):
        F.conv2d(np.zeros((1, 2, 2, 6), np.float32), w, stride=(1, 1))
