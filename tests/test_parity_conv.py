"""conv2d, true_conv2d, unfold/fold and locally_connected2d against PyTorch, values and
gradients (input, weight and bias), in float64 and float32."""
import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import cnnlab
import cnnlab.functional as F
from conftest import TOLERANCE, check_op, rel_error, tf_same_pads, torch_pad


def rand(rng, *shape):
    return rng.standard_normal(shape)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def torch_conv_ref(x, w, b, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Explicit padding in the given mode, then torch conv2d with padding 0."""
    stride, dilation = _pair(stride), _pair(dilation)
    if padding == "same":
        pads = tf_same_pads(x.shape[-2:], w.shape[-2:], stride, dilation)
    elif padding == "valid":
        pads = (0, 0, 0, 0)
    else:
        ph, pw = _pair(padding)
        pads = (ph, ph, pw, pw)
    return TF.conv2d(torch_pad(x, pads, padding_mode), w, b, stride, 0, dilation, groups)


# ----- conv2d: geometry sweep -----
# id: (x shape, weight shape, kwargs)
GEOMETRY = {
    "basic": ((2, 3, 7, 7), (4, 3, 3, 3), {}),
    "stride2": ((2, 3, 8, 8), (4, 3, 3, 3), dict(stride=2)),
    "stride_pair": ((2, 2, 9, 7), (3, 2, 3, 3), dict(stride=(2, 3), padding=1)),
    "pad_not_dividing": ((2, 2, 8, 7), (3, 2, 3, 3), dict(stride=2, padding=(1, 2))),
    "stride3_pad2": ((1, 2, 10, 11), (2, 2, 4, 4), dict(stride=3, padding=2)),
    "nonsquare_kernel": ((2, 2, 7, 8), (3, 2, 2, 5), dict(padding=(1, 2))),
    "nonsquare_kernel_stride": ((2, 3, 9, 6), (2, 3, 1, 3), dict(stride=(1, 2), padding=(0, 1))),
    "dilation2": ((2, 2, 9, 9), (3, 2, 3, 3), dict(dilation=2, padding=2)),
    "dilation_pair_stride": ((1, 3, 10, 9), (2, 3, 3, 2), dict(dilation=(2, 3), stride=(2, 1), padding=(1, 0))),
    "groups2": ((2, 4, 6, 6), (6, 2, 3, 3), dict(groups=2, padding=1)),
    "groups3_stride_dil": ((2, 6, 9, 8), (3, 2, 3, 2), dict(groups=3, stride=2, dilation=(1, 2), padding=(2, 1))),
    "depthwise": ((2, 4, 6, 6), (4, 1, 3, 3), dict(groups=4, padding=1)),
    "depthwise_multiplier": ((2, 3, 6, 5), (6, 1, 3, 3), dict(groups=3, stride=2)),
    "batch1": ((1, 3, 5, 6), (2, 3, 3, 3), dict(padding=1)),
    "one_channel": ((3, 1, 6, 6), (2, 1, 3, 3), {}),
    "one_channel_one_filter": ((2, 1, 5, 5), (1, 1, 2, 2), dict(stride=2, padding=1)),
    "pointwise": ((2, 3, 5, 5), (4, 3, 1, 1), {}),
    "kernel_is_input": ((2, 2, 4, 3), (3, 2, 4, 3), {}),
    "padding_larger_than_kernel": ((2, 2, 4, 4), (2, 2, 2, 2), dict(padding=3)),
    "one_pixel": ((2, 3, 1, 1), (2, 3, 1, 1), {}),
}


@pytest.fixture(params=["auto", "planes+taps", "planes+taps, NumPy col2im", "windows+gather",
                        "windows+gather, full im2col", "windows+Winograd"])
def layout(request, monkeypatch):
    """The automatic choices, then each im2col layout (forward and weight gradient) and
    each stride-1 input-gradient method forced, stride 1 both by kernel rows (which the
    automatic choice leaves to larger outputs than these) and by the full im2col (the gather as it
    runs without Numba; with Numba, col2im takes over there), so every kernel path is
    checked against PyTorch on every geometry whatever the choice rules pick for it; the
    taps' scatter-add both compiled (with Numba) and in NumPy, and few-channel products
    both per image and per block; and Winograd (with Numba) for every 3x3 stride-1
    convolution of one group and no dilation, whatever its channels."""
    conv = cnnlab.functional.conv
    # inference plans choose their path when built: none built under another test's choice
    monkeypatch.setattr(conv._InferencePlan, "_local", threading.local())
    if request.param.endswith("Winograd"):
        if cnnlab.kernels.jit.kernels() is None:
            pytest.skip("Winograd's transforms need Numba")
        monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    if request.param != "auto":
        planes = request.param.startswith("planes")
        monkeypatch.setattr(conv, "_planes", lambda kw, cg, wo: planes)
        monkeypatch.setattr(conv, "_gather_dx", lambda c, f, groups: not planes)
    if request.param.endswith("NumPy col2im") or request.param.endswith("full im2col"):
        monkeypatch.setattr(conv, "_col2im_kernels", lambda dtype, groups: None)
    if request.param.endswith("NumPy col2im"):  # and one product per block, not per image
        monkeypatch.setattr(conv, "_per_image", lambda *args: False)
    if request.param.endswith("full im2col"):
        monkeypatch.setattr(conv, "_by_rows", lambda *args: False)
    elif request.param != "auto":
        monkeypatch.setattr(conv, "ROW_PRODUCT_MIN_VALUES", 0)
    return request.param


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", list(GEOMETRY))
def test_conv2d_geometry(case, bias, dtype, layout):
    xs, ws, kw = GEOMETRY[case]
    rng = np.random.default_rng(1)
    arrays = [rand(rng, *xs), rand(rng, *ws)] + ([rand(rng, ws[0])] if bias else [])
    check_op("conv2d", lambda x, w, b=None: F.conv2d(x, w, b, **kw),
             lambda x, w, b=None: TF.conv2d(x, w, b, **kw), arrays, dtype)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", ["basic", "stride2", "groups3_stride_dil", "depthwise", "one_channel", "pointwise",
                                  "padding_larger_than_kernel"])
def test_conv2d_fused_relu_matches_torch(case, bias, dtype, layout):
    """relu=True: the ReLU applied inside the convolution's blocks, and its gradient
    masked inside backward's, on every kernel path; a good share of the outputs are cut to 0."""
    xs, ws, kw = GEOMETRY[case]
    rng = np.random.default_rng(11)
    arrays = [rand(rng, *xs), rand(rng, *ws)] + ([rand(rng, ws[0])] if bias else [])
    out, _ = check_op("conv2d relu=True", lambda x, w, b=None: F.conv2d(x, w, b, relu=True, **kw),
                      lambda x, w, b=None: torch.relu(TF.conv2d(x, w, b, **kw)), arrays, dtype)
    assert 0.1 < np.mean(out[0].data == 0) < 0.9
    for flags in ([True, False] + [False] * bias, [False, True] + [False] * bias):
        check_op("conv2d relu=True", lambda x, w, b=None: F.conv2d(x, w, b, relu=True, **kw),
                 lambda x, w, b=None: torch.relu(TF.conv2d(x, w, b, **kw)), arrays, dtype, requires_grad=flags)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
@pytest.mark.parametrize("case", ["basic", "stride2", "groups3_stride_dil", "one_channel", "padding_larger_than_kernel"])
def test_conv2d_residual_matches_torch(case, relu, dtype, layout):
    """residual=r: relu(conv2d(x) + r) (or conv2d(x) + r), r added inside the blocks, on
    every kernel path, with r's gradient (through the ReLU's mask) alongside the others."""
    xs, ws, kw = GEOMETRY[case]
    rng = np.random.default_rng(14)
    out_shape = tuple(TF.conv2d(torch.zeros(xs), torch.zeros(ws), **kw).shape)
    arrays = [rand(rng, *xs), rand(rng, *ws), rand(rng, ws[0]), rand(rng, *out_shape)]
    act = torch.relu if relu else (lambda t: t)
    out, _ = check_op("conv2d residual", lambda x, w, b, r: F.conv2d(x, w, b, relu=relu, residual=r, **kw),
                      lambda x, w, b, r: act(TF.conv2d(x, w, b, **kw) + r), arrays, dtype)
    if relu:
        assert 0.1 < np.mean(out[0].data == 0) < 0.9
    for flags in ([False, False, False, True], [True, False, False, False]):
        check_op("conv2d residual", lambda x, w, b, r: F.conv2d(x, w, b, relu=relu, residual=r, **kw),
                 lambda x, w, b, r: act(TF.conv2d(x, w, b, **kw) + r), arrays, dtype, requires_grad=flags)


def test_conv2d_residual_is_the_separate_sum_bit_for_bit():
    """The fused sum rounds as conv2d(...) + residual, then the ReLU, do."""
    rng = np.random.default_rng(15)
    x, w, b = (rand(rng, *s).astype(np.float32) for s in ((2, 4, 9, 9), (4, 4, 3, 3), (4,)))
    r = rand(rng, 2, 4, 9, 9).astype(np.float32)
    fused = F.conv2d(x, w, b, padding=1, relu=True, residual=r)
    np.testing.assert_array_equal(fused.data, F.relu(F.conv2d(x, w, b, padding=1) + r).data)
    unbatched = F.conv2d(x[0], w, b, padding=1, residual=r[0])
    np.testing.assert_array_equal(unbatched.data, (F.conv2d(x[:1], w, b, padding=1) + r[:1]).data[0])


@pytest.mark.parametrize("shape,dtype", [((2, 4, 8, 8), np.float32), ((2, 4, 9, 9), np.float64),
                                         ((4, 9, 9), np.float32)])
def test_conv2d_residual_must_have_the_outputs_shape_and_dtype(shape, dtype):
    x, w = np.zeros((2, 4, 9, 9), np.float32), np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv2d: residual must have the output's shape \(2, 4, 9, 9\)"):
        F.conv2d(x, w, padding=1, residual=np.zeros(shape, dtype))


def _plans_run(monkeypatch):
    """A list that grows by one for every convolution run through an inference plan."""
    plan = cnnlab.functional.conv._InferencePlan
    calls, call = [], plan.__call__
    monkeypatch.setattr(plan, "__call__", lambda self, *a: calls.append(1) or call(self, *a))
    return calls


@pytest.mark.parametrize("case", list(GEOMETRY))
def test_conv2d_inference_plan_matches_torch_and_the_blocks(case, dtype, layout, monkeypatch):
    """With no gradient to follow, a batch of one runs through a kept plan (where groups
    and padding allow): PyTorch's output on every kernel path, with and without a bias,
    residual and ReLU, on the first call and the next, and the blocks' output to an ulp
    or so (the bias is summed inside the first product, whose columns lie one wider)."""
    xs, ws, kw = GEOMETRY[case]
    rng = np.random.default_rng(16)
    x, w, b = (rand(rng, *s).astype(dtype) for s in ((1,) + xs[1:], ws, ws[:1]))
    r = rand(rng, *TF.conv2d(torch.zeros((1,) + xs[1:]), torch.zeros(ws), **kw).shape).astype(dtype)
    plans = _plans_run(monkeypatch)
    for bias, relu, residual in ((b, False, None), (b, True, r), (None, True, r), (None, False, None)):
        with cnnlab.no_grad():
            planned = [F.conv2d(x, w, bias, relu=relu, residual=residual, **kw).data for _ in range(2)]
        blocks = F.conv2d(cnnlab.Tensor(x, requires_grad=True), w, bias, relu=relu, residual=residual, **kw).data
        # to an ulp or so; by Winograd, the blocks round differently from the plan's direct
        # sums (F(4x4, 3x3) in float32: a few 1e-6 of the largest value)
        close = (1e-5 if layout.endswith("Winograd") else 1e-6) if dtype == np.float32 else 1e-14
        for out in planned:
            assert rel_error(out, blocks) < close
        want = TF.conv2d(torch.tensor(x), torch.tensor(w), None if bias is None else torch.tensor(b), **kw)
        want = want + (0 if residual is None else torch.tensor(r))
        want = (torch.relu(want) if relu else want).numpy()
        assert rel_error(planned[0], want) < TOLERANCE[np.dtype(dtype)]
    assert len(plans) == (0 if kw.get("groups", 1) > 1 else 8)


@pytest.mark.parametrize("case", list(GEOMETRY))
def test_conv2d_without_gradient_is_the_forward_with_one_bit_for_bit(case, layout):
    """With no backward to follow, batches pad into workspaces (or are read where they lie)
    instead of into a padded copy kept for backward: the same output, to the bit, for
    channels-first and channels-last inputs, in every padding mode."""
    xs, ws, kw = GEOMETRY[case]
    rng = np.random.default_rng(19)
    x, w, b = (rand(rng, *s).astype(np.float32) for s in ((3,) + xs[1:], ws, ws[:1]))
    for mode in ("zeros", "reflect"):
        if mode == "reflect" and max(kw.get("padding", 0) if isinstance(kw.get("padding", 0), int)
                                     else max(kw["padding"]), 0) >= min(xs[2:]):
            continue
        for xin in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
            with cnnlab.no_grad():
                free = F.conv2d(xin, w, b, padding_mode=mode, **kw).data
            kept = F.conv2d(cnnlab.Tensor(xin, requires_grad=True), w, b, padding_mode=mode, **kw).data
            np.testing.assert_array_equal(free, kept)


def test_conv2d_inference_plan_gives_fresh_outputs_and_keeps_inputs(monkeypatch):
    rng = np.random.default_rng(17)
    x1, x2 = rand(rng, 1, 4, 9, 9).astype(np.float32), rand(rng, 1, 4, 9, 9).astype(np.float32)
    w, b = rand(rng, 5, 4, 3, 3).astype(np.float32), rand(rng, 5, 9, 9).astype(np.float32)   # untied bias
    kept = x1.copy(), w.copy(), b.copy()
    plans = _plans_run(monkeypatch)
    with cnnlab.no_grad():
        first = F.conv2d(x1, w, b, padding=1)
        copy = first.data.copy()
        second = F.conv2d(x2, w, b, padding=1)
    assert len(plans) == 2 and not np.shares_memory(first.data, second.data)
    np.testing.assert_array_equal(first.data, copy)
    for a, k in zip((x1, w, b), kept):
        np.testing.assert_array_equal(a, k)
    np.testing.assert_allclose(first.data, TF.conv2d(torch.tensor(x1), torch.tensor(w), padding=1).numpy() + b,
                               rtol=1e-5, atol=1e-5)


def test_conv2d_inference_plan_relu_is_numpys_maximum_bit_for_bit(monkeypatch):
    """The plan's ReLU (max against an array of zeros) keeps NaN and zeros as
    np.maximum(y, 0) does."""
    x = np.zeros((1, 2, 6, 6), np.float32)
    x[0, 0, 1, 1], x[0, 1, 4, 2], x[0, 0, 4, 4] = np.nan, 3.0, -2.0
    w = -np.ones((3, 2, 3, 3), np.float32)
    plans = _plans_run(monkeypatch)
    with cnnlab.no_grad():
        pre, post = F.conv2d(x, w, padding=1).data, F.conv2d(x, w, padding=1, relu=True).data
    assert len(plans) == 2 and np.isnan(pre).any() and (pre == 0).any() and (pre < 0).any() and (pre > 0).any()
    np.testing.assert_array_equal(post.view(np.uint32), np.maximum(pre, 0).view(np.uint32))


def test_conv2d_inference_plans_are_per_thread_and_bounded(monkeypatch):
    """Threads running inference at once each write their own plans' buffers; plans
    beyond THREAD_BYTES push out the oldest, and too large ones are never built."""
    conv = cnnlab.functional.conv
    rng = np.random.default_rng(18)
    w = rand(rng, 6, 3, 3, 3).astype(np.float32)
    inputs = [rand(rng, 1, 3, 12, 12).astype(np.float32) for _ in range(8)]
    want = [TF.conv2d(torch.tensor(x), torch.tensor(w), padding=1).numpy() for x in inputs]
    errors = []

    def infer(k):
        with cnnlab.no_grad():
            for i in range(200):
                j = (i + k) % len(inputs)
                if rel_error(F.conv2d(inputs[j], w, padding=1).data, want[j]) > 1e-5:
                    errors.append((k, i))

    threads = [threading.Thread(target=infer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    monkeypatch.setattr(conv._InferencePlan, "_local", threading.local())
    with cnnlab.no_grad():
        F.conv2d(np.ones((1, 3, 9, 9), np.float32), w, padding=1)
        size = conv._InferencePlan._local.held
        monkeypatch.setattr(conv._InferencePlan, "THREAD_BYTES", 3 * size)
        for n in range(5, 10):
            F.conv2d(np.ones((1, 3, n, n), np.float32), w, padding=1)
    local = conv._InferencePlan._local
    assert local.held == sum(p.nbytes for p in local.plans.values()) <= 3 * size
    shapes = [key[0] for key in local.plans]
    assert len(shapes) < 6 and shapes[-1] == (1, 3, 9, 9) and shapes == sorted(shapes)   # the oldest went first
    monkeypatch.setattr(conv._InferencePlan, "PLAN_BYTES", 0)
    monkeypatch.setattr(conv._InferencePlan, "KEEP", 3)
    plans = _plans_run(monkeypatch)
    with cnnlab.no_grad():
        out = F.conv2d(inputs[0], w, padding=1).data
        for n in range(10, 20):   # shapes found too large are remembered, but only so many
            F.conv2d(np.ones((1, 3, n, n), np.float32), w, padding=1)
    assert not plans and rel_error(out, want[0]) < 1e-5 and len(local.plans) <= 3


@pytest.mark.parametrize("n,hw,filters", [(1, (7, 7), 6), (1, (28, 28), 6), (2, (64, 64), 6), (2, (60, 61), 6),
                                          (1, (70, 75), 7), (2, (6, 6), 300)])
def test_conv2d_bias_of_few_filters_matches_torch(n, hw, filters, dtype):
    """The bias of few filters is added to large outputs along rows of k*F values (k
    from 64 down to 1 as the positions allow); small outputs and 300 filters take the
    plain add."""
    rng = np.random.default_rng(12)
    arrays = [rand(rng, n, 2, *hw), rand(rng, filters, 2, 3, 3), rand(rng, filters)]
    check_op("conv2d", lambda x, w, b: F.conv2d(x, w, b, padding=1),
             lambda x, w, b: TF.conv2d(x, w, b, padding=1), arrays, dtype)


@pytest.mark.parametrize("xs,ws,kw", [((0, 1, 28, 28), (6, 1, 5, 5), dict(padding=2)),      # planes, per image
                                      ((0, 6, 14, 14), (16, 6, 5, 5), {}),                  # by rows, col2im
                                      ((0, 16, 8, 8), (16, 16, 3, 3), dict(padding=1)),     # by rows, gather
                                      ((0, 4, 9, 9), (8, 4, 3, 3), dict(stride=2, padding=1))])
def test_conv2d_on_an_empty_batch(xs, ws, kw, layout):
    """An empty batch (an empty last batch, an empty selection) gives an empty output and
    zero weight and bias gradients on every kernel path, as in PyTorch."""
    x = cnnlab.Tensor(np.zeros(xs, np.float32), requires_grad=True)
    w = cnnlab.Tensor(np.ones(ws, np.float32), requires_grad=True)
    b = cnnlab.Tensor(np.ones(ws[0], np.float32), requires_grad=True)
    out = F.conv2d(x, w, b, relu=True, **kw)
    want = TF.conv2d(torch.zeros(xs), torch.ones(ws), torch.ones(ws[0]), **kw)
    assert out.shape == tuple(want.shape)
    out.sum().backward()
    assert x.grad.shape == xs and not w.grad.any() and not b.grad.any()


@pytest.mark.parametrize("case", ["basic", "stride2", "one_channel"])
def test_conv2d_fused_relu_gradient_is_the_separate_relus_even_for_inf_and_nan(case, layout):
    """relu=True gives exactly relu(conv2d(...))'s output and gradients, also where the
    upstream gradient is inf or NaN."""
    xs, ws, kw = GEOMETRY[case]
    rng = np.random.default_rng(13)
    x, w = rand(rng, *xs).astype(np.float32), rand(rng, *ws).astype(np.float32)
    results = []
    for fused in (True, False):
        xt, wt = cnnlab.Tensor(x, requires_grad=True), cnnlab.Tensor(w, requires_grad=True)
        out = F.conv2d(xt, wt, relu=True, **kw) if fused else F.relu(F.conv2d(xt, wt, **kw))
        g = np.ones(out.shape, np.float32)
        g.reshape(-1)[::3] = np.inf
        g.reshape(-1)[1::5] = np.nan
        with np.errstate(invalid="ignore"):   # inf * 0 in the mask, as in the separate ReLU
            out.backward(g)
        results.append((out.data, xt.grad, wt.grad))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_conv2d_bias_dtype_must_match_the_input():
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="input dtype float32 and bias dtype float64 differ"):
        F.conv2d(x, w, np.zeros(3))


def test_conv2d_large_values_keep_relative_accuracy(dtype):
    rng = np.random.default_rng(2)
    arrays = [1e3 * rand(rng, 2, 3, 6, 6), rand(rng, 4, 3, 3, 3), rand(rng, 4)]
    check_op("conv2d", lambda x, w, b: F.conv2d(x, w, b, padding=1),
             lambda x, w, b: TF.conv2d(x, w, b, padding=1), arrays, dtype)


def test_conv2d_unbatched(dtype):
    rng = np.random.default_rng(3)
    arrays = [rand(rng, 3, 7, 6), rand(rng, 4, 3, 3, 2), rand(rng, 4)]
    out, _ = check_op("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
                      lambda x, w, b: TF.conv2d(x, w, b, stride=2, padding=1), arrays, dtype)
    assert out[0].shape == (4, 4, 4)


def test_conv2d_unbatched_groups_same(dtype):
    rng = np.random.default_rng(4)
    arrays = [rand(rng, 4, 5, 5), rand(rng, 4, 2, 3, 3)]
    check_op("conv2d", lambda x, w: F.conv2d(x, w, padding="same", groups=2, padding_mode="reflect"),
             lambda x, w: torch_conv_ref(x, w, None, padding="same", groups=2, padding_mode="reflect"),
             arrays, dtype)


def test_conv2d_input_only_and_weight_only_gradients(dtype, layout):
    """Backward must give the right gradient when only some inputs require one."""
    rng = np.random.default_rng(5)
    arrays = [rand(rng, 2, 2, 5, 5), rand(rng, 3, 2, 3, 3), rand(rng, 3)]
    for flags in ([True, False, False], [False, True, False], [False, False, True]):
        check_op("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
                 lambda x, w, b: TF.conv2d(x, w, b, stride=2, padding=1), arrays, dtype, requires_grad=flags)


# ----- conv2d: 'same' and 'valid' -----
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel,dilation", [((3, 3), 1), ((2, 4), 1), ((3, 2), (2, 1)), ((1, 5), 2)])
def test_conv2d_same_stride1_matches_torch_same(kernel, dilation, dtype):
    rng = np.random.default_rng(6)
    arrays = [rand(rng, 2, 3, 7, 8), rand(rng, 4, 3, *kernel), rand(rng, 4)]
    out, _ = check_op("conv2d", lambda x, w, b: F.conv2d(x, w, b, padding="same", dilation=dilation),
                      lambda x, w, b: TF.conv2d(x, w, b, padding="same", dilation=dilation), arrays, dtype)
    assert out[0].shape == (2, 4, 7, 8)


@pytest.mark.parametrize("hw,kernel,stride,dilation", [
    ((7, 8), (3, 3), 2, 1),      # odd total padding on one axis
    ((8, 8), (3, 3), 2, 1),
    ((9, 10), (4, 2), (3, 2), 1),
    ((10, 7), (3, 3), (2, 3), (2, 1)),
    ((5, 6), (1, 1), 2, 1),      # no padding needed
    ((6, 5), (5, 4), 4, 1),
])
def test_conv2d_same_strided_uses_tensorflow_rule(hw, kernel, stride, dilation, dtype):
    rng = np.random.default_rng(7)
    arrays = [rand(rng, 2, 2, *hw), rand(rng, 3, 2, *kernel), rand(rng, 3)]
    out, _ = check_op("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding="same", dilation=dilation),
                      lambda x, w, b: torch_conv_ref(x, w, b, stride=stride, padding="same", dilation=dilation),
                      arrays, dtype)
    s = _pair(stride)
    assert out[0].shape[2:] == (math.ceil(hw[0] / s[0]), math.ceil(hw[1] / s[1]))


def test_conv2d_valid(dtype):
    rng = np.random.default_rng(8)
    arrays = [rand(rng, 2, 3, 7, 6), rand(rng, 2, 3, 3, 2), rand(rng, 2)]
    check_op("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding="valid"),
             lambda x, w, b: TF.conv2d(x, w, b, stride=2, padding="valid"), arrays, dtype)


# ----- conv2d: padding modes -----
MODES = ["zeros", "reflect", "replicate", "circular", "symmetric"]
MODE_CASES = {
    "pad1": ((2, 3, 6, 7), (4, 3, 3, 3), dict(padding=1)),
    "pad_pair_stride": ((2, 2, 7, 6), (3, 2, 3, 2), dict(padding=(2, 1), stride=2)),
    "dilation_groups": ((1, 4, 8, 7), (4, 2, 3, 3), dict(padding=(2, 3), dilation=2, groups=2)),
    "same_stride1_even": ((2, 2, 5, 6), (2, 2, 2, 4), dict(padding="same")),
    "same_stride2": ((2, 2, 7, 6), (3, 2, 3, 3), dict(padding="same", stride=2)),
    "pad_equals_size_minus1": ((1, 1, 3, 4), (2, 1, 3, 3), dict(padding=2)),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
@pytest.mark.parametrize("mode", MODES)
def test_conv2d_padding_modes(mode, case, dtype, layout):
    xs, ws, kw = MODE_CASES[case]
    rng = np.random.default_rng(9)
    arrays = [rand(rng, *xs), rand(rng, *ws), rand(rng, ws[0])]
    check_op("conv2d", lambda x, w, b: F.conv2d(x, w, b, padding_mode=mode, **kw),
             lambda x, w, b: torch_conv_ref(x, w, b, padding_mode=mode, **kw), arrays, dtype)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv2d_padding_modes_match_torch_padding_mode(mode, dtype):
    """The same, through torch's own nn.Conv2d(padding_mode=...)."""
    rng = np.random.default_rng(10)
    x, w, b = rand(rng, 2, 2, 6, 5), rand(rng, 3, 2, 3, 3), rand(rng, 3)

    def torch_fn(x, w, b):
        # nn.Conv2d applies its padding_mode in _conv_forward, with the weight and bias given
        conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=(2, 1), padding_mode=mode, dtype=x.dtype)
        return conv._conv_forward(x, w, b)

    check_op("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=(2, 1), padding_mode=mode),
             torch_fn, [x, w, b], dtype)


def test_symmetric_reference_is_numpy_symmetric_pad():
    """The torch gather used as the 'symmetric' reference is np.pad(mode='symmetric')."""
    x = np.random.default_rng(11).standard_normal((2, 3, 4, 5))
    ours = torch_pad(torch.from_numpy(x), (2, 3, 4, 1), "symmetric").numpy()
    np.testing.assert_array_equal(ours, np.pad(x, ((0, 0), (0, 0), (2, 3), (4, 1)), mode="symmetric"))


def test_conv2d_symmetric_against_numpy_pad(dtype):
    rng = np.random.default_rng(12)
    x, w = rand(rng, 2, 2, 5, 4).astype(dtype), rand(rng, 3, 2, 3, 3).astype(dtype)
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (1, 1)), mode="symmetric")
    want = TF.conv2d(torch.from_numpy(xp), torch.from_numpy(w), padding=0).numpy()
    got = F.conv2d(cnnlab.Tensor(x), cnnlab.Tensor(w), padding=(2, 1), padding_mode="symmetric").data
    assert rel_error(got, want) <= TOLERANCE[np.dtype(dtype)]


# ----- untied bias -----
@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=(0, 1)), dict(padding="same", stride=2),
                                dict(groups=2, dilation=2, padding=2, padding_mode="reflect")],
                         ids=["pad1", "stride2", "same_stride2", "groups_dil_reflect"])
def test_conv2d_untied_bias(kw, dtype):
    rng = np.random.default_rng(13)
    x, w = rand(rng, 2, 4, 7, 6), rand(rng, 4, 2 if "groups" in kw else 4, 3, 3)
    ho, wo = F.conv_output_size((7, 6), (3, 3), kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1))
    b = rand(rng, 4, ho, wo)
    check_op("conv2d_untied_bias", lambda x, w, b: F.conv2d(x, w, b, **kw),
             lambda x, w, b: torch_conv_ref(x, w, None, **kw) + b, [x, w, b], dtype)


# ----- true convolution -----
@pytest.mark.parametrize("kw", [{}, dict(stride=2, padding=(1, 2)), dict(groups=2, dilation=(1, 2), padding=1),
                                dict(padding="same", padding_mode="circular")],
                         ids=["plain", "stride_pad", "groups_dil", "same_circular"])
def test_true_conv2d_is_conv_with_flipped_kernel(kw, dtype):
    rng = np.random.default_rng(14)
    x, w, b = rand(rng, 2, 4, 6, 7), rand(rng, 4, 2 if "groups" in kw else 4, 3, 2), rand(rng, 4)
    check_op("true_conv2d", lambda x, w, b: F.true_conv2d(x, w, b, **kw),
             lambda x, w, b: torch_conv_ref(x, w.flip(2, 3), b, **kw), [x, w, b], dtype)


def test_true_conv2d_matches_scipy_convolve2d():
    """Signal-processing convolution, checked against an independent library."""
    from scipy.signal import convolve2d
    rng = np.random.default_rng(15)
    x, w = rand(rng, 6, 7), rand(rng, 3, 2)
    got = F.true_conv2d(cnnlab.Tensor(x[None, None]), cnnlab.Tensor(w[None, None])).data[0, 0]
    np.testing.assert_allclose(got, convolve2d(x, w, mode="valid"), rtol=1e-12, atol=1e-12)


# ----- unfold / fold -----
UNFOLD_CASES = {
    "k3": ((2, 3, 5, 6), dict(kernel_size=3)),
    "k_pair_stride_pad": ((2, 2, 7, 6), dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 2))),
    "dilation": ((1, 2, 8, 7), dict(kernel_size=(3, 2), dilation=(2, 3), padding=1)),
    "stride_gt_kernel": ((2, 1, 9, 9), dict(kernel_size=2, stride=3)),
    "k1": ((2, 3, 4, 4), dict(kernel_size=1)),
}


@pytest.mark.parametrize("case", list(UNFOLD_CASES))
def test_unfold(case, dtype):
    xs, kw = UNFOLD_CASES[case]
    x = np.random.default_rng(16).standard_normal(xs)
    check_op("unfold", lambda x: F.unfold(x, **kw), lambda x: TF.unfold(x, **kw), [x], dtype)


@pytest.mark.parametrize("case", list(UNFOLD_CASES))
def test_fold(case, dtype):
    xs, kw = UNFOLD_CASES[case]
    cols_shape = TF.unfold(torch.zeros(xs, dtype=torch.float64), **kw).shape
    cols = np.random.default_rng(17).standard_normal(tuple(cols_shape))
    check_op("fold", lambda c: F.fold(c, xs[2:], **kw), lambda c: TF.fold(c, xs[2:], **kw), [cols], dtype)


def test_unfold_matmul_is_conv2d(dtype):
    """The docstring's claim: a convolution is weight.reshape(F, -1) @ unfold(x)."""
    rng = np.random.default_rng(18)
    x, w = rand(rng, 2, 3, 6, 5), rand(rng, 4, 3, 3, 2)

    def ours(x, w):
        cols = F.unfold(x, (3, 2), padding=1, stride=2)
        return (w.reshape(4, -1) @ cols).reshape(2, 4, 3, 3)

    check_op("unfold", ours, lambda x, w: TF.conv2d(x, w, padding=1, stride=2), [x, w], dtype)


# ----- locally connected: a torch loop twin (no torch op exists) -----
def torch_locally_connected(x, w, b, stride=1, padding=0, dilation=1, padding_mode="zeros"):
    """Loop over output positions: out[:, :, i, j] = sum w[i, j] * window(i, j)."""
    stride, dilation = _pair(stride), _pair(dilation)
    ho, wo, f, c, kh, kw = w.shape
    if padding == "same":
        pads = tf_same_pads(x.shape[-2:], (kh, kw), stride, dilation)
    else:
        ph, pw = _pair(padding)
        pads = (ph, ph, pw, pw)
    xp = torch_pad(x, pads, padding_mode)
    rows = []
    for i in range(ho):
        cols = []
        for j in range(wo):
            r0, c0 = i * stride[0], j * stride[1]
            rows_ = slice(r0, r0 + dilation[0] * (kh - 1) + 1, dilation[0])
            cols_ = slice(c0, c0 + dilation[1] * (kw - 1) + 1, dilation[1])
            win = xp[:, :, rows_, cols_]
            cols.append(torch.einsum("nckl,fckl->nf", win, w[i, j]))
        rows.append(torch.stack(cols, dim=-1))
    out = torch.stack(rows, dim=-2)
    if b is not None:
        out = out + (b if b.ndim == 3 else b[:, None, None])
    return out


LC_CASES = {
    "plain": ((2, 3, 5, 5), 3, (3, 3), {}),
    "stride_pad": ((2, 2, 7, 6), 4, (3, 2), dict(stride=2, padding=(1, 2))),
    "dilation": ((1, 2, 8, 7), 2, (2, 3), dict(dilation=(2, 1), padding=1)),
    "same_reflect": ((2, 2, 5, 6), 3, (3, 3), dict(padding="same", padding_mode="reflect")),
    "same_stride_symmetric": ((2, 2, 7, 6), 2, (3, 3), dict(padding="same", stride=2, padding_mode="symmetric")),
}


@pytest.mark.parametrize("bias", ["none", "tied", "untied"])
@pytest.mark.parametrize("case", list(LC_CASES))
def test_locally_connected2d(case, bias, dtype):
    xs, f, k, kw = LC_CASES[case]
    ho, wo = F.conv_output_size(xs[2:], k, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1))
    rng = np.random.default_rng(19)
    arrays = [rand(rng, *xs), rand(rng, ho, wo, f, xs[1], *k)]
    if bias != "none":
        arrays.append(rand(rng, f, ho, wo) if bias == "untied" else rand(rng, f))
    check_op("locally_connected2d", lambda x, w, b=None: F.locally_connected2d(x, w, b, **kw),
             lambda x, w, b=None: torch_locally_connected(x, w, b, **kw), arrays, dtype)


def test_locally_connected2d_unbatched(dtype):
    rng = np.random.default_rng(20)
    arrays = [rand(rng, 2, 5, 4), rand(rng, 3, 2, 3, 2, 3, 3), rand(rng, 3, 3, 2)]
    check_op("locally_connected2d", lambda x, w, b: F.locally_connected2d(x, w, b, padding=(0, 0), stride=(1, 1)),
             lambda x, w, b: torch_locally_connected(x[None], w, b)[0], arrays, dtype)


@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=(1, 0), dilation=(1, 2)),
                                dict(padding="same", padding_mode="circular")], ids=["pad1", "stride_dil", "same_circ"])
def test_locally_connected_with_shared_weights_is_conv2d(kw, dtype):
    """With every position's filters equal to one conv weight, it is that convolution:
    values and input gradient."""
    rng = np.random.default_rng(21)
    x, w, b = rand(rng, 2, 3, 7, 6).astype(dtype), rand(rng, 4, 3, 3, 3).astype(dtype), rand(rng, 4).astype(dtype)
    ho, wo = F.conv_output_size((7, 6), (3, 3), kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1))
    w_lc = np.broadcast_to(w, (ho, wo) + w.shape).copy()
    g = rng.standard_normal((2, 4, ho, wo)).astype(dtype)

    xa = cnnlab.Tensor(x.copy(), requires_grad=True)
    conv = F.conv2d(xa, cnnlab.Tensor(w), cnnlab.Tensor(b), **kw)
    conv.backward(g)
    xb = cnnlab.Tensor(x.copy(), requires_grad=True)
    wb = cnnlab.Tensor(w_lc, requires_grad=True)
    lc = F.locally_connected2d(xb, wb, cnnlab.Tensor(b), **kw)
    lc.backward(g)
    tol = TOLERANCE[np.dtype(dtype)]
    assert lc.shape == conv.shape
    assert np.abs(lc.data - conv.data).max() <= tol * np.abs(conv.data).max()
    assert np.abs(xb.grad - xa.grad).max() <= tol * np.abs(xa.grad).max()
    # and the conv weight's gradient is the sum of the per-position weight gradients
    xc = cnnlab.Tensor(x.copy())
    wc = cnnlab.Tensor(w.copy(), requires_grad=True)
    F.conv2d(xc, wc, cnnlab.Tensor(b), **kw).backward(g)
    assert np.abs(wb.grad.sum(axis=(0, 1)) - wc.grad).max() <= tol * np.abs(wc.grad).max()


# ----- Winograd F(4x4, 3x3) -----
needs_numba = pytest.mark.skipif(cnnlab.kernels.jit.kernels() is None, reason="Winograd's transforms need Numba")


def _winograd_spy(monkeypatch):
    """Counts of the Winograd input-gradient-or-forward calls, weight-gradient calls and
    those of each that gave up (a non-finite result, left to the direct path)."""
    conv = cnnlab.functional.conv
    counts = {"conv": 0, "conv gave up": 0, "weight": 0, "weight gave up": 0}
    run_conv, run_weight = conv._winograd_conv, conv._winograd_weight_grad

    def spy_conv(*args):
        counts["conv"] += 1
        ok = run_conv(*args)
        counts["conv gave up"] += not ok
        return ok

    def spy_weight(*args):
        counts["weight"] += 1
        part = run_weight(*args)
        counts["weight gave up"] += part is None
        return part

    monkeypatch.setattr(conv, "_winograd_conv", spy_conv)
    monkeypatch.setattr(conv, "_winograd_weight_grad", spy_weight)
    return counts


# (x shape, filters, kwargs): channels at the automatic threshold and above, by kernel rows
# and by the full im2col, sizes not a multiple of 4 (the last tiles partly outside),
# padding 0, 2 and 3 (the input gradient's tiles then start inside the gradient), other
# padding modes, blocks of several chunks
WINOGRAD_CASES = {
    "at_threshold": ((3, 16, 8, 8), 16, dict(padding=1)),
    "resnet_like": ((3, 32, 8, 8), 32, dict(padding=1)),
    "odd_sizes": ((2, 32, 7, 9), 40, dict(padding=1)),
    "valid": ((2, 48, 6, 5), 32, {}),
    "pad2": ((2, 32, 5, 4), 32, dict(padding=2)),
    "pad3": ((2, 32, 4, 5), 32, dict(padding=(3, 1))),
    "expanding_full_im2col": ((2, 32, 13, 26), 64, {}),
    "reflect": ((2, 32, 9, 8), 32, dict(padding=1, padding_mode="reflect")),
    "circular": ((2, 32, 8, 7), 48, dict(padding=1, padding_mode="circular")),
    "replicate": ((2, 64, 7, 7), 32, dict(padding=1, padding_mode="replicate")),
    "many_chunks": ((40, 32, 10, 10), 32, dict(padding=1)),
}


@needs_numba
@pytest.mark.parametrize("case", list(WINOGRAD_CASES))
def test_conv2d_by_winograd_matches_torch(case, dtype, monkeypatch):
    """The automatic choice takes Winograd for these (at least WINOGRAD_MIN_CHANNELS
    in and out): values and all three gradients within the usual tolerance, the forward,
    the input gradient and (zero padding) the weight gradient each by Winograd."""
    xs, f, kw = WINOGRAD_CASES[case]
    counts = _winograd_spy(monkeypatch)
    if case == "many_chunks":   # chunks of one image: the sums and checks across chunks
        monkeypatch.setattr(cnnlab.functional.conv, "WINOGRAD_CHUNK_BYTES", 1)
    rng = np.random.default_rng(31)
    arrays = [rand(rng, *xs), rand(rng, f, xs[1], 3, 3) / math.sqrt(9 * xs[1]), rand(rng, f)]
    mode = kw.get("padding_mode", "zeros")
    check_op("conv2d winograd", lambda x, w, b: F.conv2d(x, w, b, **kw),
             lambda x, w, b: torch_conv_ref(x, w, b, padding=kw.get("padding", 0), padding_mode=mode), arrays, dtype)
    threads = cnnlab.get_num_threads()
    assert counts["conv"] >= 2 and counts["conv gave up"] == 0      # forward and input gradient
    assert counts["weight"] == (0 if mode != "zeros" else counts["conv"] // 2) and counts["weight gave up"] == 0
    assert counts["conv"] <= 2 * max(threads, 1) * xs[0]


@needs_numba
@pytest.mark.parametrize("where", ["input", "input border", "weight", "gradient"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("filters", [32, 48], ids=["same_channels", "expanding"])
def test_conv2d_by_winograd_leaves_infinities_and_nan_to_the_direct_paths(filters, bad, where, monkeypatch):
    """A tile's sums can turn an infinity into NaN where a direct sum keeps it infinite:
    whatever Winograd gives up on (a result not all finite) is computed by the paths the
    layer takes without Winograd. So in the output and every gradient, infinities and
    NaN land where PyTorch puts them wherever those paths put them there too, and
    otherwise where those paths put them (the gather's zero-padded gradient times an
    infinite weight is NaN where PyTorch, adding no padding, keeps infinity)."""
    conv = cnnlab.functional.conv
    counts = _winograd_spy(monkeypatch)
    rng = np.random.default_rng(32)
    x = rand(rng, 4, 32, 6, 6).astype(np.float32)
    w = (rand(rng, filters, 32, 3, 3) / 17).astype(np.float32)
    g = rand(rng, 4, filters, 6, 6).astype(np.float32)
    target, index = {"input": (x, (1, 3, 2, 4)), "input border": (x, (1, 3, 0, 2)),
                     "weight": (w, (1, 3, 2, 1)), "gradient": (g, (1, 3, 2, 4))}[where]
    target[index] = bad
    results = []
    for winograd in (True, False):
        if not winograd:
            monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 10 ** 9)
        xc, wc = cnnlab.Tensor(x, requires_grad=True), cnnlab.Tensor(w, requires_grad=True)
        with np.errstate(all="ignore"):      # the direct paths' own inf - inf and 0 * inf
            out = F.conv2d(xc, wc, padding=1)
            out.backward(g)
        results.append((out.data, xc.grad, wc.grad))
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    want = TF.conv2d(xt, wt, padding=1)
    want.backward(torch.from_numpy(g))
    tol = TOLERANCE[np.dtype(np.float32)]
    for ours, direct, theirs in zip(*results, (want.detach().numpy(), xt.grad.numpy(), wt.grad.numpy())):
        if rel_error(direct, theirs) <= tol:    # (rel_error: also the same inf and NaN places)
            assert rel_error(ours, theirs) <= tol
        elif rel_error(ours, theirs) > tol:
            assert rel_error(ours, direct) <= tol
    assert counts["conv gave up"] >= 1 and counts["weight gave up"] >= (where != "weight")
    if where == "input":   # here all agree: the direct paths' and PyTorch's
        for ours, theirs in zip(results[0], (want, xt.grad, wt.grad)):
            assert rel_error(ours, theirs.detach().numpy()) <= tol


def _zero_padded(x, top, left, ho, wo):
    """float64 z: the zero-padded image holding x (n, H, W, C) at (top, left), at least
    (ho + 2, wo + 2) large, its tiles read from (0, 0)."""
    n, h, wd, c = x.shape
    z = np.zeros((n, ho + 2 + max(0, -top) + h, wo + 2 + max(0, -left) + wd, c))
    oy, ox = max(top, 0), max(left, 0)
    src = x[:, max(0, -top):, max(0, -left):]
    rows, cols = min(src.shape[1], z.shape[1] - oy), min(src.shape[2], z.shape[2] - ox)
    z[:, oy:oy + rows, ox:ox + cols] = src[:, :rows, :cols]
    return z


@needs_numba
@pytest.mark.parametrize("top,left,ho,wo", [(1, 1, 6, 6), (0, 0, 5, 3), (2, 0, 7, 4), (-1, 2, 3, 5),
                                            (-2, -1, 2, 2), (4, 5, 3, 3), (1, 1, 1, 1), (1, 0, 9, 10),
                                            (0, 1, 13, 12)])
def test_winograd_kernels_against_the_direct_sum(top, left, ho, wo):
    """The naive twin: _winograd_conv and _winograd_weight_grad against float64 loops,
    the zero padding read implicitly at every offset (negative ones start the tiles
    inside the input; one far enough reads only zeros), odd output sizes, float64 and
    float32."""
    conv = cnnlab.functional.conv
    rng = np.random.default_rng(33)
    x64 = rand(rng, 3, max(5, ho), max(4, wo), 6)     # the last two: interior tiles read the input
    w64 = rand(rng, 3, 3, 6, 7)
    g64 = rand(rng, 3, ho, wo, 7)
    z = _zero_padded(x64, top, left, ho, wo)
    taps = [(u, v, z[:, u:u + ho, v:v + wo]) for u in range(3) for v in range(3)]
    want = sum(window @ w64[u, v] for u, v, window in taps)
    want_dw = np.zeros((3, 3, 6, 7))
    for u, v, window in taps:   # the tap's window of the padded input against the gradient
        want_dw[u, v] = np.einsum("nijc,nijf->cf", window, g64)
    for dt, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        x, w, g = x64.astype(dt), w64.astype(dt), g64.astype(dt)
        guarded = np.full((4, ho, wo, 7), np.nan, dt)     # one image more: nothing may be written there
        out = guarded[:3]
        assert conv._winograd_conv(x, top, left, conv._winograd_weights(w), out)
        assert np.abs(out - want).max() <= tol * np.abs(want).max()
        assert np.isnan(guarded[3]).all()
        part = conv._winograd_weight_grad(x, top, left, g)
        dw = conv._winograd_weight_grad_total(part).reshape(3, 3, 6, 7)
        assert np.abs(dw - want_dw).max() <= tol * max(np.abs(want_dw).max(), 1)


@needs_numba
def test_conv2d_at_the_threshold_runs_by_winograd_with_and_without_gradient(dtype, monkeypatch):
    """WINOGRAD_MIN_CHANNELS in and out: the forward, the input and weight gradients, and
    a forward under no_grad all by Winograd, matching PyTorch."""
    conv = cnnlab.functional.conv
    counts = _winograd_spy(monkeypatch)
    channels = conv.WINOGRAD_MIN_CHANNELS
    rng = np.random.default_rng(36)
    arrays = [rand(rng, 3, channels, 10, 9), rand(rng, channels, channels, 3, 3) / math.sqrt(9 * channels)]
    check_op("conv2d winograd", lambda x, w: F.conv2d(x, w, padding=1), lambda x, w: TF.conv2d(x, w, padding=1),
             arrays, dtype)
    assert counts["conv"] >= 2 and counts["weight"] >= 1 and counts["conv gave up"] == counts["weight gave up"] == 0
    with_gradient = counts["conv"]
    with cnnlab.no_grad():
        F.conv2d(arrays[0].astype(dtype), arrays[1].astype(dtype), padding=1)
    assert counts["conv"] > with_gradient                            # inference too


@needs_numba
def test_winograd_is_not_taken_below_its_channel_threshold(monkeypatch):
    """Fewer channels than WINOGRAD_MIN_CHANNELS (in or out), a stride, a dilation,
    groups or another kernel size: the direct paths, not Winograd."""
    counts = _winograd_spy(monkeypatch)
    conv = cnnlab.functional.conv
    rng = np.random.default_rng(34)
    low = conv.WINOGRAD_MIN_CHANNELS - 1
    for xs, ws, kw in [((2, low, 8, 8), (32, low, 3, 3), dict(padding=1)),
                       ((2, 32, 8, 8), (low, 32, 3, 3), dict(padding=1)),
                       ((2, 32, 8, 8), (32, 32, 3, 3), dict(stride=2, padding=1)),
                       ((2, 32, 8, 8), (32, 32, 3, 3), dict(dilation=2, padding=2)),
                       ((2, 64, 8, 8), (64, 32, 3, 3), dict(groups=2, padding=1)),
                       ((2, 32, 8, 8), (32, 32, 5, 5), dict(padding=2))]:
        x = cnnlab.Tensor(rand(rng, *xs).astype(np.float32), requires_grad=True)
        w = cnnlab.Tensor(rand(rng, *ws).astype(np.float32), requires_grad=True)
        F.conv2d(x, w, **kw).sum().backward()
    assert counts["conv"] == counts["weight"] == 0


@needs_numba
def test_winograd_is_turned_off_by_an_infinite_threshold(monkeypatch):
    """WINOGRAD_MIN_CHANNELS = inf, as the README documents for the direct paths'
    rounding: no Winograd forward or backward, and the direct paths' result."""
    counts = _winograd_spy(monkeypatch)
    rng = np.random.default_rng(37)
    x, w = rand(rng, 2, 32, 8, 8).astype(np.float32), (rand(rng, 32, 32, 3, 3) / 17).astype(np.float32)
    monkeypatch.setattr(cnnlab.functional.conv, "WINOGRAD_MIN_CHANNELS", float("inf"))
    xc, wc = cnnlab.Tensor(x, requires_grad=True), cnnlab.Tensor(w, requires_grad=True)
    out = F.conv2d(xc, wc, padding=1)
    out.sum().backward()
    with cnnlab.no_grad():
        F.conv2d(x, w, padding=1)
    assert counts["conv"] == counts["weight"] == 0
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    want = TF.conv2d(xt, wt, padding=1)
    want.sum().backward()
    for ours, theirs in ((out.data, want), (xc.grad, xt.grad), (wc.grad, wt.grad)):
        assert rel_error(ours, theirs.detach().numpy()) <= 1e-6      # the direct paths' rounding


@needs_numba
@pytest.mark.parametrize("case", ["resnet_like", "expanding_full_im2col", "reflect"])
def test_conv2d_by_winograd_keeps_a_float64_gradient_float64(case, monkeypatch):
    """A float64 upstream gradient into a float32 convolution: the input and weight
    gradients are float64 and as accurate as float64 allows, the transforms and the
    flipped kernel's transform included (not rounded to float32 on the way)."""
    counts = _winograd_spy(monkeypatch)
    xs, f, kw = WINOGRAD_CASES[case]
    mode = kw.get("padding_mode", "zeros")
    rng = np.random.default_rng(35)
    x = rand(rng, *xs).astype(np.float32)
    w = (rand(rng, f, xs[1], 3, 3) / 9).astype(np.float32)
    xt, wt = cnnlab.Tensor(x, requires_grad=True), cnnlab.Tensor(w, requires_grad=True)
    y = F.conv2d(xt, wt, **kw)
    g = rand(rng, *y.shape)
    (y + cnnlab.Tensor(np.zeros(y.shape))).backward(g)                              # float64 from here on
    ref_x, ref_w = (torch.from_numpy(a.astype(np.float64)).requires_grad_() for a in (x, w))
    torch_conv_ref(ref_x, ref_w, None, padding=kw.get("padding", 0), padding_mode=mode).backward(torch.from_numpy(g))
    assert xt.grad.dtype == wt.grad.dtype == np.float64
    assert rel_error(xt.grad, ref_x.grad.numpy()) <= 1e-12
    assert rel_error(wt.grad, ref_w.grad.numpy()) <= 1e-12
    assert counts["conv"] >= 2 and counts["weight"] == (0 if mode != "zeros" else counts["conv"] // 2)
