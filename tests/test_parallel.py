"""The blocked, multi-threaded kernels (cnnlab.kernels.parallel): every way of cutting
the batch into blocks and spreading them over threads gives PyTorch's values and
gradients (convolution, batch norm, ReLU), the same thread count gives bit-identical results, and without threadpoolctl
the kernel falls back to one block."""
import numpy as np
import pytest
import torch

import cnnlab
import cnnlab.functional as F
from cnnlab.kernels import parallel
from conftest import check_op
from test_parity_conv import GEOMETRY, torch_conv_ref


@pytest.fixture
def blocking(monkeypatch):
    """Configure blocks of ``per_block`` images on ``threads`` threads; restores the
    thread count afterwards."""
    saved = parallel.get_num_threads()

    def configure(threads, per_block=1, controllable=True):
        parallel.set_num_threads(threads)
        # a block target of one byte gives one image per block; larger values merge images
        monkeypatch.setattr(parallel, "TARGET_BLOCK_BYTES", per_block)
        monkeypatch.setattr(parallel, "MIN_SPLIT_ELEMENTS", 1)    # split even tiny elementwise passes
        if not controllable:
            monkeypatch.setattr(parallel, "_blas_controllers", lambda: [])
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
            monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)

    yield configure
    parallel.set_num_threads(saved)


def _conv_case(gid, dtype, bias=True, padding_mode="zeros", batch=5):
    xs, ws, kw = GEOMETRY[gid]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch,) + xs[1:])
    w = rng.standard_normal(ws)
    arrays = [x, w] + ([rng.standard_normal(ws[0])] if bias else [])
    kw = dict(kw, padding_mode=padding_mode)
    torch_fn = (lambda *a: torch_conv_ref(*a, **kw)) if bias else (lambda x, w: torch_conv_ref(x, w, None, **kw))
    check_op(f"conv2d (blocked, {gid})", lambda *a: F.conv2d(*a, **kw), torch_fn, arrays, dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("gid", ["basic", "stride2", "stride_pair", "dilation_pair_stride", "groups3_stride_dil",
                                 "depthwise", "pointwise", "padding_larger_than_kernel", "nonsquare_kernel"])
def test_blocked_conv_matches_torch(blocking, threads, gid, dtype):
    blocking(threads)
    _conv_case(gid, dtype)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("gid", ["basic", "stride2", "dilation2"])
def test_blocked_conv_padding_modes(blocking, mode, gid):
    blocking(2)
    _conv_case(gid, np.float64, padding_mode=mode)


@pytest.mark.parametrize("per_block", [1, 10 ** 9])  # one image per block; all five in one block per thread
def test_block_sizes_agree(blocking, per_block):
    blocking(2, per_block)
    _conv_case("basic", np.float64, batch=5)


def test_untied_bias_and_no_bias(blocking):
    blocking(2)
    _conv_case("basic", np.float32, bias=False)
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((4, 3, 6, 6)), rng.standard_normal((2, 3, 3, 3)), rng.standard_normal((2, 4, 4))
    check_op("conv2d (blocked, untied bias)", lambda *a: F.conv2d(*a), lambda x, w, b: torch_conv_ref(x, w, None) + b,
             [x, w, b], np.float64)


def test_only_some_gradients(blocking):
    """Backward with only the weight, or only the input, requiring a gradient."""
    blocking(2)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((4, 3, 6, 6)), rng.standard_normal((5, 3, 3, 3))
    for flags in ([True, False], [False, True]):
        check_op("conv2d (blocked, partial grads)", lambda *a: F.conv2d(*a, padding=1),
                 lambda x, w: torch_conv_ref(x, w, None, padding=1), [x, w], np.float64, requires_grad=flags)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(5, 3, 4, 4), (7, 4), (4, 2, 6)])
def test_split_batch_norm_matches_torch(blocking, threads, training, shape, dtype):
    blocking(threads)
    rng = np.random.default_rng(3)
    c = shape[1]
    x, w, b = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.random(c) + 0.5
    stats = {}

    def ours(x, w, b):
        m, v = rm.astype(dtype), rv.astype(dtype)
        out = F.batch_norm(x, m, v, w, b, training=training)
        stats["ours"] = (m, v)
        return out

    def theirs(x, w, b):
        m, v = torch.tensor(rm.astype(dtype)), torch.tensor(rv.astype(dtype))
        out = torch.nn.functional.batch_norm(x, m, v, w, b, training=training)
        stats["theirs"] = (m.numpy(), v.numpy())
        return out

    check_op("batch_norm (split)", ours, theirs, [x, w, b], dtype)
    for a, t in zip(stats["ours"], stats["theirs"]):
        np.testing.assert_allclose(a, t, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("threads", [2, 3])
def test_split_relu_matches_torch(blocking, threads, dtype):
    blocking(threads)
    x = np.random.default_rng(4).standard_normal((5, 3, 4, 4))
    check_op("relu (split)", F.relu, torch.relu, [x], dtype)


def test_split_covers_axis0(blocking):
    blocking(3)
    assert parallel.split(np.zeros((7, 2))) == [(0, 2), (2, 4), (4, 7)]
    assert parallel.split(np.zeros((2, 2))) == [(0, 1), (1, 2)]
    assert parallel.split(np.zeros(())) == [(0, 1)]


def _train_once(threads, blocking):
    blocking(threads)
    cnnlab.manual_seed(0)
    model = cnnlab.models.resnet20()
    opt = cnnlab.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = cnnlab.Tensor(rng.standard_normal((6, 3, 16, 16)).astype(np.float32))
        loss = F.cross_entropy(model(x), rng.integers(0, 10, 6))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.data.copy() for p in model.parameters()]


def test_same_thread_count_is_bit_identical(blocking):
    first, second = _train_once(2, blocking), _train_once(2, blocking)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    # another thread count sums the weight gradient in another order: equal up to rounding
    single = _train_once(1, blocking)
    assert max(np.abs(a - b).max() / (np.abs(b).max() + 1e-30) for a, b in zip(single, first)) < 1e-4


def test_without_threadpoolctl_one_block(blocking):
    blocking(2, controllable=False)
    assert not parallel.can_block()
    assert parallel.blocks(8, 100, 100) == [(0, 8)]
    _conv_case("basic", np.float32)


def test_blocks_cover_the_batch(blocking):
    blocking(3)
    for n in (1, 2, 5, 7):
        bl = parallel.blocks(n, 10, 10)
        assert bl[0][0] == 0 and bl[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bl, bl[1:]))
        assert len(bl) >= min(n, 3)


def test_workspace_is_reused_per_slot_and_large_arrays_are_not_kept():
    a = parallel.workspace(5, (4, 4), np.float32)
    b = parallel.workspace(5, (2, 8), np.float32)
    assert np.shares_memory(a, b)
    assert not np.shares_memory(a, parallel.workspace(6, (4, 4), np.float32))
    big = parallel.workspace(5, (parallel.TARGET_BLOCK_BYTES,), np.float64)
    assert not np.shares_memory(big, parallel.workspace(5, (4, 4), np.float32))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="positive int"):
        parallel.set_num_threads(bad)
